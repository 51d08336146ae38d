import { tensorBytes } from './dtypes.js';
import type { LegacyTensor } from './architectures/spec.js';
import type { SkeletonModule, SkeletonTensor, TensorLocation } from './skeleton.js';

/** What a checkpoint says about one tensor: always its name, shape and dtype when headers were read. */
export interface StoredTensor {
  name: string;
  shape?: number[];
  dtype?: string;
  location?: TensorLocation;
  /** See SkeletonTensor.transposed. */
  transposed?: true;
}

export interface ReconcileInput {
  modules: SkeletonModule[];
  tensors: SkeletonTensor[];
  tied: string[][];
  stored: StoredTensor[];
  legacy?: (name: string) => LegacyTensor | undefined;
  /** Stored tensors the runtime does not load, with the reason. */
  ignored?: (name: string) => string | undefined;
  /** `metadata.total_size` of an index, used to tell which dtype legacy buffers were saved in. */
  indexTotalSize?: number;
  /**
   * Buffers this kind of file never stores because the runtime recomputes them (llama.cpp's converter drops rotary
   * `inv_freq`): not missing, and not loaded, so they become non-persistent.
   */
  recomputed?: (name: string) => boolean;
}

export interface ReconcileResult {
  modules: SkeletonModule[];
  tensors: SkeletonTensor[];
  /** Stored tensors the model ties to another (stored twice on disk, loaded once). */
  storedTiedCopies: string[];
  /** Stored tensors the runtime skips on load, grouped by reason. */
  ignored: Map<string, string[]>;
  /** Stored tensors neither the architecture nor a legacy rule knows. */
  unexpected: StoredTensor[];
  /** Params and persistent buffers the model needs that the checkpoint lacks. */
  missing: string[];
  /** Synthesized tensors whose stored shape or dtype differs. */
  mismatched: { name: string; synthesized: string; stored: string }[];
  warnings: string[];
}

/**
 * Merges (in place) an architecture's synthesized layout with what the checkpoint really stores: stored shapes,
 * dtypes and byte ranges win; tensors older code saved become persistent buffers; tied copies are noted.
 */
export function reconcile(input: ReconcileInput): ReconcileResult {
  // The layout was built for this call alone, so it is completed in place rather than copied.
  const modules = input.modules;
  const tensors = input.tensors;
  const byName = new Map(tensors.map((t) => [t.name, t]));
  const aliasOf = tiedAliases(input.tied);
  const storedNames = new Set(input.stored.map((s) => s.name));
  const result: ReconcileResult = {
    modules,
    tensors,
    storedTiedCopies: [],
    ignored: new Map(),
    unexpected: [],
    missing: [],
    mismatched: [],
    warnings: [],
  };
  const legacyAdded: { tensor: SkeletonTensor; candidates: string[] }[] = [];
  const inserter = new Inserter(modules, tensors);

  for (const s of input.stored) {
    const t = byName.get(s.name);
    if (t) {
      if (aliasOf.has(s.name) && storedNames.has(aliasOf.get(s.name)!)) result.storedTiedCopies.push(s.name);
      applyStored(t, s, result);
      continue;
    }
    const skip = input.ignored?.(s.name);
    if (skip !== undefined) {
      result.ignored.set(skip, [...(result.ignored.get(skip) ?? []), s.name]);
      continue;
    }
    const legacy = input.legacy?.(s.name);
    if (legacy) {
      const tensor: SkeletonTensor = {
        name: s.name,
        shape: s.shape ?? legacy.shape,
        dtype: s.dtype ?? legacy.dtypes[0]!,
        kind: 'buffer',
        persistent: true,
      };
      if (s.location) tensor.location = s.location;
      inserter.insert(tensor, legacy.module, legacy.moduleClass);
      byName.set(tensor.name, tensor);
      if (!s.dtype) legacyAdded.push({ tensor, candidates: legacy.dtypes });
      continue;
    }
    result.unexpected.push(s);
  }

  for (const t of tensors) {
    if (storedNames.has(t.name) || (t.kind === 'buffer' && t.persistent === false)) continue;
    const owner = aliasOf.get(t.name);
    if (owner !== undefined && storedNames.has(owner)) continue;
    if (owner === undefined && tiedOwnerStoredViaAlias(t.name, input.tied, storedNames)) continue;
    if (t.kind === 'buffer' && input.recomputed?.(t.name)) {
      t.persistent = false;
      continue;
    }
    result.missing.push(t.name);
  }

  inserter.finish();
  if (legacyAdded.length > 0) resolveLegacyDtypes(legacyAdded, tensors, input.tied, result, input.indexTotalSize);
  for (const [why, names] of result.ignored) {
    result.warnings.push(`${names.length} stored tensor(s) are not loaded: ${why} (${names[0]}${names.length > 1 ? ', …' : ''})`);
  }
  if (result.unexpected.length > 0) {
    const names = result.unexpected
      .slice(0, 3)
      .map((u) => u.name)
      .join(', ');
    result.warnings.push(
      `${result.unexpected.length} stored tensor(s) the architecture does not define (${names}${result.unexpected.length > 3 ? ', …' : ''})`,
    );
  }
  if (result.missing.length > 0) {
    const names = result.missing.slice(0, 3).join(', ');
    result.warnings.push(
      `${result.missing.length} tensor(s) the model needs are not in the checkpoint (${names}${result.missing.length > 3 ? ', …' : ''}); transformers would initialise them randomly`,
    );
  }
  if (result.mismatched.length > 0) {
    const m = result.mismatched[0]!;
    result.warnings.push(
      `${result.mismatched.length} tensor(s) differ from what the config implies (first: ${m.name} is ${m.stored}, config says ${m.synthesized}); sizes use the checkpoint's`,
    );
  }
  return result;
}

/** Maps every non-owner name of a tie group to its owner (the first name). */
function tiedAliases(tied: string[][]): Map<string, string> {
  const map = new Map<string, string>();
  for (const group of tied) for (const name of group.slice(1)) map.set(name, group[0]!);
  return map;
}

/** The owner of a tie group counts as present when only an alias of it was stored. */
function tiedOwnerStoredViaAlias(name: string, tied: string[][], stored: Set<string>): boolean {
  const group = tied.find((g) => g[0] === name);
  return group !== undefined && group.some((n) => stored.has(n));
}

function describe(shape: readonly number[], dtype: string): string {
  return `[${shape.join(', ')}] ${dtype}`;
}

function applyStored(t: SkeletonTensor, s: StoredTensor, result: ReconcileResult): void {
  const shapeDiffers = s.shape !== undefined && (s.shape.length !== t.shape.length || s.shape.some((v, i) => v !== t.shape[i]));
  if (shapeDiffers) {
    result.mismatched.push({ name: t.name, synthesized: describe(t.shape, t.dtype), stored: describe(s.shape!, s.dtype ?? t.dtype) });
  }
  if (s.shape) t.shape = [...s.shape];
  if (s.dtype) t.dtype = s.dtype;
  if (s.location) t.location = s.location;
  if (s.transposed) t.transposed = true;
}

/**
 * An index names legacy buffers but not their dtype: Llama-2-7b-hf saved `inv_freq` in float32,
 * Llama-2-7b-chat in float16. Each tensor has its own candidates (most likely first); the k-th choice
 * of every tensor is tried together, and the one whose total equals `metadata.total_size` is the one saved.
 */
function resolveLegacyDtypes(
  added: { tensor: SkeletonTensor; candidates: string[] }[],
  tensors: SkeletonTensor[],
  tied: string[][],
  result: ReconcileResult,
  indexTotalSize: number | undefined,
): void {
  const rounds = Math.max(...added.map((a) => a.candidates.length));
  if (indexTotalSize === undefined || rounds < 2) return;
  const choose = (k: number): void => {
    for (const a of added) a.tensor.dtype = a.candidates[Math.min(k, a.candidates.length - 1)]!;
  };
  for (let k = 0; k < rounds; k++) {
    choose(k);
    if (storedBytes(tensors, result.storedTiedCopies, tied) === indexTotalSize) return;
  }
  choose(0);
  result.warnings.push(`could not tell the dtype of ${added.length} legacy buffer(s) from the index; assuming ${added[0]!.candidates[0]}`);
}

/** Bytes a checkpoint stores for this skeleton: persistent tensors, tied groups once, plus stored tied copies. */
export function storedBytes(tensors: readonly SkeletonTensor[], storedTiedCopies: readonly string[], tied: string[][] = []): number {
  const aliases = tiedAliases(tied);
  const copies = new Set(storedTiedCopies);
  let total = 0;
  for (const t of tensors) {
    if (t.kind === 'buffer' && t.persistent === false) continue;
    if (aliases.has(t.name) && !copies.has(t.name)) continue;
    total += tensorBytes(t.shape, t.dtype);
  }
  return total;
}

/**
 * Adds tensors (and their modules, with any missing parents) right after the last entry of their
 * parent, as registration would have put them. Insertions are collected and spliced in once, so a
 * checkpoint with thousands of legacy tensors costs one pass, not one pass per tensor.
 */
class Inserter {
  private readonly newModules = new Map<number, SkeletonModule[]>();
  private readonly newTensors = new Map<number, SkeletonTensor[]>();
  private readonly moduleIndex = new Map<string, number>();
  private readonly lastModuleUnder = new Map<string, number>();
  private readonly lastTensorUnder = new Map<string, number>();
  private indexed = false;

  constructor(
    private readonly modules: SkeletonModule[],
    private readonly tensors: SkeletonTensor[],
  ) {}

  /** Built on the first insert: most checkpoints insert nothing, and the maps cost a pass over every name prefix. */
  private index(): void {
    if (this.indexed) return;
    this.indexed = true;
    this.modules.forEach((m, i) => {
      this.moduleIndex.set(m.name, i);
      forEachPrefix(m.name, (p) => this.lastModuleUnder.set(p, i));
    });
    this.tensors.forEach((t, i) => forEachPrefix(t.name, (p) => this.lastTensorUnder.set(p, i)));
  }

  insert(tensor: SkeletonTensor, modulePath: string, moduleClass: string): void {
    this.index();
    this.ensureModule(modulePath, moduleClass);
    const at = this.lastTensorUnder.get(modulePath) ?? this.lastTensorUnder.get(parentOf(modulePath)) ?? this.tensors.length - 1;
    push(this.newTensors, at, tensor);
  }

  private ensureModule(path: string, cls: string): void {
    if (path === '' || this.moduleIndex.has(path)) return;
    const parent = parentOf(path);
    this.ensureModule(parent, 'Module');
    const at = this.lastModuleUnder.get(parent) ?? this.moduleIndex.get(parent) ?? this.modules.length - 1;
    push(this.newModules, at, { name: path, class: cls });
    // Children of a new module go into the same batch, after it.
    this.moduleIndex.set(path, at);
    this.lastModuleUnder.set(path, at);
  }

  finish(): void {
    splice(this.modules, this.newModules);
    splice(this.tensors, this.newTensors);
  }
}

function parentOf(path: string): string {
  const cut = path.lastIndexOf('.');
  return cut < 0 ? '' : path.slice(0, cut);
}

function forEachPrefix(name: string, f: (prefix: string) => void): void {
  f('');
  for (let i = name.indexOf('.'); i >= 0; i = name.indexOf('.', i + 1)) f(name.slice(0, i));
  f(name);
}

function push<T>(map: Map<number, T[]>, at: number, item: T): void {
  const list = map.get(at);
  if (list) list.push(item);
  else map.set(at, [item]);
}

/** Rebuilds `list` with each batch of new items placed after the index it was keyed by. */
function splice<T>(list: T[], additions: Map<number, T[]>): void {
  if (additions.size === 0) return;
  const out: T[] = [...(additions.get(-1) ?? [])];
  list.forEach((item, i) => {
    out.push(item);
    const more = additions.get(i);
    if (more) out.push(...more);
  });
  list.splice(0, list.length, ...out);
}

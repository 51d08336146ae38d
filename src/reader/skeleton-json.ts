import { readFileSync, statSync } from 'node:fs';
import { InputError } from '../util/errors.js';
import { lookupDType } from './dtypes.js';
import { SKELETON_FORMAT, SKELETON_VERSION, type BlockFacts, type Skeleton, type SkeletonModule, type SkeletonTensor } from './skeleton.js';
import { assertRegularFile } from '../util/regular-file.js';

/**
 * Reads a skeleton written by `vramfit inspect --json`, or the `input` object of an accelerate oracle
 * case (or such an object on its own): every plan can then be made for a model that is not on this machine.
 */
export function readSkeletonJson(path: string): Skeleton {
  assertRegularFile(path);
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new InputError(path, `not valid JSON (${(e as Error).message})`, 'BAD_SKELETON');
  }
  return parseSkeleton(json, path, statSync(path).size);
}

export function parseSkeleton(json: unknown, path: string, bytesRead = 0): Skeleton {
  const fail = (reason: string): never => {
    throw new InputError(path, reason, 'BAD_SKELETON');
  };
  if (!isObject(json)) return fail('expected a JSON object');
  let obj = json;
  let kind: 'skeleton' | 'oracle-case' = 'skeleton';
  if (obj['format'] === SKELETON_FORMAT) {
    const v = obj['version'];
    if (typeof v !== 'number' || v > SKELETON_VERSION) fail(`skeleton version ${JSON.stringify(v)} is newer than this vramfit reads (${SKELETON_VERSION})`);
  } else if (isObject(obj['input']) && 'root_class' in obj['input']) {
    obj = obj['input'];
    kind = 'oracle-case';
  } else if (!('root_class' in obj && 'modules' in obj && 'tensors' in obj)) {
    return fail(`not a vramfit skeleton (no "format": "${SKELETON_FORMAT}") nor an object with root_class, modules and tensors`);
  } else {
    kind = 'oracle-case';
  }

  const rootClass = obj['root_class'];
  if (typeof rootClass !== 'string' || rootClass === '') fail('root_class must be a non-empty string');
  const modules = arrayOf(obj['modules'], 'modules', fail).map((m, i) => readModule(m, i, fail));
  const moduleNames = new Set(modules.map((m) => m.name));
  for (const m of modules) {
    const parent = m.name.includes('.') ? m.name.slice(0, m.name.lastIndexOf('.')) : '';
    if (parent !== '' && !moduleNames.has(parent)) fail(`module ${m.name} is listed but its parent ${parent} is not`);
  }
  if (moduleNames.size !== modules.length) fail('modules lists a name twice');
  const tensors = arrayOf(obj['tensors'], 'tensors', fail).map((t, i) => readTensor(t, i, fail));
  const tensorNames = new Set(tensors.map((t) => t.name));
  if (tensorNames.size !== tensors.length) fail('tensors lists a name twice');
  for (const t of tensors) {
    const owner = t.name.includes('.') ? t.name.slice(0, t.name.lastIndexOf('.')) : '';
    if (owner !== '' && !moduleNames.has(owner)) fail(`tensor ${t.name} belongs to module ${owner}, which is not listed`);
  }
  const tied = arrayOf(obj['tied'] ?? [], 'tied', fail).map((g, i) => {
    if (!Array.isArray(g) || g.length < 2 || !g.every((n) => typeof n === 'string')) fail(`tied[${i}] must be a list of at least two tensor names`);
    for (const n of g as string[]) if (!tensorNames.has(n)) fail(`tied[${i}] names ${n}, which is not in tensors`);
    return g as string[];
  });
  const noSplitRaw = obj['no_split_module_classes'];
  const noSplit = noSplitRaw === null || noSplitRaw === undefined ? [] : arrayOf(noSplitRaw, 'no_split_module_classes', fail);
  if (!noSplit.every((c) => typeof c === 'string')) fail('no_split_module_classes must be a list of class names');

  const skeleton: Skeleton = {
    format: SKELETON_FORMAT,
    version: SKELETON_VERSION,
    root_class: rootClass as string,
    modules,
    tensors,
    tied,
    no_split_module_classes: noSplit as string[],
    family: typeof obj['family'] === 'string' ? obj['family'] : 'unknown',
    source: { kind, path, shapes: 'headers', files: [path], bytesRead },
    warnings: Array.isArray(obj['warnings']) ? obj['warnings'].filter((w): w is string => typeof w === 'string') : [],
  };
  if (kind === 'skeleton' && isObject(obj['source'])) {
    // Keep where the numbers originally came from; the file read now is only a carrier.
    const src = obj['source'] as unknown as Skeleton['source'];
    skeleton.source = { ...src, bytesRead };
  }
  // Set last: a `skeletonFile` inside the JSON is not believed.
  skeleton.source.skeletonFile = path;
  for (const key of ['model_type', 'config_dtype'] as const) {
    if (typeof obj[key] === 'string') skeleton[key] = obj[key] as string;
  }
  if (isObject(obj['attention'])) skeleton.attention = obj['attention'] as unknown as Skeleton['attention'];
  if (isObject(obj['quantization'])) skeleton.quantization = obj['quantization'] as unknown as Skeleton['quantization'];
  const blocks = isObject(obj['blocks']) ? (obj['blocks'] as unknown as BlockFacts) : inferBlocks(skeleton);
  if (blocks) skeleton.blocks = blocks;
  return skeleton;
}

/** The repeated blocks of a skeleton that does not say: the largest ModuleList of same-class children. */
export function inferBlocks(s: Pick<Skeleton, 'modules'>): BlockFacts | undefined {
  // Direct children grouped by parent in one pass: linear in the modules, however many lists there are.
  const children = new Map<string, { count: number; class: string | undefined; uniform: boolean }>();
  for (const m of s.modules) {
    const cut = m.name.lastIndexOf('.');
    if (cut < 0) continue;
    const parent = m.name.slice(0, cut);
    const c = children.get(parent);
    if (!c) children.set(parent, { count: 1, class: m.class, uniform: true });
    else {
      c.count++;
      if (c.class !== m.class) c.uniform = false;
    }
  }
  let best: BlockFacts | undefined;
  for (const list of s.modules) {
    if (list.class !== 'ModuleList') continue;
    const c = children.get(list.name);
    if (!c || c.count < 2 || !c.uniform) continue;
    if (!best || c.count > best.count) best = { prefix: list.name, count: c.count, class: c.class! };
  }
  return best;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function arrayOf(v: unknown, what: string, fail: (r: string) => never): unknown[] {
  if (!Array.isArray(v)) fail(`${what} must be a list`);
  return v as unknown[];
}

function readModule(m: unknown, i: number, fail: (r: string) => never): SkeletonModule {
  if (!isObject(m) || typeof m['name'] !== 'string' || m['name'] === '' || typeof m['class'] !== 'string') {
    fail(`modules[${i}] must be {"name": string, "class": string}`);
  }
  const o = m as Record<string, string>;
  return { name: o['name']!, class: o['class']! };
}

function readTensor(t: unknown, i: number, fail: (r: string) => never): SkeletonTensor {
  if (!isObject(t) || typeof t['name'] !== 'string' || t['name'] === '') fail(`tensors[${i}] needs a name`);
  const o = t as Record<string, unknown>;
  const name = o['name'] as string;
  const shape = o['shape'];
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
    fail(`tensor ${name}: shape must be a list of non-negative integers`);
  }
  const dtype = typeof o['dtype'] === 'string' ? lookupDType(o['dtype']) : undefined;
  if (!dtype) fail(`tensor ${name}: unknown dtype ${JSON.stringify(o['dtype'])}`);
  const kind = o['kind'] ?? 'param';
  if (kind !== 'param' && kind !== 'buffer') fail(`tensor ${name}: kind must be "param" or "buffer"`);
  const tensor: SkeletonTensor = { name, shape: shape as number[], dtype: dtype!.name, kind: kind as 'param' | 'buffer' };
  if (typeof o['persistent'] === 'boolean') tensor.persistent = o['persistent'];
  if (isObject(o['location'])) tensor.location = o['location'] as unknown as SkeletonTensor['location'] & object;
  return tensor;
}

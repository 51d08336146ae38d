/**
 * The compat planner's view of a model: the oracle case `input` (a subset of the Skeleton) turned into the tree
 * of `nn.Module`s that accelerate walks, with PyTorch's traversal orders.
 */
import type { Skeleton } from '../../reader/skeleton.js';
import { lookupDType, numel } from '../../reader/dtypes.js';
import { InputError } from '../../util/errors.js';

/** The model part of an oracle case; any Skeleton is one. */
export type AccelerateModelInput = Pick<Skeleton, 'root_class' | 'modules' | 'tensors' | 'tied'> & {
  no_split_module_classes?: readonly string[] | null;
};

export type AccelerateMode = 'auto' | 'balanced' | 'balanced_low_0' | 'sequential' | 'raw';

/** One oracle case `input`: the model plus how accelerate / transformers were called. */
export interface AcceleratePlanInput extends AccelerateModelInput {
  /** Device → budget: int bytes or a size string in accelerate's units. GPU ids are decimal keys ("0"). */
  max_memory: Record<string, number | string>;
  /** Load dtype: floating tensors shrink to it, never grow. */
  dtype?: string | null;
  mode: AccelerateMode;
  /** raw mode only (transformers never passes it). */
  offload_buffers?: boolean;
  /** raw mode only. */
  fallback_allocation?: boolean;
  /** raw mode only: record what accelerate's `verbose=True` prints. */
  verbose?: boolean;
  /** Exact tensor name → dtype (may grow a tensor). */
  special_dtypes?: Record<string, string> | null;
  /** transformers' keep-in-fp32 modules; applies only when dtype is float16. */
  keep_in_fp32_modules?: readonly string[] | null;
  /** GPU id → bytes reserved by torch's caching allocator but unallocated (transformers adds it back). */
  unused_reserved?: Record<string, number> | null;
}

export interface TensorNode {
  /** Full dotted name. */
  readonly name: string;
  readonly kind: 'param' | 'buffer';
  readonly dtype: string;
  readonly numel: number;
  /** Tie group id when this tensor shares storage with others. */
  readonly tieGroup?: number;
}

export interface ModuleNode {
  /** Full dotted name; '' for the root. */
  readonly name: string;
  readonly className: string;
  /** In registration order (`named_children()`). */
  readonly children: ModuleNode[];
  /** Direct parameters in registration order (`named_parameters(recurse=False)`). */
  readonly params: TensorNode[];
  /** Direct buffers in registration order (`named_buffers(recurse=False)`). */
  readonly buffers: TensorNode[];
}

export interface AccelerateModel {
  readonly root: ModuleNode;
  /** Every module and tensor by full name. */
  readonly modules: ReadonlyMap<string, ModuleNode>;
  readonly tensors: ReadonlyMap<string, TensorNode>;
  /** Tie groups as given (names deduplicated), only groups of two or more names. */
  readonly tieGroups: readonly (readonly string[])[];
  readonly noSplit: ReadonlySet<string>;
}

const WHERE = 'accelerate input';

/** Builds and checks the module tree; structural problems are InputErrors (accelerate would never see them). */
export function buildAccelerateModel(input: AccelerateModelInput): AccelerateModel {
  const root: ModuleNode = { name: '', className: input.root_class, children: [], params: [], buffers: [] };
  const modules = new Map<string, ModuleNode>([['', root]]);
  for (const m of input.modules) {
    if (m.name === '' || modules.has(m.name)) throw new InputError(WHERE, `module '${m.name}' is empty or listed twice`);
    const parentName = parentOf(m.name);
    const parent = modules.get(parentName);
    if (!parent) throw new InputError(WHERE, `module '${m.name}' comes before its parent '${parentName}'`);
    const node: ModuleNode = { name: m.name, className: m.class, children: [], params: [], buffers: [] };
    parent.children.push(node);
    modules.set(m.name, node);
  }

  const tieOf = new Map<string, number>();
  const tieGroups: string[][] = [];
  for (const group of input.tied ?? []) {
    const names = [...new Set(group)];
    if (names.length < 2) continue;
    for (const n of names) {
      if (tieOf.has(n)) throw new InputError(WHERE, `tensor '${n}' is in two tie groups`);
      tieOf.set(n, tieGroups.length);
    }
    tieGroups.push(names);
  }

  const tensors = new Map<string, TensorNode>();
  for (const t of input.tensors) {
    if (tensors.has(t.name) || modules.has(t.name)) throw new InputError(WHERE, `tensor '${t.name}' is listed twice`);
    const owner = modules.get(parentOf(t.name));
    if (!owner) throw new InputError(WHERE, `tensor '${t.name}' belongs to no listed module`);
    const info = lookupDType(t.dtype);
    // accelerate only ever sees torch dtypes; ggml block formats have no place here.
    if (!info || info.kind === 'quantized') throw new InputError(WHERE, `tensor '${t.name}' has dtype '${t.dtype}' unknown to torch`);
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw new InputError(WHERE, `tensor '${t.name}' has a bad shape`);
    const tieGroup = tieOf.get(t.name);
    const node: TensorNode = {
      name: t.name,
      kind: t.kind,
      dtype: info.name,
      numel: numel(t.shape),
      ...(tieGroup !== undefined ? { tieGroup } : {}),
    };
    tensors.set(t.name, node);
    (t.kind === 'param' ? owner.params : owner.buffers).push(node);
  }
  for (const n of tieOf.keys()) {
    if (!tensors.has(n)) throw new InputError(WHERE, `tied name '${n}' is not a listed tensor`);
  }
  return { root, modules, tensors, tieGroups, noSplit: new Set(input.no_split_module_classes ?? []) };
}

export function parentOf(name: string): string {
  const dot = name.lastIndexOf('.');
  return dot < 0 ? '' : name.slice(0, dot);
}

/** `named_modules()` order: pre-order, children in registration order. */
export function* preOrder(node: ModuleNode): Generator<ModuleNode> {
  yield node;
  for (const c of node.children) yield* preOrder(c);
}

/**
 * `module.named_parameters()` then `module.named_buffers()` (recurse=True, remove_duplicate=True): a tied tensor
 * appears once, under its first name in traversal order. Names are relative to `module` (accelerate calls this on
 * submodules too). Each pass keeps its own memo, as PyTorch's does.
 */
export function* namedTensors(module: ModuleNode, which: 'all' | 'buffers' = 'all'): Generator<{ relativeName: string; tensor: TensorNode }> {
  const strip = module.name === '' ? 0 : module.name.length + 1;
  const kinds: Array<'params' | 'buffers'> = which === 'all' ? ['params', 'buffers'] : ['buffers'];
  for (const kind of kinds) {
    const seenGroups = new Set<number>();
    for (const m of preOrder(module)) {
      for (const t of m[kind]) {
        if (t.tieGroup !== undefined) {
          if (seenGroups.has(t.tieGroup)) continue;
          seenGroups.add(t.tieGroup);
        }
        yield { relativeName: t.name.slice(strip), tensor: t };
      }
    }
  }
}

/** The class name `getattr(model, name).__class__.__name__` gives: tensors are `Parameter` or `Tensor`. */
export function classNameOf(model: AccelerateModel, name: string): string | undefined {
  const m = model.modules.get(name);
  if (m) return m.className;
  const t = model.tensors.get(name);
  if (t) return t.kind === 'param' ? 'Parameter' : 'Tensor';
  return undefined;
}

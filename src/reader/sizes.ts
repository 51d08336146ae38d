import { tensorBytes } from './dtypes.js';
import type { Skeleton, SkeletonTensor } from './skeleton.js';

/**
 * Memory a tensor costs once loaded. A tie group's memory is counted once, on its first member in
 * registration order (what transformers does); the other names cost nothing.
 */
export function tensorMemory(s: Pick<Skeleton, 'tensors' | 'tied'>): Map<string, number> {
  const aliases = new Set<string>();
  const order = new Map(s.tensors.map((t, i) => [t.name, i]));
  for (const group of s.tied) {
    const sorted = [...group].sort((a, b) => (order.get(a) ?? Infinity) - (order.get(b) ?? Infinity));
    for (const name of sorted.slice(1)) aliases.add(name);
  }
  const out = new Map<string, number>();
  for (const t of s.tensors) out.set(t.name, aliases.has(t.name) ? 0 : tensorBytes(t.shape, t.dtype));
  return out;
}

/** Bytes below every module ('' is the whole model), tied tensors once. */
export function moduleSizes(
  s: Pick<Skeleton, 'tensors' | 'tied'> & Partial<Pick<Skeleton, 'modules'>>,
  mem: Map<string, number> = tensorMemory(s),
): Map<string, number> {
  if (s.modules) return moduleSizesByTree(s.modules, mem);
  const sizes = new Map<string, number>([['', 0]]);
  let total = 0;
  for (const [name, bytes] of mem) {
    total += bytes;
    // Every proper dotted prefix of the name (`a`, `a.b` for `a.b.c`), without splitting and re-joining.
    for (let i = name.indexOf('.'); i >= 0; i = name.indexOf('.', i + 1)) {
      const prefix = name.slice(0, i);
      sizes.set(prefix, (sizes.get(prefix) ?? 0) + bytes);
    }
  }
  sizes.set('', total);
  return sizes;
}

/**
 * The same from the module list (parents before children): each tensor is added to its owner once,
 * then owners pass their totals up, child before parent — far fewer map updates on 10^5 modules.
 */
function moduleSizesByTree(modules: Skeleton['modules'], mem: Map<string, number>): Map<string, number> {
  const n = modules.length;
  const index = new Map<string, number>();
  for (let i = 0; i < n; i++) index.set(modules[i]!.name, i);
  const acc = new Float64Array(n);
  let total = 0;
  for (const [name, bytes] of mem) {
    total += bytes;
    const cut = name.lastIndexOf('.');
    const owner = cut < 0 ? undefined : index.get(name.slice(0, cut));
    if (owner !== undefined) acc[owner]! += bytes;
  }
  // Parents come before children, so one backward pass carries every subtree up.
  for (let i = n - 1; i >= 0; i--) {
    const name = modules[i]!.name;
    const cut = name.lastIndexOf('.');
    const parent = cut < 0 ? undefined : index.get(name.slice(0, cut));
    if (parent !== undefined) acc[parent]! += acc[i]!;
  }
  const sizes = new Map<string, number>([['', total]]);
  for (let i = 0; i < n; i++) sizes.set(modules[i]!.name, acc[i]!);
  return sizes;
}

export function isParam(t: SkeletonTensor): boolean {
  return t.kind === 'param';
}

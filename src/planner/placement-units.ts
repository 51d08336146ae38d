import type { Skeleton } from '../reader/skeleton.js';
import { isFloatDType, tensorBytes } from '../reader/dtypes.js';
import { loadedBytes } from './memory-model.js';

/**
 * The planner's atoms: modules that must not be divided (no-split blocks, leaf modules) and tensors
 * owned directly by containers, in forward (registration) order.
 */
export interface PlacementUnit {
  name: string;
  /** Bytes of weights, tied tensors counted on their first unit only. */
  weights: number;
  /** Index of the decoder block this unit is, when it is one (it then owns one layer's KV cache). */
  block?: number;
  /** Produces the logits (the LM head). */
  head: boolean;
  /** Tensor names inside, for tie bookkeeping. */
  tensors: string[];
  /**
   * Bytes of the largest module inside that owns tensors directly: what accelerate's offload hooks
   * copy to the execution device at once (they hook every module with direct tensors, not the block).
   */
  transit: number;
}

/** Bytes rounded up to the allocator's alignment (each tensor starts on an aligned address). */
export function alignUp(bytes: number, alignment: number): number {
  return alignment > 1 ? Math.ceil(bytes / alignment) * alignment : bytes;
}

/** How a runtime holds the weights it loads. */
export interface LoadedLayout {
  /** dtype floating params are loaded in; undefined keeps the stored one. */
  dtype?: string;
  /**
   * ggml runtimes (vramfit's engine, llama.cpp): non-persistent buffers (rotary `inv_freq`, causal
   * masks) are computed in kernels rather than held, and 1-D weights (norms, biases) are kept in F32.
   */
  ggml?: boolean;
  /** Each tensor starts on an aligned address (ggml's buffers): sizes are padded to it. */
  alignment?: number;
}

export function linearize(s: Skeleton, layout: LoadedLayout = {}): PlacementUnit[] {
  const { ggml = false, alignment = 1 } = layout;
  const noSplit = new Set(s.no_split_module_classes);
  const children = new Map<string, string[]>([['', []]]);
  const cls = new Map<string, string>();
  for (const m of s.modules) {
    const cut = m.name.lastIndexOf('.');
    const parent = cut < 0 ? '' : m.name.slice(0, cut);
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent)!.push(m.name);
    children.set(m.name, children.get(m.name) ?? []);
    cls.set(m.name, m.class);
  }
  const direct = new Map<string, string[]>();
  for (const t of s.tensors) {
    const cut = t.name.lastIndexOf('.');
    const owner = cut < 0 ? '' : t.name.slice(0, cut);
    if (!direct.has(owner)) direct.set(owner, []);
    direct.get(owner)!.push(t.name);
  }
  const tensorOf = new Map(s.tensors.map((t) => [t.name, t]));
  const aliases = tiedAliases(s);
  const bytesOf = (names: string[]): number =>
    names.reduce((sum, n) => {
      const t = tensorOf.get(n)!;
      if (aliases.has(n) || (ggml && t.kind === 'buffer' && t.persistent === false)) return sum;
      return sum + alignUp(loadedTensorBytes(t, layout), alignment);
    }, 0);
  const largestOwner = (names: string[]): number => {
    const byOwner = new Map<string, string[]>();
    for (const n of names) {
      const owner = n.slice(0, Math.max(0, n.lastIndexOf('.')));
      if (!byOwner.has(owner)) byOwner.set(owner, []);
      byOwner.get(owner)!.push(n);
    }
    return Math.max(0, ...[...byOwner.values()].map(bytesOf));
  };
  // Each subtree is visited once (at its atomic module), so tensors are gathered into one array.
  const collect = (m: string, out: string[] = []): string[] => {
    for (const t of direct.get(m) ?? []) out.push(t);
    for (const c of children.get(m) ?? []) collect(c, out);
    return out;
  };

  const blockIndex = (name: string): number | undefined => {
    const b = s.blocks;
    if (!b || !name.startsWith(`${b.prefix}.`)) return undefined;
    const rest = name.slice(b.prefix.length + 1);
    return /^\d+$/.test(rest) ? Number(rest) : undefined;
  };
  const vocab = s.attention?.vocabSize;
  const isHead = (tensors: string[]): boolean =>
    vocab !== undefined &&
    s.blocks !== undefined &&
    tensors.some((n) => {
      const t = tensorOf.get(n)!;
      return t.shape.length === 2 && t.shape[0] === vocab && !n.includes('embed') && !/\b(wte|word_embeddings|tok_embeddings)\b/.test(n);
    });

  const units: PlacementUnit[] = [];
  let seenBlock = false;
  const pastBlocks = (): boolean => seenBlock;
  const visit = (m: string): void => {
    const kids = children.get(m) ?? [];
    const atomic = m !== '' && (kids.length === 0 || noSplit.has(cls.get(m) ?? '') || blockIndex(m) !== undefined);
    if (atomic) {
      const tensors = collect(m);
      const b = blockIndex(m);
      // A decoder block makes hidden states, never logits, even when it holds a vocab-sized matrix.
      const unit: PlacementUnit = {
        name: m,
        weights: bytesOf(tensors),
        head: b === undefined && pastBlocks() && isHead(tensors),
        tensors,
        transit: largestOwner(tensors),
      };
      if (b !== undefined) {
        unit.block = b;
        seenBlock = true;
      }
      units.push(unit);
      return;
    }
    for (const t of direct.get(m) ?? []) units.push({ name: t, weights: bytesOf([t]), head: false, tensors: [t], transit: bytesOf([t]) });
    for (const c of kids) visit(c);
  };
  visit('');
  return units;
}

/** A tensor's bytes as the runtime holds it (before alignment). */
export function loadedTensorBytes(t: { shape: readonly number[]; dtype: string; kind?: string }, layout: LoadedLayout): number {
  // ggml has no F64: a float64 matrix is narrowed to F32 unless --dtype says otherwise.
  if (layout.ggml && isFloatDType(t.dtype) && (t.shape.length === 1 || (t.dtype === 'float64' && layout.dtype === undefined)))
    return tensorBytes(t.shape, 'float32');
  return loadedBytes(t.shape, t.dtype, t.kind === 'param' ? layout.dtype : undefined);
}

/** Names of tied tensors that share the memory of an earlier name. */
export function tiedAliases(s: Pick<Skeleton, 'tensors' | 'tied'>): Set<string> {
  const order = new Map(s.tensors.map((t, i) => [t.name, i]));
  const out = new Set<string>();
  for (const g of s.tied) {
    const sorted = [...g].sort((a, b) => (order.get(a) ?? Infinity) - (order.get(b) ?? Infinity));
    for (const n of sorted.slice(1)) out.add(n);
  }
  return out;
}

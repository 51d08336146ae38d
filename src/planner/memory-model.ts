import { bytesPerElement, isFloatDType, tensorBytes } from '../reader/dtypes.js';
import type { AttentionFacts, Skeleton } from '../reader/skeleton.js';
import type { Target, Workload } from './plan.js';

/**
 * What generation needs besides weights, per target runtime. One formula per term, in one place,
 * so the engine can calibrate it from measurements later.
 *
 * Symbols: u = micro-batch tokens (ubatch × batch), c = context, h = hidden size, nh/nkv = query/KV
 * heads, hd = head dim, f = MLP intermediate size, V = vocab.
 */
export interface TargetProfile {
  target: Target;
  /** Default runtime overhead per GPU: CUDA context, cuBLAS/cuDNN workspaces, allocator slack. */
  gpuOverhead: number;
  /** Bytes per activation element. */
  activationBytes: (weightDtype: string) => number;
  describe: string;
}

const MiB = 1024 * 1024;

export const TARGETS: Record<Target, TargetProfile> = {
  // ggml computes in F32; a CUDA context with ggml-cuda's pools costs about 250–300 MiB.
  vramfit: { target: 'vramfit', gpuOverhead: 300 * MiB, activationBytes: () => 4, describe: "vramfit's engine (ggml, F32 activations)" },
  // PyTorch: CUDA context + cuBLAS workspace + caching-allocator slack; activations in the load dtype.
  transformers: {
    target: 'transformers',
    gpuOverhead: 1024 * MiB,
    activationBytes: (d) => (isFloatDType(d) ? Math.min(bytesPerElement(d), 4) : 2),
    describe: 'transformers/accelerate (PyTorch, activations in the load dtype)',
  },
  'llama.cpp': { target: 'llama.cpp', gpuOverhead: 350 * MiB, activationBytes: () => 4, describe: 'llama.cpp (ggml, F32 activations)' },
};

/** KV cache bytes for one layer: K and V for every token of every sequence. */
export function kvBytesPerLayer(a: AttentionFacts, w: Workload): number {
  return a.kvElementsPerToken * bytesPerElement(w.kvDtype) * w.ctx * w.batch;
}

/**
 * Compute workspace of a device that runs decoder blocks: the residual stream and norms (4·h),
 * q/k/v ((nh + 2·nkv)·hd), attention scores and their softmax (2·nh·c), and the MLP (3·f), for u tokens.
 * Buffers are reused from layer to layer, so this does not grow with the number of blocks.
 */
export function blockWorkspace(a: AttentionFacts, w: Workload, profile: TargetProfile, weightDtype: string): number {
  const u = w.ubatch * w.batch;
  const act = profile.activationBytes(weightDtype);
  const f = (a.intermediateSize ?? 4 * a.hiddenSize) * Math.max(1, a.expertsPerToken ?? 1);
  const perToken = act * (4 * a.hiddenSize + (a.numHeads + 2 * a.numKvHeads) * a.headDim + 3 * f) + 4 * 2 * a.numHeads * w.ctx;
  return u * perToken;
}

/** Logits of the device holding the head: F32 scores over the vocabulary for u tokens. */
export function headWorkspace(a: AttentionFacts, w: Workload, profile: TargetProfile, weightDtype: string): number {
  const u = w.ubatch * w.batch;
  return u * (4 * a.vocabSize + profile.activationBytes(weightDtype) * a.hiddenSize);
}

/** A device that only looks up embeddings (or passes the hidden state on) holds u hidden vectors and their ids. */
export function passWorkspace(a: AttentionFacts, w: Workload, profile: TargetProfile, weightDtype: string): number {
  const u = w.ubatch * w.batch;
  return u * (profile.activationBytes(weightDtype) * a.hiddenSize + 4);
}

/** Bytes of a tensor once loaded at `dtype` (floating tensors convert; integer and quantized ones keep theirs). */
export function loadedBytes(shape: readonly number[], stored: string, dtype: string | undefined): number {
  if (dtype === undefined || !isFloatDType(stored)) return tensorBytes(shape, stored);
  return tensorBytes(shape, dtype);
}

/** The dtype activations follow: the load dtype, else the most common floating dtype of the weights. */
export function dominantDtype(s: Skeleton, dtype?: string): string {
  if (dtype) return dtype;
  const bytes = new Map<string, number>();
  for (const t of s.tensors) {
    if (!isFloatDType(t.dtype)) continue;
    bytes.set(t.dtype, (bytes.get(t.dtype) ?? 0) + tensorBytes(t.shape, t.dtype));
  }
  let best = 'float16';
  let most = -1;
  for (const [d, b] of bytes) if (b > most) [best, most] = [d, b];
  return best;
}

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
  /** Attention through flash-attention kernels: the scores are never materialised. */
  flashAttention?: true;
  describe: string;
}

const MiB = 1024 * 1024;

/**
 * What a PyTorch process holds on a GPU outside its caching allocator: the CUDA context with cuBLAS and its
 * kernels (300–500 MiB as nvidia-smi shows an idle torch process; 384 MiB taken). exllamav3's use_per_device caps
 * only the allocator (torch.cuda.set_per_process_memory_fraction), so this comes on top; vLLM checks at start that
 * what is free after it is at least total × --gpu-memory-utilization.
 */
export const TORCH_CUDA_CONTEXT = 384 * MiB;

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
  // vLLM's memory profile, as its workers log it: "non_torch_memory takes" 0.15–0.4 GiB (CUDA context, NCCL) and,
  // profiled since v0.21, "Estimated CUDA graph memory" about 0.2–0.4 GiB (vllm-project/vllm#14452, #11251;
  // gpustack/runner#251 logs); activations are profiled at --max-num-batched-tokens in the load dtype.
  vllm: {
    target: 'vllm',
    gpuOverhead: 768 * MiB,
    activationBytes: (d) => (isFloatDType(d) ? Math.min(bytesPerElement(d), 4) : 2),
    describe: 'vLLM (PyTorch workers, activations in the load dtype, CUDA graphs and NCCL in the overhead)',
  },
  // SGLang: the same PyTorch runtime (CUDA context, NCCL) plus CUDA graphs captured up to --cuda-graph-max-bs
  // (export/sglang.ts SGLANG_GRAPHS); activations at --chunked-prefill-size in the load dtype.
  sglang: {
    target: 'sglang',
    gpuOverhead: 768 * MiB,
    activationBytes: (d) => (isFloatDType(d) ? Math.min(bytesPerElement(d), 4) : 2),
    describe: 'SGLang (PyTorch workers, activations in the load dtype, CUDA graphs and NCCL in the overhead)',
  },
  // exllamav3: float16 activations through flash-attention, the prefill chunk (max_chunk_size) run once per module
  // while loading; outside torch's allocator the CUDA context with its kernels, inside it a 128 MiB loader arena's
  // unused tail (exllamav3/util/memory.py vram_accounting: ARENA_BLOCK_BYTES, "non-torch").
  exllamav3: {
    target: 'exllamav3',
    gpuOverhead: TORCH_CUDA_CONTEXT + 128 * MiB,
    activationBytes: () => 2,
    flashAttention: true,
    describe: 'exllamav3 (PyTorch, float16 activations, flash-attention; CUDA context and a loader arena in the overhead)',
  },
};

/** KV cache bytes for one layer: K and V for every token of every sequence. */
export function kvBytesPerLayer(a: AttentionFacts, w: Workload): number {
  return a.kvElementsPerToken * bytesPerElement(w.kvDtype) * w.ctx * w.batch;
}

/** The same with K and V each padded to an allocator's alignment (ggml gives each its own aligned tensor). */
export function alignedKvBytesPerLayer(a: AttentionFacts, w: Workload, alignment: number): number {
  const bytes = kvBytesPerLayer(a, w);
  return alignment > 1 ? 2 * Math.ceil(bytes / 2 / alignment) * alignment : bytes;
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
  const scores = profile.flashAttention ? 0 : 4 * 2 * a.numHeads * w.ctx;
  const perToken = act * (4 * a.hiddenSize + (a.numHeads + 2 * a.numKvHeads) * a.headDim + 3 * f) + scores;
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

/**
 * What the engine's GPU backends allocate on the device outside the buffers vramfit hands them: scratch
 * buffers sized by the largest op of a graph, kept (never shrunk) while the backend lives. From ggml's
 * sizing rules (ggml-vulkan.cpp's prealloc_x/y/split_k, ggml-cuda's pool and cuBLAS workspace); driver
 * memory (a CUDA context, Vulkan pipelines) is not in ggml's code and stays in the target's overhead.
 */
export interface BackendScratchShape {
  /** Tokens per forward pass, and the context the cache holds. */
  ubatch: number;
  ctx: number;
  /** K (or V) elements cached per token per layer, and the query width (heads × head dim). */
  kvDim: number;
  queryDim: number;
  /** Every weight matrix the device multiplies by: inputs (K), outputs (M), and how it is stored. */
  matrices: readonly { k: number; m: number; stored: 'f32' | 'f16' | 'quantized' }[];
  /** An F16 cache goes through flash attention; an F32 one through mul_mat + soft_max. */
  kvBytesPerElement: 2 | 4;
}

/** Split-k partial sums: ggml-vulkan splits only when K ≥ 2048 and the output is a few tiles (⅔ of ~132 cores × 128² outputs). */
const VK_SPLIT_K_MAX_OUTPUTS = 88 * 128 * 128;

/**
 * ggml-vulkan's three scratch buffers coexist, each the largest any op asked for: x and y hold operands
 * it converts first — a strided one (the engine hands GPU kernels contiguous attention operands, so
 * none) and activations quantized to q8_1 for quantized weights (1.125 bytes an element) — and split-k
 * partials (≤ 8 splits of F32 outputs).
 */
export function vulkanScratchBytes(s: BackendScratchShape): number {
  const flash = s.kvBytesPerElement === 2;
  const widestK = Math.max(0, ...s.matrices.map((x) => x.k));
  const quantized = s.matrices.some((m) => m.stored === 'quantized');
  const y = quantized ? Math.ceil(1.125 * s.ubatch * widestK) : 0;
  const splitOutputs = Math.max(0, ...s.matrices.filter((m) => m.k >= 2048).map((m) => Math.min(m.m * s.ubatch, VK_SPLIT_K_MAX_OUTPUTS)));
  const attentionSplit = !flash && s.ctx >= 2048 ? Math.min(s.queryDim * s.ubatch, VK_SPLIT_K_MAX_OUTPUTS) : 0;
  const splitK = 8 * 4 * Math.max(splitOutputs, attentionSplit);
  return y + splitK + 1024;
}

/** cuBLAS's workspace on Hopper and newer (4 MiB before); allocated once cuBLAS is first used. */
const CUBLAS_WORKSPACE = 32 * MiB;
/** ggml-cuda's stream-k fix-up scratch for quantized products: ≤ 64 KiB per SM, ~132 SMs. */
const MMQ_FIXUP = 132 * 64 * 1024;

/**
 * ggml-cuda's pool holds one op's temporaries at a time (its peak is the largest op's) and cuBLAS keeps
 * a workspace. Products with F16 weights over more than 16 tokens go through cuBLAS, which, with the
 * F32 accumulation the engine asks for, converts the whole weight matrix to F32 first (4·K·M bytes);
 * quantized weights quantize the activations to q8_1 (1.125 bytes an element); an F32 cache attends
 * without flash attention, its scores converted at F32 (4·ctx·kvDim).
 */
export function cudaScratchBytes(s: BackendScratchShape): number {
  const f16 = s.matrices.filter((m) => m.stored === 'f16');
  const widestK = Math.max(0, ...s.matrices.map((x) => x.k));
  const pad512 = Math.ceil(widestK / 512) * 512;
  const cublas = s.ubatch > 16 && f16.length > 0 ? Math.max(...f16.map((m) => 4 * m.k * m.m)) : 0;
  const mmq = s.matrices.some((m) => m.stored === 'quantized') ? Math.ceil(1.125 * s.ubatch * pad512) + MMQ_FIXUP : 0;
  const attention = s.kvBytesPerElement === 4 ? 4 * s.ctx * s.kvDim : 0;
  return Math.max(cublas, mmq, attention) + (f16.length > 0 || s.matrices.some((m) => m.stored === 'f32') ? CUBLAS_WORKSPACE : 0);
}

/**
 * The scratch shape of a model from its skeleton's facts (no engine at hand: `vramfit plan`): the
 * attention and MLP projections and the head, stored as the dominant dtype.
 */
export function scratchShapeOf(s: Skeleton, w: Workload): BackendScratchShape | undefined {
  const a = s.attention;
  if (!a) return undefined;
  const dtype = dominantDtype(s, w.dtype);
  const stored = dtype === 'float32' ? 'f32' : isFloatDType(dtype) ? 'f16' : 'quantized';
  const f = a.intermediateSize ?? 4 * a.hiddenSize;
  const q = a.numHeads * a.headDim;
  const matrices = [
    { k: a.hiddenSize, m: q, stored },
    { k: q, m: a.hiddenSize, stored },
    { k: a.hiddenSize, m: f, stored },
    { k: f, m: a.hiddenSize, stored },
    { k: a.hiddenSize, m: a.vocabSize, stored },
  ] as const;
  const kvBytesPerElement = bytesPerElement(w.kvDtype) >= 4 ? 4 : 2;
  return { ubatch: w.ubatch * w.batch, ctx: w.ctx, kvDim: a.kvElementsPerToken / 2, queryDim: q, matrices, kvBytesPerElement };
}

/** What the engine's GPU backend holds on a device beyond vramfit's buffers: CUDA's context estimate and ggml's scratch. */
export function engineBackendOverhead(backend: string, shape: BackendScratchShape | undefined): number | undefined {
  if (!shape) return undefined;
  if (backend === 'vulkan') return vulkanScratchBytes(shape);
  if (backend === 'cuda') return TARGETS.vramfit.gpuOverhead + cudaScratchBytes(shape);
  return undefined;
}

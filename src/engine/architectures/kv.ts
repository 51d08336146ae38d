import { GGML_TYPE, type Tensor } from '../ggml/binding.js';
import { ShapeError, type GraphBuilder } from '../ggml/graph.js';
import type { LayerCache, StepInputs } from './types.js';

/**
 * The KV length a step attends over is padded up to a multiple of this many rows (at most the cache's
 * length), as llama.cpp pads n_kv: a step's graph then depends only on (tokens, padded length), so
 * decode steps reuse one graph for KV_PAD tokens in a row. The mask hides the padding rows (−inf).
 */
export const KV_PAD = 32;

/** Whether F16 caches attend through ggml_flash_attn_ext (F32 caches always use mul_mat + soft_max). */
export const FLASH_ATTENTION = true;

/** The KV length a step with `used` cached tokens (its own included) attends over, in a cache of `rows`. */
export function paddedKvLength(used: number, rows: number): number {
  if (!Number.isSafeInteger(used) || used < 1 || used > rows) throw new ShapeError('kv', `${used} cached tokens do not fit a cache of ${rows} rows`);
  return Math.min(Math.ceil(used / KV_PAD) * KV_PAD, rows);
}

export interface KvAttentionOptions {
  headDim: number;
  /** Query heads. */
  heads: number;
  /** K/V heads (groups): query heads h·r … h·r+r−1 share K/V head h, r = heads / kvHeads. */
  kvHeads: number;
  /** Factor on q·k before the mask and softmax. */
  scale: number;
  /** ALiBi's max_bias for soft_max_ext (the mask then holds the key–query offsets); 0 is none. */
  maxBias?: number;
}

function isBlock(t: number): boolean {
  return t !== GGML_TYPE.F32 && t !== GGML_TYPE.F16 && t !== GGML_TYPE.BF16;
}

/** `t` ([kvDim, n] with contiguous rows, or n·kvDim elements) as [kvDim, n] rows set_rows can copy. */
function asRows(gb: GraphBuilder, t: Tensor, kvDim: number, n: number): Tensor {
  const ne = gb.shape(t);
  if (ne[0] * ne[1] * ne[2] * ne[3] !== kvDim * n) throw new ShapeError('kv', `[${ne.join(', ')}] is not ${n} rows of ${kvDim}`);
  // A strided [kvDim, n] view (GPT-2's k and v inside the fused projection) is copied from in place.
  if (ne[0] === kvDim && ne[1] === n && ne[2] === 1 && ne[3] === 1) return t;
  // A non-contiguous [headDim, heads, n] view (Baichuan's) is made contiguous first.
  return gb.reshape(gb.isContiguous(t) ? t : gb.cont(t), [kvDim, n]);
}

/**
 * One layer's cached attention, the same for every architecture: writes this batch's K and V into
 * rows `step.kvRows` of the layer's cache (ggml_set_rows; the rows are an input, so the graph does
 * not depend on where they go), then attends q over the first `step.nKv` rows under `step.mask`.
 *
 * q is [headDim, heads, n]; k and v are n rows of kvDim = headDim·kvHeads values (any layout whose
 * rows are contiguous, or a contiguous tensor of that many elements). Returns [headDim·heads, n].
 */
export function kvAttention(gb: GraphBuilder, cache: LayerCache, step: StepInputs, q: Tensor, k: Tensor, v: Tensor, o: KvAttentionOptions): Tensor {
  const Q = gb.shape(q);
  const n = Q[1] === o.heads && Q[0] === o.headDim ? Q[2] : -1;
  if (n < 1 || Q[3] !== 1) throw new ShapeError('kv', `q [${Q.join(', ')}] is not [${o.headDim}, ${o.heads}, n]`);
  if (o.heads % o.kvHeads !== 0) throw new ShapeError('kv', `${o.heads} query heads do not divide into ${o.kvHeads} K/V heads`);
  const kvDim = o.headDim * o.kvHeads;
  const K = gb.shape(cache.k);
  if (K[0] !== kvDim || gb.shape(cache.v)[0] !== kvDim || gb.shape(cache.v)[1] !== K[1])
    throw new ShapeError('kv', `the cache [${K.join(', ')}] does not hold rows of ${kvDim}`);
  const nKv = step.nKv;
  if (!Number.isSafeInteger(nKv) || nKv < n || nKv > K[1])
    throw new ShapeError('kv', `a KV length of ${nKv} does not fit ${n} tokens in a cache of ${K[1]} rows`);

  step.writes.push(gb.setRows(cache.k, asRows(gb, k, kvDim, n), step.kvRows));
  step.writes.push(gb.setRows(cache.v, asRows(gb, v, kvDim, n), step.kvRows));

  // K as [headDim, nKv, kvHeads], V as [nKv, headDim, kvHeads]; mul_mat broadcasts each K/V head over its query heads.
  const kType = gb.type(cache.k);
  const vType = gb.type(cache.v);
  const kRow = gb.g.rowSize(kType, kvDim);
  const vRow = gb.g.rowSize(vType, kvDim);
  const keys = gb.permute(gb.view(cache.k, [o.headDim, o.kvHeads, nKv], [gb.g.rowSize(kType, o.headDim), kRow], 0), [0, 2, 1, 3]);
  // An F16 or block-quantized cache with an F16 mask (the engine makes one for them) goes through ggml_flash_attn_ext,
  // as llama.cpp does: F16 K/V already round to half precision, so the fused kernel loses little more.
  // It takes V untransposed ([headDim, nKv, kvHeads]) and returns [headDim, heads, n]: no permute or cont.
  const flash = FLASH_ATTENTION && kType !== GGML_TYPE.F32 && vType !== GGML_TYPE.F32 && gb.type(step.mask) === GGML_TYPE.F16;
  // Block-quantized V cannot be transposed for the mul_mat path: ggml would abort in the copy.
  if (!flash && (isBlock(kType) || isBlock(vType))) throw new ShapeError('kv', 'a block-quantized KV cache needs flash attention (an F16 mask)');
  if (flash) {
    const values = gb.permute(gb.view(cache.v, [o.headDim, o.kvHeads, nKv], [gb.g.rowSize(vType, o.headDim), vRow], 0), [0, 2, 1, 3]);
    const attn = gb.flashAttn(gb.permute(q, [0, 2, 1, 3]), keys, values, step.mask, o.scale, o.maxBias ?? 0);
    return gb.reshape(attn, [o.headDim * o.heads, n]);
  }
  const values = gb.cont(gb.permute(gb.view(cache.v, [o.headDim, o.kvHeads, nKv], [gb.g.rowSize(vType, o.headDim), vRow], 0), [1, 2, 0, 3]));
  // A GPU kernel given strided operands copies them to F16 first (ggml-vulkan): an F32 cache is copied
  // contiguous in F32 instead. The CPU reads strided operands exactly, so it skips the copies.
  const queries = gb.permute(q, [0, 2, 1, 3]);
  const [kq, qk] = step.contiguousOperands ? [gb.cont(keys), gb.cont(queries)] : [keys, queries];
  const scores = gb.softMax(gb.mulMat(kq, qk), step.mask, o.scale, o.maxBias ?? 0);
  const attn = gb.permute(gb.mulMat(values, scores), [0, 2, 1, 3]);
  return gb.reshape(gb.cont(attn), [o.headDim * o.heads, n]);
}

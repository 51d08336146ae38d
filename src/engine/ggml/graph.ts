import { VramfitError } from '../../util/errors.js';
import { GGML_TYPE, ROPE_MODE, SORT_ORDER, type Ctx, type GgmlType, type Ggml, type Graph, type Tensor } from './binding.js';

/**
 * Builds one ggml compute graph. Every op checks in TypeScript the conditions ggml would GGML_ASSERT
 * (which would kill the process), so a bad shape becomes a typed error instead.
 */
export class ShapeError extends VramfitError {
  constructor(op: string, detail: string) {
    super('SHAPE', `${op}: ${detail}`, 1);
  }
}

export type Shape = [number, number, number, number];

export interface Meta {
  ne: Shape;
  type: GgmlType;
  contiguous: boolean;
}

/**
 * Metadata of tensors that outlive the graphs built over them (a loaded model's weights and KV
 * cache), shared by those graphs so each step does not read every weight's shape back from ggml
 * (three FFI reads per tensor per step: about 0.35 ms of a 100M-parameter decode step). Only for
 * tensors that stay allocated as long as the map lives: handles are addresses, reused once freed.
 */
export type LongLivedTensors = Map<Tensor, Meta>;

/** ggml.h's GGML_PREC_F32: results accumulated in F32. */
const GGML_PREC_F32 = 10;

const pad4 = (ne: readonly number[]): Shape => [ne[0] ?? 1, ne[1] ?? 1, ne[2] ?? 1, ne[3] ?? 1];

export class GraphBuilder {
  readonly ctx: Ctx;
  private readonly meta = new Map<Tensor, Meta>();
  private readonly outputs: Tensor[] = [];
  /**
   * Index tensors made by argsort/topK, with how many values they index: ggml reads a row or an expert
   * at each index unchecked (or GGML_ASSERTs), so ops taking indices accept only these.
   */
  private readonly indexBound = new Map<Tensor, number>();

  constructor(
    readonly g: Ggml,
    readonly maxNodes: number,
    private readonly longLived?: LongLivedTensors,
  ) {
    this.ctx = g.init(g.tensorOverhead() * maxNodes * 2 + g.graphOverhead(maxNodes) + 1024 * 1024, true);
  }

  free(): void {
    this.g.free(this.ctx);
  }

  /** Registers a tensor created elsewhere (weights, KV cache) so ops can check it. */
  known(t: Tensor): Tensor {
    if (!this.meta.has(t)) {
      let m = this.longLived?.get(t);
      if (!m) {
        m = readMeta(this.g, t);
        this.longLived?.set(t, m);
      }
      this.meta.set(t, m);
    }
    return t;
  }

  shape(t: Tensor): Shape {
    return this.info(t).ne;
  }

  private info(t: Tensor): Meta {
    return this.meta.get(t) ?? (this.meta.set(t, readMeta(this.g, t)), this.meta.get(t)!);
  }

  private made(t: Tensor, ne: readonly number[], type: GgmlType, contiguous = true): Tensor {
    this.meta.set(t, { ne: pad4(ne), type, contiguous });
    return t;
  }

  input(name: string, type: GgmlType, ne: readonly number[]): Tensor {
    if (ne.some((n) => !Number.isSafeInteger(n) || n < 1)) throw new ShapeError('input', `${name}: bad shape [${ne.join(', ')}]`);
    const t = this.g.newTensor(this.ctx, type, ne);
    this.g.setName(t, name);
    this.g.setInput(t);
    return this.made(t, ne, type);
  }

  output(t: Tensor, name: string): Tensor {
    this.g.setName(t, name);
    this.g.setOutput(t);
    this.outputs.push(t);
    return t;
  }

  mulMat(a: Tensor, b: Tensor): Tensor {
    const A = this.info(a).ne;
    const B = this.info(b).ne;
    if (A[0] !== B[0] || B[2] % A[2] !== 0 || B[3] % A[3] !== 0) {
      throw new ShapeError('mul_mat', `cannot multiply [${A.join(', ')}] by [${B.join(', ')}]`);
    }
    const t = this.g.raw.ggml_mul_mat(this.ctx, a, b) as Tensor;
    // GPU backends may accumulate F16 products in F16 by default (Vulkan: 8.5e-3 logit error on an F16 model).
    this.g.raw.ggml_prec_set_acc(t, GGML_PREC_F32);
    return this.made(t, [A[1], B[1], B[2], B[3]], GGML_TYPE.F32);
  }

  private broadcast(op: string, a: Tensor, b: Tensor): Shape {
    const A = this.info(a).ne;
    const B = this.info(b).ne;
    if (A.some((n, i) => n % B[i]! !== 0)) throw new ShapeError(op, `[${B.join(', ')}] does not broadcast to [${A.join(', ')}]`);
    return A;
  }

  add(a: Tensor, b: Tensor): Tensor {
    const ne = this.broadcast('add', a, b);
    return this.made(this.g.raw.ggml_add(this.ctx, a, b) as Tensor, ne, this.info(a).type);
  }

  mul(a: Tensor, b: Tensor): Tensor {
    const ne = this.broadcast('mul', a, b);
    return this.made(this.g.raw.ggml_mul(this.ctx, a, b) as Tensor, ne, this.info(a).type);
  }

  scale(a: Tensor, s: number): Tensor {
    return this.made(this.g.raw.ggml_scale(this.ctx, a, s) as Tensor, this.info(a).ne, this.info(a).type);
  }

  silu(a: Tensor): Tensor {
    return this.made(this.g.raw.ggml_silu(this.ctx, a) as Tensor, this.info(a).ne, this.info(a).type);
  }

  gelu(a: Tensor): Tensor {
    return this.made(this.g.raw.ggml_gelu(this.ctx, a) as Tensor, this.info(a).ne, this.info(a).type);
  }

  tanh(a: Tensor): Tensor {
    const A = this.info(a);
    if (A.type !== GGML_TYPE.F32 || !A.contiguous) throw new ShapeError('tanh', 'input must be contiguous F32');
    return this.made(this.g.raw.ggml_tanh(this.ctx, a) as Tensor, A.ne, A.type);
  }

  /** s·a + b, elementwise. */
  scaleBias(a: Tensor, s: number, b: number): Tensor {
    const A = this.info(a);
    if (A.type !== GGML_TYPE.F32 || !A.contiguous) throw new ShapeError('scale_bias', 'input must be contiguous F32');
    if (!Number.isFinite(s) || !Number.isFinite(b)) throw new ShapeError('scale_bias', `scale ${s} and bias ${b} must be finite`);
    return this.made(this.g.raw.ggml_scale_bias(this.ctx, a, s, b) as Tensor, A.ne, A.type);
  }

  /**
   * GELU, tanh approximation (transformers' gelu_new / gelu_pytorch_tanh / gelu_fast), in float32:
   * x · (½ + ½·tanh(√(2/π)·x·(1 + 0.044715·x²))). ggml_gelu is the same formula, but ggml's CPU
   * backend (GGML_GELU_FP16 in ggml-cpu/vec.h) rounds each input to float16 and reads a precomputed
   * float16 table, an error near 1e-3 per element; composed from exact ops it stays within float32
   * rounding of transformers on every backend.
   */
  geluTanh(a: Tensor): Tensor {
    const k = Math.sqrt(2 / Math.PI);
    const inner = this.mul(a, this.scaleBias(this.mul(a, a), k * 0.044715, k));
    return this.mul(a, this.scaleBias(this.tanh(inner), 0.5, 0.5));
  }

  rmsNorm(a: Tensor, eps: number): Tensor {
    if (this.info(a).type !== GGML_TYPE.F32) throw new ShapeError('rms_norm', 'input must be F32');
    return this.made(this.g.raw.ggml_rms_norm(this.ctx, a, eps) as Tensor, this.info(a).ne, GGML_TYPE.F32);
  }

  norm(a: Tensor, eps: number): Tensor {
    if (this.info(a).type !== GGML_TYPE.F32) throw new ShapeError('norm', 'input must be F32');
    return this.made(this.g.raw.ggml_norm(this.ctx, a, eps) as Tensor, this.info(a).ne, GGML_TYPE.F32);
  }

  /**
   * soft_max(a·scale + slope_h·mask) over dim 0. `maxBias` > 0 turns on ALiBi: head h = dim 2 gets
   * ggml's slope (with p = 2^floor(log2 heads): 2^(−maxBias·(h+1)/p) for h < p, else
   * 2^(−maxBias·(2(h−p)+1)/(2p))), so the mask must then hold the key–query offsets; 0 is none.
   */
  softMax(a: Tensor, mask: Tensor | null, scale: number, maxBias = 0): Tensor {
    const A = this.info(a);
    if (!A.contiguous) throw new ShapeError('soft_max', 'input must be contiguous');
    if (!(maxBias >= 0) || !Number.isFinite(maxBias)) throw new ShapeError('soft_max', `max_bias must be a finite number ≥ 0, got ${maxBias}`);
    if (maxBias > 0 && !mask) throw new ShapeError('soft_max', 'ALiBi (max_bias > 0) needs a mask holding the position offsets');
    if (mask) {
      const M = this.info(mask);
      if (
        (M.type !== GGML_TYPE.F32 && M.type !== GGML_TYPE.F16) ||
        !M.contiguous ||
        M.ne[0] !== A.ne[0] ||
        M.ne[1] < A.ne[1] ||
        A.ne[2] % M.ne[2] !== 0 ||
        A.ne[3] % M.ne[3] !== 0
      ) {
        throw new ShapeError('soft_max', `mask [${M.ne.join(', ')}] does not fit scores [${A.ne.join(', ')}]`);
      }
    }
    return this.made(this.g.raw.ggml_soft_max_ext(this.ctx, a, mask, scale, maxBias) as Tensor, A.ne, A.type);
  }

  /**
   * ggml_flash_attn_ext, accumulating in F32 where the backend offers a choice: q F32 [dk, n, heads],
   * k [dk, nKv, kvHeads] and v [dv, nKv, kvHeads] F16, Q8_0 or Q4_0 with contiguous rows (views of the cache; not
   * transposed), each K/V head shared by heads / kvHeads query heads; mask F16 [nKv, ≥ n], contiguous.
   * The result is F32 [dv, heads, n] (already permuted back). `maxBias` > 0 is ALiBi as in softMax.
   */
  flashAttn(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: number, maxBias = 0): Tensor {
    const Q = this.info(q);
    const K = this.info(k);
    const V = this.info(v);
    const M = this.info(mask);
    if (Q.type !== GGML_TYPE.F32) throw new ShapeError('flash_attn_ext', 'q must be F32');
    const kvTypes: number[] = [GGML_TYPE.F16, GGML_TYPE.Q8_0, GGML_TYPE.Q4_0];
    if (!kvTypes.includes(K.type) || !kvTypes.includes(V.type)) throw new ShapeError('flash_attn_ext', 'k and v must be F16, Q8_0 or Q4_0');
    if (K.ne[0] % this.g.blockSize(K.type) !== 0 || V.ne[0] % this.g.blockSize(V.type) !== 0)
      throw new ShapeError('flash_attn_ext', 'k and v heads must be whole blocks of their type');
    for (const [t, m] of [
      [q, Q],
      [k, K],
      [v, V],
    ] as const) {
      if (!m.contiguous && this.g.nb(t)[0] !== this.g.typeSize(m.type)) throw new ShapeError('flash_attn_ext', 'q, k and v rows must be contiguous');
    }
    if (K.ne[0] !== Q.ne[0] || V.ne[1] !== K.ne[1] || V.ne[2] !== K.ne[2] || Q.ne[2] % K.ne[2] !== 0 || Q.ne[3] !== K.ne[3] || Q.ne[3] !== V.ne[3]) {
      throw new ShapeError('flash_attn_ext', `q [${Q.ne.join(', ')}] does not fit k [${K.ne.join(', ')}] and v [${V.ne.join(', ')}]`);
    }
    if (M.type !== GGML_TYPE.F16 || !M.contiguous || M.ne[0] !== K.ne[1] || M.ne[1] < Q.ne[1] || Q.ne[2] % M.ne[2] !== 0 || Q.ne[3] % M.ne[3] !== 0) {
      throw new ShapeError('flash_attn_ext', `mask [${M.ne.join(', ')}] must be contiguous F16 [${K.ne[1]}, ≥ ${Q.ne[1]}]`);
    }
    if (!Number.isFinite(scale)) throw new ShapeError('flash_attn_ext', `scale must be finite, got ${scale}`);
    if (!(maxBias >= 0) || !Number.isFinite(maxBias)) throw new ShapeError('flash_attn_ext', `max_bias must be a finite number ≥ 0, got ${maxBias}`);
    const t = this.g.raw.ggml_flash_attn_ext(this.ctx, q, k, v, mask, scale, maxBias, 0) as Tensor;
    this.g.raw.ggml_prec_set_acc(t, GGML_PREC_F32);
    return this.made(t, [V.ne[0], Q.ne[2], Q.ne[1], Q.ne[3]], GGML_TYPE.F32);
  }

  /** Rotary embedding over the first `nDims` of each head; `a` is [headDim, heads, tokens]. */
  rope(a: Tensor, pos: Tensor, freqFactors: Tensor | null, o: { nDims: number; mode: number; nCtxOrig: number; base: number; freqScale: number }): Tensor {
    const A = this.info(a).ne;
    const P = this.info(pos);
    if (P.type !== GGML_TYPE.I32 || P.ne[0] !== A[2] || P.ne[1] !== 1)
      throw new ShapeError('rope', `positions [${P.ne.join(', ')}] do not match ${A[2]} tokens`);
    if (o.mode !== ROPE_MODE.NEOX && o.mode !== ROPE_MODE.NORMAL) throw new ShapeError('rope', `unsupported mode ${o.mode}`);
    if (o.nDims > A[0] || o.nDims % 2 !== 0) throw new ShapeError('rope', `n_dims ${o.nDims} does not fit head size ${A[0]}`);
    if (freqFactors) {
      const F = this.info(freqFactors);
      if (F.type !== GGML_TYPE.F32 || F.ne[0] < o.nDims / 2) throw new ShapeError('rope', 'freq_factors must be F32 with n_dims/2 values');
    }
    const t = this.g.raw.ggml_rope_ext(this.ctx, a, pos, freqFactors, o.nDims, o.mode, o.nCtxOrig, o.base, o.freqScale, 0, 1, 32, 1) as Tensor;
    return this.made(t, A, this.info(a).type);
  }

  reshape(a: Tensor, ne: readonly number[]): Tensor {
    const A = this.info(a);
    const n = A.ne.reduce((x, y) => x * y, 1);
    if (!A.contiguous || ne.length < 1 || ne.length > 3 || ne.reduce((x, y) => x * y, 1) !== n)
      throw new ShapeError('reshape', `[${A.ne.join(', ')}] to [${ne.join(', ')}]`);
    // A 1-D shape is [n, 1] to ggml: trailing dimensions of 1 are the same tensor.
    const t = ne.length <= 2 ? this.g.raw.ggml_reshape_2d(this.ctx, a, ne[0], ne[1] ?? 1) : this.g.raw.ggml_reshape_3d(this.ctx, a, ne[0], ne[1], ne[2]);
    return this.made(t as Tensor, ne, A.type);
  }

  /** A strided view; `nb` are byte strides of dims 1 and 2, `offset` in bytes. Bounds are checked. */
  view(a: Tensor, ne: readonly number[], nb: readonly number[], offset: number): Tensor {
    const A = this.info(a);
    const total = this.g.nbytes(a);
    const rowBytes = this.g.rowSize(A.type, ne[0]!);
    const last = offset + rowBytes + (ne.length > 1 ? (ne[1]! - 1) * nb[0]! : 0) + (ne.length > 2 ? (ne[2]! - 1) * nb[1]! : 0);
    if (offset < 0 || last > total) throw new ShapeError('view', `view [${ne.join(', ')}] at ${offset} exceeds ${total} bytes`);
    const t =
      ne.length === 1
        ? this.g.raw.ggml_view_1d(this.ctx, a, ne[0], offset)
        : ne.length === 2
          ? this.g.raw.ggml_view_2d(this.ctx, a, ne[0], ne[1], nb[0], offset)
          : this.g.raw.ggml_view_3d(this.ctx, a, ne[0], ne[1], ne[2], nb[0], nb[1], offset);
    const contiguous = ne.length === 1 || (nb[0] === rowBytes && (ne.length < 3 || nb[1] === rowBytes * ne[1]!));
    return this.made(t as Tensor, ne, A.type, contiguous);
  }

  permute(a: Tensor, axes: [number, number, number, number]): Tensor {
    const A = this.info(a);
    if ([...axes].sort().join() !== '0,1,2,3') throw new ShapeError('permute', `axes ${axes.join(',')}`);
    const ne: number[] = [0, 0, 0, 0];
    axes.forEach((to, from) => (ne[to] = A.ne[from]!));
    return this.made(this.g.raw.ggml_permute(this.ctx, a, ...axes) as Tensor, ne, A.type, false);
  }

  cont(a: Tensor): Tensor {
    const A = this.info(a);
    return this.made(this.g.raw.ggml_cont(this.ctx, a) as Tensor, A.ne, A.type);
  }

  /** Copies `a` into `b` (which may be a view into the KV cache), converting the type. */
  cpy(a: Tensor, b: Tensor): Tensor {
    const A = this.info(a).ne;
    const B = this.info(b).ne;
    if (A.reduce((x, y) => x * y, 1) !== B.reduce((x, y) => x * y, 1)) throw new ShapeError('cpy', `[${A.join(', ')}] into [${B.join(', ')}]`);
    return this.made(this.g.raw.ggml_cpy(this.ctx, a, b) as Tensor, B, this.info(b).type, this.info(b).contiguous);
  }

  isContiguous(t: Tensor): boolean {
    return this.info(t).contiguous;
  }

  /** The element type of a tensor this builder knows. */
  type(t: Tensor): GgmlType {
    return this.info(t).type;
  }

  /**
   * ggml_set_rows: row ids[i] of `dst` (F32 or F16 [m, rows, …]) becomes row i of `src` (F32 or F16
   * [m, n, …], rows contiguous, converted to dst's type); returns a view of `dst` to add to the graph.
   * `ids` is a 1-D I32 or I64 input of n row numbers: its values are the caller's to keep below `rows`
   * (ggml aborts on one outside), as the engine does before setting it.
   */
  setRows(dst: Tensor, src: Tensor, ids: Tensor): Tensor {
    const A = this.info(dst);
    const B = this.info(src);
    const C = this.info(ids);
    // Block-quantized destinations (a q8_0/q4_0 KV cache) are quantized row by row: whole blocks only.
    if (A.type !== GGML_TYPE.F32 && A.type !== GGML_TYPE.F16 && A.type !== GGML_TYPE.Q8_0 && A.type !== GGML_TYPE.Q4_0)
      throw new ShapeError('set_rows', 'destination must be F32, F16, Q8_0 or Q4_0');
    if (A.ne[0] % this.g.blockSize(A.type) !== 0) throw new ShapeError('set_rows', `rows of ${A.ne[0]} are not whole blocks of the destination type`);
    if (B.type !== GGML_TYPE.F32 && B.type !== GGML_TYPE.F16) throw new ShapeError('set_rows', 'source must be F32 or F16');
    if ((C.type !== GGML_TYPE.I32 && C.type !== GGML_TYPE.I64) || C.ne[1] !== 1 || C.ne[2] !== 1 || C.ne[3] !== 1)
      throw new ShapeError('set_rows', 'row ids must be a 1-D I32 or I64 tensor');
    if (A.ne[0] !== B.ne[0] || A.ne[2] !== B.ne[2] || A.ne[3] !== B.ne[3] || B.ne[1] !== C.ne[0]) {
      throw new ShapeError('set_rows', `cannot write [${B.ne.join(', ')}] into [${A.ne.join(', ')}] at ${C.ne[0]} rows`);
    }
    if (C.ne[0] > A.ne[1]) throw new ShapeError('set_rows', `${C.ne[0]} rows do not fit the ${A.ne[1]} of the destination`);
    // ggml asserts that both have contiguous rows (nb[0] = the type's size).
    for (const [t, m] of [
      [dst, A],
      [src, B],
    ] as const) {
      if (!m.contiguous && this.g.nb(t)[0] !== this.g.typeSize(m.type)) throw new ShapeError('set_rows', 'rows must be contiguous');
    }
    return this.made(this.g.raw.ggml_set_rows(this.ctx, dst, src, ids) as Tensor, A.ne, A.type, A.contiguous);
  }

  getRows(table: Tensor, ids: Tensor): Tensor {
    const T = this.info(table);
    const I = this.info(ids);
    if (I.type !== GGML_TYPE.I32 || I.ne[1] !== 1) throw new ShapeError('get_rows', 'ids must be a 1-D I32 tensor');
    return this.made(this.g.raw.ggml_get_rows(this.ctx, table, ids) as Tensor, [T.ne[0], I.ne[0]], GGML_TYPE.F32);
  }

  private checkIndices(op: string, ids: Tensor, rows: number): void {
    const bound = this.indexBound.get(ids);
    if (bound === undefined) throw new ShapeError(op, 'indices must come from argsort or topK');
    if (bound > rows) throw new ShapeError(op, `indices run to ${bound - 1} but there are only ${rows} rows`);
  }

  /**
   * I32 indices that sort each row (dim 0) of a contiguous F32 tensor. ggml's CPU kernel is std::sort,
   * which is not stable: equal values come out in an unspecified order.
   */
  argsort(a: Tensor, order: 'asc' | 'desc'): Tensor {
    const A = this.info(a);
    if (A.type !== GGML_TYPE.F32 || !A.contiguous) throw new ShapeError('argsort', 'input must be contiguous F32');
    if (A.ne[0] > 0x7fffffff) throw new ShapeError('argsort', `rows of ${A.ne[0]} values are too long`);
    const t = this.g.raw.ggml_argsort(this.ctx, a, order === 'desc' ? SORT_ORDER.DESC : SORT_ORDER.ASC) as Tensor;
    this.indexBound.set(t, A.ne[0]);
    return this.made(t, A.ne, GGML_TYPE.I32);
  }

  /**
   * Indices of the k largest values of each column of a 2-D F32 tensor [m, n], largest first: an I32
   * [k, n] view of a descending argsort (ggml_argsort_top_k). Ties fall as argsort leaves them.
   */
  topK(a: Tensor, k: number): Tensor {
    const A = this.info(a);
    if (A.ne[2] !== 1 || A.ne[3] !== 1) throw new ShapeError('top_k', `input must be 2-D, got [${A.ne.join(', ')}]`);
    if (!Number.isSafeInteger(k) || k < 1 || k > A.ne[0]) throw new ShapeError('top_k', `k ${k} must be between 1 and ${A.ne[0]}`);
    const sorted = this.argsort(a, 'desc');
    const t = this.view(sorted, [k, A.ne[1]], [this.g.rowSize(GGML_TYPE.I32, A.ne[0])], 0);
    this.indexBound.set(t, A.ne[0]);
    return t;
  }

  /**
   * A gather per column (ggml_get_rows with 2-D indices): `a` [m, r, n] and ids [k, n] give [m, k, n],
   * out[:, j, t] = a[:, ids[j, t], t].
   */
  getRowsBatched(a: Tensor, ids: Tensor): Tensor {
    const A = this.info(a);
    const I = this.info(ids);
    if (A.type !== GGML_TYPE.F32 || !A.contiguous || A.ne[3] !== 1)
      throw new ShapeError('get_rows', `table must be a contiguous 3-D F32 tensor, got [${A.ne.join(', ')}]`);
    if (I.type !== GGML_TYPE.I32 || I.ne[2] !== 1 || I.ne[3] !== 1 || I.ne[1] !== A.ne[2]) {
      throw new ShapeError('get_rows', `ids [${I.ne.join(', ')}] must be I32 [k, ${A.ne[2]}]`);
    }
    this.checkIndices('get_rows', ids, A.ne[1]);
    return this.made(this.g.raw.ggml_get_rows(this.ctx, a, ids) as Tensor, [A.ne[0], I.ne[0], I.ne[1]], GGML_TYPE.F32);
  }

  /**
   * One matrix per slot (ggml_mul_mat_id, mixture-of-experts): `as` [cols, rows, nAs] stacks nAs
   * matrices, `b` is F32 [cols, m, n] with m = 1 (shared by every slot) or m = slots, and ids I32
   * [slots, n] name a matrix per slot; the result is F32 [rows, slots, n] with
   * out[:, s, t] = as[:, :, ids[s, t]] · b[:, s % m, t].
   */
  mulMatId(as: Tensor, b: Tensor, ids: Tensor): Tensor {
    const A = this.info(as);
    const B = this.info(b);
    const I = this.info(ids);
    if (!A.contiguous || A.ne[3] !== 1) throw new ShapeError('mul_mat_id', `matrices must be one contiguous 3-D tensor, got [${A.ne.join(', ')}]`);
    if (B.type !== GGML_TYPE.F32 || !B.contiguous || B.ne[3] !== 1)
      throw new ShapeError('mul_mat_id', `input must be a contiguous 3-D F32 tensor, got [${B.ne.join(', ')}]`);
    if (I.type !== GGML_TYPE.I32 || I.ne[2] !== 1 || I.ne[3] !== 1)
      throw new ShapeError('mul_mat_id', `ids must be a 2-D I32 tensor, got [${I.ne.join(', ')}]`);
    if (A.ne[0] !== B.ne[0] || I.ne[1] !== B.ne[2] || I.ne[0] % B.ne[1] !== 0) {
      throw new ShapeError('mul_mat_id', `cannot multiply [${A.ne.join(', ')}] by [${B.ne.join(', ')}] with ids [${I.ne.join(', ')}]`);
    }
    this.checkIndices('mul_mat_id', ids, A.ne[2]);
    const t = this.g.raw.ggml_mul_mat_id(this.ctx, as, b, ids) as Tensor;
    this.g.raw.ggml_prec_set_acc(t, GGML_PREC_F32);
    return this.made(t, [A.ne[1], I.ne[0], B.ne[2]], GGML_TYPE.F32);
  }

  /** Sum over dim 0 of a contiguous F32 tensor: [m, n, …] → [1, n, …]. */
  sumRows(a: Tensor): Tensor {
    const A = this.info(a);
    if (A.type !== GGML_TYPE.F32 || !A.contiguous) throw new ShapeError('sum_rows', 'input must be contiguous F32');
    return this.made(this.g.raw.ggml_sum_rows(this.ctx, a) as Tensor, [1, A.ne[1], A.ne[2], A.ne[3]], GGML_TYPE.F32);
  }

  /** a / b elementwise, b broadcast over a as in add and mul. */
  div(a: Tensor, b: Tensor): Tensor {
    const ne = this.broadcast('div', a, b);
    if (this.info(a).type !== GGML_TYPE.F32 || this.info(b).type !== GGML_TYPE.F32) throw new ShapeError('div', 'operands must be F32');
    return this.made(this.g.raw.ggml_div(this.ctx, a, b) as Tensor, ne, GGML_TYPE.F32);
  }

  /** The graph computing every output registered (plus any extra roots, e.g. KV writes). */
  build(extraRoots: readonly Tensor[] = []): Graph {
    const gf = this.g.raw.ggml_new_graph_custom(this.ctx, this.maxNodes, false) as Graph;
    for (const t of [...extraRoots, ...this.outputs]) this.g.raw.ggml_build_forward_expand(gf, t);
    return gf;
  }
}

function readMeta(g: Ggml, t: Tensor): Meta {
  const ne = g.ne(t);
  const type = g.type(t);
  return { ne, type, contiguous: isContiguous(g, type, ne, g.nb(t)) };
}

function isContiguous(g: Ggml, type: GgmlType, ne: Shape, nb: readonly number[]): boolean {
  const ts = g.typeSize(type);
  if (nb[0] !== ts) return false;
  let expect = g.rowSize(type, ne[0]);
  for (let i = 1; i < 4; i++) {
    if (ne[i]! > 1 && nb[i] !== expect) return false;
    expect *= ne[i]!;
  }
  return true;
}

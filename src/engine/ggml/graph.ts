import { VramfitError } from '../../util/errors.js';
import { GGML_TYPE, ROPE_MODE, type Ctx, type GgmlType, type Ggml, type Graph, type Tensor } from './binding.js';

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

interface Meta {
  ne: Shape;
  type: GgmlType;
  contiguous: boolean;
}

const pad4 = (ne: readonly number[]): Shape => [ne[0] ?? 1, ne[1] ?? 1, ne[2] ?? 1, ne[3] ?? 1];

export class GraphBuilder {
  readonly ctx: Ctx;
  private readonly meta = new Map<Tensor, Meta>();
  private readonly outputs: Tensor[] = [];

  constructor(
    readonly g: Ggml,
    readonly maxNodes: number,
  ) {
    this.ctx = g.init(g.tensorOverhead() * maxNodes * 2 + g.graphOverhead(maxNodes) + 1024 * 1024, true);
  }

  free(): void {
    this.g.free(this.ctx);
  }

  /** Registers a tensor created elsewhere (weights, KV cache) so ops can check it. */
  known(t: Tensor): Tensor {
    if (!this.meta.has(t)) {
      const ne = this.g.ne(t);
      const nb = this.g.nb(t);
      const type = this.g.type(t);
      this.meta.set(t, { ne, type, contiguous: isContiguous(this.g, type, ne, nb) });
    }
    return t;
  }

  shape(t: Tensor): Shape {
    return this.info(t).ne;
  }

  private info(t: Tensor): Meta {
    return this.meta.get(t) ?? (this.known(t), this.meta.get(t)!);
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
    return this.made(this.g.raw.ggml_mul_mat(this.ctx, a, b) as Tensor, [A[1], B[1], B[2], B[3]], GGML_TYPE.F32);
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

  rmsNorm(a: Tensor, eps: number): Tensor {
    if (this.info(a).type !== GGML_TYPE.F32) throw new ShapeError('rms_norm', 'input must be F32');
    return this.made(this.g.raw.ggml_rms_norm(this.ctx, a, eps) as Tensor, this.info(a).ne, GGML_TYPE.F32);
  }

  norm(a: Tensor, eps: number): Tensor {
    if (this.info(a).type !== GGML_TYPE.F32) throw new ShapeError('norm', 'input must be F32');
    return this.made(this.g.raw.ggml_norm(this.ctx, a, eps) as Tensor, this.info(a).ne, GGML_TYPE.F32);
  }

  softMax(a: Tensor, mask: Tensor | null, scale: number): Tensor {
    const A = this.info(a);
    if (!A.contiguous) throw new ShapeError('soft_max', 'input must be contiguous');
    if (mask) {
      const M = this.info(mask);
      if ((M.type !== GGML_TYPE.F32 && M.type !== GGML_TYPE.F16) || !M.contiguous || M.ne[0] !== A.ne[0] || M.ne[1] < A.ne[1] || A.ne[2] % M.ne[2] !== 0 || A.ne[3] % M.ne[3] !== 0) {
        throw new ShapeError('soft_max', `mask [${M.ne.join(', ')}] does not fit scores [${A.ne.join(', ')}]`);
      }
    }
    return this.made(this.g.raw.ggml_soft_max_ext(this.ctx, a, mask, scale, 0) as Tensor, A.ne, A.type);
  }

  /** Rotary embedding over the first `nDims` of each head; `a` is [headDim, heads, tokens]. */
  rope(a: Tensor, pos: Tensor, freqFactors: Tensor | null, o: { nDims: number; mode: number; nCtxOrig: number; base: number; freqScale: number }): Tensor {
    const A = this.info(a).ne;
    const P = this.info(pos);
    if (P.type !== GGML_TYPE.I32 || P.ne[0] !== A[2] || P.ne[1] !== 1) throw new ShapeError('rope', `positions [${P.ne.join(', ')}] do not match ${A[2]} tokens`);
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
    if (!A.contiguous || ne.reduce((x, y) => x * y, 1) !== n) throw new ShapeError('reshape', `[${A.ne.join(', ')}] to [${ne.join(', ')}]`);
    const t = ne.length === 2 ? this.g.raw.ggml_reshape_2d(this.ctx, a, ne[0], ne[1]) : this.g.raw.ggml_reshape_3d(this.ctx, a, ne[0], ne[1], ne[2]);
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
      ne.length === 1 ? this.g.raw.ggml_view_1d(this.ctx, a, ne[0], offset)
      : ne.length === 2 ? this.g.raw.ggml_view_2d(this.ctx, a, ne[0], ne[1], nb[0], offset)
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

  getRows(table: Tensor, ids: Tensor): Tensor {
    const T = this.info(table);
    const I = this.info(ids);
    if (I.type !== GGML_TYPE.I32 || I.ne[1] !== 1) throw new ShapeError('get_rows', 'ids must be a 1-D I32 tensor');
    return this.made(this.g.raw.ggml_get_rows(this.ctx, table, ids) as Tensor, [T.ne[0], I.ne[0]], GGML_TYPE.F32);
  }

  /** The graph computing every output registered (plus any extra roots, e.g. KV writes). */
  build(extraRoots: readonly Tensor[] = []): Graph {
    const gf = this.g.raw.ggml_new_graph_custom(this.ctx, this.maxNodes, false) as Graph;
    for (const t of [...extraRoots, ...this.outputs]) this.g.raw.ggml_build_forward_expand(gf, t);
    return gf;
  }
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

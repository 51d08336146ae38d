/**
 * Every GraphBuilder operation, and the shared attention path with each cache type, computed on the
 * CPU backend and on a Vulkan device (test/helpers/vulkan.ts), like llama.cpp's test-backend-ops. Each
 * row states its tolerance as the relative error max|vulkan − cpu| / max|cpu|: 1e-5 where both backends
 * compute in F32; wider only where the CPU itself rounds (F16 weights: activations to F16; quantized
 * weights: activations to 8 bits; ggml_gelu: an F16 table; flash attention: q to F16). Index outputs
 * (argsort, top-k) must be equal.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { kvAttention } from '../src/engine/architectures/kv.js';
import {
  GGML_TYPE,
  ROPE_MODE,
  cpuDevice,
  devices,
  loadGgml,
  type Backend,
  type BufferType,
  type Device,
  type Gallocr,
  type GgmlType,
  type Ggml,
  type Tensor,
} from '../src/engine/ggml/binding.js';
import { GraphBuilder } from '../src/engine/ggml/graph.js';
import { prepareVulkan } from '../src/engine/device.js';
import { vulkanSkip } from './helpers/vulkan.js';

const skip = vulkanSkip(1);

/** Data for one input: F32 values (converted for F16 / quantized inputs) or I32 indices. */
type Feed = Float32Array | Int32Array;

interface OpCase {
  name: string;
  tolerance: number;
  /**
   * Builds the graph as the engine would for that backend (`gpu`); returns its inputs with their data,
   * the output (F32, or I32 for indices) and any other roots the graph must compute (cache writes).
   */
  build: (gb: GraphBuilder, data: (n: number, scale?: number) => Float32Array, gpu: boolean) => { inputs: [Tensor, Feed][]; out: Tensor; roots?: Tensor[] };
}

let seed = 1;
function data(n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    out[i] = ((seed / 2 ** 32) * 2 - 1) * scale;
  }
  return out;
}

/** The bytes ggml wants for a tensor of `type` from F32 values (F16 and block types converted by ggml). */
function encode(g: Ggml, type: GgmlType, ne: readonly number[], values: Feed): Uint8Array {
  if (values instanceof Int32Array || type === GGML_TYPE.F32) return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  if (type === GGML_TYPE.F16) {
    const half = new Uint16Array(values.length);
    g.raw.ggml_fp32_to_fp16_row(values, half, values.length);
    return new Uint8Array(half.buffer);
  }
  const rows = values.length / ne[0]!;
  const out = new Uint8Array(g.rowSize(type, ne[0]!) * rows);
  g.raw.ggml_quantize_chunk(type, values, out, 0, rows, ne[0]!, null);
  return out;
}

/**
 * A backend and its one graph allocator, kept for every case as the engine keeps one per device: on
 * lavapipe, freeing a compute buffer and allocating another between graphs of a long-lived Vulkan
 * backend corrupted the heap (seen here, never in the engine's pattern).
 */
interface Opened {
  backend: Backend;
  galloc: Gallocr;
  name: string;
  gpu: boolean;
}

function open(g: Ggml, dev: Device, gpu: boolean): Opened {
  const backend = g.raw.ggml_backend_dev_init(dev, null) as Backend;
  const galloc = g.raw.ggml_gallocr_new(g.raw.ggml_backend_dev_buffer_type(dev) as BufferType) as Gallocr;
  return { backend, galloc, name: g.raw.ggml_backend_dev_name(dev) as string, gpu };
}

function close(g: Ggml, o: Opened): void {
  g.raw.ggml_gallocr_free(o.galloc);
  g.raw.ggml_backend_free(o.backend);
}

/** Runs the case on one backend; undefined when that backend does not support an op of it. */
function run(g: Ggml, on: Opened, c: OpCase, feedSeed: number): Float32Array | Int32Array | undefined {
  seed = feedSeed;
  const gb = new GraphBuilder(g, 512);
  try {
    const { inputs, out, roots } = c.build(gb, data, on.gpu);
    const graph = gb.build(roots);
    if (!(g.raw.ggml_backend_supports_op(on.backend, out) as boolean)) return undefined;
    assert.ok(g.raw.ggml_gallocr_alloc_graph(on.galloc, graph), `${c.name}: the graph is allocated on ${on.name}`);
    for (const [t, values] of inputs) {
      if (!g.isAllocated(t)) continue;
      const bytes = encode(g, g.type(t), g.ne(t), values);
      g.raw.ggml_backend_tensor_set(t, bytes, 0, bytes.byteLength);
    }
    assert.equal(g.raw.ggml_backend_graph_compute(on.backend, graph), 0, `${c.name}: computed on ${on.name}`);
    const n = g.nbytes(out) / 4;
    const result = g.type(out) === GGML_TYPE.I32 ? new Int32Array(n) : new Float32Array(n);
    g.raw.ggml_backend_tensor_get(out, result, 0, n * 4);
    return result;
  } finally {
    gb.free();
  }
}

const F32 = GGML_TYPE.F32;
const I32 = GGML_TYPE.I32;
/** A 2-D input of `type` filled from `values` (F32). */
const input = (gb: GraphBuilder, name: string, type: GgmlType, ne: number[]): Tensor => gb.input(name, type, ne);

function matmul(type: GgmlType, label: string, tolerance: number, k: number, m: number, n: number): OpCase {
  return {
    name: `mul_mat ${label} [${k}×${m}] · [${k}×${n}]`,
    tolerance,
    build: (gb, d) => {
      const w = input(gb, 'w', type, [k, m]);
      const x = input(gb, 'x', F32, [k, n]);
      return {
        inputs: [
          [w, d(k * m)],
          [x, d(k * n)],
        ],
        out: gb.output(gb.mulMat(w, x), 'o'),
      };
    },
  };
}

const unary = (name: string, tolerance: number, f: (gb: GraphBuilder, x: Tensor) => Tensor, scale = 3): OpCase => ({
  name,
  tolerance,
  build: (gb, d) => {
    const x = input(gb, 'x', F32, [64, 6]);
    return { inputs: [[x, d(384, scale)]], out: gb.output(f(gb, x), 'o') };
  },
});

/** A causal mask over `nKv` rows for `n` tokens at positions past…past+n−1; ALiBi masks hold −|k − q|. */
function causalMask(nKv: number, n: number, past: number, alibi = false): Float32Array {
  const m = new Float32Array(nKv * n).fill(-Infinity);
  for (let i = 0; i < n; i++) for (let j = 0; j <= past + i; j++) m[i * nKv + j] = alibi ? j - (past + i) : 0;
  return m;
}

const positions = (n: number, start = 0): Int32Array => Int32Array.from({ length: n }, (_, i) => start + i * 7);

function ropeCase(mode: number, label: string, factors: boolean): OpCase {
  return {
    name: `rope ${label}${factors ? ' with frequency factors' : ''}`,
    tolerance: 1e-5,
    build: (gb, d) => {
      const x = input(gb, 'x', F32, [32, 4, 5]);
      const p = input(gb, 'pos', I32, [5]);
      const f = factors ? input(gb, 'freq', F32, [16]) : null;
      const inputs: [Tensor, Feed][] = [
        [x, d(640)],
        [p, positions(5, 3)],
      ];
      if (f) inputs.push([f, Float32Array.from({ length: 16 }, (_, i) => 1 + i / 4)]);
      return { inputs, out: gb.output(gb.cont(gb.rope(x, p, f, { nDims: 32, mode, nCtxOrig: 4096, base: 10000, freqScale: 1 })), 'o') };
    },
  };
}

/** One layer's cached attention through kv.ts, as the engine runs it on that backend. */
function attentionCase(
  label: string,
  cacheType: GgmlType,
  tolerance: number,
  o: { heads: number; kvHeads: number; n: number; past: number; alibi?: boolean },
): OpCase {
  const headDim = 16;
  const rows = 64;
  const nKv = 32;
  return {
    name: `attention: ${label}`,
    tolerance,
    build: (gb, d, gpu) => {
      const kvDim = headDim * o.kvHeads;
      const k = input(gb, 'k_cache', cacheType, [kvDim, rows]);
      const v = input(gb, 'v_cache', cacheType, [kvDim, rows]);
      const q = input(gb, 'q', F32, [headDim, o.heads, o.n]);
      const kNew = input(gb, 'k_new', F32, [kvDim, o.n]);
      const vNew = input(gb, 'v_new', F32, [kvDim, o.n]);
      const flash = cacheType === GGML_TYPE.F16;
      const mask = input(gb, 'mask', flash ? GGML_TYPE.F16 : F32, [nKv, o.n]);
      const kvRows = input(gb, 'rows', I32, [o.n]);
      const pos = input(gb, 'pos', I32, [o.n]);
      const writes: Tensor[] = [];
      const step = { positions: pos, kvRows, nKv, mask, freqFactors: null, writes, contiguousOperands: gpu };
      const out = kvAttention(gb, { k, v }, step, q, kNew, vNew, {
        headDim,
        heads: o.heads,
        kvHeads: o.kvHeads,
        scale: 1 / Math.sqrt(headDim),
        ...(o.alibi ? { maxBias: 8 } : {}),
      });
      return {
        roots: writes,
        inputs: [
          [k, d(kvDim * rows)],
          [v, d(kvDim * rows)],
          [q, d(headDim * o.heads * o.n)],
          [kNew, d(kvDim * o.n)],
          [vNew, d(kvDim * o.n)],
          [mask, causalMask(nKv, o.n, o.past, o.alibi)],
          [kvRows, Int32Array.from({ length: o.n }, (_, i) => o.past + i)],
          [pos, positions(o.n, o.past)],
        ],
        out: gb.output(gb.cont(out), 'o'),
      };
    },
  };
}

const CASES: OpCase[] = [
  matmul(F32, 'F32 (vector)', 1e-5, 256, 96, 1),
  matmul(F32, 'F32 (small batch)', 1e-5, 256, 96, 4),
  matmul(F32, 'F32 (matrix)', 1e-5, 256, 96, 40),
  matmul(GGML_TYPE.F16, 'F16 (vector)', 2e-3, 256, 96, 1),
  matmul(GGML_TYPE.F16, 'F16 (matrix)', 2e-3, 256, 96, 40),
  matmul(GGML_TYPE.BF16, 'BF16 (matrix)', 1e-3, 256, 96, 40),
  matmul(GGML_TYPE.Q8_0, 'Q8_0 (vector)', 1e-2, 256, 96, 1),
  matmul(GGML_TYPE.Q8_0, 'Q8_0 (matrix)', 1e-2, 256, 96, 40),
  matmul(GGML_TYPE.Q4_K, 'Q4_K (vector)', 1e-2, 256, 96, 1),
  matmul(GGML_TYPE.Q4_K, 'Q4_K (matrix)', 1e-2, 256, 96, 40),
  {
    name: 'mul_mat, broadcast over a batch of heads',
    tolerance: 1e-5,
    build: (gb, d) => {
      const a = input(gb, 'a', F32, [16, 24, 2]);
      const b = input(gb, 'b', F32, [16, 5, 4]);
      return {
        inputs: [
          [a, d(768)],
          [b, d(320)],
        ],
        out: gb.output(gb.mulMat(a, b), 'o'),
      };
    },
  },
  {
    name: 'add and mul with a broadcast row',
    tolerance: 1e-5,
    build: (gb, d) => {
      const x = input(gb, 'x', F32, [64, 6]);
      const r = input(gb, 'r', F32, [64]);
      return {
        inputs: [
          [x, d(384)],
          [r, d(64)],
        ],
        out: gb.output(gb.mul(gb.add(x, r), r), 'o'),
      };
    },
  },
  unary('scale', 1e-5, (gb, x) => gb.scale(x, 0.37)),
  unary('scale_bias', 1e-5, (gb, x) => gb.scaleBias(x, 0.37, -1.5)),
  unary('silu', 1e-5, (gb, x) => gb.silu(x)),
  unary('tanh', 1e-5, (gb, x) => gb.tanh(x)),
  unary('gelu (ggml_gelu: the CPU reads an F16 table)', 5e-3, (gb, x) => gb.gelu(x)),
  unary('gelu, tanh form from exact ops', 1e-5, (gb, x) => gb.geluTanh(x)),
  unary('rms_norm', 1e-5, (gb, x) => gb.rmsNorm(x, 1e-6)),
  unary('norm', 1e-5, (gb, x) => gb.norm(x, 1e-5)),
  unary('sum_rows', 1e-5, (gb, x) => gb.sumRows(x)),
  unary('div by a row sum', 1e-5, (gb, x) => gb.div(gb.scaleBias(x, 1, 4), gb.sumRows(gb.scaleBias(x, 1, 4)))),
  unary('soft_max, no mask', 1e-5, (gb, x) => gb.softMax(x, null, 0.5), 8),
  {
    name: 'soft_max with a causal mask, scaled',
    tolerance: 1e-5,
    build: (gb, d) => {
      const x = input(gb, 's', F32, [32, 4, 3]);
      const m = input(gb, 'm', F32, [32, 4]);
      return {
        inputs: [
          [x, d(384, 6)],
          [m, causalMask(32, 4, 10)],
        ],
        out: gb.output(gb.softMax(x, m, 0.25), 'o'),
      };
    },
  },
  {
    name: 'soft_max with an F16 ALiBi mask (max_bias 8)',
    tolerance: 1e-5,
    build: (gb, d) => {
      const x = input(gb, 's', F32, [32, 4, 8]);
      const m = input(gb, 'm', GGML_TYPE.F16, [32, 4]);
      return {
        inputs: [
          [x, d(1024, 6)],
          [m, causalMask(32, 4, 10, true)],
        ],
        out: gb.output(gb.softMax(x, m, 0.25, 8), 'o'),
      };
    },
  },
  ropeCase(ROPE_MODE.NORMAL, 'NORMAL', false),
  ropeCase(ROPE_MODE.NEOX, 'NEOX', false),
  ropeCase(ROPE_MODE.NEOX, 'NEOX', true),
  {
    name: 'rope on half of each head (ChatGLM)',
    tolerance: 1e-5,
    build: (gb, d) => {
      const x = input(gb, 'x', F32, [32, 2, 5]);
      const p = input(gb, 'pos', I32, [5]);
      return {
        inputs: [
          [x, d(320)],
          [p, positions(5)],
        ],
        out: gb.output(gb.cont(gb.rope(x, p, null, { nDims: 16, mode: ROPE_MODE.NORMAL, nCtxOrig: 4096, base: 10000, freqScale: 1 })), 'o'),
      };
    },
  },
  {
    name: 'view, permute, cont and reshape',
    tolerance: 0,
    build: (gb, d) => {
      const x = input(gb, 'x', F32, [8, 6, 4]);
      const v = gb.view(x, [8, 3, 4], [32, 192], 64);
      return { inputs: [[x, d(192)]], out: gb.output(gb.reshape(gb.cont(gb.permute(v, [2, 0, 1, 3])), [96]), 'o') };
    },
  },
  {
    name: 'cpy F32 → F16 and back',
    tolerance: 0,
    build: (gb, d) => {
      const x = input(gb, 'x', F32, [64, 3]);
      const half = input(gb, 'h', GGML_TYPE.F16, [64, 3]);
      const back = input(gb, 'b', F32, [64, 3]);
      return {
        inputs: [
          [x, d(192)],
          [half, new Float32Array(192)],
          [back, new Float32Array(192)],
        ],
        out: gb.output(gb.cpy(gb.cpy(x, half), back), 'o'),
      };
    },
  },
  {
    name: 'get_rows from an F16 table',
    tolerance: 0,
    build: (gb, d) => {
      const t = input(gb, 't', GGML_TYPE.F16, [32, 50]);
      const ids = input(gb, 'ids', I32, [6]);
      return {
        inputs: [
          [t, d(1600)],
          [ids, Int32Array.from([3, 49, 0, 7, 7, 20])],
        ],
        out: gb.output(gb.getRows(t, ids), 'o'),
      };
    },
  },
  {
    name: 'set_rows into an F16 cache',
    tolerance: 0,
    build: (gb, d) => {
      const cache = input(gb, 'c', GGML_TYPE.F16, [32, 16]);
      const rows = input(gb, 'r', F32, [32, 3]);
      const ids = input(gb, 'ids', I32, [3]);
      const done = gb.setRows(cache, rows, ids);
      const back = input(gb, 'b', F32, [32, 16]);
      return {
        inputs: [
          [cache, d(512)],
          [rows, d(96)],
          [ids, Int32Array.from([2, 9, 15])],
          [back, new Float32Array(512)],
        ],
        out: gb.output(gb.cpy(done, back), 'o'),
      };
    },
  },
  {
    name: 'argsort (descending)',
    tolerance: 0,
    build: (gb, d) => {
      const x = input(gb, 'x', F32, [40, 5]);
      return { inputs: [[x, d(200)]], out: gb.output(gb.cont(gb.argsort(x, 'desc')), 'o') };
    },
  },
  {
    name: 'top-k, then the chosen rows of each column (get_rows, 2-D ids)',
    tolerance: 0,
    build: (gb, d) => {
      const logits = input(gb, 'l', F32, [8, 5]);
      const probs = input(gb, 'p', F32, [1, 8, 5]);
      const top = gb.topK(logits, 3);
      return {
        inputs: [
          [logits, d(40)],
          [probs, d(40)],
        ],
        out: gb.output(gb.getRowsBatched(probs, top), 'o'),
      };
    },
  },
  {
    name: 'mul_mat_id: experts chosen by top-k',
    tolerance: 1e-5,
    build: (gb, d) => {
      const experts = input(gb, 'e', F32, [32, 24, 4]);
      const x = input(gb, 'x', F32, [32, 1, 5]);
      const router = input(gb, 'r', F32, [4, 5]);
      return {
        inputs: [
          [experts, d(3072)],
          [x, d(160)],
          [router, d(20)],
        ],
        out: gb.output(gb.mulMatId(experts, x, gb.topK(router, 2)), 'o'),
      };
    },
  },
  attentionCase('F32 cache, decode (1 token after 20)', F32, 1e-5, { heads: 4, kvHeads: 4, n: 1, past: 20 }),
  attentionCase('F32 cache, prompt of 6, grouped heads (4 over 2)', F32, 1e-5, { heads: 4, kvHeads: 2, n: 6, past: 0 }),
  attentionCase('F32 cache, ALiBi', F32, 1e-5, { heads: 4, kvHeads: 4, n: 3, past: 10, alibi: true }),
  attentionCase('F16 cache through flash attention, decode', GGML_TYPE.F16, 2e-3, { heads: 4, kvHeads: 4, n: 1, past: 20 }),
  attentionCase('F16 cache through flash attention, prompt of 6, grouped heads (8 over 2)', GGML_TYPE.F16, 2e-3, { heads: 8, kvHeads: 2, n: 6, past: 0 }),
  attentionCase('F16 cache through flash attention, ALiBi', GGML_TYPE.F16, 2e-3, { heads: 4, kvHeads: 4, n: 3, past: 10, alibi: true }),
];

describe('every op: CPU backend vs a Vulkan device', { skip }, () => {
  let g: Ggml;
  let cpu: Opened;
  let vk: Opened;
  before(() => {
    // As the engine opens Vulkan devices: F32 matrix tiles (see prepareVulkan).
    prepareVulkan();
    g = loadGgml();
    cpu = open(g, cpuDevice(g), false);
    vk = open(g, devices(g).find((x) => x.name.startsWith('Vulkan'))!.handle, true);
  });
  after(() => {
    close(g, cpu);
    close(g, vk);
  });
  for (const c of CASES) {
    it(`${c.name}: within ${c.tolerance} (relative)`, (t) => {
      const feedSeed = 7 + CASES.indexOf(c);
      const want = run(g, cpu, c, feedSeed)!;
      const got = run(g, vk, c, feedSeed);
      if (!got) {
        t.diagnostic(`${vk.name} does not support this op; ggml would run it elsewhere`);
        return;
      }
      assert.equal(got.length, want.length);
      if (want instanceof Int32Array) {
        assert.deepEqual(Array.from(got), Array.from(want), 'the same indices');
        return;
      }
      let diff = 0;
      let scale = 0;
      for (let i = 0; i < want.length; i++) {
        assert.ok(Number.isFinite(got[i]!), `finite output at ${i}`);
        diff = Math.max(diff, Math.abs(got[i]! - want[i]!));
        scale = Math.max(scale, Math.abs(want[i]!));
      }
      const rel = scale > 0 ? diff / scale : diff;
      t.diagnostic(`relative error ${rel.toExponential(2)} (max |difference| ${diff.toExponential(2)})`);
      assert.ok(rel <= c.tolerance, `relative error ${rel} over ${c.tolerance}`);
    });
  }
});

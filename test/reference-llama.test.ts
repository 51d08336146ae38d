import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { readModel } from '../src/reader/read-model.js';
import {
  applyRope,
  argmax,
  createReferenceModel,
  parseReferenceConfig,
  permuteForNormalRope,
  ReferenceLlama,
  referenceGreedy,
  rmsNorm,
  ropeCosSin,
  ropeInvFreq,
  type TraceEvent,
} from './helpers/reference-llama.js';
import {
  bfloat16BitsToFloat32,
  decodeTensor,
  float16BitsToFloat32,
  float32ToBfloat16Bits,
  float32ToFloat16Bits,
  TINY_FAMILY_CONFIGS,
  TINY_FAMILY_NAMES,
  writeTinyFamilyCheckpoint,
  type TinyFamilyCheckpoint,
  type TinyFamilyName,
  type TinyStorageDtype,
} from './helpers/tiny-llama-family.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';

const root = tempDir('vramfit-reference-');
after(() => cleanup(root));
let n = 0;
const fresh = (): string => join(root, `m${n++}`);

const cache = new Map<string, TinyFamilyCheckpoint>();
function checkpoint(name: TinyFamilyName, dtype: TinyStorageDtype = 'float32', seed = 3): TinyFamilyCheckpoint {
  const key = `${name}/${dtype}/${seed}`;
  let ck = cache.get(key);
  if (!ck) {
    ck = writeTinyFamilyCheckpoint(fresh(), name, { dtype, seed });
    cache.set(key, ck);
  }
  return ck;
}

function maxAbsDiff(a: ArrayLike<number>[], b: ArrayLike<number>[]): number {
  assert.equal(a.length, b.length, 'row count');
  let m = 0;
  a.forEach((row, i) => {
    const other = b[i]!;
    assert.equal(row.length, other.length, 'row length');
    for (let j = 0; j < row.length; j++) m = Math.max(m, Math.abs(row[j]! - other[j]!));
  });
  return m;
}

const PROMPT = [5, 17, 42, 9, 60, 3, 77, 31];

describe('tiny Llama-family checkpoints', () => {
  it('rounds to float16 and bfloat16 to nearest, ties to even, like torch', () => {
    const f16: [number, number][] = [
      [1, 0x3c00],
      [-2, 0xc000],
      [0.5, 0x3800],
      [65504, 0x7bff],
      [65520, 0x7c00], // halfway between 65504 and 2^16: ties to even, which overflows to +inf
      [2 ** -24, 0x0001],
      [2 ** -25, 0x0000],
      [3 * 2 ** -25, 0x0002],
      [2 ** -14, 0x0400],
      [1 + 2 ** -11, 0x3c00],
      [1 + 3 * 2 ** -11, 0x3c02],
      [1 + 2 ** -10, 0x3c01],
    ];
    for (const [v, bits] of f16) assert.equal(float32ToFloat16Bits(v), bits, `float16(${v})`);
    for (const v of [1, -2, 0.5, 65504, 2 ** -24, 2 ** -14, 1 + 2 ** -10]) assert.equal(float16BitsToFloat32(float32ToFloat16Bits(v)), v, `${v} round-trips`);
    assert.equal(float16BitsToFloat32(0x7c00), Infinity);
    assert.equal(float16BitsToFloat32(0x3555), 0.333251953125);
    assert.equal(float16BitsToFloat32(0x0001), 2 ** -24);
    const bf16: [number, number][] = [
      [1, 0x3f80],
      [-2, 0xc000],
      [1 + 2 ** -8, 0x3f80],
      [1 + 3 * 2 ** -8, 0x3f82],
      [1 + 2 ** -7, 0x3f81],
    ];
    for (const [v, bits] of bf16) assert.equal(float32ToBfloat16Bits(v), bits, `bfloat16(${v})`);
    assert.equal(bfloat16BitsToFloat32(0x3f81), 1 + 2 ** -7);
  });

  for (const name of TINY_FAMILY_NAMES) {
    for (const dtype of ['float32', 'float16', 'bfloat16'] as const) {
      it(`${name} (${dtype}) reads back through readModel: family, blocks, no warnings, the stored values`, async () => {
        const ck = checkpoint(name, dtype);
        const s = await readModel(ck.dir);
        const cfg = TINY_FAMILY_CONFIGS[name];
        const family = cfg['model_type'] as string;
        assert.equal(s.family, family);
        assert.deepEqual(s.warnings, []);
        assert.equal(s.source.kind, 'safetensors');
        assert.equal(s.blocks?.count, cfg['num_hidden_layers']);
        assert.equal(s.blocks?.prefix, 'model.layers');
        assert.equal(s.attention?.numHeads, 4);
        assert.equal(s.attention?.numKvHeads, 2);
        assert.equal(s.attention?.headDim, name === 'qwen3' ? 32 : 16);
        assert.equal(s.attention?.vocabSize, cfg['vocab_size']);
        const tied = cfg['tie_word_embeddings'] === true;
        assert.equal(ck.names.includes('lm_head.weight'), !tied);
        assert.equal(s.tied.length, tied ? 1 : 0);
        const bytes = readFileSync(join(ck.dir, 'model.safetensors'));
        for (const tname of ck.names) {
          const t = s.tensors.find((x) => x.name === tname);
          assert.ok(t?.location?.range, `${tname} has a byte range`);
          assert.equal(t.dtype, dtype);
          assert.deepEqual(t.shape, ck.shapes[tname]);
          const [b, e] = t.location.range;
          assert.deepEqual(decodeTensor(bytes.subarray(b, e), dtype), ck.tensors[tname], `${tname} values`);
        }
        const model = createReferenceModel(ck);
        assert.equal(model.config.numLayers, cfg['num_hidden_layers']);
      });
    }
  }

  it('is deterministic in the seed; float16/bfloat16 are the float32 model rounded; families differ', () => {
    const a = writeTinyFamilyCheckpoint(fresh(), 'qwen2', { seed: 9 });
    const b = writeTinyFamilyCheckpoint(fresh(), 'qwen2', { seed: 9 });
    const c = writeTinyFamilyCheckpoint(fresh(), 'qwen2', { seed: 10 });
    assert.deepEqual(readFileSync(join(a.dir, 'model.safetensors')), readFileSync(join(b.dir, 'model.safetensors')));
    assert.notDeepEqual(a.tensors['model.layers.0.self_attn.q_proj.weight'], c.tensors['model.layers.0.self_attn.q_proj.weight']);
    for (const dtype of ['float16', 'bfloat16'] as const) {
      const h = writeTinyFamilyCheckpoint(fresh(), 'qwen2', { seed: 9, dtype });
      const rel = dtype === 'float16' ? 2 ** -11 : 2 ** -8;
      for (const [tname, values] of Object.entries(a.tensors)) {
        const other = h.tensors[tname]!;
        for (let i = 0; i < values.length; i++) {
          const v = values[i]!;
          assert.ok(Math.abs(other[i]! - v) <= rel * Math.abs(v) + 2 ** -24, `${dtype} ${tname}[${i}]: ${other[i]} vs ${v}`);
        }
      }
    }
    const l2 = checkpoint('llama2');
    const l3 = checkpoint('llama3');
    const q = 'model.layers.0.self_attn.q_proj.weight';
    assert.notDeepEqual(l2.tensors[q], l3.tensors[q]);
    // Weights are on the advertised scales.
    const std = (v: Float32Array, mean = 0): number => Math.sqrt(v.reduce((s, x) => s + (x - mean) ** 2, 0) / v.length);
    assert.ok(Math.abs(std(l2.tensors[q]!) - 0.08) < 0.01, 'q_proj std ≈ 0.08');
    assert.ok(Math.abs(std(l2.tensors['model.embed_tokens.weight']!) - 0.3) < 0.03, 'embedding std ≈ 0.3');
    assert.ok(Math.abs(std(l2.tensors['model.norm.weight']!, 1) - 0.1) < 0.04, 'norm weights ≈ 1 ± 0.1');
  });
});

describe('reference forward: KV cache', () => {
  for (const name of TINY_FAMILY_NAMES) {
    it(`${name}: prompt then one token at a time equals one full forward (and chunked prefill)`, () => {
      const m = createReferenceModel(checkpoint(name));
      const g = referenceGreedy(m, PROMPT, 8);
      assert.equal(g.generated.length, 8);
      assert.equal(g.stepLogits.length, 7);
      assert.equal(g.promptLogits.length, PROMPT.length);
      assert.equal(g.generated[0], argmax(g.promptLogits.at(-1)!));
      g.stepLogits.forEach((l, i) => assert.equal(g.generated[i + 1], argmax(l)));
      const seq = [...PROMPT, ...g.generated.slice(0, -1)];
      const full = m.forward(seq, 0);
      assert.ok(maxAbsDiff(full, [...g.promptLogits, ...g.stepLogits]) < 1e-12, 'greedy logits = full forward');
      const chunked = [...m.forward(seq.slice(0, 5), 0), ...m.forward(seq.slice(5, 11)), ...m.forward(seq.slice(11))];
      assert.ok(maxAbsDiff(full, chunked) < 1e-12, 'chunked prefill = full forward');
      // Logits are spread (not degenerate) and finite.
      for (const row of full) assert.ok(row.every(Number.isFinite), 'finite logits');
      const last = full.at(-1)!;
      assert.ok(Math.max(...last) - Math.min(...last) > 2, 'logits spread');
      // Earlier tokens matter: changing the first prompt token changes the last logits.
      const other = m.forward([PROMPT[0]! + 1, ...seq.slice(1)], 0);
      assert.ok(maxAbsDiff([other.at(-1)!], [last]) > 1e-3, 'the first token changes the last logits');
    });
  }

  it('rewinds the cache with a smaller startPos and refuses gaps', () => {
    const m = createReferenceModel(checkpoint('mistral'));
    const a = m.forward(PROMPT, 0);
    m.forward([1, 2, 3]);
    assert.equal(m.cacheLength, PROMPT.length + 3);
    const b = m.forward(PROMPT.slice(4), 4);
    assert.ok(maxAbsDiff(a.slice(4), b) < 1e-12, 'rewound cache gives the same logits');
    assert.throws(() => m.forward([1], m.cacheLength + 1), /startPos/);
  });

  it('throws rather than silently ignore a sliding window it would pass', () => {
    const ck = checkpoint('mistral');
    const m = new ReferenceLlama({ ...ck.config, sliding_window: 8 }, ck.tensors);
    m.forward(PROMPT, 0);
    assert.throws(() => m.forward([1]), /sliding window/);
    // Qwen2 keeps sliding_window in its config with use_sliding_window false: no window.
    assert.equal(parseReferenceConfig(checkpoint('qwen2').config).slidingWindow, null);
  });

  it('float16 and bfloat16 checkpoints of one seed stay close to the float32 model', () => {
    const ref = createReferenceModel(checkpoint('llama3')).forward(PROMPT, 0);
    for (const [dtype, tol] of [
      ['float16', 0.01],
      ['bfloat16', 0.08],
    ] as const) {
      const other = createReferenceModel(checkpoint('llama3', dtype)).forward(PROMPT, 0);
      const d = maxAbsDiff(ref, other);
      assert.ok(d > 0 && d < tol, `${dtype}: max |Δlogit| ${d}`);
    }
  });
});

describe('reference forward: grouped-query attention', () => {
  /** An MHA copy of a GQA checkpoint: KV head g's k/v rows duplicated for each query head, in `order`. */
  function asMha(ck: TinyFamilyCheckpoint, order: (h: number, nRep: number, kv: number) => number): ReferenceLlama {
    const c = parseReferenceConfig(ck.config);
    const nRep = c.numHeads / c.numKvHeads;
    const H = c.hiddenSize;
    const D = c.headDim;
    const tensors: Record<string, Float32Array> = { ...ck.tensors };
    for (let l = 0; l < c.numLayers; l++) {
      for (const p of ['k_proj', 'v_proj']) {
        const name = `model.layers.${l}.self_attn.${p}.weight`;
        const w = ck.tensors[name]!;
        const out = new Float32Array(c.numHeads * D * H);
        for (let h = 0; h < c.numHeads; h++) {
          const g = order(h, nRep, c.numKvHeads);
          out.set(w.subarray(g * D * H, (g + 1) * D * H), h * D * H);
        }
        tensors[name] = out;
      }
    }
    return new ReferenceLlama({ ...ck.config, num_key_value_heads: c.numHeads }, tensors);
  }

  it('GQA equals MHA with each KV head repeated for its group (repeat_kv order: head h uses KV head h / nRep)', () => {
    for (const name of ['llama2', 'qwen3'] as const) {
      const ck = checkpoint(name);
      const gqa = createReferenceModel(ck).forward(PROMPT, 0);
      const mha = asMha(ck, (h, nRep) => Math.floor(h / nRep)).forward(PROMPT, 0);
      assert.ok(maxAbsDiff(gqa, mha) < 1e-12, name);
      // The interleaved assignment (h mod kvHeads) is a different model: the check above can fail.
      const wrong = asMha(ck, (h, _nRep, kv) => h % kv).forward(PROMPT, 0);
      assert.ok(maxAbsDiff(gqa, wrong) > 1e-3, `${name}: wrong grouping must differ`);
    }
  });
});

describe('reference forward: rotary embedding', () => {
  const cfg = (name: TinyFamilyName) => parseReferenceConfig(TINY_FAMILY_CONFIGS[name] as Record<string, unknown>);
  const vec = (len: number, seed: number): Float64Array => Float64Array.from({ length: len }, (_, i) => Math.sin(seed * 12.9898 + i * 78.233) * 2);

  it('inv_freq is 1 / theta^(2i/d) (to float32 precision) for the default type', () => {
    for (const name of ['llama2', 'mistral', 'qwen2', 'qwen3'] as const) {
      const c = cfg(name);
      const inv = ropeInvFreq(c);
      assert.equal(inv.length, c.headDim / 2);
      inv.forEach((v, i) => {
        const exact = 1 / c.ropeTheta ** ((2 * i) / c.headDim);
        assert.ok(Math.abs(v - exact) <= 2e-7 * exact, `${name} inv_freq[${i}]`);
      });
    }
  });

  it('leaves q/k unchanged at position 0', () => {
    const c = cfg('llama3');
    const { cos, sin } = ropeCosSin(ropeInvFreq(c), 0);
    const x = vec(c.headDim, 1);
    const y = Float64Array.from(x);
    applyRope(y, 0, c.headDim, cos, sin);
    assert.deepEqual(y, x);
  });

  it('rotates the pairs (j, j + d/2) — rotate_half — not adjacent pairs', () => {
    const c = cfg('llama2');
    const D = c.headDim;
    const { cos, sin } = ropeCosSin(ropeInvFreq(c), 5);
    const x = vec(D, 2);
    const y = Float64Array.from(x);
    applyRope(y, 0, D, cos, sin);
    for (let j = 0; j < D / 2; j++) {
      // (to float32 precision: cos and sin are float32 tables, as in transformers)
      assert.ok(Math.abs(x[j]! ** 2 + x[j + D / 2]! ** 2 - (y[j]! ** 2 + y[j + D / 2]! ** 2)) < 1e-6, `pair ${j} keeps its length`);
      // explicit 2-D rotation of (x_j, x_{j+d/2}) by pos · inv_freq_j
      const a = 5 * ropeInvFreq(c)[j]!;
      assert.ok(Math.abs(y[j]! - (x[j]! * Math.cos(a) - x[j + D / 2]! * Math.sin(a))) < 1e-6, `out[${j}]`);
      assert.ok(Math.abs(y[j + D / 2]! - (x[j + D / 2]! * Math.cos(a) + x[j]! * Math.sin(a))) < 1e-6, `out[${j + D / 2}]`);
    }
    const adjacentKept = Math.abs(x[0]! ** 2 + x[1]! ** 2 - (y[0]! ** 2 + y[1]! ** 2)) < 1e-3;
    assert.equal(adjacentKept, false, 'adjacent pairs are not rotated together');
  });

  it('makes q·k depend only on the distance between positions', () => {
    const c = cfg('qwen3');
    const inv = ropeInvFreq(c);
    const score = (p: number, r: number): number => {
      const q = vec(c.headDim, 3);
      const k = vec(c.headDim, 4);
      const a = ropeCosSin(inv, p);
      const b = ropeCosSin(inv, r);
      applyRope(q, 0, c.headDim, a.cos, a.sin);
      applyRope(k, 0, c.headDim, b.cos, b.sin);
      return q.reduce((s, v, i) => s + v * k[i]!, 0);
    };
    assert.ok(Math.abs(score(7, 3) - score(27, 23)) < 1e-4, 'shifting both positions keeps q·k');
    assert.ok(Math.abs(score(7, 3) - score(7, 4)) > 1e-3, 'a different distance changes q·k');
  });

  it('linear scaling with factor f at position p equals the default rope at p / f', () => {
    const c = cfg('llama-linear');
    assert.deepEqual(c.rope, { type: 'linear', factor: 4 });
    const scaled = ropeInvFreq(c);
    const plain = ropeInvFreq({ ...c, rope: { type: 'default', factor: 1 } });
    for (const p of [4, 8, 12, 40]) {
      assert.deepEqual(ropeCosSin(scaled, p), ropeCosSin(plain, p / 4), `position ${p}`);
    }
    assert.notDeepEqual(ropeCosSin(scaled, 8), ropeCosSin(plain, 8));
    // ... and the model really uses it.
    const ck = checkpoint('llama-linear');
    const a = new ReferenceLlama(ck.config, ck.tensors).forward(PROMPT, 0);
    const b = new ReferenceLlama({ ...ck.config, rope_scaling: null }, ck.tensors).forward(PROMPT, 0);
    assert.ok(maxAbsDiff(a, b) > 1e-3, 'linear scaling changes the logits');
  });

  it('llama3 scaling: high frequencies kept, low ones divided by factor, the band between interpolated', () => {
    // Tiny llama3: theta 500000, d 16, factor 8, low 1, high 4, original context 64 → bands at wavelength 16 and 64.
    const c = cfg('llama3');
    const plain = ropeInvFreq({ ...c, rope: { type: 'default', factor: 1 } });
    const scaled = ropeInvFreq(c);
    const bands: string[] = [];
    plain.forEach((f, i) => {
      const wavelen = (2 * Math.PI) / f;
      let expected: number;
      if (wavelen < 64 / 4) {
        bands.push('high');
        expected = f;
      } else if (wavelen > 64 / 1) {
        bands.push('low');
        expected = f / 8;
      } else {
        bands.push('mid');
        const s = (64 / wavelen - 1) / (4 - 1);
        expected = (1 - s) * (f / 8) + s * f;
        assert.ok(expected > f / 8 && expected < f, `inv_freq[${i}] interpolated between f / 8 and f`);
      }
      assert.ok(Math.abs(scaled[i]! - expected) <= 1e-6 * expected, `inv_freq[${i}] (${bands.at(-1)})`);
    });
    assert.deepEqual(bands, ['high', 'mid', 'low', 'low', 'low', 'low', 'low', 'low']);
    // Real Llama 3.2 numbers (factor 32, original 8192): wavelengths 6.3, 32, 167, 860 kept; 4443 interpolated.
    const t = cfg('llama3-tied');
    const tPlain = ropeInvFreq({ ...t, rope: { type: 'default', factor: 1 } });
    const tScaled = ropeInvFreq(t);
    const ratio = Array.from(tScaled, (v, i) => v / tPlain[i]!);
    assert.deepEqual(ratio.slice(0, 4), [1, 1, 1, 1]);
    const s = (8192 / ((2 * Math.PI) / tPlain[4]!) - 1) / 3;
    assert.ok(Math.abs(ratio[4]! - ((1 - s) / 32 + s)) < 1e-6, `interpolated ratio ${ratio[4]}`);
    for (const r of ratio.slice(5)) assert.ok(Math.abs(r - 1 / 32) < 1e-6, `low-band ratio ${r}`);
    // factor 1 is the default rope, whatever the band edges.
    const one = ropeInvFreq({ ...c, rope: { ...c.rope, factor: 1 } });
    one.forEach((v, i) => assert.ok(Math.abs(v - plain[i]!) <= 1e-7 * plain[i]!, `factor 1: inv_freq[${i}] = ${v}`));
  });

  it('NEOX on the original rows equals ggml NORMAL (adjacent pairs) on rows permuted as convert_hf_to_gguf does', () => {
    const c = cfg('llama2');
    const D = c.headDim;
    const heads = 2;
    const inv = ropeInvFreq(c);
    const { cos, sin } = ropeCosSin(inv, 9);
    const x = vec(heads * D, 5); // two heads of projection output
    const neox = Float64Array.from(x);
    for (let h = 0; h < heads; h++) applyRope(neox, h * D, D, cos, sin);
    const permuted = permuteForNormalRope(x, heads, D, 1);
    for (let h = 0; h < heads; h++) {
      for (let j = 0; j < D / 2; j++) {
        const a = permuted[h * D + 2 * j]!;
        const b = permuted[h * D + 2 * j + 1]!;
        permuted[h * D + 2 * j] = a * cos[j]! - b * sin[j]!;
        permuted[h * D + 2 * j + 1] = b * cos[j]! + a * sin[j]!;
      }
    }
    assert.deepEqual(permuted, permuteForNormalRope(neox, heads, D, 1));
    // Scores are invariant: the same permutation on q and k.
    const k = vec(heads * D, 6);
    const kn = Float64Array.from(k);
    for (let h = 0; h < heads; h++) applyRope(kn, h * D, D, cos, sin);
    const dot = (a: Float64Array, b: Float64Array): number => a.reduce((s, v, i) => s + v * b[i]!, 0);
    assert.ok(
      Math.abs(dot(neox, kn) - dot(permuteForNormalRope(neox, heads, D, 1), permuteForNormalRope(kn, heads, D, 1))) < 1e-12,
      'q·k unchanged by the permutation',
    );
  });
});

describe('reference forward: family specifics', () => {
  function trace(m: ReferenceLlama, tokens: number[]): TraceEvent[] {
    const events: TraceEvent[] = [];
    m.forward(tokens, 0, (e) => events.push(e));
    return events;
  }
  const pick = (events: TraceEvent[], layer: number, name: string, pos: number): Float64Array => {
    const e = events.find((x) => x.layer === layer && x.name === name && x.pos === pos);
    assert.ok(e, `${name} at layer ${layer} position ${pos}`);
    return e.values;
  };

  it('Qwen3 applies q_norm/k_norm per head before rope, with head_dim 32 ≠ hidden / heads', () => {
    const ck = checkpoint('qwen3');
    const m = createReferenceModel(ck);
    assert.equal(m.config.headDim, 32);
    const events = trace(m, PROMPT);
    const pos = 5;
    const D = 32;
    const { cos, sin } = ropeCosSin(m.invFreq, pos);
    for (const [proj, normName, heads, out] of [
      ['q_proj', 'q_norm', 4, 'q'],
      ['k_proj', 'k_norm', 2, 'k'],
    ] as const) {
      const raw = pick(events, 1, proj, pos);
      assert.equal(raw.length, heads * D);
      const w = ck.tensors[`model.layers.1.self_attn.${normName}.weight`]!;
      const expected = new Float64Array(heads * D);
      const ropeFirst = new Float64Array(heads * D);
      for (let h = 0; h < heads; h++) {
        const head = raw.subarray(h * D, (h + 1) * D);
        const rmsInv = 1 / Math.sqrt(head.reduce((s, v) => s + v * v, 0) / D + 1e-6);
        for (let j = 0; j < D / 2; j++) {
          const a = head[j]! * rmsInv * w[j]!;
          const b = head[j + D / 2]! * rmsInv * w[j + D / 2]!;
          expected[h * D + j] = a * cos[j]! - b * sin[j]!;
          expected[h * D + j + D / 2] = b * cos[j]! + a * sin[j]!;
        }
        // the other order, for contrast
        const rotated = Float64Array.from(head);
        applyRope(rotated, 0, D, cos, sin);
        ropeFirst.set(rmsNorm(rotated, w, 1e-6), h * D);
      }
      assert.ok(maxAbsDiff([pick(events, 1, out, pos)], [expected]) < 1e-12, out);
      assert.ok(maxAbsDiff([pick(events, 1, out, pos)], [ropeFirst]) > 1e-3, `${out}: norm after rope would differ`);
    }
  });

  for (const name of ['llama2', 'qwen3'] as const) {
    it(`${name}: attention is softmax(q·k / sqrt(head_dim)) over keys 0…pos of the head's KV group`, () => {
      const m = createReferenceModel(checkpoint(name));
      const { headDim: D, numHeads, numKvHeads } = m.config;
      const events = trace(m, PROMPT);
      const pos = 6;
      const q = pick(events, 1, 'q', pos);
      const attn = pick(events, 1, 'attn', pos);
      for (let h = 0; h < numHeads; h++) {
        const g = Math.floor(h / (numHeads / numKvHeads));
        const scores: number[] = [];
        for (let j = 0; j <= pos; j++) {
          const k = pick(events, 1, 'k', j);
          let s = 0;
          for (let d = 0; d < D; d++) s += q[h * D + d]! * k[g * D + d]!;
          scores.push(s / Math.sqrt(D));
        }
        const z = scores.reduce((a, s) => a + Math.exp(s), 0);
        for (let d = 0; d < D; d++) {
          let o = 0;
          for (let j = 0; j <= pos; j++) o += (Math.exp(scores[j]!) / z) * pick(events, 1, 'v_proj', j)[g * D + d]!;
          assert.ok(Math.abs(attn[h * D + d]! - o) < 1e-12, `head ${h} dim ${d}`);
        }
      }
    });
  }

  it('Qwen2 adds the q/k/v biases (and none on o_proj)', () => {
    const ck = checkpoint('qwen2');
    const m = createReferenceModel(ck);
    assert.equal(m.config.qkvBias, true);
    assert.equal(m.config.oBias, false);
    assert.equal(ck.names.includes('model.layers.0.self_attn.o_proj.bias'), false);
    const events = trace(m, PROMPT);
    const h = pick(events, 0, 'attn_norm', 2);
    const w = ck.tensors['model.layers.0.self_attn.k_proj.weight']!;
    const b = ck.tensors['model.layers.0.self_attn.k_proj.bias']!;
    const k = pick(events, 0, 'k_proj', 2);
    for (let o = 0; o < k.length; o++) {
      let s = b[o]!;
      for (let i = 0; i < 64; i++) s += w[o * 64 + i]! * h[i]!;
      assert.ok(Math.abs(k[o]! - s) < 1e-12, `k_proj[${o}] = ${k[o]}, W·h + b = ${s}`);
    }
    const noBias = { ...ck.tensors };
    for (const key of Object.keys(noBias)) if (key.endsWith('.bias')) noBias[key] = new Float32Array(noBias[key]!.length);
    assert.ok(maxAbsDiff(new ReferenceLlama(ck.config, noBias).forward(PROMPT, 0), m.forward(PROMPT, 0)) > 1e-3, 'zeroing the biases changes the logits');
  });

  it('a tied model uses the embedding matrix as its head', () => {
    const ck = checkpoint('llama3-tied');
    assert.equal(ck.tensors['lm_head.weight'], undefined);
    const m = createReferenceModel(ck);
    const events: TraceEvent[] = [];
    const logits = m.forward(PROMPT, 0, (e) => events.push(e));
    const E = ck.tensors['model.embed_tokens.weight']!;
    const V = m.config.vocabSize;
    for (let pos = 0; pos < PROMPT.length; pos++) {
      const h = pick(events, m.config.numLayers, 'final_norm', pos);
      for (let t = 0; t < V; t++) {
        let s = 0;
        for (let i = 0; i < 64; i++) s += E[t * 64 + i]! * h[i]!;
        assert.ok(Math.abs(logits[pos]![t]! - s) < 1e-12, `logit ${t} at ${pos}`);
      }
    }
    // A stray lm_head.weight is ignored, as transformers ties it to the embedding on load ...
    const stray = { ...ck.tensors, 'lm_head.weight': new Float32Array(V * 64).fill(0.5) };
    assert.ok(maxAbsDiff(new ReferenceLlama(ck.config, stray).forward(PROMPT, 0), logits) === 0, 'stray lm_head.weight ignored');
    // ... and untying with a copy of the embedding is the same model.
    const untied = { ...ck.tensors, 'lm_head.weight': Float32Array.from(E) };
    assert.ok(
      maxAbsDiff(new ReferenceLlama({ ...ck.config, tie_word_embeddings: false }, untied).forward(PROMPT, 0), logits) === 0,
      'untied copy = tied model',
    );
    // An untied model without lm_head.weight is an error, not a silent tie.
    assert.throws(() => new ReferenceLlama({ ...ck.config, tie_word_embeddings: false }, ck.tensors), /lm_head\.weight is missing/);
  });
});

describe('reference forward: a one-layer, hidden-4 model worked out by hand', () => {
  // hidden 4, 2 query heads sharing 1 KV head, head_dim 2 (so inv_freq = [1]: the angle is the position),
  // intermediate 2, vocab 3. Weights are chosen so each step is a short formula. Run with a realistic eps and
  // with a large one, so that where eps enters (inside the square root, added to the mean square) shows.
  for (const eps of [1e-6, 0.25]) describe(`rms_norm_eps ${eps}`, () => handCase(eps));
});

function handCase(eps: number): void {
  const config = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: 4,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    intermediate_size: 2,
    vocab_size: 3,
    num_hidden_layers: 1,
    rms_norm_eps: eps,
    rope_theta: 10000.0,
    tie_word_embeddings: false,
  };
  const f = (rows: number[][]): Float32Array => Float32Array.from(rows.flat());
  const E = [
    [1, -1, 1, -1],
    [2, 0, 0, 0],
    [0, 0, 2, 0],
  ];
  const w1 = [1, 2, 1, 0.5];
  const w3 = [1, 1, 2, 1];
  const tensors = {
    'model.embed_tokens.weight': f(E),
    'model.layers.0.input_layernorm.weight': f([w1]),
    'model.layers.0.self_attn.q_proj.weight': f([
      [1, 0, 0, 0],
      [0, 1, 0, 0],
      [0, 0, 1, 0],
      [0, 0, 0, 1],
    ]), // q = h
    'model.layers.0.self_attn.k_proj.weight': f([
      [1, 0, 1, 0],
      [0, 1, 0, -1],
    ]), // k = [h0 + h2, h1 − h3]
    'model.layers.0.self_attn.v_proj.weight': f([
      [1, 0, 0, 0],
      [0, 0, 0, 1],
    ]), // v = [h0, h3]
    'model.layers.0.self_attn.o_proj.weight': f([
      [1, 0, 0, 0],
      [0, 1, 0, 0],
      [0, 0, 1, 0],
      [0, 0, 0, 1],
    ]),
    'model.layers.0.post_attention_layernorm.weight': f([[1, 1, 1, 1]]),
    'model.layers.0.mlp.gate_proj.weight': f([
      [1, 0, 0, 0],
      [0, 1, 0, 0],
    ]), // gate = [n0, n1]
    'model.layers.0.mlp.up_proj.weight': f([
      [0, 0, 1, 0],
      [0, 0, 0, 1],
    ]), // up = [n2, n3]
    'model.layers.0.mlp.down_proj.weight': f([
      [1, 0],
      [0, 1],
      [0, 0],
      [1, 1],
    ]), // down = [m0, m1, 0, m0 + m1]
    'model.norm.weight': f([w3]),
    'lm_head.weight': f([
      [1, 0, 0, 0],
      [0, 1, 0, 0],
      [0, 0, 1, 1],
    ]), // logits = [n0, n1, n2 + n3]
  };
  const silu = (v: number): number => v / (1 + Math.exp(-v));
  const rms = (x: number[]): number => 1 / Math.sqrt((x[0]! ** 2 + x[1]! ** 2 + x[2]! ** 2 + x[3]! ** 2) / 4 + eps);
  /** Residual after the MLP (post-attention norm weight is all ones). */
  const afterMlp = (x: number[]): number[] => {
    const k = rms(x);
    const m0 = silu(x[0]! * k) * x[2]! * k;
    const m1 = silu(x[1]! * k) * x[3]! * k;
    return [x[0]! + m0, x[1]! + m1, x[2]!, x[3]! + m0 + m1];
  };
  const logitsOf = (x: number[]): number[] => {
    const k = rms(x);
    return [x[0]! * k * w3[0]!, x[1]! * k * w3[1]!, x[2]! * k * w3[2]! + x[3]! * k * w3[3]!];
  };

  it('matches the hand derivation for the prompt [1, 0], and GQA shares the one KV head', () => {
    const r = 1 / Math.sqrt(1 + eps); // both embeddings used have mean square 1
    // Position 0, token 1: h = r·[2,0,0,0]·w1 = [2r,0,0,0]; q heads [2r,0], [0,0]; k = [2r,0]; v = [2r,0].
    // Rope at 0 is the identity; one key, so each head outputs v: attention = [2r,0,2r,0].
    const x0 = afterMlp([2 + 2 * r, 0, 2 * r, 0]);
    // Position 1, token 0: h = r·[1,−1,1,−1]·w1 = r·[1,−2,1,−0.5].
    const q = [
      [r, -2 * r],
      [r, -0.5 * r],
    ];
    const k1 = [2 * r, -1.5 * r]; // [h0 + h2, h1 − h3]
    const v0 = [2 * r, 0];
    const v1 = [r, -0.5 * r];
    const rot = ([a, b]: number[], t: number): number[] => [a! * Math.cos(t) - b! * Math.sin(t), b! * Math.cos(t) + a! * Math.sin(t)];
    const k0 = [2 * r, 0]; // the position-0 key, rotated by 0
    const k1r = rot(k1, 1);
    const attn = q.flatMap((qh) => {
      const qr = rot(qh, 1);
      const s0 = (qr[0]! * k0[0]! + qr[1]! * k0[1]!) / Math.SQRT2;
      const s1 = (qr[0]! * k1r[0]! + qr[1]! * k1r[1]!) / Math.SQRT2;
      const p1 = 1 / (1 + Math.exp(s0 - s1));
      return [(1 - p1) * v0[0]! + p1 * v1[0]!, (1 - p1) * v0[1]! + p1 * v1[1]!];
    });
    const x1 = afterMlp(E[0]!.map((e, i) => e + attn[i]!));
    const expected = [logitsOf(x0), logitsOf(x1)];

    const m = new ReferenceLlama(config, tensors);
    assert.deepEqual(Array.from(m.invFreq), [1]);
    const got = m.forward([1, 0], 0);
    assert.ok(maxAbsDiff(got, expected) < 1e-6, `got ${JSON.stringify(got.map((a) => Array.from(a)))}, expected ${JSON.stringify(expected)}`);
    // One more step through the cache agrees with the full forward.
    const step = m.forward([2])[0]!;
    assert.ok(maxAbsDiff([step], [new ReferenceLlama(config, tensors).forward([1, 0, 2], 0)[2]!]) < 1e-12, 'cached step = full forward');
  });
}

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { baichuanArchitecture } from '../src/engine/architectures/baichuan.js';
import { GGML_TYPE, loadGgml } from '../src/engine/ggml/binding.js';
import { GraphBuilder, ShapeError } from '../src/engine/ggml/graph.js';
import { loadModel } from '../src/engine/load.js';
import { findArchitecture } from '../src/reader/architectures/index.js';
import { ConfigReader } from '../src/reader/config.js';
import { InputError } from '../src/util/errors.js';
import { baichuanInterleave, createBaichuanReference, ggmlAlibiSlopes } from './helpers/reference-baichuan.js';
import {
  TINY_BAICHUAN_CONFIGS,
  TINY_BAICHUAN_NAMES,
  writeTinyBaichuanCheckpoint,
  type TinyBaichuanCheckpoint,
  type TinyBaichuanName,
} from './helpers/tiny-baichuan.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import {
  assertAgreesWithReference,
  assertSplitsAgree,
  assertUnderCapsAsPredicted,
  capsJustAbove,
  greedy,
  maxAbsDiff,
  PROMPT,
  SPLIT_OPTIONS,
} from './helpers/engine-harness.js';

const root = tempDir('vramfit-engine-baichuan-');
after(() => cleanup(root));

const SPLIT_NAMES = ['baichuan2-7b', 'baichuan2-13b'] as const;

function checkpoint(name: TinyBaichuanName, dtype: 'float32' | 'float16' | 'bfloat16' = 'float32'): TinyBaichuanCheckpoint {
  return writeTinyBaichuanCheckpoint(join(root, `${name}-${dtype}`), name, { dtype, seed: 7 });
}

describe('Baichuan: ALiBi slopes and variant selection', () => {
  it("ggml's soft_max_ext slopes with max_bias 8 are _get_interleave's for 1–64 heads (to float32 rounding)", () => {
    for (let n = 1; n <= 64; n++) {
      const p = 2 ** Math.floor(Math.log2(n));
      const baichuan = baichuanInterleave(n).map((s) => Math.fround(s));
      const ggml = ggmlAlibiSlopes(n, 8);
      assert.equal(ggml.length, n, `${n} slopes`);
      for (let h = 0; h < n; h++) {
        // Both are 2^(−8(h+1)/p) for h < p and 2^(−4(2k+1)/p), k = h − p, after: the same numbers. Baichuan
        // rounds the exact value to float32 once; ggml raises a float32 base to the power k' = h+1 or 2k+1,
        // which carries the base's rounding k' times: within (k'+1)/2^24 relative, never a different slope.
        const power = h < p ? h + 1 : 2 * (h - p) + 1;
        const rel = Math.abs(ggml[h]! - baichuan[h]!) / baichuan[h]!;
        assert.ok(rel <= (power + 1) * 2 ** -24, `${n} heads, head ${h}: ggml ${ggml[h]} vs Baichuan ${baichuan[h]}`);
      }
    }
    // Baichuan2-13B's 40 heads: 32 from 2^(-i/4), then 2^(-1/8), 2^(-3/8), … (the odd terms of 64 heads' series).
    const s40 = baichuanInterleave(40);
    assert.ok(
      Math.abs(s40[0]! - 2 ** -0.25) < 1e-15 && Math.abs(s40[32]! - 2 ** -0.125) < 1e-15 && Math.abs(s40[39]! - 2 ** (-15 / 8)) < 1e-15,
      `40-head slopes ${s40.join(', ')}`,
    );
  });

  it('the reader and the engine pick the RoPE file by hidden size 4096 or position_embedding, NormHead by vocab 125696 or norm_head', () => {
    const cases: { name: TinyBaichuanName; rope: boolean; normHead: boolean }[] = [
      { name: 'baichuan2-7b', rope: true, normHead: true },
      { name: 'baichuan2-13b', rope: false, normHead: true },
      { name: 'baichuan-13b', rope: false, normHead: false },
    ];
    for (const c of cases) {
      const cfg = new ConfigReader({ ...TINY_BAICHUAN_CONFIGS[c.name] }, 'config.json');
      const layout = findArchitecture(cfg)!.build(cfg, 'float32');
      const classes = new Map(layout.tree.modules.map((m) => [m.name, m.class]));
      assert.equal(classes.get('model.layers.0.self_attn'), c.rope ? 'Attention' : 'BaichuanAttention', `${c.name}: attention class`);
      assert.equal(classes.get('lm_head'), c.normHead ? 'NormHead' : 'Linear', `${c.name}: head class`);
      const h = baichuanArchitecture.hyper(cfg, 'baichuan');
      assert.equal(h.rope, c.rope, `${c.name}: engine rope`);
      assert.equal(h.alibi === true, !c.rope, `${c.name}: engine ALiBi mask`);
      assert.equal(baichuanArchitecture.tensors(h).head[0]!.transform, c.normHead ? 'normalize-rows' : undefined, `${c.name}: head transform`);
    }
    // Without the override the real 7B width still selects the RoPE file; a bad override is refused.
    const real7b = new ConfigReader(
      { ...TINY_BAICHUAN_CONFIGS['baichuan2-13b'], hidden_size: 4096, num_attention_heads: 32, vocab_size: 125696, norm_head: undefined },
      'config.json',
    );
    const h7 = baichuanArchitecture.hyper(real7b, 'baichuan');
    assert.ok(h7.rope && h7.normHead && h7.headDim === 128, 'hidden 4096 → RoPE; vocab 125696 → NormHead');
    const bad = new ConfigReader({ ...TINY_BAICHUAN_CONFIGS['baichuan2-13b'], position_embedding: 'SINUSOID' }, 'config.json');
    assert.throws(() => baichuanArchitecture.hyper(bad, 'baichuan'), InputError);
  });

  it('softMax refuses ALiBi without a mask and a negative max_bias, before reaching ggml', () => {
    const gb = new GraphBuilder(loadGgml(), 16);
    try {
      const a = gb.input('scores', GGML_TYPE.F32, [4, 2, 3]);
      const mask = gb.input('mask', GGML_TYPE.F32, [4, 2]);
      assert.throws(() => gb.softMax(a, null, 1, 8), ShapeError);
      assert.throws(() => gb.softMax(a, mask, 1, -1), ShapeError);
      assert.ok(gb.softMax(a, mask, 0.5, 8), 'a mask that fits is accepted');
    } finally {
      gb.free();
    }
  });
});

describe('Baichuan engine: one device against the plain-TypeScript reference', () => {
  for (const name of TINY_BAICHUAN_NAMES) {
    it(`${name}: logits and greedy tokens agree with the reference`, async () => {
      const ck = checkpoint(name);
      const model = await loadModel(ck.dir, { devices: 'virtual:1', ctx: 64, ubatch: 4, kvDtype: 'float32', threads: 1 });
      try {
        assert.equal(model.hyper.family, 'baichuan', 'runs as Baichuan');
        assertAgreesWithReference(await greedy(model), createBaichuanReference(ck));
      } finally {
        model.dispose();
      }
    });
  }

  it('the position terms matter: the reference without them is far from the engine', async () => {
    // Guards the comparison itself: a model whose rotary or ALiBi were silently off would not pass above.
    for (const name of SPLIT_NAMES) {
      const ck = checkpoint(name);
      const model = await loadModel(ck.dir, { devices: 'virtual:1', ctx: 64, ubatch: 4, kvDtype: 'float32', threads: 1 });
      try {
        const rows = model.forward(PROMPT, true);
        const config = { ...ck.config, position_embedding: 'ALIBI' };
        const other = name === 'baichuan2-7b' ? createBaichuanReference({ config, tensors: ck.tensors }).forward(PROMPT, 0) : null;
        if (other) assert.ok(maxAbsDiff(rows, other) > 1e-2, `${name}: ALiBi instead of rotary changes the logits`);
        const plainHead = createBaichuanReference({ config: { ...ck.config, norm_head: false }, tensors: ck.tensors }).forward(PROMPT, 0);
        assert.ok(maxAbsDiff(rows, plainHead) > 1e-2, `${name}: the NormHead normalisation changes the logits`);
      } finally {
        model.dispose();
      }
    }
  });

  for (const dtype of ['float16', 'bfloat16'] as const) {
    it(`${dtype} weights (NormHead normalised at load) stay close to the reference`, async () => {
      const ck = checkpoint('baichuan2-13b', dtype);
      const model = await loadModel(ck.dir, { devices: 'virtual:2', ctx: 32, kvDtype: 'float32', threads: 1 });
      try {
        const rows = model.forward(PROMPT, true);
        const ref = createBaichuanReference(ck).forward(PROMPT, 0);
        // Half-precision matrices make ggml round the activations too: a looser bound than F32's.
        assert.ok(maxAbsDiff(rows, ref) < 0.05, `differs by ${maxAbsDiff(rows, ref)}`);
      } finally {
        model.dispose();
      }
    });
  }
});

describe('Baichuan engine: the same model split over 1, 2 and 4 virtual devices', () => {
  for (const name of SPLIT_NAMES) {
    it(`${name}: identical greedy tokens, logits within 1e-5, every device under its cap and within 2 % of the prediction`, async () => {
      await assertSplitsAgree(checkpoint(name).dir, SPLIT_OPTIONS);
    });

    it(`${name}: under explicit caps the measured peak is below each cap and within 2 % of the prediction`, async () => {
      const ck = checkpoint(name);
      const opts = { devices: 'virtual:2', ctx: 128, ubatch: 8, threads: 1 };
      const model = await loadModel(ck.dir, { ...opts, maxMemory: await capsJustAbove(ck.dir, opts) });
      try {
        const rows = model.forward(PROMPT, true);
        const ref = createBaichuanReference(ck).forward(PROMPT, 0);
        assert.ok(maxAbsDiff(rows, ref) < 1e-4, `capped run differs from the reference by ${maxAbsDiff(rows, ref)}`);
        assertUnderCapsAsPredicted(model.report());
      } finally {
        model.dispose();
      }
    });
  }
});

import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { findArchitecture } from '../src/reader/architectures/index.js';
import type { ModelLayout } from '../src/reader/architectures/spec.js';
import { ConfigReader } from '../src/reader/config.js';
import { tensorBytes } from '../src/reader/dtypes.js';
import type { SkeletonTensor } from '../src/reader/skeleton.js';
import { InputError } from '../src/util/errors.js';
import { oracleDir, realModelsDir } from './helpers/paths.js';

function rawConfig(dir: string): Record<string, unknown> {
  return JSON.parse(readFileSync(join(realModelsDir, dir, 'config.json'), 'utf8')) as Record<string, unknown>;
}

function config(dir: string, patch: Record<string, unknown> = {}): ConfigReader {
  return new ConfigReader({ ...rawConfig(dir), ...patch }, `${dir}/config.json`);
}

/** Builds through the registry, as the reader does, in the config's dtype. */
function build(cfg: ConfigReader, dtype = cfg.dtype() ?? 'float32'): { family: string; layout: ModelLayout } {
  const spec = findArchitecture(cfg);
  assert.ok(spec, `no spec for ${cfg.file}`);
  return { family: spec.family, layout: spec.build(cfg, dtype) };
}

const numel = (t: SkeletonTensor): number => t.shape.reduce((a, b) => a * b, 1);

/** Parameters once per tie group, as `model.num_parameters()` counts them. */
function paramCount(l: ModelLayout): number {
  const aliases = new Set(l.tied.flatMap((g) => g.slice(1)));
  return l.tree.tensors.filter((t) => t.kind === 'param' && !aliases.has(t.name)).reduce((s, t) => s + numel(t), 0);
}

const persistent = (t: SkeletonTensor): boolean => !(t.kind === 'buffer' && t.persistent === false);

function index(dir: string): { names: string[]; total: number } {
  const file = ['model.safetensors.index.json', 'pytorch_model.bin.index.json'].map((f) => join(realModelsDir, dir, f)).find((f) => existsSync(f));
  assert.ok(file, `${dir} has no index`);
  const idx = JSON.parse(readFileSync(file, 'utf8')) as { weight_map: Record<string, string>; metadata: { total_size: number } };
  return { names: Object.keys(idx.weight_map), total: idx.metadata.total_size };
}

/**
 * Checks a synthesized layout against a real index: names equal up to tied aliases the checkpoint
 * leaves out, stored tied copies and legacy tensors; bytes equal total_size exactly.
 */
function checkAgainstIndex(dir: string, opts: { prefix?: string; storedTiedCopies?: string[]; legacy?: number } = {}): void {
  const cfg = config(dir);
  const spec = findArchitecture(cfg)!;
  const dtype = cfg.dtype() ?? 'bfloat16';
  const layout = spec.build(cfg, dtype);
  const { names, total } = index(dir);
  const stored = new Set(names.map((n) => (opts.prefix ?? '') + n));
  const aliases = new Set(layout.tied.flatMap((g) => g.slice(1)));
  const synth = layout.tree.tensors.filter(persistent);
  const synthNames = new Set(layout.tree.tensors.map((t) => t.name));

  const missing = synth.filter((t) => !stored.has(t.name) && !aliases.has(t.name)).map((t) => t.name);
  assert.deepEqual(missing, [], `${dir}: synthesized tensors absent from the index`);
  const copies = [...stored].filter((n) => aliases.has(n));
  assert.deepEqual(copies, opts.storedTiedCopies ?? [], `${dir}: stored tied copies`);
  const extra = [...stored].filter((n) => !synthNames.has(n));
  const legacy = extra.map((n) => spec.legacyTensor?.(n, cfg, dtype));
  assert.equal(legacy.filter((l) => !l).length, 0, `${dir}: stored tensors no rule explains: ${extra.slice(0, 3).join(', ')}`);
  assert.equal(extra.length, opts.legacy ?? 0, `${dir}: legacy tensors`);

  let bytes = 0;
  for (const t of synth) if (!aliases.has(t.name) || copies.includes(t.name)) bytes += tensorBytes(t.shape, t.dtype);
  for (const l of legacy) bytes += tensorBytes(l!.shape, l!.dtypes[0]!);
  assert.equal(bytes, total, `${dir}: bytes vs metadata.total_size`);
}

function oracleInput(id: string): { root_class: string; modules: unknown[]; tensors: SkeletonTensor[]; tied: string[][] } {
  return (JSON.parse(readFileSync(join(oracleDir, `${id}.json`), 'utf8')) as { input: ReturnType<typeof oracleInput> }).input;
}

describe('gpt2', () => {
  it('counts the parameters of gpt2 and gpt2-xl, lm_head tied to wte', () => {
    const small = build(config('openai-community__gpt2__config-resave')).layout;
    assert.equal(paramCount(small), 124_439_808);
    assert.deepEqual(small.tied, [['transformer.wte.weight', 'lm_head.weight']]);
    assert.deepEqual(small.noSplit, ['GPT2Block']);
    assert.equal(small.attention.kvElementsPerToken, 2 * 768);
    assert.equal(small.attention.attention, 'mha');
    const xl = build(config('openai-community__gpt2-xl'), 'float32');
    assert.equal(xl.family, 'gpt2');
    assert.equal(paramCount(xl.layout), 1_557_611_200);
  });

  it('matches the accelerate oracle module and tensor lists exactly (012)', () => {
    const want = oracleInput('012');
    const got = build(config('openai-community__gpt2__config-resave'), 'float32').layout;
    assert.equal(got.rootClass, want.root_class);
    assert.deepEqual(got.tree.modules, want.modules);
    assert.deepEqual(got.tree.tensors, want.tensors);
    assert.deepEqual(got.tied, want.tied);
  });

  it('matches the gpt2-xl oracle (014), whose tensor list leaves the mask buffers out', () => {
    const want = oracleInput('014');
    const got = build(config('openai-community__gpt2-xl'), 'float32').layout;
    assert.deepEqual(got.tree.modules, want.modules);
    assert.deepEqual(
      got.tree.tensors.filter((t) => t.kind === 'param'),
      want.tensors,
    );
    const masks = got.tree.tensors.filter((t) => t.kind === 'buffer');
    assert.equal(masks.length, 2 * 48);
    assert.ok(masks.every((t) => t.persistent === false));
  });

  it('defaults to float32 and rejects an unknown activation', () => {
    assert.equal(findArchitecture(config('openai-community__gpt2-xl'))!.defaultDtype, 'float32');
    assert.throws(() => build(config('openai-community__gpt2__config-resave', { activation_function: 'nope' })), InputError);
  });
});

describe('gptj', () => {
  it('builds pygmalion-6b: untied lm_head with bias, no mask buffers in current transformers', () => {
    const { family, layout } = build(config('PygmalionAI__pygmalion-6b'));
    assert.equal(family, 'gptj');
    assert.equal(paramCount(layout), 6_050_882_784);
    assert.deepEqual(layout.tied, []);
    assert.deepEqual(layout.noSplit, ['GPTJBlock']);
    assert.ok(layout.tree.tensors.some((t) => t.name === 'lm_head.bias'));
    assert.ok(!layout.tree.tensors.some((t) => t.kind === 'buffer'));
    assert.equal(layout.attention.kvElementsPerToken, 2 * 4096);
  });

  it('explains the saved attn.bias / masked_bias as legacy tensors (+117,440,568 B)', () => {
    const cfg = config('PygmalionAI__pygmalion-6b');
    const spec = findArchitecture(cfg)!;
    const bias = spec.legacyTensor!('transformer.h.0.attn.bias', cfg, 'float16');
    assert.deepEqual(bias, { module: 'transformer.h.0.attn', moduleClass: 'GPTJAttention', shape: [1, 1, 2048, 2048], dtypes: ['bool'] });
    const masked = spec.legacyTensor!('transformer.h.27.attn.masked_bias', cfg, 'float16');
    assert.deepEqual(masked?.shape, []);
    assert.equal(masked?.dtypes[0], 'float16');
    assert.equal(spec.legacyTensor!('transformer.h.28.attn.bias', cfg, 'float16'), undefined);
    assert.equal(28 * (tensorBytes(bias!.shape, 'bool') + tensorBytes([], 'float16')), 117_440_568);
    checkAgainstIndex('PygmalionAI__pygmalion-6b', { legacy: 56 });
  });
});

describe('chatglm', () => {
  it('counts chatglm2/3-6b and caches 2 multi-query groups of 128', () => {
    for (const dir of ['THUDM__chatglm2-6b', 'THUDM__chatglm3-6b']) {
      const { family, layout } = build(config(dir));
      assert.equal(family, 'chatglm');
      assert.equal(layout.rootClass, 'ChatGLMForConditionalGeneration');
      assert.equal(paramCount(layout), 6_243_584_000);
      assert.deepEqual(layout.tied, []);
      assert.deepEqual(layout.noSplit, ['GLMBlock']);
      assert.equal(layout.attention.numKvHeads, 2);
      assert.equal(layout.attention.headDim, 128);
      assert.equal(layout.attention.kvElementsPerToken, 2 * 2 * 128);
      assert.equal(layout.attention.attention, 'gqa');
      assert.equal(layout.attention.vocabSize, 65024);
    }
  });

  it('matches the accelerate oracle module and tensor lists exactly (017)', () => {
    const want = oracleInput('017');
    const got = build(config('THUDM__chatglm2-6b'), 'float16').layout;
    assert.equal(got.rootClass, want.root_class);
    assert.deepEqual(got.tree.modules, want.modules);
    assert.deepEqual(got.tree.tensors, want.tensors);
    assert.deepEqual(got.tied, want.tied);
  });

  it('keeps the persistent rotary inv_freq (+64 B) and matches the index', () => {
    const inv = build(config('THUDM__chatglm2-6b')).layout.tree.tensors.find((t) => t.name === 'transformer.rotary_pos_emb.inv_freq');
    assert.deepEqual(inv, { name: 'transformer.rotary_pos_emb.inv_freq', shape: [32], dtype: 'float16', kind: 'buffer', persistent: true });
    checkAgainstIndex('THUDM__chatglm2-6b');
    checkAgainstIndex('THUDM__chatglm3-6b');
  });

  it('models the int4 QuantizedLinear layout and refuses first-generation ChatGLM-6B', () => {
    const q = build(config('THUDM__chatglm2-6b', { quantization_bit: 4 })).layout.tree.tensors;
    const w = q.find((t) => t.name === 'transformer.encoder.layers.0.mlp.dense_4h_to_h.weight');
    assert.deepEqual([w?.shape, w?.dtype], [[4096, 6848], 'int8']);
    assert.ok(q.some((t) => t.name === 'transformer.encoder.layers.0.self_attention.query_key_value.weight_scale'));
    const v1 = new ConfigReader(
      {
        architectures: ['ChatGLMModel'],
        model_type: 'chatglm',
        hidden_size: 4096,
        inner_hidden_size: 16384,
        num_layers: 28,
        num_attention_heads: 32,
        vocab_size: 130528,
        position_encoding_2d: true,
      },
      'chatglm-6b/config.json',
    );
    assert.throws(() => build(v1), InputError);
  });
});

describe('baichuan', () => {
  it('builds Baichuan2-13B: ALiBi (no rotary), W_pack, NormHead, BaichuanLayer', () => {
    const { family, layout } = build(config('baichuan-inc__Baichuan2-13B-Chat'));
    assert.equal(family, 'baichuan');
    assert.equal(paramCount(layout), 13_896_668_160);
    assert.deepEqual(layout.noSplit, ['BaichuanLayer']);
    assert.deepEqual(layout.tied, []);
    const classes = new Map(layout.tree.modules.map((m) => [m.name, m.class]));
    assert.equal(classes.get('lm_head'), 'NormHead');
    assert.equal(classes.get('model.layers.0.self_attn'), 'BaichuanAttention');
    assert.ok(!layout.tree.modules.some((m) => m.name.endsWith('rotary_emb')));
    assert.ok(!layout.tree.tensors.some((t) => t.kind === 'buffer'));
    assert.deepEqual(layout.tree.tensors.find((t) => t.name === 'lm_head.weight')?.shape, [125696, 5120]);
    checkAgainstIndex('baichuan-inc__Baichuan2-13B-Chat');
  });

  it('builds the 7B variant (hidden 4096) with RoPE and DecoderLayer', () => {
    const cfg = config('baichuan-inc__Baichuan2-13B-Chat', {
      hidden_size: 4096,
      intermediate_size: 11008,
      num_attention_heads: 32,
      num_hidden_layers: 32,
      max_position_embeddings: 4096,
    });
    const l = build(cfg).layout;
    assert.deepEqual(l.noSplit, ['DecoderLayer']);
    const classes = new Map(l.tree.modules.map((m) => [m.name, m.class]));
    assert.equal(classes.get('model.layers.0.self_attn.rotary_emb'), 'RotaryEmbedding');
    assert.equal(classes.get('model.layers.0.self_attn'), 'Attention');
    assert.equal(paramCount(l), 7_505_973_248);
  });

  it('refuses the first Baichuan-7B (BaiChuanForCausalLM), reached through model_type', () => {
    assert.throws(() => build(config('baichuan-inc__Baichuan2-13B-Chat', { architectures: ['BaiChuanForCausalLM'] })), InputError);
  });
});

describe('falcon', () => {
  it('falcon-7b: multi-query (one KV head), input_layernorm only, tied head stored anyway', () => {
    for (const dir of ['tiiuae__falcon-7b-instruct', 'tiiuae__falcon-7b__early-RW']) {
      const { family, layout } = build(config(dir));
      assert.equal(family, 'falcon');
      assert.equal(paramCount(layout), 6_921_720_704);
      assert.deepEqual(layout.tied, [['transformer.word_embeddings.weight', 'lm_head.weight']]);
      assert.equal(layout.attention.attention, 'mqa');
      assert.equal(layout.attention.kvElementsPerToken, 2 * 64);
      assert.ok(layout.tree.modules.some((m) => m.name === 'transformer.h.0.input_layernorm'));
      assert.ok(!layout.tree.modules.some((m) => m.name === 'transformer.h.0.ln_attn'));
      checkAgainstIndex(dir, { storedTiedCopies: ['lm_head.weight'] });
    }
  });

  it('uses the current class names for FalconForCausalLM and the RW ones for RWForCausalLM', () => {
    const cur = build(config('tiiuae__falcon-7b-instruct')).layout;
    assert.equal(cur.rootClass, 'FalconForCausalLM');
    assert.deepEqual(cur.noSplit, ['FalconDecoderLayer']);
    // transformers registers the norms after attention and MLP.
    assert.deepEqual(
      cur.tree.modules.filter((m) => /^transformer\.h\.0\.[^.]+$/.test(m.name)).map((m) => m.name.split('.').pop()),
      ['self_attention', 'mlp', 'input_layernorm'],
    );
    const rw = build(config('tiiuae__falcon-7b__early-RW')).layout;
    assert.equal(rw.rootClass, 'RWForCausalLM');
    assert.deepEqual(rw.noSplit, ['DecoderLayer']);
    assert.deepEqual(
      rw.tree.modules.filter((m) => /^transformer\.h\.0\.[^.]+$/.test(m.name)).map((m) => m.name.split('.').pop()),
      ['input_layernorm', 'self_attention', 'mlp'],
    );
  });

  it('falcon-40b (RW) and falcon-180B: new decoder architecture, ln_attn + ln_mlp, 8 KV groups', () => {
    const b40 = build(config('tiiuae__falcon-40b')).layout;
    assert.equal(paramCount(b40), 41_303_293_952);
    assert.equal(b40.attention.numKvHeads, 8);
    assert.equal(b40.attention.kvElementsPerToken, 2 * 8 * 64);
    assert.ok(b40.tree.modules.some((m) => m.name === 'transformer.h.59.ln_mlp'));
    checkAgainstIndex('tiiuae__falcon-40b', { storedTiedCopies: ['lm_head.weight'] });
    const b180 = build(config('tiiuae__falcon-180B-chat')).layout;
    assert.equal(paramCount(b180), 178_557_088_768);
    assert.equal(b180.attention.attention, 'gqa');
    checkAgainstIndex('tiiuae__falcon-180B-chat', { storedTiedCopies: ['lm_head.weight'] });
  });
});

describe('bloom', () => {
  it('builds bigscience/bloom: tied head, ALiBi without position tensors', () => {
    const { family, layout } = build(config('bigscience__bloom'), 'bfloat16');
    assert.equal(family, 'bloom');
    assert.equal(paramCount(layout), 176_247_271_424);
    assert.deepEqual(layout.tied, [['transformer.word_embeddings.weight', 'lm_head.weight']]);
    assert.deepEqual(layout.noSplit, ['BloomBlock']);
    assert.ok(!layout.tree.tensors.some((t) => t.kind === 'buffer'));
    assert.equal(layout.attention.numHeads, 112);
    assert.equal(layout.attention.hiddenSize, 14336);
  });

  it('matches the index once its base-model names get the transformer. prefix', () => {
    checkAgainstIndex('bigscience__bloom', { prefix: 'transformer.' });
  });
});

describe('phi-mixformer', () => {
  it('builds phi-2 as one Sequential: embedding, 32 ParallelBlocks, CausalLMHead', () => {
    const { family, layout } = build(config('microsoft__phi-2__mixformer-era'));
    assert.equal(family, 'phi-mixformer');
    assert.equal(paramCount(layout), 2_779_683_840);
    assert.deepEqual(layout.noSplit, ['ParallelBlock']);
    const classes = new Map(layout.tree.modules.map((m) => [m.name, m.class]));
    assert.equal(classes.get('layers.0'), 'Embedding');
    assert.equal(classes.get('layers.1'), 'ParallelBlock');
    assert.equal(classes.get('layers.32'), 'ParallelBlock');
    assert.equal(classes.get('layers.33'), 'CausalLMHead');
    assert.equal(layout.attention.kvElementsPerToken, 2 * 2560);
    checkAgainstIndex('microsoft__phi-2__mixformer-era');
  });
});

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { findArchitecture } from '../src/reader/architectures/index.js';
import type { ArchitectureSpec, ModelLayout } from '../src/reader/architectures/spec.js';
import { ConfigReader } from '../src/reader/config.js';
import { InputError } from '../src/util/errors.js';
import { oracleDir, realModelsDir } from './helpers/paths.js';

function rawConfig(dir: string): Record<string, unknown> {
  return JSON.parse(readFileSync(join(realModelsDir, dir, 'config.json'), 'utf8')) as Record<string, unknown>;
}

function config(dir: string, patch: Record<string, unknown> = {}): ConfigReader {
  return new ConfigReader({ ...rawConfig(dir), ...patch }, `${dir}/config.json`);
}

function specFor(cfg: ConfigReader): ArchitectureSpec {
  const spec = findArchitecture(cfg);
  assert.ok(spec, `no spec for ${cfg.file}`);
  return spec;
}

function build(dir: string, patch: Record<string, unknown> = {}): ModelLayout {
  const cfg = config(dir, patch);
  return specFor(cfg).build(cfg, cfg.dtype() ?? 'bfloat16');
}

/** Parameters as transformers counts them: tied groups once. */
function paramCount(l: ModelLayout): number {
  const aliases = new Set(l.tied.flatMap((g) => g.slice(1)));
  let n = 0;
  for (const t of l.tree.tensors) if (t.kind === 'param' && !aliases.has(t.name)) n += t.shape.reduce((a, b) => a * b, 1);
  return n;
}

function tensor(l: ModelLayout, name: string) {
  const t = l.tree.tensors.find((x) => x.name === name);
  assert.ok(t, `${name} not synthesized`);
  return t;
}

function has(l: ModelLayout, name: string): boolean {
  return l.tree.tensors.some((t) => t.name === name);
}

function moduleClass(l: ModelLayout, name: string): string | undefined {
  return l.tree.modules.find((m) => m.name === name)?.class;
}

function childrenOf(l: ModelLayout, parent: string): string[] {
  return l.tree.modules
    .filter((m) => m.name.startsWith(`${parent}.`) && !m.name.slice(parent.length + 1).includes('.'))
    .map((m) => m.name.slice(parent.length + 1));
}

describe('mistral', () => {
  it('Mistral-7B-v0.1 has 7,241,732,096 parameters and a 4096-token window', () => {
    const l = build('mistralai__Mistral-7B-v0.1');
    assert.equal(l.rootClass, 'MistralForCausalLM');
    assert.equal(paramCount(l), 7_241_732_096);
    assert.deepEqual(l.noSplit, ['MistralDecoderLayer']);
    assert.deepEqual(l.tied, []);
    assert.equal(l.attention.attention, 'gqa');
    assert.equal(l.attention.kvElementsPerToken, 2 * 8 * 128);
    assert.equal(l.attention.slidingWindow, 4096);
    assert.equal(moduleClass(l, 'model.rotary_emb'), 'MistralRotaryEmbedding');
    assert.equal(tensor(l, 'model.rotary_emb.inv_freq').persistent, false);
  });

  it('v0.3 (sliding_window: null) has no window; a config without the key gets MistralConfig’s 4096', () => {
    assert.equal(build('mistralai__Mistral-7B-Instruct-v0.3').attention.slidingWindow, undefined);
    const raw = rawConfig('mistralai__Mistral-7B-v0.1');
    delete raw['sliding_window'];
    const cfg = new ConfigReader(raw, 'no-window');
    assert.equal(specFor(cfg).build(cfg, 'bfloat16').attention.slidingWindow, 4096);
  });
});

describe('qwen2', () => {
  it('biases q, k and v but not o', () => {
    const l = build('deepcogito__cogito-v1-preview-qwen-14B');
    for (const p of ['q_proj', 'k_proj', 'v_proj']) assert.deepEqual(tensor(l, `model.layers.0.self_attn.${p}.bias`).shape, [p === 'q_proj' ? 5120 : 1024]);
    assert.equal(has(l, 'model.layers.0.self_attn.o_proj.bias'), false);
    assert.equal(paramCount(l), 14_765_947_904);
  });

  it('reports no window when use_sliding_window is false, whatever sliding_window says', () => {
    assert.equal(build('deepcogito__cogito-v1-preview-qwen-14B').attention.slidingWindow, undefined);
    assert.equal(build('Qwen__Qwen2.5-Math-72B-Instruct').attention.slidingWindow, undefined);
    const on = build('Qwen__Qwen2.5-Math-72B-Instruct', { use_sliding_window: true });
    assert.equal(on.attention.slidingWindow, 4096, 'layers 70..79 slide');
    assert.equal(build('Qwen__Qwen2.5-Math-72B-Instruct', { use_sliding_window: true, max_window_layers: 80 }).attention.slidingWindow, undefined);
  });

  it('Qwen2.5-Math-72B has 72,706,203,648 parameters', () => {
    assert.equal(paramCount(build('Qwen__Qwen2.5-Math-72B-Instruct')), 72_706_203_648);
  });
});

describe('qwen3', () => {
  it('Qwen3-8B from its config alone has 8,190,735,360 parameters', () => {
    const l = build('Qwen__Qwen3-8B__config-only');
    assert.equal(paramCount(l), 8_190_735_360);
    assert.equal(tensor(l, 'model.embed_tokens.weight').dtype, 'float32');
  });

  it('registers q_norm and k_norm of head_dim after o_proj', () => {
    const l = build('Qwen__Qwen3-8B__config-only');
    assert.deepEqual(childrenOf(l, 'model.layers.0.self_attn'), ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'q_norm', 'k_norm']);
    assert.equal(moduleClass(l, 'model.layers.0.self_attn.q_norm'), 'Qwen3RMSNorm');
    assert.deepEqual(tensor(l, 'model.layers.0.self_attn.k_norm.weight').shape, [128]);
    assert.deepEqual(tensor(l, 'model.layers.0.self_attn.k_proj.weight').shape, [8 * 128, 4096]);
  });

  it('takes head_dim from the config, defaulting to 128 rather than hidden / heads', () => {
    const l = build('Qwen__Qwen3-1.7B__fp16-resave', { head_dim: undefined });
    assert.equal(l.attention.headDim, 128);
    assert.deepEqual(tensor(l, 'model.layers.0.self_attn.q_proj.weight').shape, [16 * 128, 2048]);
    assert.equal(build('Qwen__Qwen3-1.7B__fp16-resave', { head_dim: 64 }).attention.headDim, 64);
  });

  it('ties lm_head to the embedding when the config says so', () => {
    const l = build('Qwen__Qwen3-1.7B__fp16-resave');
    assert.deepEqual(l.tied, [['model.embed_tokens.weight', 'lm_head.weight']]);
    assert.equal(paramCount(l), 1_720_574_976);
    assert.deepEqual(build('Qwen__Qwen3-8B__config-only').tied, []);
  });
});

describe('qwen3-moe', () => {
  it('Qwen3-Coder-30B-A3B has 30,532,122,624 parameters in 128-expert layers with no shared expert', () => {
    const l = build('Qwen__Qwen3-Coder-30B-A3B-Instruct__config-only');
    assert.equal(paramCount(l), 30_532_122_624);
    assert.equal(moduleClass(l, 'model.layers.0.mlp'), 'Qwen3MoeSparseMoeBlock');
    assert.deepEqual(childrenOf(l, 'model.layers.0.mlp'), ['gate', 'experts']);
    assert.deepEqual(tensor(l, 'model.layers.0.mlp.gate.weight').shape, [128, 2048]);
    assert.deepEqual(tensor(l, 'model.layers.47.mlp.experts.127.down_proj.weight').shape, [2048, 768]);
    assert.equal(moduleClass(l, 'model.layers.0.mlp.experts.0'), 'Qwen3MoeMLP');
    assert.equal(has(l, 'model.layers.0.mlp.experts.128.up_proj.weight'), false);
    assert.deepEqual(childrenOf(l, 'model.layers.0.self_attn'), ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'q_norm', 'k_norm']);
    assert.equal(l.attention.numExperts, 128);
    assert.equal(l.attention.expertsPerToken, 8);
    assert.equal(l.attention.kvElementsPerToken, 2 * 4 * 128);
  });

  it('keeps mlp_only_layers and off-step layers dense', () => {
    const l = build('Qwen__Qwen3-Coder-30B-A3B-Instruct__config-only', { mlp_only_layers: [0], decoder_sparse_step: 2 });
    assert.equal(moduleClass(l, 'model.layers.0.mlp'), 'Qwen3MoeMLP');
    assert.deepEqual(tensor(l, 'model.layers.0.mlp.gate_proj.weight').shape, [5472, 2048]);
    assert.equal(moduleClass(l, 'model.layers.1.mlp'), 'Qwen3MoeSparseMoeBlock', '(1 + 1) % 2 == 0');
    assert.equal(moduleClass(l, 'model.layers.2.mlp'), 'Qwen3MoeMLP');
  });

  it('falls back to hidden / heads without head_dim, as Qwen3MoeConfig has no default for it', () => {
    const l = build('Qwen__Qwen3-Coder-30B-A3B-Instruct__config-only', { head_dim: undefined });
    assert.equal(l.attention.headDim, 2048 / 32);
    assert.deepEqual(tensor(l, 'model.layers.0.self_attn.q_norm.weight').shape, [64]);
  });

  it('rejects a malformed mlp_only_layers or a zero decoder_sparse_step', () => {
    assert.throws(() => build('Qwen__Qwen3-Coder-30B-A3B-Instruct__config-only', { mlp_only_layers: 'all' }), InputError);
    assert.throws(() => build('Qwen__Qwen3-Coder-30B-A3B-Instruct__config-only', { decoder_sparse_step: 0 }), InputError);
  });
});

describe('mixtral', () => {
  it('reproduces the module tree and tensors real transformers built (oracle case 020)', () => {
    const oracle = JSON.parse(readFileSync(join(oracleDir, '020.json'), 'utf8')).input;
    const l = build('mistralai__Mixtral-8x7B-v0.1');
    assert.equal(l.rootClass, oracle.root_class);
    assert.deepEqual(l.tree.modules, oracle.modules);
    assert.deepEqual(
      l.tree.tensors.map((t) => [t.name, t.shape, t.dtype, t.kind, t.persistent]),
      oracle.tensors.map((t: { name: string; shape: number[]; dtype: string; kind: string; persistent?: boolean }) => [
        t.name,
        t.shape,
        t.dtype,
        t.kind,
        t.persistent,
      ]),
    );
    assert.deepEqual(l.noSplit, oracle.no_split_module_classes);
    assert.deepEqual(l.tied, oracle.tied);
  });

  it('counts 46,702,792,704 parameters for 8x7B and 140,620,634,112 for 8x22B', () => {
    assert.equal(paramCount(build('mistralai__Mixtral-8x7B-v0.1')), 46_702_792_704);
    const big = build('alpindale__WizardLM-2-8x22B');
    assert.equal(paramCount(big), 140_620_634_112);
    assert.equal(big.attention.numExperts, 8);
    assert.equal(big.attention.expertsPerToken, 2);
  });
});

describe('gemma', () => {
  it('gemma-2b ties its head by default, counts the embedding once, and is MQA with 256-wide heads', () => {
    const l = build('google__gemma-2b-it');
    assert.equal(l.rootClass, 'GemmaForCausalLM');
    assert.deepEqual(l.tied, [['model.embed_tokens.weight', 'lm_head.weight']], 'config has no tie_word_embeddings key');
    assert.equal(paramCount(l), 2_506_172_416);
    assert.equal(l.attention.attention, 'mqa');
    assert.equal(l.attention.headDim, 256);
    assert.equal(l.attention.kvElementsPerToken, 2 * 1 * 256);
    assert.equal(l.attention.slidingWindow, undefined);
    // transformers 4.5x builds act_fn from hidden_act, which gemma-2b's config sets to exact gelu.
    assert.equal(moduleClass(l, 'model.layers.0.mlp.act_fn'), 'GELUActivation');
    assert.deepEqual(build('google__gemma-2b-it', { tie_word_embeddings: false }).tied, []);
  });

  it('gemma-2 adds pre/post feed-forward norms and slides every other layer over 4096 tokens', () => {
    const l = build('google__gemma-2-9b-it');
    assert.equal(l.rootClass, 'Gemma2ForCausalLM');
    assert.equal(paramCount(l), 9_241_705_984);
    assert.deepEqual(childrenOf(l, 'model.layers.0'), [
      'self_attn',
      'mlp',
      'input_layernorm',
      'post_attention_layernorm',
      'pre_feedforward_layernorm',
      'post_feedforward_layernorm',
    ]);
    assert.equal(moduleClass(l, 'model.layers.0.pre_feedforward_layernorm'), 'Gemma2RMSNorm');
    assert.equal(moduleClass(l, 'model.layers.0.mlp.act_fn'), 'GELUTanh');
    assert.deepEqual(l.noSplit, ['Gemma2DecoderLayer']);
    assert.equal(l.attention.slidingWindow, 4096);
    assert.equal(l.attention.kvElementsPerToken, 2 * 8 * 256);
    assert.deepEqual(l.tied, [['model.embed_tokens.weight', 'lm_head.weight']]);
  });

  it('gemma-2 window follows sliding_window and layer_types, defaulting to 4096', () => {
    assert.equal(build('google__gemma-2-9b-it', { sliding_window: undefined }).attention.slidingWindow, 4096);
    assert.equal(build('google__gemma-2-9b-it', { sliding_window: 1024 }).attention.slidingWindow, 1024);
    assert.equal(build('google__gemma-2-9b-it', { layer_types: Array(42).fill('full_attention') }).attention.slidingWindow, undefined);
  });
});

describe('deepseek-v3', () => {
  const l = build('deepseek-ai__DeepSeek-V3__config-only');

  it('has 671,026,404,352 parameters without the multi-token-prediction layer', () => {
    assert.equal(paramCount(l), 671_026_404_352);
    assert.equal(l.blocks.count, 61);
    assert.equal(has(l, 'model.layers.61.eh_proj.weight'), false);
  });

  it('builds MLA attention with low-rank q and kv projections', () => {
    assert.deepEqual(childrenOf(l, 'model.layers.0.self_attn'), [
      'q_a_proj',
      'q_a_layernorm',
      'q_b_proj',
      'kv_a_proj_with_mqa',
      'kv_a_layernorm',
      'kv_b_proj',
      'o_proj',
    ]);
    assert.deepEqual(tensor(l, 'model.layers.0.self_attn.q_a_proj.weight').shape, [1536, 7168]);
    assert.deepEqual(tensor(l, 'model.layers.0.self_attn.q_b_proj.weight').shape, [128 * 192, 1536]);
    assert.deepEqual(tensor(l, 'model.layers.0.self_attn.kv_a_proj_with_mqa.weight').shape, [512 + 64, 7168]);
    assert.deepEqual(tensor(l, 'model.layers.0.self_attn.kv_b_proj.weight').shape, [128 * (128 + 128), 512]);
    assert.deepEqual(tensor(l, 'model.layers.0.self_attn.o_proj.weight').shape, [7168, 128 * 128]);
    assert.deepEqual(tensor(l, 'model.rotary_emb.inv_freq').shape, [32]);
  });

  it('uses a plain q_proj when q_lora_rank is null', () => {
    const lite = build('deepseek-ai__DeepSeek-V3__config-only', { q_lora_rank: null, num_hidden_layers: 2 });
    assert.deepEqual(childrenOf(lite, 'model.layers.0.self_attn'), ['q_proj', 'kv_a_proj_with_mqa', 'kv_a_layernorm', 'kv_b_proj', 'o_proj']);
    assert.deepEqual(tensor(lite, 'model.layers.0.self_attn.q_proj.weight').shape, [128 * 192, 7168]);
  });

  it('keeps first_k_dense_replace layers dense, then experts, router and shared experts', () => {
    assert.equal(moduleClass(l, 'model.layers.2.mlp'), 'DeepseekV3MLP');
    assert.deepEqual(tensor(l, 'model.layers.2.mlp.gate_proj.weight').shape, [18432, 7168]);
    assert.equal(moduleClass(l, 'model.layers.3.mlp'), 'DeepseekV3MoE');
    assert.deepEqual(childrenOf(l, 'model.layers.3.mlp'), ['experts', 'gate', 'shared_experts']);
    assert.equal(moduleClass(l, 'model.layers.3.mlp.gate'), 'DeepseekV3TopkRouter');
    const gate = tensor(l, 'model.layers.3.mlp.gate.weight');
    assert.deepEqual([gate.kind, gate.shape], ['param', [256, 7168]]);
    const bias = tensor(l, 'model.layers.3.mlp.gate.e_score_correction_bias');
    assert.deepEqual([bias.kind, bias.persistent, bias.shape], ['buffer', true, [256]]);
    assert.deepEqual(tensor(l, 'model.layers.60.mlp.experts.255.down_proj.weight').shape, [7168, 2048]);
    assert.deepEqual(tensor(l, 'model.layers.3.mlp.shared_experts.up_proj.weight').shape, [2048, 7168]);
  });

  it('reports the uncompressed and the latent KV cache', () => {
    assert.equal(l.attention.attention, 'mla');
    assert.equal(l.attention.kvElementsPerToken, 128 * (128 + 64) + 128 * 128);
    assert.equal(l.attention.kvLatentElementsPerToken, 512 + 64);
    assert.equal(l.attention.numExperts, 256);
    assert.equal(l.attention.expertsPerToken, 8);
  });

  it('sets aside the stored MTP layer (model.layers.61) that transformers does not load', () => {
    const cfg = config('deepseek-ai__DeepSeek-V3__config-only');
    const spec = specFor(cfg);
    const ignored = (name: string) => spec.ignoredStored?.(name, cfg);
    assert.match(ignored('model.layers.61.eh_proj.weight') ?? '', /multi-token-prediction/);
    assert.match(ignored('model.layers.61.mlp.experts.17.gate_proj.weight') ?? '', /multi-token-prediction/);
    assert.equal(ignored('model.layers.62.eh_proj.weight'), undefined, 'only num_nextn_predict_layers of them');
    assert.equal(ignored('model.layers.60.mlp.gate.weight'), undefined, 'real decoder layers are loaded');
  });
});

describe('qwen (v1, remote code)', () => {
  it('Qwen-7B has 7,721,324,544 parameters in transformer.h blocks', () => {
    const cfg = config('Qwen__Qwen-7B');
    const spec = specFor(cfg);
    assert.equal(cfg.dtype(), undefined, 'bf16/fp16/fp32 flags all false');
    assert.equal(spec.defaultDtype, 'bfloat16');
    const l = spec.build(cfg, 'bfloat16');
    assert.equal(l.rootClass, 'QWenLMHeadModel');
    assert.equal(paramCount(l), 7_721_324_544);
    assert.deepEqual(l.noSplit, ['QWenBlock']);
    assert.deepEqual(l.blocks, { prefix: 'transformer.h', count: 32, class: 'QWenBlock' });
    assert.deepEqual(childrenOf(l, 'transformer'), ['wte', 'drop', 'rotary_emb', 'h', 'ln_f']);
    assert.deepEqual(childrenOf(l, 'transformer.h.0'), ['ln_1', 'attn', 'ln_2', 'mlp']);
    assert.deepEqual(childrenOf(l, 'transformer.h.0.attn'), ['c_attn', 'c_proj', 'attn_dropout']);
    assert.deepEqual(tensor(l, 'transformer.h.0.attn.c_attn.bias').shape, [3 * 4096]);
    assert.equal(has(l, 'transformer.h.0.attn.c_proj.bias'), false, 'no_bias');
    // intermediate_size counts both SwiGLU branches.
    assert.deepEqual(tensor(l, 'transformer.h.0.mlp.w1.weight').shape, [11008, 4096]);
    assert.deepEqual(tensor(l, 'transformer.h.0.mlp.c_proj.weight').shape, [4096, 11008]);
    assert.equal(l.attention.kvElementsPerToken, 2 * 32 * 128);
    assert.equal(l.attention.attention, 'mha');
  });

  it('casts its non-persistent buffers with the model', () => {
    const cfg = config('Qwen__Qwen-7B');
    const l = specFor(cfg).build(cfg, 'bfloat16');
    for (const name of ['transformer.rotary_emb.inv_freq', 'transformer.h.0.attn.masked_bias', 'transformer.h.0.attn.logn_tensor']) {
      const t = tensor(l, name);
      assert.deepEqual([t.kind, t.persistent, t.dtype], ['buffer', false, 'bfloat16'], name);
    }
    assert.deepEqual(tensor(l, 'transformer.h.0.attn.logn_tensor').shape, [1, 32767, 1, 1]);
    assert.deepEqual(tensor(l, 'transformer.rotary_emb.inv_freq').shape, [64]);
    assert.equal(
      specFor(cfg)
        .build(cfg, 'float32')
        .tree.tensors.find((t) => t.name === 'transformer.h.0.attn.masked_bias')?.dtype,
      'float32',
    );
  });

  it('Qwen-72B reads its padded vocabulary', () => {
    const l = build('Qwen__Qwen-72B');
    assert.equal(paramCount(l), 72_287_920_128);
    assert.deepEqual(tensor(l, 'lm_head.weight').shape, [152064, 8192]);
  });
});

describe('registry', () => {
  it('finds each family by architecture and by model_type', () => {
    const cases: [string, string, string][] = [
      ['MistralForCausalLM', 'mistral', 'mistral'],
      ['Qwen2ForCausalLM', 'qwen2', 'qwen2'],
      ['Qwen3ForCausalLM', 'qwen3', 'qwen3'],
      ['MixtralForCausalLM', 'mixtral', 'mixtral'],
      ['Qwen3MoeForCausalLM', 'qwen3_moe', 'qwen3-moe'],
      ['GemmaForCausalLM', 'gemma', 'gemma'],
      ['Gemma2ForCausalLM', 'gemma2', 'gemma2'],
      ['DeepseekV3ForCausalLM', 'deepseek_v3', 'deepseek-v3'],
      ['QWenLMHeadModel', 'qwen', 'qwen'],
    ];
    for (const [arch, type, family] of cases) {
      assert.equal(findArchitecture(new ConfigReader({ architectures: [arch] }, 'x'))?.family, family, arch);
      assert.equal(findArchitecture(new ConfigReader({ model_type: type }, 'x'))?.family, family, type);
    }
  });
});

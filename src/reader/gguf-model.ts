import { FormatError } from '../util/errors.js';
import { ConfigReader } from './config.js';
import { readGgufHeader } from './formats/gguf.js';
import type { StoredTensor } from './reconcile.js';
import type { Skeleton, SkeletonSource } from './skeleton.js';
import { buildSkeleton } from './build-skeleton.js';

/**
 * GGUF files carry llama.cpp's own tensor names (`blk.N.attn_q.weight`) and hyper-parameters under
 * `<arch>.*` keys. For the families vramfit has specs for, both are translated to their Hugging Face
 * form so a GGUF model gets the same module structure as its safetensors original.
 */
interface GgufFamily {
  hfArchitecture: string;
  modelType: string;
  names: GgufNames;
}

/** Where llama.cpp's names go in the transformers model: whole-model tensors, and one layer's pieces. */
interface GgufNames {
  global: Record<string, string>;
  /** The transformers prefix of layer N is `${layers}.N`. */
  layers: string;
  pieces: Record<string, string>;
  /** Tensors llama.cpp writes transposed relative to transformers (GPT-2's Conv1D weights). */
  transposed?: RegExp;
  /** Buffers llama.cpp's converter drops because the model recomputes them. */
  recomputed?: RegExp;
}

/** llama.cpp tensor name pieces → transformers names (llama-style families). */
const LLAMA_NAMES: GgufNames = {
  global: {
    'token_embd.weight': 'model.embed_tokens.weight',
    'output_norm.weight': 'model.norm.weight',
    'output.weight': 'lm_head.weight',
  },
  layers: 'model.layers',
  pieces: {
    attn_norm: 'input_layernorm',
    attn_q: 'self_attn.q_proj',
    attn_k: 'self_attn.k_proj',
    attn_v: 'self_attn.v_proj',
    attn_output: 'self_attn.o_proj',
    attn_q_norm: 'self_attn.q_norm',
    attn_k_norm: 'self_attn.k_norm',
    ffn_norm: 'post_attention_layernorm',
    ffn_gate: 'mlp.gate_proj',
    ffn_up: 'mlp.up_proj',
    ffn_down: 'mlp.down_proj',
  },
};

/** GPT2LMHeadModel (llama.cpp's convert_hf_to_gguf GPT2Model transposes the Conv1D weights to Linear layout). */
const GPT2_NAMES: GgufNames = {
  global: {
    'token_embd.weight': 'transformer.wte.weight',
    'position_embd.weight': 'transformer.wpe.weight',
    'output_norm.weight': 'transformer.ln_f.weight',
    'output_norm.bias': 'transformer.ln_f.bias',
    'output.weight': 'lm_head.weight',
  },
  layers: 'transformer.h',
  pieces: { attn_norm: 'ln_1', attn_qkv: 'attn.c_attn', attn_output: 'attn.c_proj', ffn_norm: 'ln_2', ffn_up: 'mlp.c_fc', ffn_down: 'mlp.c_proj' },
  transposed: /\.(c_attn|c_proj|c_fc)\.weight$/,
};

/** ChatGLM2/3 and GLM-4 (llama.cpp architecture `chatglm`: fused query_key_value, fused dense_h_to_4h). */
const CHATGLM_NAMES: GgufNames = {
  global: {
    'token_embd.weight': 'transformer.embedding.word_embeddings.weight',
    'output_norm.weight': 'transformer.encoder.final_layernorm.weight',
    'output.weight': 'transformer.output_layer.weight',
  },
  layers: 'transformer.encoder.layers',
  pieces: {
    attn_norm: 'input_layernorm',
    attn_qkv: 'self_attention.query_key_value',
    attn_output: 'self_attention.dense',
    ffn_norm: 'post_attention_layernorm',
    ffn_up: 'mlp.dense_h_to_4h',
    ffn_down: 'mlp.dense_4h_to_h',
  },
  recomputed: /\.rotary_pos_emb\.inv_freq$/,
};

const FAMILIES: Record<string, GgufFamily> = {
  llama: { hfArchitecture: 'LlamaForCausalLM', modelType: 'llama', names: LLAMA_NAMES },
  mistral: { hfArchitecture: 'MistralForCausalLM', modelType: 'mistral', names: LLAMA_NAMES },
  qwen2: { hfArchitecture: 'Qwen2ForCausalLM', modelType: 'qwen2', names: LLAMA_NAMES },
  qwen3: { hfArchitecture: 'Qwen3ForCausalLM', modelType: 'qwen3', names: LLAMA_NAMES },
  qwen3moe: { hfArchitecture: 'Qwen3MoeForCausalLM', modelType: 'qwen3_moe', names: LLAMA_NAMES },
  gpt2: { hfArchitecture: 'GPT2LMHeadModel', modelType: 'gpt2', names: GPT2_NAMES },
  chatglm: { hfArchitecture: 'ChatGLMModel', modelType: 'chatglm', names: CHATGLM_NAMES },
  // llama.cpp splits W_pack into attn_q/k/v (q and k permuted for its NORMAL rope, as for Llama).
  baichuan: { hfArchitecture: 'BaichuanForCausalLM', modelType: 'baichuan', names: LLAMA_NAMES },
};

/** llama.cpp writes Mixtral as architecture `llama` with experts. */
const MIXTRAL: GgufFamily = { hfArchitecture: 'MixtralForCausalLM', modelType: 'mixtral', names: LLAMA_NAMES };

/** The GGUF architectures whose files the reader maps to transformers names (and the engine runs). */
export const GGUF_MAPPED_ARCHITECTURES = Object.keys(FAMILIES);

/** Where each MoE family keeps its router and experts, and its experts' projection names (gate, up, down). */
const MOE_NAMES: Record<string, { block: string; proj: [string, string, string] }> = {
  mixtral: { block: 'block_sparse_moe', proj: ['w1', 'w3', 'w2'] },
  qwen3_moe: { block: 'mlp', proj: ['gate_proj', 'up_proj', 'down_proj'] },
};
const EXPERT_PROJ = { ffn_gate: 0, ffn_up: 1, ffn_down: 2 } as const;

/**
 * Maps a GGUF tensor name to its transformers name; undefined when there is no counterpart. `modelType` names the
 * family (its naming, and the MoE family whose router and per-expert tensors — `blk.N.ffn_gate_inp`, older files'
 * `blk.N.ffn_gate.E` — to map); llama-style names when absent.
 */
export function hfNameForGguf(name: string, modelType?: string): string | undefined {
  const names = familyOfType(modelType)?.names ?? LLAMA_NAMES;
  const global = names.global[name];
  if (global) return global;
  const moe = modelType ? MOE_NAMES[modelType] : undefined;
  const expert = /^blk\.(\d+)\.(ffn_gate|ffn_up|ffn_down)\.(\d+)\.weight$/.exec(name);
  if (expert && moe)
    return `model.layers.${expert[1]}.${moe.block}.experts.${expert[3]}.${moe.proj[EXPERT_PROJ[expert[2] as keyof typeof EXPERT_PROJ]]}.weight`;
  const m = /^blk\.(\d+)\.([a-z_0-9]+)\.(weight|bias)$/.exec(name);
  if (!m) return undefined;
  if (moe && m[2] === 'ffn_gate_inp') return `model.layers.${m[1]}.${moe.block}.gate.${m[3]}`;
  const piece = names.pieces[m[2]!];
  return piece ? `${names.layers}.${m[1]}.${piece}.${m[3]}` : undefined;
}

/**
 * The GGUF architecture llama.cpp's converter writes each dense Llama-style model type as — the ones `vramfit
 * quantize` writes. Mistral is written as `llama` (q/k rows permuted for NORMAL rope, as for Llama).
 */
export const GGUF_EXPORT_ARCHITECTURE: Readonly<Record<string, string>> = { llama: 'llama', mistral: 'llama', qwen2: 'qwen2', qwen3: 'qwen3' };

/** llama.cpp's name for a transformers tensor of a Llama-style model (the inverse of the reader's table). */
export function ggufNameForHf(name: string): string | undefined {
  for (const [gguf, hf] of Object.entries(LLAMA_NAMES.global)) if (hf === name) return gguf;
  const m = /^model\.layers\.(\d+)\.(.+)\.(weight|bias)$/.exec(name);
  if (!m) return undefined;
  const piece = Object.entries(LLAMA_NAMES.pieces).find(([, hf]) => hf === m[2])?.[0];
  return piece ? `blk.${m[1]}.${piece}.${m[3]}` : undefined;
}

function familyOfType(modelType: string | undefined): GgufFamily | undefined {
  if (modelType === undefined) return undefined;
  return modelType === MIXTRAL.modelType ? MIXTRAL : Object.values(FAMILIES).find((f) => f.modelType === modelType);
}

/**
 * llama.cpp stores a layer's experts as one 3-D tensor (`blk.N.ffn_gate_exps.weight`, [experts, rows, cols]),
 * expert-major, so expert e is one contiguous byte range: each becomes the per-expert tensor transformers names,
 * and the engine stacks them back as it does a safetensors checkpoint's.
 */
function splitExperts(
  t: StoredTensor & { shape: number[]; location: { file: string; range: [number, number] } },
  modelType: string,
  file: string,
): StoredTensor[] | undefined {
  const m = /^blk\.(\d+)\.(ffn_gate|ffn_up|ffn_down)_exps\.weight$/.exec(t.name);
  const moe = MOE_NAMES[modelType];
  if (!m || !moe) return undefined;
  if (t.shape.length !== 3) throw new FormatError(file, `${t.name} has shape [${t.shape.join(', ')}], expected [experts, rows, columns]`);
  const [experts, ...shape] = t.shape as [number, number, number];
  const [start, end] = t.location.range;
  if (experts < 1 || (end - start) % experts !== 0) throw new FormatError(file, `${t.name}: ${end - start} bytes do not split into ${experts} experts`);
  const each = (end - start) / experts;
  const proj = moe.proj[EXPERT_PROJ[m[2] as keyof typeof EXPERT_PROJ]];
  return Array.from({ length: experts }, (_, e) => ({
    name: `model.layers.${m[1]}.${moe.block}.experts.${e}.${proj}.weight`,
    shape,
    dtype: t.dtype,
    location: { file: t.location.file, range: [start + e * each, start + (e + 1) * each] as [number, number] },
  }));
}

type Meta = Record<string, unknown>;

/** A numeric metadata value; a key present with another type is refused rather than ignored. */
function num(meta: Meta, key: string, file: string): number | undefined {
  const v = meta[key];
  if (v === undefined) return undefined;
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  throw new FormatError(
    file,
    `GGUF key ${key} holds ${Array.isArray(v) ? 'an array' : `a ${typeof v} (${JSON.stringify(v).slice(0, 40)})`}, expected a number`,
  );
}

/** What the engine needs beyond the skeleton to run a GGUF model. */
export interface GgufModelFacts {
  config: ConfigReader;
  /** The transformers model_type the file maps to. */
  modelType: string;
  /** llama.cpp's converter permutes q/k rows of Llama-architecture weights for its NORMAL rope mode. */
  permutedQK: boolean;
  /** `rope_freqs.weight` (Llama 3 rope scaling as per-dimension factors), when the file has it. */
  ropeFreqs?: { file: string; range: [number, number] };
}

function ggufFacts(path: string, header: ReturnType<typeof readGgufHeader>): GgufModelFacts | undefined {
  const meta = header.metadata as Meta;
  const arch = typeof meta['general.architecture'] === 'string' ? (meta['general.architecture'] as string) : undefined;
  const experts = arch ? num(meta, `${arch}.expert_count`, path) : undefined;
  const family = arch === 'llama' && experts !== undefined && experts > 0 ? MIXTRAL : arch ? FAMILIES[arch] : undefined;
  if (!family || !arch) return undefined;
  const key = (k: string): number | undefined => num(meta, `${arch}.${k}`, path);
  const has = (name: string): boolean => header.tensors.some((t) => t.name === name);
  const embd = header.tensors.find((t) => t.name === 'token_embd.weight');
  const floatTypes = header.tensors.filter((t) => /^(float|bfloat)/.test(t.dtype) && t.shape.length === 2);
  const common = {
    architectures: [family.hfArchitecture],
    model_type: family.modelType,
    vocab_size: embd?.shape[0] ?? key('vocab_size'),
    tie_word_embeddings: !has('output.weight'),
    torch_dtype: floatTypes[0]?.dtype ?? 'float16',
  };
  let config: Meta;
  if (family.modelType === 'gpt2') config = gpt2Config(key, common);
  else if (family.modelType === 'chatglm') config = chatglmConfig(key, common, has, path);
  else {
    config = {
      ...common,
      hidden_size: key('embedding_length'),
      num_hidden_layers: key('block_count'),
      num_attention_heads: key('attention.head_count'),
      num_key_value_heads: key('attention.head_count_kv') ?? key('attention.head_count'),
      intermediate_size: key('feed_forward_length'),
      max_position_embeddings: key('context_length'),
    };
    if (family.modelType === 'mixtral') {
      config['num_local_experts'] = experts;
      config['num_experts_per_tok'] = key('expert_used_count');
    } else if (family.modelType === 'qwen3_moe') {
      config['num_experts'] = experts;
      config['num_experts_per_tok'] = key('expert_used_count');
      config['moe_intermediate_size'] = key('expert_feed_forward_length');
      // llama.cpp renormalises Qwen3-MoE's top-k weights (norm_w) unless the file says otherwise; the released
      // models all set norm_topk_prob.
      config['norm_topk_prob'] = meta[`${arch}.expert_weights_norm`] !== false;
      config['decoder_sparse_step'] = 1;
      config['mlp_only_layers'] = [];
    } else if (family.modelType === 'baichuan') {
      Object.assign(config, baichuanExtras(meta, arch, path));
    }
    const headDim = key('attention.key_length');
    if (headDim !== undefined) config['head_dim'] = headDim;
    const eps = key('attention.layer_norm_rms_epsilon');
    if (eps !== undefined) config['rms_norm_eps'] = eps;
    const theta = key('rope.freq_base');
    if (theta !== undefined) config['rope_theta'] = theta;
    const linear = key('rope.scale_linear') ?? (meta[`${arch}.rope.scaling.type`] === 'linear' ? key('rope.scaling.factor') : undefined);
    if (linear !== undefined && linear !== 1) config['rope_scaling'] = { rope_type: 'linear', factor: linear };
  }
  // llama.cpp's converter permutes the q/k rows of Llama-architecture weights (and of Baichuan's W_pack parts) for
  // its NORMAL rope mode.
  const permutedQK = arch === 'llama' || arch === 'baichuan';
  const facts: GgufModelFacts = { config: new ConfigReader(config, `${path} (GGUF metadata)`), modelType: family.modelType, permutedQK };
  const freqs = header.tensors.find((t) => t.name === 'rope_freqs.weight');
  if (freqs) facts.ropeFreqs = { file: path, range: freqs.range };
  return facts;
}

type Key = (k: string) => number | undefined;

/** GPT2Config from llama.cpp's keys (its converter always writes feed_forward_length = 4·n_embd, GPT-2's n_inner default). */
function gpt2Config(key: Key, common: Meta): Meta {
  const positions = key('context_length');
  return {
    ...common,
    n_embd: key('embedding_length'),
    n_layer: key('block_count'),
    n_head: key('attention.head_count'),
    n_positions: positions,
    n_ctx: positions,
    n_inner: key('feed_forward_length'),
    layer_norm_epsilon: key('attention.layer_norm_epsilon') ?? 1e-5,
    // llama.cpp's GPT-2 graph computes tanh GELU, transformers' gelu_new.
    activation_function: 'gelu_new',
  };
}

/**
 * ChatGLMConfig from llama.cpp's keys. llama.cpp's layout is fixed: multi-query q|k|v rows (head_count_kv groups),
 * RMSNorm, a final norm, residuals from the un-normed input, a qkv bias when stored and no other biases, every head
 * hidden/heads wide with rope.dimension_count (half of it) rotated; rope_ratio is folded into freq_base.
 */
function chatglmConfig(key: Key, common: Meta, has: (name: string) => boolean, path: string): Meta {
  const hidden = key('embedding_length');
  const heads = key('attention.head_count');
  if (hidden === undefined || heads === undefined || heads < 1) throw new FormatError(path, 'chatglm GGUF without embedding_length or attention.head_count');
  const headDim = key('attention.key_length') ?? hidden / heads;
  const rotated = key('rope.dimension_count');
  if (rotated !== undefined && rotated * 2 !== headDim)
    throw new FormatError(path, `chatglm.rope.dimension_count is ${rotated}; the engine rotates half of each ${headDim}-wide head (${headDim / 2})`);
  if (has('blk.0.attn_q.weight') && !has('blk.0.attn_qkv.weight'))
    throw new FormatError(path, 'this chatglm GGUF stores q, k and v separately (converted from GlmForCausalLM); vramfit maps the fused attn_qkv layout only');
  return {
    ...common,
    hidden_size: hidden,
    num_layers: key('block_count'),
    num_attention_heads: heads,
    kv_channels: headDim,
    multi_query_attention: true,
    multi_query_group_num: key('attention.head_count_kv') ?? heads,
    ffn_hidden_size: key('feed_forward_length'),
    padded_vocab_size: common['vocab_size'],
    seq_length: key('context_length'),
    layernorm_epsilon: key('attention.layer_norm_rms_epsilon') ?? 1e-5,
    rmsnorm: true,
    post_layer_norm: has('output_norm.weight'),
    add_qkv_bias: has('blk.0.attn_qkv.bias'),
    add_bias_linear: false,
    apply_residual_connection_post_layernorm: false,
    rope_ratio: (key('rope.freq_base') ?? 10000) / 10000,
    tie_word_embeddings: false,
  };
}

/**
 * What a Baichuan config says that llama.cpp's keys do not. Which file a checkpoint ships (RoPE for 7B, ALiBi for
 * 13B) and whether its head is a NormHead follow the reader's rules from hidden size and vocabulary, as for
 * config.json; `baichuan.position_embedding` ("ROPE"/"ALIBI") and `baichuan.norm_head` (bool) — vramfit's own keys,
 * which llama.cpp ignores — override them as the config keys of the same names do. W_pack is split in the file.
 */
function baichuanExtras(meta: Meta, arch: string, path: string): Meta {
  const extras: Meta = { split_w_pack: true, max_position_embeddings: meta[`${arch}.context_length`] };
  const position = meta[`${arch}.position_embedding`];
  if (position !== undefined) {
    if (typeof position !== 'string') throw new FormatError(path, `GGUF key ${arch}.position_embedding must be a string`);
    extras['position_embedding'] = position;
  }
  const normHead = meta[`${arch}.norm_head`];
  if (normHead !== undefined) {
    if (typeof normHead !== 'boolean') throw new FormatError(path, `GGUF key ${arch}.norm_head must be a boolean`);
    extras['norm_head'] = normHead;
  }
  return extras;
}

/** The config and rope facts of a GGUF model of a mapped family; undefined for other architectures. */
export function readGgufFacts(path: string): GgufModelFacts | undefined {
  return ggufFacts(path, readGgufHeader(path));
}

export function readGgufModel(path: string, shown: string): Skeleton {
  const header = readGgufHeader(path);
  const meta = header.metadata as Meta;
  const arch = typeof meta['general.architecture'] === 'string' ? (meta['general.architecture'] as string) : undefined;
  const facts = ggufFacts(path, header);
  const source: SkeletonSource = { kind: 'gguf', path: shown, shapes: 'headers', files: [path], bytesRead: header.bytesRead };
  const file = path.split('/').pop() ?? path;
  const raw = header.tensors.map((t) => ({ name: t.name, shape: t.shape, dtype: t.dtype, location: { file, range: t.range } }));
  if (!facts) {
    const warnings = [`GGUF architecture ${JSON.stringify(arch ?? '(none)')} has no name mapping in vramfit; llama.cpp tensor names are kept`];
    return buildSkeleton(undefined, source, raw, warnings);
  }
  const names = familyOfType(facts.modelType)!.names;
  // rope_freqs.weight is Llama 3's rope scaling as data (transformers computes it): a fact, not a module.
  const stored: StoredTensor[] = raw
    .filter((t) => t.name !== 'rope_freqs.weight')
    .flatMap((t): StoredTensor[] => {
      const split = splitExperts(t, facts.modelType, path);
      if (split) return split;
      const hf = hfNameForGguf(t.name, facts.modelType);
      if (!hf) return [t];
      // A transposed matrix keeps the transformers shape; its bytes are the other way round.
      if (names.transposed?.test(hf) && t.shape.length === 2) return [{ ...t, name: hf, shape: [t.shape[1]!, t.shape[0]!], transposed: true }];
      return [{ ...t, name: hf }];
    });
  const recomputed = names.recomputed;
  return buildSkeleton(facts.config, source, stored, [], recomputed ? (n) => recomputed.test(n) : undefined);
}

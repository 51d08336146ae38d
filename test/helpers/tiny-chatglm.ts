/**
 * Tiny random ChatGLM checkpoints (config.json + model.safetensors with deterministic weights) for testing the
 * engine against ./reference-chatglm.ts. Tensor names, order and shapes are those the reader's ChatGLM spec
 * registers (storedTensorsFor), including the persistent `transformer.rotary_pos_emb.inv_freq` buffer every
 * real checkpoint stores, written with the values RotaryEmbedding.__init__ gives it.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeSafetensors, type SafetensorsWriteTensor } from '../../src/reader/formats/safetensors-writer.js';
import { chatglmInvFreqBuffer, ReferenceChatglm, type RopeRatioStyle } from './reference-chatglm.js';
import { encodeTensor, normalStream, roundToDtype, type TinyStorageDtype } from './tiny-llama-family.js';
import { storedTensorsFor } from './tiny-models.js';
import { hashName } from './tiny-checkpoint.js';

export type TinyChatglmName = 'chatglm2' | 'chatglm3-32k' | 'chatglm2-32k' | 'glm-mha';

const SHARED = {
  architectures: ['ChatGLMModel'],
  model_type: 'chatglm',
  auto_map: {
    AutoConfig: 'configuration_chatglm.ChatGLMConfig',
    AutoModel: 'modeling_chatglm.ChatGLMForConditionalGeneration',
    AutoModelForCausalLM: 'modeling_chatglm.ChatGLMForConditionalGeneration',
  },
  hidden_size: 64,
  num_attention_heads: 4,
  apply_query_key_layer_scaling: true,
  attention_softmax_in_fp32: true,
  attention_dropout: 0.0,
  hidden_dropout: 0.0,
  bias_dropout_fusion: true,
  fp32_residual_connection: false,
  original_rope: true,
  quantization_bit: 0,
  use_cache: true,
  tie_word_embeddings: false,
  torch_dtype: 'float32',
} as const;

/** config.json of each tiny ChatGLM (hidden 64, 4 query heads). */
export const TINY_CHATGLM_CONFIGS: Readonly<Record<TinyChatglmName, Readonly<Record<string, unknown>>>> = {
  /** ChatGLM2-6B / ChatGLM3-6B layout: MQA with 2 groups, qkv bias only, RMSNorm, kv_channels = hidden / heads. */
  chatglm2: {
    ...SHARED,
    num_layers: 6,
    kv_channels: 16,
    multi_query_attention: true,
    multi_query_group_num: 2,
    ffn_hidden_size: 96,
    padded_vocab_size: 128,
    seq_length: 512,
    layernorm_epsilon: 1e-5,
    rmsnorm: true,
    post_layer_norm: true,
    add_bias_linear: false,
    add_qkv_bias: true,
    apply_residual_connection_post_layernorm: false,
  },
  /** ChatGLM3-6B-32K: rope_ratio multiplies the base; one KV group; kv_channels 32 ≠ hidden / heads. */
  'chatglm3-32k': {
    ...SHARED,
    num_layers: 3,
    kv_channels: 32,
    multi_query_attention: true,
    multi_query_group_num: 1,
    ffn_hidden_size: 80,
    padded_vocab_size: 112,
    seq_length: 32768,
    rope_ratio: 50,
    layernorm_epsilon: 1e-5,
    rmsnorm: true,
    post_layer_norm: true,
    add_bias_linear: false,
    add_qkv_bias: true,
    apply_residual_connection_post_layernorm: false,
  },
  /** ChatGLM2-6B-32K: its modeling_chatglm.py divides the positions by rope_ratio (written beside the config). */
  'chatglm2-32k': {
    ...SHARED,
    num_layers: 2,
    kv_channels: 16,
    multi_query_attention: true,
    multi_query_group_num: 2,
    ffn_hidden_size: 96,
    padded_vocab_size: 96,
    seq_length: 32768,
    rope_ratio: 4,
    layernorm_epsilon: 1e-5,
    rmsnorm: true,
    post_layer_norm: true,
    add_bias_linear: false,
    add_qkv_bias: true,
    apply_residual_connection_post_layernorm: false,
  },
  /**
   * The remote code's other branches (no released checkpoint uses them): per-head interleaved q/k/v without
   * multi-query attention, biases on every Linear, LayerNorm, residuals from the normed input, no final norm.
   */
  'glm-mha': {
    ...SHARED,
    num_layers: 2,
    kv_channels: 16,
    multi_query_attention: false,
    ffn_hidden_size: 72,
    padded_vocab_size: 100,
    seq_length: 256,
    layernorm_epsilon: 1e-5,
    rmsnorm: false,
    post_layer_norm: false,
    add_bias_linear: true,
    add_qkv_bias: false,
    apply_residual_connection_post_layernorm: true,
  },
};

export const TINY_CHATGLM_NAMES = Object.keys(TINY_CHATGLM_CONFIGS) as TinyChatglmName[];

export interface TinyChatglmCheckpoint {
  name: TinyChatglmName;
  dir: string;
  dtype: TinyStorageDtype;
  config: Record<string, unknown>;
  /** Every stored tensor, values exactly as stored widened to float32 (PyTorch shape order). */
  tensors: Record<string, Float32Array>;
  names: string[];
  ropeRatioStyle: RopeRatioStyle;
}

/** Embedding 0.3·N, head 0.25·N, norm weights 1 + 0.1·N, biases 0.2·N, other matrices 0.08·N. */
function initFor(name: string): { mean: number; std: number } {
  if (name.endsWith('layernorm.weight')) return { mean: 1, std: 0.1 };
  if (name.endsWith('.bias')) return { mean: 0, std: 0.2 };
  if (name.endsWith('word_embeddings.weight')) return { mean: 0, std: 0.3 };
  if (name.endsWith('output_layer.weight')) return { mean: 0, std: 0.25 };
  return { mean: 0, std: 0.08 };
}

/**
 * One line of ChatGLM2-6B-32K's RotaryEmbedding.forward_impl, the only thing the engine reads from a
 * modeling_chatglm.py (to tell its position interpolation from ChatGLM3-32K's scaled base).
 */
const CHATGLM2_32K_MODELING = '        seq_idx = torch.arange(seq_len, dtype=dtype, device=device) / self.rope_ratio\n';

export interface TinyChatglmOptions {
  dtype?: TinyStorageDtype;
  seed?: number;
  /** Embedding / output rows (config padded_vocab_size), e.g. to cover a tokenizer's ids; default the name's config. */
  paddedVocabSize?: number;
}

export function writeTinyChatglmCheckpoint(dir: string, name: TinyChatglmName, opts: TinyChatglmOptions = {}): TinyChatglmCheckpoint {
  const dtype = opts.dtype ?? 'float32';
  const seed = opts.seed ?? 1;
  const config: Record<string, unknown> = { ...structuredClone(TINY_CHATGLM_CONFIGS[name]), torch_dtype: dtype };
  if (opts.paddedVocabSize !== undefined) config['padded_vocab_size'] = opts.paddedVocabSize;
  const stored = storedTensorsFor(config);
  const tensors: Record<string, Float32Array> = {};
  const write: SafetensorsWriteTensor[] = [];
  for (const t of stored) {
    const count = t.shape.reduce((a, b) => a * b, 1);
    const values = new Float32Array(count);
    if (t.name === 'transformer.rotary_pos_emb.inv_freq') {
      const inv = chatglmInvFreqBuffer(Number(config['kv_channels']));
      if (inv.length !== count) throw new Error(`inv_freq: the reader stores ${count} values, RotaryEmbedding makes ${inv.length}`);
      for (let i = 0; i < count; i++) values[i] = roundToDtype(inv[i]!, dtype);
    } else {
      const next = normalStream(seed, hashName(`${name}/${t.name}`));
      const { mean, std } = initFor(t.name);
      for (let i = 0; i < count; i++) values[i] = roundToDtype(mean + std * next(), dtype);
    }
    tensors[t.name] = values;
    write.push({ name: t.name, dtype, shape: t.shape, data: encodeTensor(values, dtype) });
  }
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2).replace(/"(attention_dropout|hidden_dropout)": 0,/g, '"$1": 0.0,'));
  writeSafetensors(join(dir, 'model.safetensors'), write, { format: 'pt' });
  const ropeRatioStyle: RopeRatioStyle = name === 'chatglm2-32k' ? 'positions' : 'base';
  if (ropeRatioStyle === 'positions') writeFileSync(join(dir, 'modeling_chatglm.py'), CHATGLM2_32K_MODELING);
  return { name, dir, dtype, config, tensors, names: stored.map((t) => t.name), ropeRatioStyle };
}

export function createChatglmReference(ck: TinyChatglmCheckpoint): ReferenceChatglm {
  return new ReferenceChatglm(ck.config, ck.tensors, ck.ropeRatioStyle);
}

/**
 * Tiny GPT-2, ChatGLM and Baichuan checkpoints written as llama.cpp's converter (convert_hf_to_gguf.py) writes them:
 * its tensor names and metadata keys; GPT-2's Conv1D weights transposed to Linear layout; ChatGLM's rotary inv_freq
 * dropped; Baichuan's W_pack split into attn_q/k/v with q and k rows permuted for ggml's NORMAL rope. Vectors stay
 * F32; matrices take the requested type, falling back to F16 where a row is not whole 32-value blocks (as
 * llama.cpp's quantizer does).
 */
import { join } from 'node:path';
import { gv, writeGguf, type GgufWriteTensor, type GgufWriteValue } from '../../src/reader/formats/gguf-writer.js';
import { encodeTensor } from './tiny-checkpoint.js';
import { quantizeQ8_0, type GgufMatrixDtype } from './tiny-gguf.js';
import { permuteForNormalRope } from './reference-llama.js';
import type { TinyGpt2Checkpoint } from './tiny-gpt2.js';
import type { TinyChatglmCheckpoint } from './tiny-chatglm.js';
import type { TinyBaichuanCheckpoint } from './tiny-baichuan.js';

type Encoded = Pick<GgufWriteTensor, 'dtype' | 'data'>;

function encode(values: Float32Array, shape: readonly number[], matrixDtype: GgufMatrixDtype): Encoded {
  if (shape.length !== 2) return { dtype: 'float32', data: encodeTensor(values, 'float32') };
  const dtype = matrixDtype === 'q8_0' && shape[1]! % 32 !== 0 ? 'float16' : matrixDtype;
  return { dtype, data: dtype === 'q8_0' ? quantizeQ8_0(values) : encodeTensor(values, dtype) };
}

function transpose(values: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(values.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = values[r * cols + c]!;
  return out;
}

const GPT2_LAYER: Record<string, string> = {
  ln_1: 'attn_norm',
  'attn.c_attn': 'attn_qkv',
  'attn.c_proj': 'attn_output',
  ln_2: 'ffn_norm',
  'mlp.c_fc': 'ffn_up',
  'mlp.c_proj': 'ffn_down',
};
const GPT2_GLOBAL: Record<string, string> = {
  'transformer.wte.weight': 'token_embd.weight',
  'transformer.wpe.weight': 'position_embd.weight',
  'transformer.ln_f.weight': 'output_norm.weight',
  'transformer.ln_f.bias': 'output_norm.bias',
  'lm_head.weight': 'output.weight',
};

export function writeTinyGpt2Gguf(ck: TinyGpt2Checkpoint, matrixDtype: GgufMatrixDtype, name = `gpt2-${matrixDtype}.gguf`): string {
  const c = ck.config as Record<string, number>;
  const hidden = c['n_embd']!;
  const ffn = (c['n_inner'] as number | null) ?? 4 * hidden;
  const tensors: GgufWriteTensor[] = [];
  for (const [n, values] of Object.entries(ck.tensors)) {
    const m = /^transformer\.h\.(\d+)\.(.+)\.(weight|bias)$/.exec(n);
    const gguf = m ? (GPT2_LAYER[m[2]!] ? `blk.${m[1]}.${GPT2_LAYER[m[2]!]}.${m[3]}` : undefined) : GPT2_GLOBAL[n];
    if (!gguf) continue;
    if (m && m[3] === 'weight' && m[2] !== 'ln_1' && m[2] !== 'ln_2') {
      // Conv1D [in, out] → Linear [out, in].
      const inDim = m[2] === 'mlp.c_proj' ? ffn : hidden;
      const outDim = values.length / inDim;
      tensors.push({ name: gguf, shape: [outDim, inDim], ...encode(transpose(values, inDim, outDim), [outDim, inDim], matrixDtype) });
      continue;
    }
    const shape = n.endsWith('.bias') || /ln_[12f]\.weight$/.test(n) ? [values.length] : [values.length / hidden, hidden];
    tensors.push({ name: gguf, shape, ...encode(values, shape, matrixDtype) });
  }
  const metadata: Record<string, GgufWriteValue> = {
    'general.architecture': 'gpt2',
    'gpt2.block_count': gv.u32(c['n_layer']!),
    'gpt2.context_length': gv.u32(c['n_positions']!),
    'gpt2.embedding_length': gv.u32(hidden),
    'gpt2.feed_forward_length': gv.u32(ffn),
    'gpt2.attention.head_count': gv.u32(c['n_head']!),
    'gpt2.attention.layer_norm_epsilon': gv.f32(c['layer_norm_epsilon']!),
  };
  const path = join(ck.dir, name);
  writeGguf(path, { metadata, tensors });
  return path;
}

const CHATGLM_LAYER: Record<string, string> = {
  input_layernorm: 'attn_norm',
  'self_attention.query_key_value': 'attn_qkv',
  'self_attention.dense': 'attn_output',
  post_attention_layernorm: 'ffn_norm',
  'mlp.dense_h_to_4h': 'ffn_up',
  'mlp.dense_4h_to_h': 'ffn_down',
};
const CHATGLM_GLOBAL: Record<string, string> = {
  'transformer.embedding.word_embeddings.weight': 'token_embd.weight',
  'transformer.encoder.final_layernorm.weight': 'output_norm.weight',
  'transformer.output_layer.weight': 'output.weight',
};

/** The multi-query ChatGLM layouts only (llama.cpp's chatglm graph has no per-head interleaved q/k/v). */
export function writeTinyChatglmGguf(ck: TinyChatglmCheckpoint, matrixDtype: GgufMatrixDtype, name = `chatglm-${matrixDtype}.gguf`): string {
  const c = ck.config as Record<string, number>;
  const hidden = c['hidden_size']!;
  const heads = c['num_attention_heads']!;
  if (c['kv_channels'] !== hidden / heads) throw new Error('llama.cpp assumes kv_channels = hidden_size / num_attention_heads');
  const tensors: GgufWriteTensor[] = [];
  for (const n of ck.names) {
    const values = ck.tensors[n]!;
    const m = /^transformer\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$/.exec(n);
    const gguf = m ? `blk.${m[1]}.${CHATGLM_LAYER[m[2]!]}.${m[3]}` : CHATGLM_GLOBAL[n];
    if (!gguf) continue; // rotary_pos_emb.inv_freq: the converter drops it.
    const matrix = m ? m[3] === 'weight' && !m[2]!.endsWith('layernorm') : !n.includes('layernorm');
    const shape = matrix
      ? [values.length / (m?.[2] === 'mlp.dense_4h_to_h' ? c['ffn_hidden_size']! : hidden), m?.[2] === 'mlp.dense_4h_to_h' ? c['ffn_hidden_size']! : hidden]
      : [values.length];
    tensors.push({ name: gguf, shape, ...encode(values, shape, matrixDtype) });
  }
  const headDim = hidden / heads;
  const metadata: Record<string, GgufWriteValue> = {
    'general.architecture': 'chatglm',
    'chatglm.context_length': gv.u32(c['seq_length']!),
    'chatglm.embedding_length': gv.u32(hidden),
    'chatglm.feed_forward_length': gv.u32(c['ffn_hidden_size']!),
    'chatglm.block_count': gv.u32(c['num_layers']!),
    'chatglm.attention.head_count': gv.u32(heads),
    'chatglm.attention.head_count_kv': gv.u32(c['multi_query_group_num']!),
    'chatglm.attention.layer_norm_rms_epsilon': gv.f32(c['layernorm_epsilon']!),
    'chatglm.rope.dimension_count': gv.u32(headDim / 2),
    'chatglm.rope.freq_base': gv.f32(10000 * (c['rope_ratio'] ?? 1)),
  };
  const path = join(ck.dir, name);
  writeGguf(path, { metadata, tensors });
  return path;
}

const BAICHUAN_LAYER: Record<string, string> = {
  input_layernorm: 'attn_norm',
  'self_attn.o_proj': 'attn_output',
  post_attention_layernorm: 'ffn_norm',
  'mlp.gate_proj': 'ffn_gate',
  'mlp.up_proj': 'ffn_up',
  'mlp.down_proj': 'ffn_down',
};
const BAICHUAN_GLOBAL: Record<string, string> = {
  'model.embed_tokens.weight': 'token_embd.weight',
  'model.norm.weight': 'output_norm.weight',
  'lm_head.weight': 'output.weight',
};

/**
 * The config's vramfit overrides (position_embedding, norm_head) go into vramfit's own GGUF keys of the same names,
 * so a tiny model keeps its variant (the reader's rules key on the real models' sizes).
 */
export function writeTinyBaichuanGguf(ck: TinyBaichuanCheckpoint, matrixDtype: GgufMatrixDtype, name = `baichuan-${matrixDtype}.gguf`): string {
  const c = ck.config as Record<string, unknown>;
  const hidden = Number(c['hidden_size']);
  const heads = Number(c['num_attention_heads']);
  const tensors: GgufWriteTensor[] = [];
  for (const n of ck.names) {
    const values = ck.tensors[n]!;
    const shape = ck.shapes[n]!;
    const m = /^model\.layers\.(\d+)\.(.+)\.(weight)$/.exec(n);
    if (m && m[2] === 'self_attn.W_pack') {
      const part = hidden * hidden;
      ['attn_q', 'attn_k', 'attn_v'].forEach((p, i) => {
        let rows = values.slice(i * part, (i + 1) * part);
        if (i < 2) rows = Float32Array.from(permuteForNormalRope(rows, heads, hidden / heads, hidden));
        tensors.push({ name: `blk.${m[1]}.${p}.weight`, shape: [hidden, hidden], ...encode(rows, [hidden, hidden], matrixDtype) });
      });
      continue;
    }
    const gguf = m ? `blk.${m[1]}.${BAICHUAN_LAYER[m[2]!]}.weight` : BAICHUAN_GLOBAL[n]!;
    tensors.push({ name: gguf, shape, ...encode(values, shape, matrixDtype) });
  }
  const metadata: Record<string, GgufWriteValue> = {
    'general.architecture': 'baichuan',
    'baichuan.context_length': gv.u32(Number(c['max_position_embeddings'] ?? c['model_max_length'])),
    'baichuan.embedding_length': gv.u32(hidden),
    'baichuan.block_count': gv.u32(Number(c['num_hidden_layers'])),
    'baichuan.feed_forward_length': gv.u32(Number(c['intermediate_size'])),
    'baichuan.rope.dimension_count': gv.u32(hidden / heads),
    'baichuan.attention.head_count': gv.u32(heads),
    'baichuan.attention.head_count_kv': gv.u32(heads),
    'baichuan.attention.layer_norm_rms_epsilon': gv.f32(Number(c['rms_norm_eps'])),
    ...(typeof c['position_embedding'] === 'string' ? { 'baichuan.position_embedding': gv.string(c['position_embedding']) } : {}),
    ...(typeof c['norm_head'] === 'boolean' ? { 'baichuan.norm_head': gv.bool(c['norm_head']) } : {}),
  };
  const path = join(ck.dir, name);
  writeGguf(path, { metadata, tensors });
  return path;
}

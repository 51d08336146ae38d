import { join } from 'node:path';
import { gv, writeGguf, type GgufWriteTensor, type GgufWriteValue } from '../../src/reader/formats/gguf-writer.js';
import { llamaHyper } from '../../src/engine/architectures/llama.js';
import { ConfigReader } from '../../src/reader/config.js';
import { permuteForNormalRope } from './reference-llama.js';
import { encodeTensor, type TinyFamilyCheckpoint } from './tiny-llama-family.js';

const LAYER: Record<string, string> = {
  input_layernorm: 'attn_norm',
  'self_attn.q_proj': 'attn_q',
  'self_attn.k_proj': 'attn_k',
  'self_attn.v_proj': 'attn_v',
  'self_attn.o_proj': 'attn_output',
  'self_attn.q_norm': 'attn_q_norm',
  'self_attn.k_norm': 'attn_k_norm',
  post_attention_layernorm: 'ffn_norm',
  'mlp.gate_proj': 'ffn_gate',
  'mlp.up_proj': 'ffn_up',
  'mlp.down_proj': 'ffn_down',
};
const GLOBAL: Record<string, string> = {
  'model.embed_tokens.weight': 'token_embd.weight',
  'model.norm.weight': 'output_norm.weight',
  'lm_head.weight': 'output.weight',
};

/**
 * Writes the checkpoint as llama.cpp's converter would: llama.cpp names, Llama-architecture q/k rows
 * permuted for NORMAL rope (Qwen ones not), vectors in F32, matrices in `matrixDtype`, rope_freqs for
 * Llama 3 scaling. Returns the file path.
 */
export function writeTinyGguf(
  ck: TinyFamilyCheckpoint,
  matrixDtype: 'float32' | 'float16' = 'float32',
  overrides: Record<string, GgufWriteValue> = {},
  name = `model-${matrixDtype}.gguf`,
): string {
  const c = ck.config as Record<string, number | string | unknown>;
  const arch = c['model_type'] === 'qwen2' || c['model_type'] === 'qwen3' ? String(c['model_type']) : 'llama';
  const h = llamaHyper(new ConfigReader(ck.config, 'config.json'), String(c['model_type']));
  const tensors: GgufWriteTensor[] = [];
  for (const name of ck.names) {
    const shape = ck.shapes[name]!;
    let values: Float32Array = ck.tensors[name]!;
    const m = /^model\.layers\.(\d+)\.(.+)\.(weight|bias)$/.exec(name);
    const gguf = m ? `blk.${m[1]}.${LAYER[m[2]!]}.${m[3]}` : GLOBAL[name]!;
    if (arch === 'llama' && m && (m[2] === 'self_attn.q_proj' || m[2] === 'self_attn.k_proj')) {
      const heads = m[2] === 'self_attn.q_proj' ? h.heads : h.kvHeads;
      values = Float32Array.from(permuteForNormalRope(values, heads, h.headDim, shape.length === 2 ? shape[1]! : 1));
    }
    const dtype = shape.length === 2 ? matrixDtype : 'float32';
    tensors.push({ name: gguf, shape, dtype, data: encodeTensor(values, dtype) });
  }
  if (h.freqFactors)
    tensors.push({ name: 'rope_freqs.weight', shape: [h.freqFactors.length], dtype: 'float32', data: new Uint8Array(h.freqFactors.buffer.slice(0)) });
  const metadata = {
    'general.architecture': arch,
    [`${arch}.block_count`]: gv.u32(h.layers),
    [`${arch}.embedding_length`]: gv.u32(h.hidden),
    [`${arch}.feed_forward_length`]: gv.u32(h.ffn),
    [`${arch}.attention.head_count`]: gv.u32(h.heads),
    [`${arch}.attention.head_count_kv`]: gv.u32(h.kvHeads),
    [`${arch}.attention.key_length`]: gv.u32(h.headDim),
    [`${arch}.context_length`]: gv.u32(h.maxPositions),
    [`${arch}.attention.layer_norm_rms_epsilon`]: gv.f32(h.eps),
    [`${arch}.rope.freq_base`]: gv.f32(h.ropeTheta),
    ...(h.freqScale !== 1 ? { [`${arch}.rope.scaling.type`]: gv.string('linear'), [`${arch}.rope.scaling.factor`]: gv.f32(1 / h.freqScale) } : {}),
    // Hostile-input tests replace keys (`{arch}` stands for the architecture).
    ...Object.fromEntries(Object.entries(overrides).map(([k, v]) => [k.replace('{arch}', arch), v])),
  };
  const path = join(ck.dir, name);
  writeGguf(path, { metadata, tensors });
  return path;
}

import { join } from 'node:path';
import { gv, writeGguf, type GgufWriteTensor, type GgufWriteValue } from '../../src/reader/formats/gguf-writer.js';
import { llamaHyper } from '../../src/engine/architectures/llama.js';
import { moeHyper } from '../../src/engine/architectures/moe.js';
import { ConfigReader } from '../../src/reader/config.js';
import { permuteForNormalRope } from './reference-llama.js';
import { encodeTensor, type TinyFamilyCheckpoint } from './tiny-llama-family.js';
import { float32ToFloat16Bits } from './tiny-checkpoint.js';
import type { TinyMoeCheckpoint } from './tiny-moe.js';

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
  matrixDtype: GgufMatrixDtype = 'float32',
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
    // As llama.cpp's quantizer: a matrix whose rows are not whole 32-value blocks stays F16.
    const dtype = shape.length !== 2 ? 'float32' : matrixDtype === 'q8_0' && shape[1]! % 32 !== 0 ? 'float16' : matrixDtype;
    tensors.push({ name: gguf, shape, dtype, data: dtype === 'q8_0' ? quantizeQ8_0(values) : encodeTensor(values, dtype) });
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

/**
 * ggml's quantize_row_q8_0_ref: per block of 32 values, d = max|x| / 127 in float32 (stored as float16) and
 * q = round(x / d), rounding halves away from zero as C's roundf does. Rows must be multiples of 32.
 */
export function quantizeQ8_0(values: Float32Array): Uint8Array {
  if (values.length % 32 !== 0) throw new Error(`Q8_0 needs a multiple of 32 values, got ${values.length}`);
  const blocks = values.length / 32;
  const out = new Uint8Array(blocks * 34);
  const view = new DataView(out.buffer);
  for (let b = 0; b < blocks; b++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(values[b * 32 + j]!));
    // float32 arithmetic, as the C code does (float64 would round a few values differently).
    const d = Math.fround(amax / 127);
    const id = d ? Math.fround(1 / d) : 0;
    view.setUint16(b * 34, float32ToFloat16Bits(d), true);
    for (let j = 0; j < 32; j++) {
      const x = Math.fround(values[b * 32 + j]! * id);
      view.setInt8(b * 34 + 2 + j, Math.sign(x) * Math.round(Math.abs(x)));
    }
  }
  return out;
}

export type GgufMatrixDtype = 'float32' | 'float16' | 'q8_0';

const MOE_EXPERT = /^model\.layers\.(\d+)\.(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$/;
const MOE_PROJ: Record<string, string> = { w1: 'ffn_gate', w3: 'ffn_up', w2: 'ffn_down', gate_proj: 'ffn_gate', up_proj: 'ffn_up', down_proj: 'ffn_down' };

/**
 * A tiny MoE checkpoint as llama.cpp's converter writes it: Mixtral as architecture `llama` (q/k permuted, expert
 * keys), Qwen3-MoE as `qwen3moe`; each layer's experts stacked into `blk.N.ffn_{gate,up,down}_exps.weight`
 * ([experts, rows, cols]), routers as `ffn_gate_inp`. Matrices in `matrixDtype`, vectors and routers in F32 (llama.cpp
 * keeps the router's precision).
 */
export function writeTinyMoeGguf(ck: TinyMoeCheckpoint, matrixDtype: GgufMatrixDtype = 'float32', name = `moe-${matrixDtype}.gguf`): string {
  const c = ck.config as Record<string, unknown>;
  const mixtral = c['model_type'] === 'mixtral';
  const arch = mixtral ? 'llama' : 'qwen3moe';
  const h = moeHyper(new ConfigReader(ck.config, 'config.json'), mixtral ? 'mixtral' : 'qwen3-moe');
  const experts = Number(mixtral ? c['num_local_experts'] : c['num_experts']);
  const encode = (values: Float32Array, matrix: boolean, rowLength = 0): { dtype: string; data: Uint8Array } => {
    // As llama.cpp's converter: a matrix whose rows do not split into 32-value blocks stays F16.
    const dtype = !matrix ? 'float32' : matrixDtype === 'q8_0' && rowLength % 32 !== 0 ? 'float16' : matrixDtype;
    return { dtype, data: dtype === 'q8_0' ? quantizeQ8_0(values) : encodeTensor(values, dtype) };
  };
  const tensors: GgufWriteTensor[] = [];
  const stacks = new Map<string, { shape: number[]; parts: Float32Array[] }>();
  for (const n of ck.names) {
    const shape = ck.shapes[n]!;
    let values = ck.tensors[n]!;
    const e = MOE_EXPERT.exec(n);
    if (e) {
      const key = `blk.${e[1]}.${MOE_PROJ[e[3]!]}_exps.weight`;
      const s = stacks.get(key) ?? { shape, parts: [] };
      s.parts[Number(e[2])] = values;
      stacks.set(key, s);
      if (s.parts.filter(Boolean).length === experts) {
        const all = new Float32Array(experts * values.length);
        s.parts.forEach((p, i) => all.set(p, i * values.length));
        tensors.push({ name: key, shape: [experts, ...shape], ...encode(all, true, shape[shape.length - 1]!) });
      }
      continue;
    }
    const router = /^model\.layers\.(\d+)\.(?:block_sparse_moe|mlp)\.gate\.weight$/.exec(n);
    if (router) {
      tensors.push({ name: `blk.${router[1]}.ffn_gate_inp.weight`, shape, ...encode(values, false) });
      continue;
    }
    const m = /^model\.layers\.(\d+)\.(.+)\.(weight|bias)$/.exec(n);
    const gguf = m ? `blk.${m[1]}.${LAYER[m[2]!]}.${m[3]}` : GLOBAL[n]!;
    if (mixtral && m && (m[2] === 'self_attn.q_proj' || m[2] === 'self_attn.k_proj')) {
      const heads = m[2] === 'self_attn.q_proj' ? h.heads : h.kvHeads;
      values = Float32Array.from(permuteForNormalRope(values, heads, h.headDim, shape.length === 2 ? shape[1]! : 1));
    }
    tensors.push({ name: gguf, shape, ...encode(values, shape.length === 2, shape[shape.length - 1]!) });
  }
  const metadata: Record<string, GgufWriteValue> = {
    'general.architecture': arch,
    [`${arch}.block_count`]: gv.u32(h.layers),
    [`${arch}.embedding_length`]: gv.u32(h.hidden),
    [`${arch}.feed_forward_length`]: gv.u32(Number(c['intermediate_size'])),
    [`${arch}.attention.head_count`]: gv.u32(h.heads),
    [`${arch}.attention.head_count_kv`]: gv.u32(h.kvHeads),
    [`${arch}.attention.key_length`]: gv.u32(h.headDim),
    [`${arch}.context_length`]: gv.u32(h.maxPositions),
    [`${arch}.attention.layer_norm_rms_epsilon`]: gv.f32(h.eps),
    [`${arch}.rope.freq_base`]: gv.f32(h.ropeTheta),
    [`${arch}.expert_count`]: gv.u32(experts),
    [`${arch}.expert_used_count`]: gv.u32(Number(c['num_experts_per_tok'])),
    ...(mixtral ? {} : { [`${arch}.expert_feed_forward_length`]: gv.u32(Number(c['moe_intermediate_size'])) }),
  };
  const path = join(ck.dir, name);
  writeGguf(path, { metadata, tensors });
  return path;
}

/**
 * Tiny random Baichuan checkpoints (config.json + model.safetensors with real, deterministic weights) for
 * testing the engine against ./reference-baichuan.ts. Tensor names, order and shapes come from the reader's
 * Baichuan spec (storedTensorsFor); weights are drawn as in ./tiny-llama-family.ts (same seeding, same
 * rounding to the storage dtype) and returned as the float32 values stored.
 *
 * The real configs say neither which modeling file (RoPE or ALiBi) nor which head (NormHead or Linear) a
 * repo ships; the convention is hidden_size 4096 → the 7B file, vocab_size 125696 → NormHead. At tiny sizes
 * the configs use vramfit's documented overrides instead (src/reader/architectures/baichuan.ts):
 * `position_embedding: "ROPE"` for the 7B file, `norm_head: true` for Baichuan 2's head. The 13B-style model
 * takes the ALiBi path by the default rule (hidden ≠ 4096), as Baichuan2-13B's own config does.
 */
import { writeSeededCheckpoint, type TinyStorageDtype } from './tiny-checkpoint.js';
import { drawTensor } from './tiny-llama-family.js';

export type TinyBaichuanName = 'baichuan2-7b' | 'baichuan2-13b' | 'baichuan-13b';

const SHARED = {
  architectures: ['BaichuanForCausalLM'],
  model_type: 'baichuan',
  auto_map: { AutoConfig: 'configuration_baichuan.BaichuanConfig', AutoModelForCausalLM: 'modeling_baichuan.BaichuanForCausalLM' },
  hidden_act: 'silu',
  initializer_range: 0.02,
  bos_token_id: 1,
  eos_token_id: 2,
  pad_token_id: 0,
  use_cache: true,
  tie_word_embeddings: false,
  torch_dtype: 'float32',
} as const;

export const TINY_BAICHUAN_CONFIGS: Readonly<Record<TinyBaichuanName, Readonly<Record<string, unknown>>>> = {
  /** Baichuan2-7B layout: the RoPE file (forced by position_embedding), NormHead, 4 heads of 16. */
  'baichuan2-7b': {
    ...SHARED,
    hidden_size: 64,
    intermediate_size: 112,
    num_attention_heads: 4,
    num_hidden_layers: 2,
    vocab_size: 96,
    max_position_embeddings: 512,
    model_max_length: 512,
    rms_norm_eps: 1e-6,
    position_embedding: 'ROPE',
    norm_head: true,
  },
  /**
   * Baichuan2-13B layout: ALiBi by the hidden-size rule (no override), NormHead, and 6 heads — not a power of
   * two, like the real 40 — so heads 4 and 5 take the interleaved slopes of the next power's series.
   */
  'baichuan2-13b': {
    ...SHARED,
    hidden_size: 96,
    intermediate_size: 128,
    num_attention_heads: 6,
    num_hidden_layers: 3,
    vocab_size: 112,
    model_max_length: 256,
    rms_norm_eps: 1e-6,
    norm_head: true,
  },
  /** Baichuan-13B (v1) layout: ALiBi with 8 heads and a plain Linear head (no norm_head, vocab ≠ 125696). */
  'baichuan-13b': {
    ...SHARED,
    hidden_size: 64,
    intermediate_size: 96,
    num_attention_heads: 8,
    num_hidden_layers: 2,
    vocab_size: 80,
    model_max_length: 256,
    rms_norm_eps: 1e-6,
  },
};

export const TINY_BAICHUAN_NAMES = Object.keys(TINY_BAICHUAN_CONFIGS) as TinyBaichuanName[];

export interface TinyBaichuanCheckpoint {
  name: TinyBaichuanName;
  dir: string;
  dtype: TinyStorageDtype;
  seed: number;
  config: Record<string, unknown>;
  /** Every stored tensor: values exactly as stored, widened to float32 (row-major, PyTorch shape order). */
  tensors: Record<string, Float32Array>;
  shapes: Record<string, number[]>;
  names: string[];
}

/** Writes `dir/config.json` and `dir/model.safetensors` for one tiny Baichuan and returns what was stored. */
export function writeTinyBaichuanCheckpoint(
  dir: string,
  name: TinyBaichuanName,
  opts: { dtype?: TinyStorageDtype; seed?: number } = {},
): TinyBaichuanCheckpoint {
  const base = TINY_BAICHUAN_CONFIGS[name];
  if (!base) throw new Error(`unknown tiny Baichuan ${JSON.stringify(name)}; known: ${TINY_BAICHUAN_NAMES.join(', ')}`);
  const dtype = opts.dtype ?? 'float32';
  const seed = opts.seed ?? 1;
  const config: Record<string, unknown> = { ...structuredClone(base), torch_dtype: dtype };
  const stored = writeSeededCheckpoint(dir, config, dtype, (tensor, count) => drawTensor(name, tensor, count, seed));
  return { name, dir, dtype, seed, config, ...stored };
}

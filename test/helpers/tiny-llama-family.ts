/**
 * Tiny random Llama-family checkpoints (config.json + model.safetensors with real, deterministic weights)
 * for testing an inference engine against the plain TypeScript reference in ./reference-llama.ts.
 *
 * Each family is small (hidden 64, 2–4 layers, 4 query heads over 2 KV heads) but keeps every feature that
 * changes the arithmetic: rope scaling variants, q/k/v biases, per-head q/k norms, an explicit head_dim that
 * differs from hidden / heads, tied embeddings, and varied rms_norm_eps / rope_theta.
 *
 * Weights are drawn from a seed and the tensor's name (so a float16 and a float32 checkpoint of one seed are
 * the same model rounded differently), rounded to the storage dtype with round-to-nearest-even, and returned
 * as the float32 values actually stored, so a reference needs no file reading.
 */
import { hashName, writeSeededCheckpoint, type TinyStorageDtype } from './tiny-checkpoint.js';

// The dtype helpers moved to tiny-checkpoint.ts; the tests and the other tiny models still import them from here.
export {
  bfloat16BitsToFloat32,
  decodeTensor,
  encodeTensor,
  float16BitsToFloat32,
  float32ToBfloat16Bits,
  float32ToFloat16Bits,
  roundToDtype,
  type TinyStorageDtype,
} from './tiny-checkpoint.js';

export type TinyFamilyName = 'llama2' | 'llama3' | 'llama-linear' | 'mistral' | 'qwen2' | 'qwen3' | 'llama3-tied';

const SHARED = {
  hidden_act: 'silu',
  hidden_size: 64,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  initializer_range: 0.02,
  attention_dropout: 0.0,
  bos_token_id: 1,
  eos_token_id: 2,
  use_cache: true,
  torch_dtype: 'float32',
} as const;

/**
 * config.json of each tiny family, as written with `torch_dtype: float32` (the writer swaps in the storage
 * dtype). Shapes: hidden 64, 4 heads, 2 KV heads; head_dim 16 except Qwen3 (32, explicit).
 */
export const TINY_FAMILY_CONFIGS: Readonly<Record<TinyFamilyName, Readonly<Record<string, unknown>>>> = {
  /** Llama 2 layout (GQA as in Llama-2-70B), plain rope. */
  llama2: {
    ...SHARED,
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    num_hidden_layers: 2,
    intermediate_size: 128,
    vocab_size: 128,
    max_position_embeddings: 512,
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    rope_scaling: null,
    attention_bias: false,
    mlp_bias: false,
    pretraining_tp: 1,
    tie_word_embeddings: false,
  },
  /**
   * Llama 3.1 rope scaling. `original_max_position_embeddings` is 64 (8192 in the real model) so that, with
   * head_dim 16 and theta 500000, all three bands occur: wavelengths 6.3 (kept), 32.4 (interpolated), 167 and
   * up (divided by the factor), at positions a short test reaches.
   */
  llama3: {
    ...SHARED,
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    num_hidden_layers: 3,
    intermediate_size: 112,
    vocab_size: 120,
    max_position_embeddings: 512,
    rms_norm_eps: 1e-5,
    rope_theta: 500000.0,
    rope_scaling: { rope_type: 'llama3', factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 64 },
    attention_bias: false,
    mlp_bias: false,
    tie_word_embeddings: false,
  },
  /** Linear ("position interpolation") scaling, in the older `type` spelling transformers still accepts. */
  'llama-linear': {
    ...SHARED,
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    num_hidden_layers: 2,
    intermediate_size: 96,
    vocab_size: 96,
    max_position_embeddings: 2048,
    rms_norm_eps: 1e-6,
    rope_theta: 10000.0,
    rope_scaling: { type: 'linear', factor: 4.0 },
    attention_bias: false,
    mlp_bias: false,
    tie_word_embeddings: false,
  },
  /** Mistral v0.2/v0.3 style: theta 1e6, no sliding window. */
  mistral: {
    ...SHARED,
    architectures: ['MistralForCausalLM'],
    model_type: 'mistral',
    num_hidden_layers: 4,
    intermediate_size: 128,
    vocab_size: 112,
    head_dim: 16,
    max_position_embeddings: 1024,
    rms_norm_eps: 1e-5,
    rope_theta: 1000000.0,
    sliding_window: null,
    tie_word_embeddings: false,
  },
  /** Qwen2 / Qwen2.5: biases on q, k, v (not o); sliding window configured but off, as in the real configs. */
  qwen2: {
    ...SHARED,
    architectures: ['Qwen2ForCausalLM'],
    model_type: 'qwen2',
    num_hidden_layers: 2,
    intermediate_size: 104,
    vocab_size: 128,
    max_position_embeddings: 1024,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000.0,
    rope_scaling: null,
    use_sliding_window: false,
    sliding_window: 4096,
    max_window_layers: 2,
    tie_word_embeddings: false,
  },
  /** Qwen3: per-head q_norm / k_norm before rope; head_dim 32 while hidden / heads is 16. */
  qwen3: {
    ...SHARED,
    architectures: ['Qwen3ForCausalLM'],
    model_type: 'qwen3',
    num_hidden_layers: 3,
    intermediate_size: 96,
    vocab_size: 104,
    head_dim: 32,
    max_position_embeddings: 1024,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000.0,
    rope_scaling: null,
    attention_bias: false,
    use_sliding_window: false,
    sliding_window: null,
    max_window_layers: 3,
    tie_word_embeddings: false,
  },
  /** Llama 3.2 1B/3B style: tied embeddings (no lm_head.weight stored) and the real llama3 rope numbers. */
  'llama3-tied': {
    ...SHARED,
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    num_hidden_layers: 2,
    intermediate_size: 128,
    vocab_size: 128,
    max_position_embeddings: 131072,
    rms_norm_eps: 1e-5,
    rope_theta: 500000.0,
    rope_scaling: { rope_type: 'llama3', factor: 32.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 },
    attention_bias: false,
    mlp_bias: false,
    tie_word_embeddings: true,
  },
};

export const TINY_FAMILY_NAMES = Object.keys(TINY_FAMILY_CONFIGS) as TinyFamilyName[];

export interface TinyFamilyCheckpoint {
  name: TinyFamilyName;
  dir: string;
  dtype: TinyStorageDtype;
  seed: number;
  /** The config.json written (torch_dtype set to the storage dtype). */
  config: Record<string, unknown>;
  /** Every stored tensor: values exactly as stored, widened to float32 (row-major, PyTorch shape order). */
  tensors: Record<string, Float32Array>;
  shapes: Record<string, number[]>;
  /** Stored tensor names in file order. */
  names: string[];
}

/**
 * Approximately standard normal numbers from integer arithmetic only (mulberry32 uniforms, Irwin–Hall sum of
 * four, rescaled to unit variance), so the values are identical on every JavaScript engine.
 */
export function normalStream(seed: number, stream = 0): () => number {
  let s = (Math.imul(seed >>> 0, 0x9e3779b1) ^ stream) >>> 0;
  const uniform = (): number => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const k = Math.sqrt(3);
  return () => (uniform() + uniform() + uniform() + uniform() - 2) * k;
}

/**
 * How each tensor is drawn. Linear weights 0.08·N (q/k/v ≈ 0.6 per element after a norm, attention logits
 * around 1–2, each block moving the residual by roughly its own size); embeddings 0.3·N; the separate head
 * 0.25·N (logits spread ≈ 2, so greedy choices have clear margins); norm weights 1 + 0.1·N; biases 0.2·N.
 */
function initFor(name: string): { mean: number; std: number } {
  if (name.endsWith('norm.weight')) return { mean: 1, std: 0.1 };
  if (name.endsWith('.bias')) return { mean: 0, std: 0.2 };
  if (name === 'model.embed_tokens.weight') return { mean: 0, std: 0.3 };
  if (name === 'lm_head.weight') return { mean: 0, std: 0.25 };
  return { mean: 0, std: 0.08 };
}

/**
 * Values of one tensor before storage rounding (float64), from the seed, the family and the tensor's name:
 * two families never share weights, and one family's float32 and float16 checkpoints differ only by rounding.
 */
export function drawTensor(family: string, name: string, count: number, seed: number): Float64Array {
  const next = normalStream(seed, hashName(`${family}/${name}`));
  const { mean, std } = initFor(name);
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) out[i] = mean + std * next();
  return out;
}

/** Config JSON with the float-typed rope fields written as floats (`8.0`), as Python's json would. */
function configJson(config: Record<string, unknown>): string {
  return JSON.stringify(config, null, 2).replace(
    /"(factor|low_freq_factor|high_freq_factor|rope_theta|attention_dropout|initializer_range)": (-?\d+)(,?)$/gm,
    '"$1": $2.0$3',
  );
}

/**
 * Writes `dir/config.json` and `dir/model.safetensors` for one tiny family and returns what was stored.
 * Tensor names, order and shapes are those the project's architecture spec registers (tied aliases left out).
 */
export function writeTinyFamilyCheckpoint(
  dir: string,
  name: TinyFamilyName,
  opts: { dtype?: TinyStorageDtype; seed?: number; /** config keys to change; undefined removes one */ config?: Record<string, unknown> } = {},
): TinyFamilyCheckpoint {
  const base = TINY_FAMILY_CONFIGS[name];
  if (!base) throw new Error(`unknown tiny family ${JSON.stringify(name)}; known: ${TINY_FAMILY_NAMES.join(', ')}`);
  const dtype = opts.dtype ?? 'float32';
  const seed = opts.seed ?? 1;
  const config: Record<string, unknown> = { ...structuredClone(base), torch_dtype: dtype };
  for (const [k, v] of Object.entries(opts.config ?? {})) {
    if (v === undefined) delete config[k];
    else config[k] = v;
  }
  const stored = writeSeededCheckpoint(dir, config, dtype, (tensor, count) => drawTensor(name, tensor, count, seed), configJson(config));
  return { name, dir, dtype, seed, config, ...stored };
}

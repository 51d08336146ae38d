/**
 * Tiny random GPT-2 checkpoints (config.json + model.safetensors with real, deterministic weights) for
 * testing the engine against the plain TypeScript reference in ./reference-gpt2.ts.
 *
 * Tensor names, order and shapes come from the project's GPT-2 architecture spec (storedTensorsFor), so
 * Conv1D weights are stored [in, out] as transformers saves them and a tied lm_head is not stored.
 * Weights are drawn from a seed and the tensor's name (a float16 and a float32 checkpoint of one seed are
 * the same model rounded differently) and returned as the float32 values actually stored.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeSafetensors, type SafetensorsWriteTensor } from '../../src/reader/formats/safetensors-writer.js';
import { encodeTensor, normalStream, roundToDtype, type TinyStorageDtype } from './tiny-llama-family.js';
import { storedTensorsFor } from './tiny-models.js';
import { hashName } from './tiny-checkpoint.js';

export type TinyGpt2Name = 'gpt2' | 'gpt2-layer-scaled' | 'gpt2-unscaled';

const SHARED = {
  architectures: ['GPT2LMHeadModel'],
  model_type: 'gpt2',
  n_embd: 64,
  n_head: 4,
  n_positions: 64,
  n_ctx: 64,
  attn_pdrop: 0.1,
  embd_pdrop: 0.1,
  resid_pdrop: 0.1,
  initializer_range: 0.02,
  bos_token_id: 0,
  eos_token_id: 0,
  use_cache: true,
} as const;

/**
 * - gpt2: the released configs' shape: gelu_new, n_inner null (4·n_embd), tie_word_embeddings unset
 *   (true), eps 1e-5, the scaling defaults.
 * - gpt2-layer-scaled: scale_attn_by_inverse_layer_idx and reorder_and_upcast_attn (as Stanford CRFM's GPT-2 runs set them), a separate
 *   lm_head, explicit n_inner, gelu_pytorch_tanh, a larger eps.
 * - gpt2-unscaled: scale_attn_weights false, gelu_fast, two layers.
 */
export const TINY_GPT2_CONFIGS: Readonly<Record<TinyGpt2Name, Readonly<Record<string, unknown>>>> = {
  gpt2: { ...SHARED, n_layer: 4, vocab_size: 96, n_inner: null, activation_function: 'gelu_new', layer_norm_epsilon: 1e-5 },
  'gpt2-layer-scaled': {
    ...SHARED,
    n_layer: 4,
    vocab_size: 80,
    n_inner: 96,
    activation_function: 'gelu_pytorch_tanh',
    layer_norm_epsilon: 1e-3,
    scale_attn_by_inverse_layer_idx: true,
    reorder_and_upcast_attn: true,
    tie_word_embeddings: false,
  },
  'gpt2-unscaled': {
    ...SHARED,
    n_layer: 2,
    vocab_size: 72,
    n_inner: 128,
    activation_function: 'gelu_fast',
    layer_norm_epsilon: 1e-5,
    scale_attn_weights: false,
  },
};

export const TINY_GPT2_NAMES = Object.keys(TINY_GPT2_CONFIGS) as TinyGpt2Name[];

export interface TinyGpt2Checkpoint {
  name: TinyGpt2Name;
  dir: string;
  dtype: TinyStorageDtype;
  config: Record<string, unknown>;
  /** Every stored tensor: values exactly as stored, widened to float32 (row-major, PyTorch shape order). */
  tensors: Record<string, Float32Array>;
}

/**
 * LayerNorm weights 1 + 0.1·N and biases 0.1·N; token embeddings 0.3·N (tied logits spread ≈ 2, so greedy
 * choices have clear margins); position embeddings 0.1·N; Conv1D weights 0.08·N (GELU inputs around ±1,
 * where a float16 GELU table would show); their biases 0.05·N; a separate head 0.25·N.
 */
function initFor(name: string): { mean: number; std: number } {
  if (/\.ln_(1|2|f)\.weight$/.test(name)) return { mean: 1, std: 0.1 };
  if (/\.ln_(1|2|f)\.bias$/.test(name)) return { mean: 0, std: 0.1 };
  if (name === 'transformer.wte.weight') return { mean: 0, std: 0.3 };
  if (name === 'transformer.wpe.weight') return { mean: 0, std: 0.1 };
  if (name === 'lm_head.weight') return { mean: 0, std: 0.25 };
  if (name.endsWith('.bias')) return { mean: 0, std: 0.05 };
  return { mean: 0, std: 0.08 };
}

export function writeTinyGpt2Checkpoint(dir: string, name: TinyGpt2Name, opts: { dtype?: TinyStorageDtype; seed?: number } = {}): TinyGpt2Checkpoint {
  const base = TINY_GPT2_CONFIGS[name];
  if (!base) throw new Error(`unknown tiny GPT-2 ${JSON.stringify(name)}; known: ${TINY_GPT2_NAMES.join(', ')}`);
  const dtype = opts.dtype ?? 'float32';
  const seed = opts.seed ?? 1;
  // GPT-2 configs carry no torch_dtype (the originals are float32); a half-precision re-save states it.
  const config: Record<string, unknown> = { ...structuredClone(base), ...(dtype === 'float32' ? {} : { torch_dtype: dtype }) };
  const tensors: Record<string, Float32Array> = {};
  const write: SafetensorsWriteTensor[] = [];
  for (const t of storedTensorsFor(config)) {
    const count = t.shape.reduce((a, b) => a * b, 1);
    const next = normalStream(seed, hashName(`${name}/${t.name}`));
    const { mean, std } = initFor(t.name);
    const values = new Float32Array(count);
    for (let i = 0; i < count; i++) values[i] = roundToDtype(mean + std * next(), dtype);
    tensors[t.name] = values;
    write.push({ name: t.name, dtype, shape: t.shape, data: encodeTensor(values, dtype) });
  }
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  writeSafetensors(join(dir, 'model.safetensors'), write, { format: 'pt' });
  return { name, dir, dtype, config, tensors };
}

/**
 * Tiny random mixture-of-experts checkpoints (config.json + safetensors with real, deterministic weights) for
 * testing the engine against ./reference-moe.ts: 4 experts per sparse layer, hidden 64, 4 query heads over 2 KV
 * heads. Tensor names, order and shapes are those the project's architecture specs register (experts one
 * Linear each, as transformers 4.x saves them).
 *
 *   mixtral          MixtralForCausalLM, top-2 of 4 (renormalised, as Mixtral always is), 3 layers
 *   qwen3-moe        Qwen3MoeForCausalLM, top-2 of 4, norm_topk_prob false, layer 1 dense (mlp_only_layers [1]),
 *                    head_dim 32 ≠ hidden / heads, moe_intermediate_size 40 ≠ intermediate_size 96
 *   qwen3-moe-step   Qwen3MoeForCausalLM, top-3 of 4, norm_topk_prob true, decoder_sparse_step 2 (layers 1 and 3
 *                    sparse, 0 and 2 dense), attention_bias true (on all four projections)
 *   mixtral-top1     MixtralForCausalLM, top-1 of 4 (every weight renormalises to 1)
 *
 * Router weights are drawn 4× wider than the other linear weights (0.32·N): router logits then spread by about
 * 2.5, so the routing decisions sit far from ties and vary from token to token.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeSafetensors, type SafetensorsWriteTensor } from '../../src/reader/formats/safetensors-writer.js';
import { drawTensor, encodeTensor, roundToDtype, type TinyStorageDtype } from './tiny-llama-family.js';
import { storedTensorsFor } from './tiny-models.js';

export type TinyMoeName = 'mixtral' | 'qwen3-moe' | 'qwen3-moe-step' | 'mixtral-top1' | 'qwen3-moe-gguf';

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
  tie_word_embeddings: false,
  output_router_logits: false,
  router_aux_loss_coef: 0.001,
  torch_dtype: 'float32',
} as const;

const MIXTRAL = {
  ...SHARED,
  architectures: ['MixtralForCausalLM'],
  model_type: 'mixtral',
  num_hidden_layers: 3,
  intermediate_size: 48,
  num_local_experts: 4,
  num_experts_per_tok: 2,
  vocab_size: 112,
  max_position_embeddings: 1024,
  rms_norm_eps: 1e-5,
  rope_theta: 1000000.0,
  sliding_window: null,
  router_jitter_noise: 0.0,
} as const;

const QWEN3_MOE = {
  ...SHARED,
  architectures: ['Qwen3MoeForCausalLM'],
  model_type: 'qwen3_moe',
  num_hidden_layers: 3,
  intermediate_size: 96,
  moe_intermediate_size: 40,
  num_experts: 4,
  num_experts_per_tok: 2,
  norm_topk_prob: false,
  decoder_sparse_step: 1,
  mlp_only_layers: [1],
  head_dim: 32,
  vocab_size: 104,
  max_position_embeddings: 1024,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  rope_scaling: null,
  attention_bias: false,
  use_sliding_window: false,
  sliding_window: null,
  max_window_layers: 3,
} as const;

export const TINY_MOE_CONFIGS: Readonly<Record<TinyMoeName, Readonly<Record<string, unknown>>>> = {
  mixtral: MIXTRAL,
  'qwen3-moe': QWEN3_MOE,
  'qwen3-moe-step': {
    ...SHARED,
    architectures: ['Qwen3MoeForCausalLM'],
    model_type: 'qwen3_moe',
    num_hidden_layers: 4,
    intermediate_size: 80,
    moe_intermediate_size: 24,
    num_experts: 4,
    num_experts_per_tok: 3,
    norm_topk_prob: true,
    decoder_sparse_step: 2,
    mlp_only_layers: [],
    head_dim: 16,
    vocab_size: 96,
    max_position_embeddings: 512,
    rms_norm_eps: 1e-6,
    rope_theta: 10000.0,
    rope_scaling: null,
    attention_bias: true,
    use_sliding_window: false,
    sliding_window: null,
    max_window_layers: 4,
  },
  'mixtral-top1': { ...MIXTRAL, num_hidden_layers: 2, num_experts_per_tok: 1, vocab_size: 100 },
  // What a Qwen3-MoE GGUF can say: every layer sparse, top-k renormalised (llama.cpp's qwen3moe).
  'qwen3-moe-gguf': { ...QWEN3_MOE, mlp_only_layers: [], norm_topk_prob: true, hidden_size: 64, moe_intermediate_size: 32, intermediate_size: 64 },
};

export const TINY_MOE_NAMES = Object.keys(TINY_MOE_CONFIGS) as TinyMoeName[];

export interface TinyMoeCheckpoint {
  name: TinyMoeName;
  dir: string;
  dtype: TinyStorageDtype;
  seed: number;
  config: Record<string, unknown>;
  /** Every stored tensor: values exactly as stored, widened to float32 (row-major, PyTorch shape order). */
  tensors: Record<string, Float32Array>;
  shapes: Record<string, number[]>;
  /** Stored tensor names in file order. */
  names: string[];
}

const isRouter = (name: string): boolean => /\.(block_sparse_moe|mlp)\.gate\.weight$/.test(name);

/**
 * Writes `dir/config.json` and the weights: `model.safetensors`, or with `shards` > 1 that many files and a
 * `model.safetensors.index.json` (tensors split in file order, so a layer's experts can straddle two files).
 */
export function writeTinyMoeCheckpoint(
  dir: string,
  name: TinyMoeName,
  opts: { dtype?: TinyStorageDtype; seed?: number; shards?: number } = {},
): TinyMoeCheckpoint {
  const base = TINY_MOE_CONFIGS[name];
  if (!base) throw new Error(`unknown tiny MoE model ${JSON.stringify(name)}; known: ${TINY_MOE_NAMES.join(', ')}`);
  const dtype = opts.dtype ?? 'float32';
  const seed = opts.seed ?? 1;
  const shards = opts.shards ?? 1;
  const config: Record<string, unknown> = { ...structuredClone(base), torch_dtype: dtype };
  const stored = storedTensorsFor(config);
  const tensors: Record<string, Float32Array> = {};
  const shapes: Record<string, number[]> = {};
  const write: SafetensorsWriteTensor[] = [];
  for (const t of stored) {
    const count = t.shape.reduce((a, b) => a * b, 1);
    const raw = drawTensor(name, t.name, count, seed);
    const scale = isRouter(t.name) ? 4 : 1;
    const values = new Float32Array(count);
    for (let i = 0; i < count; i++) values[i] = roundToDtype(scale * raw[i]!, dtype);
    tensors[t.name] = values;
    shapes[t.name] = [...t.shape];
    write.push({ name: t.name, dtype, shape: t.shape, data: encodeTensor(values, dtype) });
  }
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  if (shards === 1) writeSafetensors(join(dir, 'model.safetensors'), write, { format: 'pt' });
  else {
    const per = Math.ceil(write.length / shards);
    const weightMap: Record<string, string> = {};
    let total = 0;
    for (let i = 0; i < shards; i++) {
      const file = `model-${String(i + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
      const part = write.slice(i * per, (i + 1) * per);
      for (const t of part) {
        weightMap[t.name] = file;
        total += t.data!.byteLength;
      }
      writeSafetensors(join(dir, file), part, { format: 'pt' });
    }
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2));
  }
  return { name, dir, dtype, seed, config, tensors, shapes, names: stored.map((t) => t.name) };
}

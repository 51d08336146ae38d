import { KEYS, type ConfigReader } from '../../reader/config.js';
import { InputError } from '../../util/errors.js';
import type { Tensor } from '../ggml/binding.js';
import type { GraphBuilder } from '../ggml/graph.js';
import { kvAttention } from './kv.js';
import type { ArchTensor, EngineArchitecture, EngineHyper, LayerCache, StepInputs, WeightLookup } from './types.js';

/**
 * GPT-2 as transformers' GPT2LMHeadModel computes it (eval mode, no padding, batch 1):
 *   x = wte[token] + wpe[position]
 *   per block: x = x + c_proj(attn(c_attn(LayerNorm(x; ln_1))))
 *              x = x + mlp.c_proj(gelu_new(mlp.c_fc(LayerNorm(x; ln_2))))
 *   logits = lm_head(LayerNorm(x; ln_f)), lm_head tied to wte unless tie_word_embeddings is false.
 *
 * Its Conv1D layers store the weight [in, out] (y = x·W + b), the transpose of a Linear's [out, in];
 * the engine transposes them once at load time so every matrix reaches ggml as ne [in, out] and
 * ggml_mul_mat(W, x) is the layer. The fused c_attn output [3·hidden, n] splits into q, k, v in that
 * order (transformers' .split(split_size, dim=2)), each head a consecutive run of head_dim values.
 */
export interface Gpt2Hyper extends EngineHyper {
  heads: number;
  headDim: number;
  ffn: number;
  /** layer_norm_epsilon. */
  eps: number;
  /** scale_attn_weights: scores divided by sqrt(head_dim). */
  scaleAttn: boolean;
  /** scale_attn_by_inverse_layer_idx: scores of block i further divided by i + 1. */
  scaleByLayer: boolean;
}

/**
 * The activations GPT-2 checkpoints use that the engine computes: transformers' gelu_new (the
 * default), gelu_pytorch_tanh and gelu_fast are one formula, the tanh approximation of GELU.
 */
const TANH_GELU = new Set(['gelu_new', 'gelu_pytorch_tanh', 'gelu_fast']);

export function gpt2Hyper(cfg: ConfigReader, family: string): Gpt2Hyper {
  if (family !== 'gpt2') throw new InputError(cfg.file, `the GPT-2 engine runs gpt2, not ${family}`, 'UNSUPPORTED_ARCHITECTURE');
  const hidden = cfg.int(KEYS.hidden);
  const heads = cfg.int(KEYS.heads);
  if (heads < 1 || hidden % heads !== 0) throw new InputError(cfg.file, `n_embd ${hidden} is not a multiple of n_head ${heads}`, 'BAD_CONFIG');
  const act = cfg.optString('activation_function') ?? 'gelu_new';
  if (!TANH_GELU.has(act))
    throw new InputError(
      cfg.file,
      `activation_function ${act} is not supported by the engine yet (${[...TANH_GELU].join(', ')} are)`,
      'UNSUPPORTED_ARCHITECTURE',
    );
  // Cross-attention layers only act on encoder states, which a causal LM run never has; their
  // weights would still be planned for, so such checkpoints are refused rather than mis-planned.
  if (cfg.bool('add_cross_attention', false))
    throw new InputError(cfg.file, 'GPT-2 with add_cross_attention is not supported by the engine', 'UNSUPPORTED_ARCHITECTURE');
  // GPT2Config maps max_position_embeddings to n_positions: wpe has exactly that many rows.
  const positions = cfg.optInt(['n_positions', 'max_position_embeddings'], 1024);
  return {
    family,
    layers: cfg.int(KEYS.layers),
    hidden,
    heads,
    headDim: hidden / heads,
    // n_inner is null in the released configs: 4 × n_embd.
    ffn: cfg.optInt('n_inner') ?? 4 * hidden,
    vocab: cfg.int(KEYS.vocab),
    eps: cfg.optNumber('layer_norm_epsilon') ?? 1e-5,
    scaleAttn: cfg.bool('scale_attn_weights', true),
    scaleByLayer: cfg.bool('scale_attn_by_inverse_layer_idx', false),
    // reorder_and_upcast_attn only changes the precision of half-precision runs; the engine's scores are float32 anyway.
    maxPositions: positions,
    positionLimit: positions,
    tied: cfg.bool('tie_word_embeddings', true),
    kvDim: hidden,
  };
}

export const WTE = 'transformer.wte.weight';
export const WPE = 'transformer.wpe.weight';
const LN_F = 'transformer.ln_f';
const HEAD = 'lm_head.weight';

/** One block's tensors; Conv1D weights are stored [in, out], which the transpose turns into ggml's [in, out]. */
export function gpt2LayerTensors(h: Gpt2Hyper, i: number): ArchTensor[] {
  const p = `transformer.h.${i}`;
  const H = h.hidden;
  const conv1d = (name: string, inDim: number, outDim: number): ArchTensor[] => [
    { name: `${name}.weight`, ne: [inDim, outDim], transform: 'transpose' },
    { name: `${name}.bias`, ne: [outDim] },
  ];
  return [
    { name: `${p}.ln_1.weight`, ne: [H] },
    { name: `${p}.ln_1.bias`, ne: [H] },
    ...conv1d(`${p}.attn.c_attn`, H, 3 * H),
    ...conv1d(`${p}.attn.c_proj`, H, H),
    { name: `${p}.ln_2.weight`, ne: [H] },
    { name: `${p}.ln_2.bias`, ne: [H] },
    ...conv1d(`${p}.mlp.c_fc`, H, h.ffn),
    ...conv1d(`${p}.mlp.c_proj`, h.ffn, H),
  ];
}

/** nn.LayerNorm: (x − mean) / sqrt(biased variance + eps) · weight + bias, over the hidden dimension. */
function layerNorm(gb: GraphBuilder, w: WeightLookup, x: Tensor, name: string, eps: number): Tensor {
  return gb.add(gb.mul(gb.norm(x, eps), w(`${name}.weight`)), w(`${name}.bias`));
}

/** Conv1D: x·W + b, with W already transposed to ne [in, out]. */
function conv1d(gb: GraphBuilder, w: WeightLookup, x: Tensor, name: string): Tensor {
  return gb.add(gb.mulMat(w(`${name}.weight`), x), w(`${name}.bias`));
}

/** Token plus learned position embedding: [n] ids and positions → [hidden, n]. */
export function gpt2Embed(gb: GraphBuilder, _h: Gpt2Hyper, w: WeightLookup, tokens: Tensor, positions: Tensor): Tensor {
  return gb.add(gb.getRows(w(WTE), tokens), gb.getRows(w(WPE), positions));
}

/** One GPT2Block: x [hidden, n] → [hidden, n]; this batch's K and V go into the layer's cache. */
export function gpt2Block(gb: GraphBuilder, h: Gpt2Hyper, w: WeightLookup, i: number, x: Tensor, cache: LayerCache, step: StepInputs): Tensor {
  const p = `transformer.h.${i}`;
  const n = gb.shape(x)[1];
  const H = h.hidden;
  const D = h.headDim;

  // Attention block: one fused projection, then q | k | v as strided views of its rows.
  const qkv = conv1d(gb, w, layerNorm(gb, w, x, `${p}.ln_1`, h.eps), `${p}.attn.c_attn`);
  const elem = gb.g.typeSize(gb.g.type(qkv));
  const qkvRow = gb.g.rowSize(gb.g.type(qkv), 3 * H);
  const q = gb.view(qkv, [D, h.heads, n], [D * elem, qkvRow], 0);
  const k = gb.view(qkv, [H, n], [qkvRow], H * elem);
  const v = gb.view(qkv, [H, n], [qkvRow], 2 * H * elem);

  // transformers' eager attention (the model's definition) divides by sqrt(head_dim), then optionally by
  // layer_idx + 1; one factor here. (Its SDPA path, as read at transformers c44b2d9, applies neither
  // scale_attn_weights=false nor the layer scaling; only configs that set them are affected.)
  const scale = (h.scaleAttn ? 1 / Math.sqrt(D) : 1) / (h.scaleByLayer ? i + 1 : 1);
  // This batch's K and V (strided views of the fused projection) into the cache, then attention over it.
  const merged = kvAttention(gb, cache, step, q, k, v, { headDim: D, heads: h.heads, kvHeads: h.heads, scale });
  x = gb.add(x, conv1d(gb, w, merged, `${p}.attn.c_proj`));

  // MLP block: c_proj(gelu_new(c_fc(ln_2(x)))).
  const up = conv1d(gb, w, layerNorm(gb, w, x, `${p}.ln_2`, h.eps), `${p}.mlp.c_fc`);
  return gb.add(x, conv1d(gb, w, gb.geluTanh(up), `${p}.mlp.c_proj`));
}

/** GPT-2 for the engine: plan units, tensors per part, and the graph of each part. */
export const gpt2Architecture: EngineArchitecture<Gpt2Hyper> = {
  families: ['gpt2'],
  hyper: gpt2Hyper,
  units: () => ({ embed: 'transformer.wte', block: (i) => `transformer.h.${i}`, norm: LN_F, head: 'lm_head' }),
  tensors(h) {
    // wpe rides with wte: the engine loads every embed tensor on the embedding's device.
    const embed: ArchTensor[] = [
      { name: WTE, ne: [h.hidden, h.vocab] },
      { name: WPE, ne: [h.hidden, h.maxPositions] },
    ];
    const norm: ArchTensor[] = [
      { name: `${LN_F}.weight`, ne: [h.hidden] },
      { name: `${LN_F}.bias`, ne: [h.hidden] },
    ];
    // A separate lm_head is an nn.Linear ([vocab, hidden] stored, ggml [hidden, vocab] as is).
    const head: ArchTensor[] = h.tied ? [] : [{ name: HEAD, ne: [h.hidden, h.vocab] }];
    return { embed, norm, head, layer: (i) => gpt2LayerTensors(h, i) };
  },
  embed: gpt2Embed,
  layer: gpt2Block,
  finalNorm: (gb, h, w, x) => layerNorm(gb, w, x, LN_F, h.eps),
  head: (gb, h, w, x) => gb.mulMat(w(h.tied ? WTE : HEAD), x),
};

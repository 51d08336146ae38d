import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { KEYS, type ConfigReader } from '../../reader/config.js';
import { InputError } from '../../util/errors.js';
import { ROPE_MODE, type Tensor } from '../ggml/binding.js';
import type { GraphBuilder } from '../ggml/graph.js';
import { kvAttention } from './kv.js';
import type { ArchTensor, EngineArchitecture, EngineHyper, LayerCache, StepInputs, WeightLookup } from './types.js';
import { assertRegularFile } from '../../util/regular-file.js';

/**
 * ChatGLM2 / ChatGLM3 / GLM-4 as THUDM's remote code (`modeling_chatglm.py`, ChatGLMForConditionalGeneration)
 * computes them:
 *
 *   x = word_embeddings[token]
 *   per GLMBlock:  h = norm(x; input_layernorm)                   RMSNorm (or LayerNorm when rmsnorm is false)
 *                  [q | k | v] = query_key_value(h) (+bias)       q: heads × kv_channels; k, v: groups × kv_channels
 *                  (multi_query_attention false: heads × [q_h | k_h | v_h] per head instead)
 *                  q, k ← rotary on the first kv_channels/2 of each head, in adjacent pairs (2j, 2j+1)
 *                  attention with query head h reading group h / (heads / groups), scale 1/sqrt(kv_channels)
 *                  x' = (apply_residual_connection_post_layernorm ? h : x) + dense(attn) (+bias)
 *                  h2 = norm(x'; post_attention_layernorm);  [a | b] = dense_h_to_4h(h2)
 *                  x = (post-layernorm residual ? h2 : x') + dense_4h_to_h(silu(a) · b)
 *   logits = output_layer(final_layernorm(x))   (final_layernorm only when post_layer_norm)
 *
 * Rotary: RotaryEmbedding(kv_channels // 2) makes a [positions, kv_channels/4, 2] cos/sin table with
 * theta_j = base^(-2j / (kv_channels/2)), base 10000; apply_rotary_pos_emb rotates x[..., :rot_dim] as
 * pairs (x[2j], x[2j+1]) and passes the rest through. That is ggml rope mode NORMAL with
 * n_dims = kv_channels / 2. The checkpoint's `rotary_pos_emb.inv_freq` buffer is never read by the forward
 * pass (forward_impl recomputes theta), so the engine does not load it.
 *
 * `rope_ratio` (long-context variants): ChatGLM3-6B-32K and GLM-4 multiply the base by it;
 * ChatGLM2-6B-32K's code divides the positions by it instead (linear interpolation). config.json does not
 * say which: the modeling_chatglm.py beside it decides when present, otherwise the base is multiplied.
 *
 * Attention scale: with apply_query_key_layer_scaling the pre-2.0-torch path divides q·k by
 * sqrt(kv_channels)·layer_number and multiplies the fp32 scores back by layer_number; torch ≥ 2 uses
 * scaled_dot_product_attention's default 1/sqrt(kv_channels). Either way it is 1/sqrt(kv_channels).
 */
export interface ChatglmHyper extends EngineHyper {
  heads: number;
  /** KV groups: multi_query_group_num, or heads when multi_query_attention is off. */
  groups: number;
  multiQuery: boolean;
  /** kv_channels: the width of every head. */
  headDim: number;
  /** Rotated leading dims of each head: kv_channels / 2. */
  ropeDims: number;
  ropeBase: number;
  /** ggml freq_scale: 1, or 1 / rope_ratio for ChatGLM2-32K's position interpolation. */
  freqScale: number;
  ffn: number;
  eps: number;
  rmsNorm: boolean;
  qkvBias: boolean;
  linearBias: boolean;
  residualPostNorm: boolean;
  postNorm: boolean;
}

const P = 'transformer';
const EMBED = `${P}.embedding.word_embeddings.weight`;
const FINAL_NORM = `${P}.encoder.final_layernorm`;
const HEAD = `${P}.output_layer.weight`;
const layerPrefix = (i: number): string => `${P}.encoder.layers.${i}`;

/** How modeling_chatglm.py beside the config applies rope_ratio, when it is there to read. */
function ropeRatioStyle(cfg: ConfigReader): 'base' | 'positions' {
  const file = join(dirname(cfg.file), 'modeling_chatglm.py');
  if (!existsSync(file)) return 'base';
  assertRegularFile(file);
  const code = readFileSync(file, 'utf8');
  if (/base\s*=\s*base\s*\*\s*self\.rope_ratio/.test(code)) return 'base';
  if (/seq_idx\s*=[^\n]*\/\s*self\.rope_ratio/.test(code)) return 'positions';
  return 'base';
}

export function chatglmHyper(cfg: ConfigReader, family: string): ChatglmHyper {
  if (family !== 'chatglm') throw new InputError(cfg.file, `the ChatGLM engine runs chatglm, not ${family}`, 'UNSUPPORTED_ARCHITECTURE');
  if (!cfg.has('padded_vocab_size', 'kv_channels', 'ffn_hidden_size') && cfg.has('inner_hidden_size', 'position_encoding_2d')) {
    throw new InputError(cfg.file, 'this is a ChatGLM-6B (first generation) config; the engine runs ChatGLM2 and later only', 'UNSUPPORTED_ARCHITECTURE');
  }
  if ((cfg.optInt('quantization_bit') ?? 0) !== 0) {
    throw new InputError(
      cfg.file,
      'quantization_bit checkpoints (QuantizedLinear int4/int8 weights) are not supported by the engine',
      'UNSUPPORTED_ARCHITECTURE',
    );
  }
  if (cfg.optInt('pre_seq_len') !== undefined) {
    throw new InputError(cfg.file, 'P-tuning prefixes (pre_seq_len) are not supported by the engine', 'UNSUPPORTED_ARCHITECTURE');
  }
  const hidden = cfg.int(KEYS.hidden, 'hidden size');
  const heads = cfg.int(KEYS.heads, 'attention heads');
  const multiQuery = cfg.bool('multi_query_attention', false);
  // ChatGLMConfig's defaults for the keys a config may leave out (kv_channels defaults to 128 there).
  const headDim = cfg.optInt('kv_channels', 128);
  const groups = multiQuery ? cfg.optInt('multi_query_group_num', 1) : heads;
  const ropeRatio = cfg.optNumber('rope_ratio') ?? 1;
  if (!(ropeRatio > 0)) throw new InputError(cfg.file, `rope_ratio must be positive, got ${ropeRatio}`, 'BAD_CONFIG');
  const style = ropeRatio === 1 ? 'base' : ropeRatioStyle(cfg);
  const h: ChatglmHyper = {
    family,
    layers: cfg.int(['num_layers', 'num_hidden_layers'], 'layer count'),
    hidden,
    heads,
    groups,
    multiQuery,
    headDim,
    ropeDims: headDim / 2,
    ropeBase: style === 'base' ? 10000 * ropeRatio : 10000,
    freqScale: style === 'positions' ? 1 / ropeRatio : 1,
    ffn: cfg.int('ffn_hidden_size', 'ffn hidden size'),
    vocab: cfg.int(['padded_vocab_size', 'vocab_size'], 'vocab size'),
    eps: cfg.optNumber('layernorm_epsilon') ?? 1e-5,
    rmsNorm: cfg.bool('rmsnorm', true),
    qkvBias: cfg.bool('add_bias_linear', false) || cfg.bool('add_qkv_bias', false),
    linearBias: cfg.bool('add_bias_linear', false),
    residualPostNorm: cfg.bool('apply_residual_connection_post_layernorm', false),
    postNorm: cfg.bool('post_layer_norm', true),
    maxPositions: cfg.optInt('seq_length') ?? 2048,
    // ChatGLMModel.forward builds its rotary table for seq_length positions and indexes it by position_ids:
    // the remote code has no rotation for a position past it, so neither does the engine.
    positionLimit: cfg.optInt('seq_length') ?? 2048,
    // The remote code defines no get_output_embeddings: output_layer is its own matrix.
    tied: false,
    kvDim: groups * headDim,
  };
  if (heads % groups !== 0) throw new InputError(cfg.file, `num_attention_heads ${heads} is not a multiple of multi_query_group_num ${groups}`, 'BAD_CONFIG');
  if (headDim % 4 !== 0) throw new InputError(cfg.file, `kv_channels ${headDim} must be a multiple of 4: rotary pairs cover half of each head`, 'BAD_CONFIG');
  return h;
}

const qkvRows = (h: ChatglmHyper): number => h.heads * h.headDim + 2 * h.kvDim;

function normTensors(h: ChatglmHyper, name: string): ArchTensor[] {
  return h.rmsNorm
    ? [{ name: `${name}.weight`, ne: [h.hidden] }]
    : [
        { name: `${name}.weight`, ne: [h.hidden] },
        { name: `${name}.bias`, ne: [h.hidden] },
      ];
}

/** One GLMBlock's checkpoint tensors with their ggml shapes (innermost first). */
export function chatglmLayerTensors(h: ChatglmHyper, i: number): ArchTensor[] {
  const p = layerPrefix(i);
  const proj = h.heads * h.headDim;
  const out: ArchTensor[] = [
    ...normTensors(h, `${p}.input_layernorm`),
    { name: `${p}.self_attention.query_key_value.weight`, ne: [h.hidden, qkvRows(h)], viewed: true },
    { name: `${p}.self_attention.dense.weight`, ne: [proj, h.hidden] },
    ...normTensors(h, `${p}.post_attention_layernorm`),
    { name: `${p}.mlp.dense_h_to_4h.weight`, ne: [h.hidden, 2 * h.ffn], viewed: true },
    { name: `${p}.mlp.dense_4h_to_h.weight`, ne: [h.ffn, h.hidden] },
  ];
  if (h.qkvBias) out.push({ name: `${p}.self_attention.query_key_value.bias`, ne: [qkvRows(h)] });
  if (h.linearBias) {
    out.push(
      { name: `${p}.self_attention.dense.bias`, ne: [h.hidden] },
      { name: `${p}.mlp.dense_h_to_4h.bias`, ne: [2 * h.ffn] },
      { name: `${p}.mlp.dense_4h_to_h.bias`, ne: [h.hidden] },
    );
  }
  return out;
}

function norm(gb: GraphBuilder, h: ChatglmHyper, w: WeightLookup, name: string, x: Tensor): Tensor {
  if (h.rmsNorm) return gb.mul(gb.rmsNorm(x, h.eps), w(`${name}.weight`));
  return gb.add(gb.mul(gb.norm(x, h.eps), w(`${name}.weight`)), w(`${name}.bias`));
}

/**
 * y = W[rows from .. from+count) · x (+ the same slice of the bias): one part of a fused Linear, read
 * through views of the weight and bias so that the result is contiguous.
 */
function linearRows(gb: GraphBuilder, w: WeightLookup, name: string, bias: boolean, x: Tensor, from: number, count: number): Tensor {
  const weight = w(`${name}.weight`);
  const [inF] = gb.shape(weight);
  const row = gb.g.rowSize(gb.g.type(weight), inF);
  const y = gb.mulMat(gb.view(weight, [inF, count], [row], from * row), x);
  if (!bias) return y;
  const b = w(`${name}.bias`);
  const el = gb.g.rowSize(gb.g.type(b), 1);
  return gb.add(y, gb.view(b, [count], [], from * el));
}

function linear(gb: GraphBuilder, w: WeightLookup, name: string, bias: boolean, x: Tensor): Tensor {
  const y = gb.mulMat(w(`${name}.weight`), x);
  return bias ? gb.add(y, w(`${name}.bias`)) : y;
}

/** One GLMBlock: x [hidden, n] → [hidden, n], appending this batch's K and V to the layer's own cache. */
export function chatglmLayer(gb: GraphBuilder, h: ChatglmHyper, w: WeightLookup, i: number, x: Tensor, cache: LayerCache, step: StepInputs): Tensor {
  const p = layerPrefix(i);
  const n = gb.shape(x)[1];
  const D = h.headDim;
  const qkv = `${p}.self_attention.query_key_value`;

  const ln1 = norm(gb, h, w, `${p}.input_layernorm`, x);
  let q: Tensor;
  let k: Tensor;
  let v: Tensor;
  if (h.multiQuery) {
    // Fused rows: [q (heads·D) | k (groups·D) | v (groups·D)].
    q = gb.reshape(linearRows(gb, w, qkv, h.qkvBias, ln1, 0, h.heads * D), [D, h.heads, n]);
    k = gb.reshape(linearRows(gb, w, qkv, h.qkvBias, ln1, h.heads * D, h.kvDim), [D, h.groups, n]);
    v = linearRows(gb, w, qkv, h.qkvBias, ln1, h.heads * D + h.kvDim, h.kvDim);
  } else {
    // Per head [q_h | k_h | v_h] (the view(np, 3·hn) + split of the remote code).
    const mixed = linear(gb, w, qkv, h.qkvBias, ln1);
    const el = gb.g.rowSize(gb.g.type(mixed), 1);
    const part = (j: number): Tensor => gb.cont(gb.view(mixed, [D, h.heads, n], [3 * D * el, qkvRows(h) * el], j * D * el));
    q = part(0);
    k = part(1);
    v = gb.reshape(part(2), [h.kvDim, n]);
  }
  const rope = { nDims: h.ropeDims, mode: ROPE_MODE.NORMAL, nCtxOrig: h.maxPositions, base: h.ropeBase, freqScale: h.freqScale };
  q = gb.rope(q, step.positions, null, rope);
  k = gb.rope(k, step.positions, null, rope);

  // This batch's K and V into the layer's cache, on the layer's device; query head g·r … g·r+r-1 reads group g.
  const context = kvAttention(gb, cache, step, q, k, v, { headDim: D, heads: h.heads, kvHeads: h.groups, scale: 1 / Math.sqrt(D) });
  const attnOut = linear(gb, w, `${p}.self_attention.dense`, h.linearBias, context);
  const mid = gb.add(h.residualPostNorm ? ln1 : x, attnOut);

  // SwiGLU: dense_h_to_4h's first ffn rows go through silu, its second ffn rows gate them.
  const ln2 = norm(gb, h, w, `${p}.post_attention_layernorm`, mid);
  const up = `${p}.mlp.dense_h_to_4h`;
  const gate = gb.silu(linearRows(gb, w, up, h.linearBias, ln2, 0, h.ffn));
  const lin = linearRows(gb, w, up, h.linearBias, ln2, h.ffn, h.ffn);
  const mlpOut = linear(gb, w, `${p}.mlp.dense_4h_to_h`, h.linearBias, gb.mul(gate, lin));
  return gb.add(h.residualPostNorm ? ln2 : mid, mlpOut);
}

/** The ChatGLM family for the engine: plan units, tensors per part, and the graph of each part. */
export const chatglmArchitecture: EngineArchitecture<ChatglmHyper> = {
  families: ['chatglm'],
  hyper: chatglmHyper,
  units: (h) => ({
    embed: `${P}.embedding.word_embeddings`,
    block: (i) => layerPrefix(i),
    // Without post_layer_norm there is no final norm unit: the (identity) norm runs with the head.
    norm: h.postNorm ? FINAL_NORM : `${P}.output_layer`,
    head: `${P}.output_layer`,
  }),
  tensors: (h) => ({
    embed: [{ name: EMBED, ne: [h.hidden, h.vocab] }],
    norm: h.postNorm ? normTensors(h, FINAL_NORM) : [],
    head: [{ name: HEAD, ne: [h.hidden, h.vocab] }],
    layer: (i) => chatglmLayerTensors(h, i),
  }),
  embed: (gb, _h, w, tokens) => gb.getRows(w(EMBED), tokens),
  layer: chatglmLayer,
  finalNorm: (gb, h, w, x) => (h.postNorm ? norm(gb, h, w, FINAL_NORM, x) : x),
  head: (gb, _h, w, x) => gb.mulMat(w(HEAD), x),
};

import { KEYS, type ConfigReader } from '../../reader/config.js';
import { baichuanNormHead, baichuanUsesRope, splitWPack } from '../../reader/architectures/baichuan.js';
import { InputError } from '../../util/errors.js';
import { ROPE_MODE, type Tensor } from '../ggml/binding.js';
import type { GraphBuilder } from '../ggml/graph.js';
import { kvAttention } from './kv.js';
import type { ArchTensor, EngineArchitecture, EngineHyper, LayerCache, StepInputs, WeightLookup } from './types.js';

/**
 * Baichuan 2 (7B, 13B) and Baichuan 13B as their remote code `modeling_baichuan.py` computes them
 * (BaichuanForCausalLM, eval mode, no padding):
 *
 *   x = embed_tokens[token]
 *   per layer:  h = RMSNorm(x; input_layernorm)
 *               q, k, v = W_pack(h) split in three along the output ([q; k; v], hidden rows each)
 *               7B: q, k ← rotary (rotate_half layout, base 10000, no scaling) — ggml NEOX
 *               scores = q·k / sqrt(head_dim) (13B: + ALiBi bias), causal, softmax, weighted sum of v
 *               x = x + o_proj(heads);  x = x + down_proj(silu(gate_proj(h')) · up_proj(h')), h' = RMSNorm(x)
 *   logits = lm_head(RMSNorm(x; model.norm))
 *
 * Which file a checkpoint ships (RoPE or ALiBi) and whether its head is a NormHead follow the reader's
 * rules (src/reader/architectures/baichuan.ts), so plan and engine agree on the model.
 *
 * NormHead: in eval mode the remote code replaces lm_head.weight by normalize(weight) (rows to unit L2
 * norm, eps 1e-12) on the first call and then uses it as a plain linear; in training it normalises on
 * every call. Either way the head is a linear layer with unit rows, so the rows are normalised once at
 * load time ('normalize-rows').
 *
 * ALiBi: the 13B code adds slope_h · j (j the key position) to every query row — the same, under
 * softmax, as slope_h · (j − i), which is what ggml's soft_max_ext adds with max_bias 8 when the mask
 * holds j − i (EngineHyper.alibi). Baichuan's _get_interleave(n) slopes are, with p = 2^floor(log2 n),
 * 2^(−8(h+1)/p) for h < p and then the odd powers 2^(−4(2k+1)/p) of the next power of two's series;
 * ggml's m0^(h+1), m1^(2(h−p)+1) with m0 = 2^(−8/p), m1 = 2^(−4/p) are the same numbers for every
 * head count (test/engine-baichuan.test.ts checks 1–64 heads).
 */
export interface BaichuanHyper extends EngineHyper {
  heads: number;
  headDim: number;
  ffn: number;
  eps: number;
  /** 7B: rotary embeddings; 13B: ALiBi. */
  rope: boolean;
  /** ggml rope mode: NEOX for transformers' rotate_half; NORMAL for a GGUF, whose converter permuted q and k rows. */
  ropeMode: number;
  normHead: boolean;
  /** W_pack stored as three tensors (q_proj, k_proj, v_proj: a GGUF), stacked back into one at load. */
  splitWPack: boolean;
}

/** ALiBi's max_bias: Baichuan's slopes are ggml's with max_bias 8 (llama.cpp sets the same). */
export const BAICHUAN_ALIBI_MAX_BIAS = 8;
/** RotaryEmbedding's default base; the 7B code passes none and its config has no rope_theta. */
const ROPE_BASE = 10000;

export function baichuanHyper(cfg: ConfigReader, family: string): BaichuanHyper {
  if (family !== 'baichuan') throw new InputError(cfg.file, `the Baichuan engine runs baichuan, not ${family}`, 'UNSUPPORTED_ARCHITECTURE');
  const hidden = cfg.int(KEYS.hidden);
  const heads = cfg.int(KEYS.heads);
  const rope = baichuanUsesRope(cfg);
  const act = cfg.optString('hidden_act') ?? 'silu';
  if (act !== 'silu') throw new InputError(cfg.file, `hidden_act ${act} is not supported for Baichuan (silu is)`, 'UNSUPPORTED_ARCHITECTURE');
  if (hidden % heads !== 0) throw new InputError(cfg.file, `hidden_size ${hidden} is not a multiple of num_attention_heads ${heads}`, 'BAD_CONFIG');
  const headDim = hidden / heads;
  if (rope && headDim % 2 !== 0) throw new InputError(cfg.file, `head dim ${headDim} must be even for rotary embeddings`, 'BAD_CONFIG');
  // BaichuanForCausalLM never ties its head (and a NormHead would then rewrite the embedding too).
  if (cfg.bool('tie_word_embeddings', false)) throw new InputError(cfg.file, 'tie_word_embeddings is not supported for Baichuan', 'UNSUPPORTED_ARCHITECTURE');
  const h: BaichuanHyper = {
    family,
    layers: cfg.int(KEYS.layers),
    hidden,
    heads,
    headDim,
    ffn: cfg.int(KEYS.intermediate),
    vocab: cfg.int(KEYS.vocab),
    eps: cfg.optNumber('rms_norm_eps') ?? 1e-6,
    // 7B reads max_position_embeddings, 13B model_max_length (as the reader does).
    maxPositions: cfg.optInt(rope ? ['max_position_embeddings', 'model_max_length'] : ['model_max_length', 'max_position_embeddings']) ?? 4096,
    rope,
    ropeMode: ROPE_MODE.NEOX,
    normHead: baichuanNormHead(cfg),
    splitWPack: splitWPack(cfg),
    tied: false,
    kvDim: hidden,
  };
  if (!rope) h.alibi = true;
  return h;
}

const EMBED = 'model.embed_tokens.weight';
const FINAL_NORM = 'model.norm.weight';
const HEAD = 'lm_head.weight';

function layerTensors(h: BaichuanHyper, i: number): ArchTensor[] {
  const p = `model.layers.${i}`;
  return [
    { name: `${p}.input_layernorm.weight`, ne: [h.hidden] },
    h.splitWPack
      ? { name: `${p}.self_attn.W_pack.weight`, ne: [h.hidden, h.hidden, 3], stack: ['q_proj', 'k_proj', 'v_proj'].map((x) => `${p}.self_attn.${x}.weight`) }
      : { name: `${p}.self_attn.W_pack.weight`, ne: [h.hidden, 3 * h.hidden] },
    { name: `${p}.self_attn.o_proj.weight`, ne: [h.hidden, h.hidden] },
    { name: `${p}.post_attention_layernorm.weight`, ne: [h.hidden] },
    { name: `${p}.mlp.gate_proj.weight`, ne: [h.hidden, h.ffn] },
    { name: `${p}.mlp.up_proj.weight`, ne: [h.hidden, h.ffn] },
    { name: `${p}.mlp.down_proj.weight`, ne: [h.ffn, h.hidden] },
  ];
}

/** One decoder layer (DecoderLayer for 7B, BaichuanLayer for 13B): x [hidden, n] → [hidden, n]. */
function decoderLayer(gb: GraphBuilder, h: BaichuanHyper, w: WeightLookup, i: number, x: Tensor, cache: LayerCache, step: StepInputs): Tensor {
  const p = `model.layers.${i}`;
  const n = gb.shape(x)[1];
  const D = h.headDim;

  // Attention block: one fused projection, q/k/v as strided views of its rows [q; k; v].
  let hs = gb.mul(gb.rmsNorm(x, h.eps), w(`${p}.input_layernorm.weight`));
  // Split parts are stacked [hidden, hidden, 3]: the same rows in the same order as W_pack's [hidden, 3·hidden].
  const pack = w(`${p}.self_attn.W_pack.weight`);
  const qkv = gb.mulMat(h.splitWPack ? gb.reshape(pack, [h.hidden, 3 * h.hidden]) : pack, hs);
  const f32 = gb.g.rowSize(gb.g.type(qkv), 1);
  const tokenBytes = 3 * h.hidden * f32;
  const part = (j: number): Tensor => gb.view(qkv, [D, h.heads, n], [D * f32, tokenBytes], j * h.hidden * f32);
  let q = part(0);
  let k = part(1);
  const v = part(2);
  if (h.rope) {
    const rope = { nDims: D, mode: h.ropeMode, nCtxOrig: h.maxPositions, base: ROPE_BASE, freqScale: 1 };
    q = gb.rope(q, step.positions, null, rope);
    k = gb.rope(k, step.positions, null, rope);
  }

  // This batch's K and V into the layer's cache, then attention over everything cached.
  const merged = kvAttention(gb, cache, step, q, k, v, {
    headDim: D,
    heads: h.heads,
    kvHeads: h.heads,
    scale: 1 / Math.sqrt(D),
    maxBias: h.rope ? 0 : BAICHUAN_ALIBI_MAX_BIAS,
  });
  x = gb.add(x, gb.mulMat(w(`${p}.self_attn.o_proj.weight`), merged));

  // MLP block: down(silu(gate(x)) * up(x)).
  hs = gb.mul(gb.rmsNorm(x, h.eps), w(`${p}.post_attention_layernorm.weight`));
  const gate = gb.silu(gb.mulMat(w(`${p}.mlp.gate_proj.weight`), hs));
  const up = gb.mulMat(w(`${p}.mlp.up_proj.weight`), hs);
  return gb.add(x, gb.mulMat(w(`${p}.mlp.down_proj.weight`), gb.mul(gate, up)));
}

/** Baichuan for the engine: the plan's module names are the Llama ones. */
export const baichuanArchitecture: EngineArchitecture<BaichuanHyper> = {
  families: ['baichuan'],
  hyper: baichuanHyper,
  units: () => ({ embed: 'model.embed_tokens', block: (i) => `model.layers.${i}`, norm: 'model.norm', head: 'lm_head' }),
  tensors(h) {
    const head: ArchTensor = { name: HEAD, ne: [h.hidden, h.vocab] };
    if (h.normHead) head.transform = 'normalize-rows';
    return { embed: [{ name: EMBED, ne: [h.hidden, h.vocab] }], norm: [{ name: FINAL_NORM, ne: [h.hidden] }], head: [head], layer: (i) => layerTensors(h, i) };
  },
  embed: (gb, _h, w, tokens) => gb.getRows(w(EMBED), tokens),
  layer: decoderLayer,
  finalNorm: (gb, h, w, x) => gb.mul(gb.rmsNorm(x, h.eps), w(FINAL_NORM)),
  head: (gb, _h, w, x) => gb.mulMat(w(HEAD), x),
};

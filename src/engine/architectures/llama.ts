import { ARCHITECTURES } from '../../reader/architectures/index.js';
import { llamaStyleDims } from '../../reader/architectures/llama-style.js';
import { KEYS, type ConfigReader } from '../../reader/config.js';
import { InputError } from '../../util/errors.js';
import { ROPE_MODE, type Tensor } from '../ggml/binding.js';
import type { GraphBuilder } from '../ggml/graph.js';
import { kvAttention } from './kv.js';
import type { ArchTensor, EngineArchitecture, EngineHyper, LayerCache, StepInputs, WeightLookup } from './types.js';

/**
 * The Llama family as transformers computes it: Llama 2/3 (rope scaling default, linear, llama3),
 * Mistral, Qwen2/2.5 (q/k/v bias), Qwen3 (per-head q/k RMSNorm before rope).
 *
 * ggml keeps shapes innermost-first: a torch weight [out, in] is ggml [in, out]; the hidden state of
 * n tokens is [hidden, n]. transformers' rotate_half rotary layout is ggml's NEOX mode on the
 * checkpoint's own (un-permuted) q/k weights.
 */
export interface LlamaHyper extends EngineHyper {
  heads: number;
  kvHeads: number;
  headDim: number;
  ffn: number;
  eps: number;
  ropeTheta: number;
  /** ggml freq_scale: 1 / linear factor. */
  freqScale: number;
  /** NEOX for transformers' layout; NORMAL for GGUF weights whose q/k rows llama.cpp permuted. */
  ropeMode: number;
  qkvBias: boolean;
  oBias: boolean;
  qkNorm: boolean;
}

/** The Llama-shaped families the engine runs; their shapes come from the reader's specs. */
const FAMILIES = ['llama', 'mistral', 'qwen2', 'qwen3'];

export function isLlamaFamily(family: string): boolean {
  return FAMILIES.includes(family);
}

export function llamaHyper(raw: ConfigReader, family: string): LlamaHyper {
  const spec = ARCHITECTURES.find((a) => a.family === family);
  if (!FAMILIES.includes(family) || !spec?.llamaStyle)
    throw new InputError(raw.file, `the engine runs the Llama family (${FAMILIES.join(', ')}), not ${family}`, 'UNSUPPORTED_ARCHITECTURE');
  // One reading of config.json for the reader and the engine: the family's own defaults (Qwen3's
  // head_dim 128), biases and ties, exactly as the skeleton was built.
  const { cfg, options: o } = spec.llamaStyle(raw);
  const d = llamaStyleDims(cfg);
  if (o.mlpBias) throw new InputError(cfg.file, 'mlp_bias is true: the engine runs Llama MLPs without biases', 'UNSUPPORTED_ARCHITECTURE');
  const h: LlamaHyper = {
    family,
    layers: d.layers,
    hidden: d.hidden,
    heads: d.heads,
    kvHeads: d.kvHeads,
    headDim: d.headDim,
    ffn: d.intermediate,
    vocab: d.vocab,
    eps: cfg.optNumber('rms_norm_eps') ?? 1e-6,
    ropeTheta: cfg.optNumber('rope_theta') ?? 10000,
    freqScale: 1,
    maxPositions: cfg.optInt(KEYS.maxPositions) ?? 4096,
    ropeMode: ROPE_MODE.NEOX,
    qkvBias: o.qkvBias,
    oBias: o.oBias,
    qkNorm: o.qkNorm,
    tied: cfg.bool('tie_word_embeddings', o.tieDefault),
    kvDim: 0,
  };
  h.kvDim = h.kvHeads * h.headDim;
  if (h.heads % h.kvHeads !== 0)
    throw new InputError(cfg.file, `num_attention_heads ${h.heads} is not a multiple of num_key_value_heads ${h.kvHeads}`, 'BAD_CONFIG');
  if (h.headDim % 2 !== 0) throw new InputError(cfg.file, `head dim ${h.headDim} must be even for rotary embeddings`, 'BAD_CONFIG');
  applyRopeScaling(cfg, h);
  return h;
}

/** transformers' ROPE_INIT_FUNCTIONS for the scalings Llama checkpoints use. */
function applyRopeScaling(cfg: ConfigReader, h: LlamaHyper): void {
  const rs = cfg.optObject('rope_scaling');
  if (!rs) return;
  const type = String(rs['rope_type'] ?? rs['type'] ?? 'default');
  const factor = Number(rs['factor'] ?? 1);
  if (type === 'default') return;
  if (!(factor > 0)) throw new InputError(cfg.file, `rope_scaling.factor must be positive, got ${String(rs['factor'])}`, 'BAD_CONFIG');
  if (type === 'linear') {
    h.freqScale = 1 / factor;
    return;
  }
  if (type === 'llama3') {
    const low = Number(rs['low_freq_factor'] ?? 1);
    const high = Number(rs['high_freq_factor'] ?? 4);
    const original = Number(rs['original_max_position_embeddings'] ?? 8192);
    const lowWavelen = original / low;
    const highWavelen = original / high;
    const half = h.headDim / 2;
    const factors = new Float32Array(half);
    for (let i = 0; i < half; i++) {
      const invFreq = 1 / h.ropeTheta ** ((2 * i) / h.headDim);
      const wavelen = (2 * Math.PI) / invFreq;
      let scaled: number;
      if (wavelen < highWavelen) scaled = invFreq;
      else if (wavelen > lowWavelen) scaled = invFreq / factor;
      else {
        const smooth = (original / wavelen - low) / (high - low);
        scaled = (1 - smooth) * (invFreq / factor) + smooth * invFreq;
      }
      // ggml divides the angle by the factor: theta_i = p * base^(-2i/d) / freq_factor[i].
      factors[i] = invFreq / scaled;
    }
    h.freqFactors = factors;
    return;
  }
  throw new InputError(cfg.file, `rope_scaling type ${type} is not supported by the engine yet (default, linear, llama3 are)`, 'UNSUPPORTED_ARCHITECTURE');
}

/** The checkpoint tensors of one layer, with the ggml shape the engine expects (innermost first). */
export function layerTensors(h: LlamaHyper, i: number): { name: string; ne: number[] }[] {
  const p = `model.layers.${i}`;
  const q = h.heads * h.headDim;
  const kv = h.kvHeads * h.headDim;
  const out = [
    { name: `${p}.input_layernorm.weight`, ne: [h.hidden] },
    { name: `${p}.self_attn.q_proj.weight`, ne: [h.hidden, q] },
    { name: `${p}.self_attn.k_proj.weight`, ne: [h.hidden, kv] },
    { name: `${p}.self_attn.v_proj.weight`, ne: [h.hidden, kv] },
    { name: `${p}.self_attn.o_proj.weight`, ne: [q, h.hidden] },
    { name: `${p}.post_attention_layernorm.weight`, ne: [h.hidden] },
    { name: `${p}.mlp.gate_proj.weight`, ne: [h.hidden, h.ffn] },
    { name: `${p}.mlp.up_proj.weight`, ne: [h.hidden, h.ffn] },
    { name: `${p}.mlp.down_proj.weight`, ne: [h.ffn, h.hidden] },
  ];
  if (h.qkvBias) {
    out.push(
      { name: `${p}.self_attn.q_proj.bias`, ne: [q] },
      { name: `${p}.self_attn.k_proj.bias`, ne: [kv] },
      { name: `${p}.self_attn.v_proj.bias`, ne: [kv] },
    );
  }
  if (h.oBias) out.push({ name: `${p}.self_attn.o_proj.bias`, ne: [h.hidden] });
  if (h.qkNorm) out.push({ name: `${p}.self_attn.q_norm.weight`, ne: [h.headDim] }, { name: `${p}.self_attn.k_norm.weight`, ne: [h.headDim] });
  return out;
}

export const EMBED = 'model.embed_tokens.weight';
export const FINAL_NORM = 'model.norm.weight';
export const HEAD = 'lm_head.weight';

export function globalTensors(h: LlamaHyper): {
  embed: { name: string; ne: number[] };
  norm: { name: string; ne: number[] };
  head?: { name: string; ne: number[] };
} {
  const g: ReturnType<typeof globalTensors> = {
    embed: { name: EMBED, ne: [h.hidden, h.vocab] },
    norm: { name: FINAL_NORM, ne: [h.hidden] },
  };
  if (!h.tied) g.head = { name: HEAD, ne: [h.hidden, h.vocab] };
  return g;
}

/** Embedding lookup: [n] token ids → [hidden, n]. */
export function embed(gb: GraphBuilder, table: Tensor, tokens: Tensor): Tensor {
  return gb.getRows(table, tokens);
}

/** One decoder layer, as transformers' LlamaDecoderLayer.forward: x [hidden, n] → [hidden, n]. */
export function decoderLayer(gb: GraphBuilder, h: LlamaHyper, w: WeightLookup, i: number, x: Tensor, cache: LayerCache, step: StepInputs): Tensor {
  const p = `model.layers.${i}`;
  x = selfAttention(gb, h, w, i, x, cache, step);
  const hs = gb.mul(gb.rmsNorm(x, h.eps), w(`${p}.post_attention_layernorm.weight`));
  return gb.add(x, denseMlp(gb, w, `${p}.mlp`, hs));
}

/** The MLP of the Llama family (and of Qwen3-MoE's dense layers): down(silu(gate(x)) * up(x)). */
export function denseMlp(gb: GraphBuilder, w: WeightLookup, prefix: string, hs: Tensor): Tensor {
  const gate = gb.silu(gb.mulMat(w(`${prefix}.gate_proj.weight`), hs));
  const up = gb.mulMat(w(`${prefix}.up_proj.weight`), hs);
  return gb.mulMat(w(`${prefix}.down_proj.weight`), gb.mul(gate, up));
}

/** A decoder layer's attention half with its residual: x + o_proj(attention(input_layernorm(x))). */
export function selfAttention(gb: GraphBuilder, h: LlamaHyper, w: WeightLookup, i: number, x: Tensor, cache: LayerCache, step: StepInputs): Tensor {
  const p = `model.layers.${i}`;
  const n = gb.shape(x)[1];
  const linear = (name: string, input: Tensor, bias: boolean): Tensor => {
    const y = gb.mulMat(w(`${name}.weight`), input);
    return bias ? gb.add(y, w(`${name}.bias`)) : y;
  };

  const hs = gb.mul(gb.rmsNorm(x, h.eps), w(`${p}.input_layernorm.weight`));
  let q = gb.reshape(linear(`${p}.self_attn.q_proj`, hs, h.qkvBias), [h.headDim, h.heads, n]);
  let k = gb.reshape(linear(`${p}.self_attn.k_proj`, hs, h.qkvBias), [h.headDim, h.kvHeads, n]);
  const v = linear(`${p}.self_attn.v_proj`, hs, h.qkvBias);
  if (h.qkNorm) {
    q = gb.mul(gb.rmsNorm(q, h.eps), w(`${p}.self_attn.q_norm.weight`));
    k = gb.mul(gb.rmsNorm(k, h.eps), w(`${p}.self_attn.k_norm.weight`));
  }
  const rope = { nDims: h.headDim, mode: h.ropeMode, nCtxOrig: h.maxPositions, base: h.ropeTheta, freqScale: h.freqScale };
  q = gb.rope(q, step.positions, step.freqFactors, rope);
  k = gb.rope(k, step.positions, step.freqFactors, rope);

  // This batch's K and V into the layer's cache, then attention over everything cached so far.
  const merged = kvAttention(gb, cache, step, q, k, v, { headDim: h.headDim, heads: h.heads, kvHeads: h.kvHeads, scale: 1 / Math.sqrt(h.headDim) });
  return gb.add(x, linear(`${p}.self_attn.o_proj`, merged, h.oBias));
}

export function finalNorm(gb: GraphBuilder, h: LlamaHyper, w: (name: string) => Tensor, x: Tensor): Tensor {
  return gb.mul(gb.rmsNorm(x, h.eps), w(FINAL_NORM));
}

/** Logits [vocab, n]; a tied model multiplies by the embedding matrix. */
export function lmHead(gb: GraphBuilder, h: LlamaHyper, w: (name: string) => Tensor, x: Tensor): Tensor {
  return gb.mulMat(w(h.tied ? EMBED : HEAD), x);
}

/** The Llama family for the engine: plan units, tensors per part, and the graph of each part. */
export const llamaArchitecture: EngineArchitecture<LlamaHyper> = {
  families: FAMILIES,
  hyper: llamaHyper,
  units: () => ({ embed: 'model.embed_tokens', block: (i) => `model.layers.${i}`, norm: 'model.norm', head: 'lm_head' }),
  tensors(h) {
    const g = globalTensors(h);
    const head: ArchTensor[] = g.head ? [g.head] : [];
    return { embed: [g.embed], norm: [g.norm], head, layer: (i) => layerTensors(h, i) };
  },
  embed: (gb, _h, w, tokens) => embed(gb, w(EMBED), tokens),
  layer: decoderLayer,
  finalNorm,
  head: lmHead,
};

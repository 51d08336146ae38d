/**
 * A plain, slow, readable GPT-2 forward pass that follows Hugging Face transformers' modeling_gpt2.py
 * (GPT2LMHeadModel, eager attention, eval mode, no padding, batch 1), to test the engine against. One
 * token, one head, one row at a time, float64 arithmetic, with a KV cache.
 *
 * WHAT IT COMPUTES
 *   x = wte[token] + wpe[position]                  position = cache length + index in the chunk
 *   per block i:
 *     h = LayerNorm(x; ln_1)                        (v − mean) / sqrt(mean((v − mean)²) + eps) · w + b
 *     q | k | v = Conv1D c_attn(h)                  Conv1D: y = h·W + b with W stored [in, out]; the 3·n_embd
 *                                                   outputs split in order q, k, v; head j = [j·D, (j+1)·D)
 *     k, v appended to the cache
 *     scores = q·k, / sqrt(D) when scale_attn_weights (default true), / (i + 1) when
 *              scale_attn_by_inverse_layer_idx (default false); causal; softmax; weighted sum of v
 *     x = x + Conv1D attn.c_proj(concat heads)
 *     x = x + Conv1D mlp.c_proj(gelu_new(Conv1D mlp.c_fc(LayerNorm(x; ln_2))))
 *   logits = LayerNorm(x; ln_f) · lm_headᵀ          lm_head = wte unless tie_word_embeddings is false
 *
 *   gelu_new(x) = 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³)))   (NewGELUActivation; gelu_pytorch_tanh and
 *   gelu_fast are the same function written differently)
 *   n_inner null → 4·n_embd; layer_norm_epsilon default 1e-5; n_positions default 1024 (wpe rows).
 *   Dropouts are identities in eval mode; reorder_and_upcast_attn changes only half-precision rounding.
 *
 * PRECISION: float64 on the weights as stored (a float16 checkpoint's values widened exactly), i.e. what
 * transformers computes in float32, minus float32 rounding. transformers masks with finfo.min rather than
 * −inf; after the softmax both give exactly 0.
 */
import { argmax, configBool as flag, layerNorm, softmaxAttend, topMargin } from './reference-math.js';

export { layerNorm };

export { argmax, topMargin };

export interface Gpt2ReferenceConfig {
  hidden: number;
  layers: number;
  heads: number;
  headDim: number;
  inner: number;
  vocab: number;
  positions: number;
  eps: number;
  scaleAttnWeights: boolean;
  scaleAttnByInverseLayerIdx: boolean;
  tieWordEmbeddings: boolean;
}

const TANH_GELUS = ['gelu_new', 'gelu_pytorch_tanh', 'gelu_fast'];

function num(raw: Record<string, unknown>, keys: string[], fallback?: number): number {
  for (const k of keys) {
    const v = raw[k];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`config: ${k} must be a number, got ${JSON.stringify(v)}`);
    return v;
  }
  if (fallback === undefined) throw new Error(`config: missing ${keys[0]}`);
  return fallback;
}

/** GPT2Config's defaults and attribute map (hidden_size → n_embd, max_position_embeddings → n_positions, …). */
export function parseGpt2Config(raw: Record<string, unknown>): Gpt2ReferenceConfig {
  const act = raw['activation_function'] ?? 'gelu_new';
  if (typeof act !== 'string' || !TANH_GELUS.includes(act))
    throw new Error(`activation_function ${JSON.stringify(act)} is not modelled (${TANH_GELUS.join(', ')} are)`);
  if (flag(raw, 'add_cross_attention', false)) throw new Error('add_cross_attention is not modelled');
  const hidden = num(raw, ['n_embd', 'hidden_size'], 768);
  const heads = num(raw, ['n_head', 'num_attention_heads'], 12);
  if (hidden % heads !== 0) throw new Error('n_embd must be a multiple of n_head');
  return {
    hidden,
    layers: num(raw, ['n_layer', 'num_hidden_layers'], 12),
    heads,
    headDim: hidden / heads,
    inner: num(raw, ['n_inner'], 4 * hidden),
    vocab: num(raw, ['vocab_size'], 50257),
    positions: num(raw, ['n_positions', 'max_position_embeddings'], 1024),
    eps: num(raw, ['layer_norm_epsilon'], 1e-5),
    scaleAttnWeights: flag(raw, 'scale_attn_weights', true),
    scaleAttnByInverseLayerIdx: flag(raw, 'scale_attn_by_inverse_layer_idx', false),
    tieWordEmbeddings: flag(raw, 'tie_word_embeddings', true),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Building blocks.

/** transformers' Conv1D: y = x·W + b for W stored [in, out] row-major (the transpose of a Linear weight). */
export function conv1d(x: Float64Array, w: Float64Array, b: Float64Array): Float64Array {
  const inDim = x.length;
  const outDim = b.length;
  if (w.length !== inDim * outDim) throw new Error(`conv1d: weight has ${w.length} values, expected ${inDim}×${outDim}`);
  const y = Float64Array.from(b);
  for (let i = 0; i < inDim; i++) {
    const xi = x[i]!;
    const row = i * outDim;
    for (let o = 0; o < outDim; o++) y[o] = y[o]! + xi * w[row + o]!;
  }
  return y;
}

/** NewGELUActivation. */
export function geluNew(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
}

// ---------------------------------------------------------------------------------------------------------
// The model.

interface BlockWeights {
  ln1w: Float64Array;
  ln1b: Float64Array;
  attnW: Float64Array;
  attnB: Float64Array;
  projW: Float64Array;
  projB: Float64Array;
  ln2w: Float64Array;
  ln2b: Float64Array;
  fcW: Float64Array;
  fcB: Float64Array;
  mlpProjW: Float64Array;
  mlpProjB: Float64Array;
}

export type Gpt2TensorSource = Record<string, ArrayLike<number>>;

export class ReferenceGpt2 {
  readonly config: Gpt2ReferenceConfig;
  private readonly wte: Float64Array;
  private readonly wpe: Float64Array;
  private readonly head: Float64Array;
  private readonly lnfW: Float64Array;
  private readonly lnfB: Float64Array;
  private readonly blocks: BlockWeights[];
  /** Per block, per cached position: the key and the value (n_embd each, heads concatenated). */
  private keys: Float64Array[][];
  private values: Float64Array[][];

  /** `config` is a config.json object; `tensors` maps checkpoint names to values (PyTorch shape, row-major). */
  constructor(config: Record<string, unknown>, tensors: Gpt2TensorSource) {
    const c = parseGpt2Config(config);
    this.config = c;
    const get = (name: string, count: number): Float64Array => {
      const t = tensors[name];
      if (!t) throw new Error(`tensor ${name} is missing`);
      if (t.length !== count) throw new Error(`tensor ${name} has ${t.length} values, expected ${count}`);
      return Float64Array.from(t);
    };
    const H = c.hidden;
    this.wte = get('transformer.wte.weight', c.vocab * H);
    this.wpe = get('transformer.wpe.weight', c.positions * H);
    this.head = c.tieWordEmbeddings ? this.wte : get('lm_head.weight', c.vocab * H);
    this.lnfW = get('transformer.ln_f.weight', H);
    this.lnfB = get('transformer.ln_f.bias', H);
    this.blocks = [];
    for (let l = 0; l < c.layers; l++) {
      const p = `transformer.h.${l}.`;
      this.blocks.push({
        ln1w: get(`${p}ln_1.weight`, H),
        ln1b: get(`${p}ln_1.bias`, H),
        attnW: get(`${p}attn.c_attn.weight`, H * 3 * H),
        attnB: get(`${p}attn.c_attn.bias`, 3 * H),
        projW: get(`${p}attn.c_proj.weight`, H * H),
        projB: get(`${p}attn.c_proj.bias`, H),
        ln2w: get(`${p}ln_2.weight`, H),
        ln2b: get(`${p}ln_2.bias`, H),
        fcW: get(`${p}mlp.c_fc.weight`, H * c.inner),
        fcB: get(`${p}mlp.c_fc.bias`, c.inner),
        mlpProjW: get(`${p}mlp.c_proj.weight`, c.inner * H),
        mlpProjB: get(`${p}mlp.c_proj.bias`, H),
      });
    }
    this.keys = this.blocks.map(() => []);
    this.values = this.blocks.map(() => []);
  }

  /** Tokens in the KV cache. */
  get cacheLength(): number {
    return this.keys[0]?.length ?? 0;
  }

  /**
   * Runs `tokens` at positions startPos, startPos + 1, … and returns their logits ([tokens.length][vocab]).
   * startPos defaults to the cache length (continue); a smaller one first drops the cache from there on.
   */
  forward(tokens: readonly number[], startPos: number = this.cacheLength): Float64Array[] {
    const c = this.config;
    if (!Number.isInteger(startPos) || startPos < 0 || startPos > this.cacheLength)
      throw new Error(`startPos ${startPos} must be between 0 and ${this.cacheLength}`);
    if (startPos + tokens.length > c.positions) throw new Error(`position ${startPos + tokens.length - 1} is past the ${c.positions} position embeddings`);
    for (let l = 0; l < c.layers; l++) {
      this.keys[l]!.length = startPos;
      this.values[l]!.length = startPos;
    }
    const H = c.hidden;
    const D = c.headDim;

    const xs = tokens.map((t, i) => {
      if (!Number.isInteger(t) || t < 0 || t >= c.vocab) throw new Error(`token ${t} outside the vocabulary (${c.vocab})`);
      const pos = startPos + i;
      const x = new Float64Array(H);
      for (let d = 0; d < H; d++) x[d] = this.wte[t * H + d]! + this.wpe[pos * H + d]!;
      return x;
    });

    this.blocks.forEach((w, l) => {
      const K = this.keys[l]!;
      const V = this.values[l]!;
      let scale = c.scaleAttnWeights ? 1 / Math.sqrt(D) : 1;
      if (c.scaleAttnByInverseLayerIdx) scale /= l + 1;
      // Project the whole chunk first, so the cache holds every key a query of the chunk may see.
      const qs = xs.map((x) => {
        const qkv = conv1d(layerNorm(x, w.ln1w, w.ln1b, c.eps), w.attnW, w.attnB);
        K.push(qkv.slice(H, 2 * H));
        V.push(qkv.slice(2 * H, 3 * H));
        return qkv.slice(0, H);
      });
      xs.forEach((x, i) => {
        const pos = startPos + i;
        const q = qs[i]!;
        const attn = new Float64Array(H);
        for (let hd = 0; hd < c.heads; hd++) {
          const scores = new Float64Array(pos + 1); // causal: keys 0 … pos
          let max = -Infinity;
          for (let j = 0; j <= pos; j++) {
            let s = 0;
            for (let d = 0; d < D; d++) s += q[hd * D + d]! * K[j]![hd * D + d]!;
            scores[j] = s * scale;
            max = Math.max(max, scores[j]!);
          }
          softmaxAttend(scores, pos, max, V, hd * D, attn, hd * D, D);
        }
        const o = conv1d(attn, w.projW, w.projB);
        for (let d = 0; d < H; d++) x[d] = x[d]! + o[d]!;
        const up = conv1d(layerNorm(x, w.ln2w, w.ln2b, c.eps), w.fcW, w.fcB);
        for (let j = 0; j < up.length; j++) up[j] = geluNew(up[j]!);
        const down = conv1d(up, w.mlpProjW, w.mlpProjB);
        for (let d = 0; d < H; d++) x[d] = x[d]! + down[d]!;
      });
    });

    return xs.map((x) => {
      const h = layerNorm(x, this.lnfW, this.lnfB, c.eps);
      // lm_head is an nn.Linear [vocab, n_embd] (or wte itself): one dot product per vocabulary row.
      const logits = new Float64Array(c.vocab);
      for (let t = 0; t < c.vocab; t++) {
        let s = 0;
        for (let d = 0; d < H; d++) s += this.head[t * H + d]! * h[d]!;
        logits[t] = s;
      }
      return logits;
    });
  }
}

/** Greedy decoding as transformers' generate(do_sample=False) without EOS: prompt from position 0, then one token at a time. */
export function referenceGreedyGpt2(
  model: ReferenceGpt2,
  prompt: readonly number[],
  maxNewTokens: number,
): { ids: number[]; prompt: Float64Array[]; steps: Float64Array[]; margins: number[] } {
  const promptLogits = model.forward(prompt, 0);
  const ids: number[] = [];
  const steps: Float64Array[] = [];
  const margins: number[] = [];
  let last = promptLogits.at(-1)!;
  for (let i = 0; i < maxNewTokens; i++) {
    ids.push(argmax(last));
    margins.push(topMargin(last));
    if (i === maxNewTokens - 1) break;
    last = model.forward([ids.at(-1)!])[0]!;
    steps.push(last);
  }
  return { ids, prompt: promptLogits, steps, margins };
}

/**
 * A plain, slow, readable forward pass for ChatGLM2 / ChatGLM3 / GLM-4 that follows THUDM's remote code
 * (`modeling_chatglm.py`: ChatGLMForConditionalGeneration → ChatGLMModel → GLMTransformer → GLMBlock), to test
 * the engine against. One token, one head, one row at a time, float64 arithmetic, batch 1, no padding.
 *
 * WHAT IT COMPUTES
 *   x = transformer.embedding.word_embeddings[token]                      (vocab = padded_vocab_size)
 *   per GLMBlock (encoder.layers.N):
 *     h  = norm(x; input_layernorm)        RMSNorm: x · rsqrt(mean(x²) + eps) · w (rmsnorm true, the released
 *                                          models); LayerNorm with weight and bias otherwise; eps = layernorm_epsilon
 *     m  = query_key_value(h) (+ bias when add_bias_linear or add_qkv_bias)
 *          multi_query_attention: m = [q (heads·D) | k (groups·D) | v (groups·D)], D = kv_channels
 *          otherwise: m viewed as heads × [q_h | k_h | v_h] (3·D each) and split per head
 *     q, k ← rotary (below); k, v appended to this layer's cache (the groups, before expansion)
 *     query head h attends with group floor(h / (heads / groups))          (the unsqueeze/expand of MQA)
 *     scores = q·k / sqrt(D), causal, softmax, weighted sum of v           (see ATTENTION SCALE)
 *     x' = (apply_residual_connection_post_layernorm ? h : x) + dense(attn) (+ bias when add_bias_linear)
 *     h2 = norm(x'; post_attention_layernorm)
 *     [a | b] = dense_h_to_4h(h2)  (2·ffn_hidden_size outputs; torch.chunk: a the first half, b the second)
 *     x = (apply_residual_connection_post_layernorm ? h2 : x') + dense_4h_to_h(silu(a) · b)
 *   logits = output_layer(final_layernorm(x))  (final_layernorm only when post_layer_norm; output_layer
 *            has no bias and is never tied: the remote code defines no get_output_embeddings)
 *
 * ROTARY (RotaryEmbedding + apply_rotary_pos_emb): ChatGLMModel builds RotaryEmbedding(kv_channels // 2), so
 *   n_elem = D/2 and forward_impl makes theta_j = 1 / base^(2j / n_elem) for j < n_elem/2, base = 10000
 *   (× rope_ratio in ChatGLM3-6B-32K / GLM-4); idx_theta = position · theta_j; the cache is [cos, sin] per j.
 *   apply_rotary_pos_emb takes rot_dim = 2 · (n_elem/2) = D/2 leading dims of each head, views them as
 *   (rot_dim/2, 2) — INTERLEAVED pairs (x[2j], x[2j+1]) — and passes x[rot_dim:] through:
 *     out[2j]   = x[2j]·cos_j − x[2j+1]·sin_j
 *     out[2j+1] = x[2j+1]·cos_j + x[2j]·sin_j
 *   ChatGLM2-6B-32K's code instead divides the positions by rope_ratio (seq_idx / rope_ratio) and keeps base
 *   10000: `ropeRatioStyle: 'positions'`.
 *   The table follows torch's float32 steps (arange/n_elem, pow, reciprocal, position·theta, cos/sin each
 *   rounded to float32). The chatglm2-6b code computes theta and seq_idx in inv_freq's dtype (the checkpoint's
 *   torch_dtype); ChatGLM3/GLM-4 in float32: the same thing for the float32 checkpoints tested here. Half
 *   precision models round the finished cos/sin table to their dtype ("mimic complex32"); so does this.
 *   Positions are absolute: generate() passes position_ids (prepare_inputs_for_generation), not 0… per call.
 *   The persistent `rotary_pos_emb.inv_freq` buffer is stored in checkpoints but never read by forward().
 *
 * ATTENTION SCALE: CoreAttention with apply_query_key_layer_scaling (torch < 2 path) divides by
 *   sqrt(D)·layer_number, then multiplies the float32 scores by layer_number: 1/sqrt(D) up to rounding. The
 *   torch ≥ 2 path is scaled_dot_product_attention with its default scale 1/sqrt(D). Both are 1/sqrt(D).
 *
 * PRECISION: float64 on the weights as stored (float16/bfloat16 widened exactly), except the rotary table.
 */
import { type TensorSource } from './reference-llama.js';
import { argmax, configBool as bool, configNumber as num, layerNorm, linear, rmsNorm, silu, softmaxAttend, topMargin } from './reference-math.js';

export { layerNorm };
import { roundToDtype } from './tiny-llama-family.js';

export type RopeRatioStyle = 'base' | 'positions';

export interface ChatglmReferenceConfig {
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  /** Groups of K/V heads: multi_query_group_num, or numHeads without multi_query_attention. */
  numGroups: number;
  multiQuery: boolean;
  headDim: number;
  ffnHiddenSize: number;
  vocabSize: number;
  eps: number;
  rmsnorm: boolean;
  qkvBias: boolean;
  linearBias: boolean;
  residualPostNorm: boolean;
  postLayerNorm: boolean;
  ropeRatio: number;
  ropeRatioStyle: RopeRatioStyle;
  /** The checkpoint's torch_dtype: half precision rounds the cos/sin table. */
  torchDtype: string;
  seqLength: number;
}

/** config.json as ChatGLMConfig fills its defaults. */
export function parseChatglmConfig(raw: Record<string, unknown>, ropeRatioStyle: RopeRatioStyle = 'base'): ChatglmReferenceConfig {
  if (raw['model_type'] !== 'chatglm') throw new Error(`not a ChatGLM config: model_type ${JSON.stringify(raw['model_type'])}`);
  if (raw['pre_seq_len'] != null) throw new Error('P-tuning prefixes are not modelled');
  if (num(raw, 'quantization_bit', 0) !== 0) throw new Error('quantized checkpoints are not modelled');
  const numHeads = num(raw, 'num_attention_heads', 32);
  const multiQuery = bool(raw, 'multi_query_attention', false);
  const headDim = num(raw, 'kv_channels', 128);
  if (headDim % 4 !== 0) throw new Error('kv_channels must be a multiple of 4');
  return {
    hiddenSize: num(raw, 'hidden_size', 4096),
    numLayers: num(raw, 'num_layers', 28),
    numHeads,
    numGroups: multiQuery ? num(raw, 'multi_query_group_num', 1) : numHeads,
    multiQuery,
    headDim,
    ffnHiddenSize: num(raw, 'ffn_hidden_size', 13696),
    vocabSize: num(raw, 'padded_vocab_size', 65024),
    eps: num(raw, 'layernorm_epsilon', 1e-5),
    rmsnorm: bool(raw, 'rmsnorm', true),
    qkvBias: bool(raw, 'add_bias_linear', false) || bool(raw, 'add_qkv_bias', false),
    linearBias: bool(raw, 'add_bias_linear', false),
    residualPostNorm: bool(raw, 'apply_residual_connection_post_layernorm', false),
    postLayerNorm: bool(raw, 'post_layer_norm', true),
    ropeRatio: num(raw, 'rope_ratio', 1),
    ropeRatioStyle,
    torchDtype: typeof raw['torch_dtype'] === 'string' ? raw['torch_dtype'] : 'float32',
    seqLength: num(raw, 'seq_length', 2048),
  };
}

const fr = Math.fround;

/** What RotaryEmbedding.__init__ registers as `inv_freq` (float32 values): 1 / 10000^(arange(0, dim, 2) / dim), dim = kv_channels / 2. */
export function chatglmInvFreqBuffer(headDim: number): Float64Array {
  const dim = headDim / 2;
  const out = new Float64Array(Math.ceil(dim / 2));
  for (let j = 0; j < out.length; j++) out[j] = fr(1 / fr(Math.pow(10000, fr((2 * j) / dim))));
  return out;
}

/** forward_impl's theta (float32 steps): 1 / base^(arange(0, n_elem, 2) / n_elem), n_elem = kv_channels / 2. */
export function chatglmTheta(c: Pick<ChatglmReferenceConfig, 'headDim' | 'ropeRatio' | 'ropeRatioStyle'>): Float64Array {
  const nElem = c.headDim / 2;
  const base = c.ropeRatioStyle === 'base' ? 10000 * c.ropeRatio : 10000;
  const theta = new Float64Array(nElem / 2);
  for (let j = 0; j < theta.length; j++) theta[j] = fr(1 / fr(Math.pow(base, fr((2 * j) / nElem))));
  return theta;
}

/** The remote code's cast of the finished cos/sin table for half-precision models. */
function roundTable(v: number, dtype: string): number {
  return dtype === 'float16' || dtype === 'bfloat16' ? roundToDtype(v, dtype) : v;
}

/** The cos/sin pair of each rotary frequency at a position, as the remote code's cache holds them. */
export function chatglmCosSin(c: ChatglmReferenceConfig, theta: Float64Array, pos: number): { cos: Float64Array; sin: Float64Array } {
  const idx = c.ropeRatioStyle === 'positions' ? fr(pos / c.ropeRatio) : pos;
  const cos = new Float64Array(theta.length);
  const sin = new Float64Array(theta.length);
  for (let j = 0; j < theta.length; j++) {
    const angle = fr(idx * theta[j]!);
    cos[j] = roundTable(fr(Math.cos(angle)), c.torchDtype);
    sin[j] = roundTable(fr(Math.sin(angle)), c.torchDtype);
  }
  return { cos, sin };
}

/** apply_rotary_pos_emb on one head x[offset .. offset + D): interleaved pairs over the first D/2 dims. */
export function chatglmApplyRope(x: Float64Array, offset: number, cos: Float64Array, sin: Float64Array): void {
  for (let j = 0; j < cos.length; j++) {
    const a = x[offset + 2 * j]!;
    const b = x[offset + 2 * j + 1]!;
    x[offset + 2 * j] = a * cos[j]! - b * sin[j]!;
    x[offset + 2 * j + 1] = b * cos[j]! + a * sin[j]!;
  }
}

interface Norm {
  weight: Float64Array;
  bias?: Float64Array;
}

interface BlockWeights {
  inputNorm: Norm;
  qkv: Float64Array;
  qkvBias?: Float64Array;
  dense: Float64Array;
  denseBias?: Float64Array;
  postNorm: Norm;
  h4: Float64Array;
  h4Bias?: Float64Array;
  down: Float64Array;
  downBias?: Float64Array;
}

export class ReferenceChatglm {
  readonly config: ChatglmReferenceConfig;
  readonly theta: Float64Array;
  private readonly embed: Float64Array;
  private readonly head: Float64Array;
  private readonly finalNorm?: Norm;
  private readonly blocks: BlockWeights[];
  /** Per layer, per position: keys after rotary and values, numGroups × headDim each. */
  private keys: Float64Array[][];
  private values: Float64Array[][];

  constructor(config: Record<string, unknown>, tensors: TensorSource, ropeRatioStyle: RopeRatioStyle = 'base') {
    const c = parseChatglmConfig(config, ropeRatioStyle);
    this.config = c;
    this.theta = chatglmTheta(c);
    const get = (name: string, count: number): Float64Array => {
      const t = tensors instanceof Map ? tensors.get(name) : tensors[name];
      if (!t) throw new Error(`tensor ${name} is missing`);
      if (t.length !== count) throw new Error(`tensor ${name} has ${t.length} values, expected ${count}`);
      return Float64Array.from(t);
    };
    const H = c.hiddenSize;
    const D = c.headDim;
    const proj = c.numHeads * D;
    const qkvRows = proj + 2 * c.numGroups * D;
    const F = c.ffnHiddenSize;
    const norm = (name: string): Norm =>
      c.rmsnorm ? { weight: get(`${name}.weight`, H) } : { weight: get(`${name}.weight`, H), bias: get(`${name}.bias`, H) };
    this.embed = get('transformer.embedding.word_embeddings.weight', c.vocabSize * H);
    this.head = get('transformer.output_layer.weight', c.vocabSize * H);
    if (c.postLayerNorm) this.finalNorm = norm('transformer.encoder.final_layernorm');
    this.blocks = [];
    for (let l = 0; l < c.numLayers; l++) {
      const p = `transformer.encoder.layers.${l}.`;
      const b: BlockWeights = {
        inputNorm: norm(`${p}input_layernorm`),
        qkv: get(`${p}self_attention.query_key_value.weight`, qkvRows * H),
        dense: get(`${p}self_attention.dense.weight`, H * proj),
        postNorm: norm(`${p}post_attention_layernorm`),
        h4: get(`${p}mlp.dense_h_to_4h.weight`, 2 * F * H),
        down: get(`${p}mlp.dense_4h_to_h.weight`, H * F),
      };
      if (c.qkvBias) b.qkvBias = get(`${p}self_attention.query_key_value.bias`, qkvRows);
      if (c.linearBias) {
        b.denseBias = get(`${p}self_attention.dense.bias`, H);
        b.h4Bias = get(`${p}mlp.dense_h_to_4h.bias`, 2 * F);
        b.downBias = get(`${p}mlp.dense_4h_to_h.bias`, H);
      }
      this.blocks.push(b);
    }
    this.keys = this.blocks.map(() => []);
    this.values = this.blocks.map(() => []);
  }

  get cacheLength(): number {
    return this.keys[0]?.length ?? 0;
  }

  private norm(x: Float64Array, n: Norm): Float64Array {
    return n.bias ? layerNorm(x, n.weight, n.bias, this.config.eps) : rmsNorm(x, n.weight, this.config.eps);
  }

  /** Splits query_key_value's output into q [heads·D], k and v [groups·D]. */
  private split(m: Float64Array): { q: Float64Array; k: Float64Array; v: Float64Array } {
    const c = this.config;
    const D = c.headDim;
    if (c.multiQuery) {
      const qn = c.numHeads * D;
      const kn = c.numGroups * D;
      return { q: m.slice(0, qn), k: m.slice(qn, qn + kn), v: m.slice(qn + kn, qn + 2 * kn) };
    }
    const q = new Float64Array(c.numHeads * D);
    const k = new Float64Array(c.numHeads * D);
    const v = new Float64Array(c.numHeads * D);
    for (let h = 0; h < c.numHeads; h++) {
      q.set(m.subarray(h * 3 * D, h * 3 * D + D), h * D);
      k.set(m.subarray(h * 3 * D + D, h * 3 * D + 2 * D), h * D);
      v.set(m.subarray(h * 3 * D + 2 * D, h * 3 * D + 3 * D), h * D);
    }
    return { q, k, v };
  }

  /**
   * Runs `tokens` at positions startPos, startPos + 1, … (absolute, as generate's position_ids) and returns
   * their logits. startPos defaults to the cache length; a smaller one drops the cache from there on.
   */
  forward(tokens: readonly number[], startPos: number = this.cacheLength): Float64Array[] {
    const c = this.config;
    if (!Number.isInteger(startPos) || startPos < 0 || startPos > this.cacheLength) throw new Error(`startPos ${startPos} out of range`);
    if (startPos + tokens.length > c.seqLength) throw new Error('past seq_length: the remote code has no rotary table there');
    for (let l = 0; l < this.blocks.length; l++) {
      this.keys[l]!.length = startPos;
      this.values[l]!.length = startPos;
    }
    const H = c.hiddenSize;
    const D = c.headDim;
    const F = c.ffnHiddenSize;
    const perGroup = c.numHeads / c.numGroups;
    const scale = 1 / Math.sqrt(D);
    const xs = tokens.map((t) => {
      if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize) throw new Error(`token ${t} outside the vocabulary`);
      return this.embed.slice(t * H, (t + 1) * H);
    });
    const tables = tokens.map((_, i) => chatglmCosSin(c, this.theta, startPos + i));

    this.blocks.forEach((w, l) => {
      const K = this.keys[l]!;
      const V = this.values[l]!;
      const normed: Float64Array[] = [];
      const qs = xs.map((x, i) => {
        const h = this.norm(x, w.inputNorm);
        normed.push(h);
        const { q, k, v } = this.split(linear(h, w.qkv, w.qkv.length / H, w.qkvBias));
        const { cos, sin } = tables[i]!;
        for (let hd = 0; hd < c.numHeads; hd++) chatglmApplyRope(q, hd * D, cos, sin);
        for (let g = 0; g < c.numGroups; g++) chatglmApplyRope(k, g * D, cos, sin);
        K.push(k);
        V.push(v);
        return q;
      });
      xs.forEach((x, i) => {
        const pos = startPos + i;
        const q = qs[i]!;
        const attn = new Float64Array(c.numHeads * D);
        for (let hd = 0; hd < c.numHeads; hd++) {
          const g = Math.floor(hd / perGroup);
          const scores = new Float64Array(pos + 1);
          let max = -Infinity;
          for (let j = 0; j <= pos; j++) {
            let s = 0;
            for (let d = 0; d < D; d++) s += q[hd * D + d]! * K[j]![g * D + d]!;
            scores[j] = s * scale;
            max = Math.max(max, scores[j]!);
          }
          softmaxAttend(scores, pos, max, V, g * D, attn, hd * D, D);
        }
        const out = linear(attn, w.dense, H, w.denseBias);
        const residual1 = c.residualPostNorm ? normed[i]! : x;
        const mid = new Float64Array(H);
        for (let d = 0; d < H; d++) mid[d] = residual1[d]! + out[d]!;
        const h2 = this.norm(mid, w.postNorm);
        const both = linear(h2, w.h4, 2 * F, w.h4Bias);
        const act = new Float64Array(F);
        for (let j = 0; j < F; j++) act[j] = silu(both[j]!) * both[F + j]!;
        const down = linear(act, w.down, H, w.downBias);
        const residual2 = c.residualPostNorm ? h2 : mid;
        for (let d = 0; d < H; d++) x[d] = residual2[d]! + down[d]!;
      });
    });

    return xs.map((x) => linear(this.finalNorm ? this.norm(x, this.finalNorm) : x, this.head, c.vocabSize));
  }
}

export interface ChatglmGreedy {
  generated: number[];
  promptLogits: Float64Array[];
  stepLogits: Float64Array[];
  margins: number[];
}

/** Greedy decoding without EOS: the prompt from position 0, then one token at a time through the cache. */
export function chatglmGreedy(model: ReferenceChatglm, promptIds: readonly number[], maxNewTokens: number): ChatglmGreedy {
  const promptLogits = model.forward(promptIds, 0);
  const generated: number[] = [];
  const stepLogits: Float64Array[] = [];
  const margins: number[] = [];
  let last = promptLogits.at(-1)!;
  for (let i = 0; i < maxNewTokens; i++) {
    generated.push(argmax(last));
    margins.push(topMargin(last));
    if (i === maxNewTokens - 1) break;
    last = model.forward([generated.at(-1)!])[0]!;
    stepLogits.push(last);
  }
  return { generated, promptLogits, stepLogits, margins };
}

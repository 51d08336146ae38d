/**
 * A plain, slow, readable forward pass for the Llama family (Llama 2/3, Mistral, Qwen2/2.5, Qwen3) that follows
 * Hugging Face transformers' modeling code, to test the engine against. Clarity over speed: one token, one
 * head, one row at a time, float64 arithmetic.
 *
 * WHAT IT COMPUTES (transformers' LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM,
 * eager attention, no padding, batch 1):
 *   x = embed_tokens[token]
 *   per layer:  h = RMSNorm(x; input_layernorm)                     RMSNorm(v) = v · 1/sqrt(mean(v²) + eps) · w
 *               q = q_proj(h) (+bias), k = k_proj(h) (+bias), v = v_proj(h) (+bias)     (bias: Qwen2 always;
 *                                                               Llama/Qwen3 when attention_bias, which covers o_proj)
 *               Qwen3 only: q, k ← RMSNorm per head over head_dim (q_norm / k_norm), BEFORE rope
 *               q, k ← rope (rotate_half layout, below); k, v appended to the cache
 *               query head h attends with KV head floor(h / (heads / kv_heads))          (repeat_kv order)
 *               scores = q·k / sqrt(head_dim), causal, softmax, weighted sum of v
 *               x = x + o_proj(concat heads);  h = RMSNorm(x; post_attention_layernorm)
 *               x = x + down_proj(silu(gate_proj(h)) · up_proj(h))
 *   logits = lm_head(RMSNorm(x; model.norm))      lm_head = embed_tokens when tie_word_embeddings
 *
 * ROPE, as transformers does it (modeling_rope_utils.ROPE_INIT_FUNCTIONS + apply_rotary_pos_emb):
 *   inv_freq[i] = 1 / theta^(2i/d), i < d/2, d = head_dim (× partial_rotary_factor, only 1 supported)
 *     linear:  inv_freq[i] / factor                          (same as positions / factor)
 *     llama3:  wavelen = 2π / inv_freq[i]; with lowW = orig / low_freq_factor, highW = orig / high_freq_factor:
 *              wavelen < highW → unchanged; wavelen > lowW → / factor;
 *              otherwise s = (orig / wavelen − low_freq_factor) / (high_freq_factor − low_freq_factor),
 *              inv_freq[i] · ((1 − s) / factor + s)
 *   angle(pos, i) = pos · inv_freq[i]; cos/sin tables are cat(freqs, freqs), so element j and j + d/2 share
 *   angle j; rotate_half(x) = cat(−x[d/2:], x[:d/2]); out = x·cos + rotate_half(x)·sin, i.e. for j < d/2:
 *     out[j]       = x[j]·cos(a_j) − x[j + d/2]·sin(a_j)
 *     out[j + d/2] = x[j + d/2]·cos(a_j) + x[j]·sin(a_j)
 *   attention_factor (a cos/sin multiplier) is 1 for default, linear and llama3.
 *
 * PRECISION: everything is float64 on the weights as stored (a float16/bfloat16 checkpoint's values widened
 * exactly), i.e. what transformers computes with torch_dtype=float32, minus float32 rounding. The rope tables
 * alone follow transformers' float32 arithmetic step by step (inv_freq buffer, pos·inv_freq product, cos/sin
 * cast to float32; within 1 ulp of torch). transformers' RMSNorm upcasts to float32 for half-precision models;
 * here it is float64 like everything else. A bfloat16 transformers run rounds activations after every op;
 * that is NOT emulated: compare an engine's f16/bf16 path with a tolerance, not bit for bit.
 * Sliding-window attention is not modelled: a forward that would reach past a configured window throws.
 *
 * MAPPING FOR A GGML IMPLEMENTATION (checked against llama.cpp's llama_model_rope_type, ggml's rope kernels
 * and convert_hf_to_gguf.py):
 *   - Weights as stored in HF safetensors (un-permuted) need ggml rope mode NEOX (GGML_ROPE_TYPE_NEOX = 2):
 *     NEOX rotates the pairs (j, j + n_dims/2), exactly rotate_half above. Use n_dims = head_dim.
 *   - ggml rope mode NORMAL (0) rotates adjacent pairs (2j, 2j+1). llama.cpp uses it for LLM_ARCH_LLAMA
 *     (which also covers Mistral), because convert_hf_to_gguf.py permutes the rows of q_proj and k_proj
 *     (LlamaModel.permute: rows of each head reshaped [2, head_dim/2] → [head_dim/2, 2], i.e. new row 2j + t
 *     of a head = old row t·head_dim/2 + j; q with n_head heads, k with n_head_kv heads; a q/k bias gets the
 *     same permutation). Permuted weights + NORMAL ≡ original weights + NEOX (q·k is unchanged since q and k
 *     get the same permutation). `permuteForNormalRope` below is that permutation.
 *   - Qwen2, Qwen3 (and their GGUFs) are NOT permuted; llama.cpp runs them with NEOX.
 *     Qwen3's q_norm/k_norm act on un-permuted head vectors before rope.
 *   - Rope scaling: linear → ggml_rope_ext freq_scale = 1 / factor. llama3 → freq_scale = 1 and per-dimension
 *     freq_factors (GGUF `rope_freqs.weight`) c_i = 1 for high frequencies, factor for low ones, and
 *     1 / ((1 − s)/factor + s) in between, so that theta_i = pos · base^(−2i/n_dims) / c_i. ext_factor 0,
 *     attn_factor 1. freq_base = rope_theta.
 *   - GQA: ggml_mul_mat broadcasting maps query head h to KV head h / (n_head / n_head_kv), as repeat_kv.
 *   - Attention scale 1/sqrt(head_dim): Qwen3's head_dim (32 in the tiny test model) is not hidden / heads.
 *   - ggml_rms_norm(x, eps) then ggml_mul by the weight equals the RMSNorm above; eps = rms_norm_eps.
 *   - A safetensors Linear weight of shape [out, in] (row-major) is a ggml tensor with ne = [in, out], same bytes.
 */

import { argmax, configBool, configNumber, linear, rmsNorm, silu, softmaxAttend, topMargin } from './reference-math.js';

// The shared math stays importable from here, where the other references and the tests found it first.
export { argmax, linear, rmsNorm, silu, topMargin };

export type RopeType = 'default' | 'linear' | 'llama3';

export interface RopeScaling {
  type: RopeType;
  /** linear, llama3 */
  factor: number;
  /** llama3 only */
  lowFreqFactor?: number;
  highFreqFactor?: number;
  originalMaxPositionEmbeddings?: number;
}

export type ReferenceModelType = 'llama' | 'mistral' | 'qwen2' | 'qwen3';

export interface ReferenceConfig {
  modelType: ReferenceModelType;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  rope: RopeScaling;
  qkvBias: boolean;
  oBias: boolean;
  mlpBias: boolean;
  /** Qwen3's per-head q_norm / k_norm. */
  qkNorm: boolean;
  tieWordEmbeddings: boolean;
  /** A window some layers slide, or null. Not modelled: forward throws past it. */
  slidingWindow: number | null;
}

const ARCH_TO_TYPE: Record<string, ReferenceModelType> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
  Qwen3ForCausalLM: 'qwen3',
};

const num = configNumber;
const bool = configBool;

function parseRope(raw: Record<string, unknown>): { theta: number; rope: RopeScaling } {
  // transformers ≥ 5 folds rope_theta and the scaling into `rope_parameters`; older configs use rope_scaling.
  const params = raw['rope_parameters'] as Record<string, unknown> | null | undefined;
  const scaling = (params ?? raw['rope_scaling']) as Record<string, unknown> | null | undefined;
  const theta = params && params['rope_theta'] !== undefined ? num(params, 'rope_theta') : num(raw, 'rope_theta', 10000);
  if (scaling === undefined || scaling === null) return { theta, rope: { type: 'default', factor: 1 } };
  // BC as in transformers: "rope_type" was originally "type".
  const type = (scaling['rope_type'] ?? scaling['type'] ?? 'default') as string;
  if (type === 'default') return { theta, rope: { type: 'default', factor: 1 } };
  if (type === 'linear') return { theta, rope: { type: 'linear', factor: num(scaling, 'factor') } };
  if (type === 'llama3') {
    return {
      theta,
      rope: {
        type: 'llama3',
        factor: num(scaling, 'factor'),
        lowFreqFactor: num(scaling, 'low_freq_factor'),
        highFreqFactor: num(scaling, 'high_freq_factor'),
        originalMaxPositionEmbeddings: num(scaling, 'original_max_position_embeddings'),
      },
    };
  }
  throw new Error(`rope type ${JSON.stringify(type)} is not modelled by the reference (default, linear, llama3 are)`);
}

/** Reads a config.json object the way the transformers config classes fill their defaults. */
export function parseReferenceConfig(raw: Record<string, unknown>): ReferenceConfig {
  const archs = raw['architectures'];
  const arch = Array.isArray(archs) && typeof archs[0] === 'string' ? ARCH_TO_TYPE[archs[0]] : undefined;
  const mt = raw['model_type'];
  const modelType = (typeof mt === 'string' && (Object.values(ARCH_TO_TYPE) as string[]).includes(mt) ? (mt as ReferenceModelType) : undefined) ?? arch;
  if (!modelType) throw new Error(`not a Llama-family config: model_type ${JSON.stringify(mt)}, architectures ${JSON.stringify(archs)}`);
  const act = raw['hidden_act'] ?? 'silu';
  if (act !== 'silu') throw new Error(`hidden_act ${JSON.stringify(act)} is not modelled (silu is)`);
  const prf = num(raw, 'partial_rotary_factor', 1);
  if (prf !== 1) throw new Error('partial_rotary_factor ≠ 1 is not modelled');
  const hiddenSize = num(raw, 'hidden_size');
  const numHeads = num(raw, 'num_attention_heads');
  const numKvHeads = num(raw, 'num_key_value_heads', numHeads);
  // Qwen3Config defaults head_dim to 128; the others to hidden_size // num_attention_heads.
  const headDim = num(raw, 'head_dim', modelType === 'qwen3' ? 128 : Math.floor(hiddenSize / numHeads));
  if (numHeads % numKvHeads !== 0) throw new Error('num_attention_heads must be a multiple of num_key_value_heads');
  if (headDim % 2 !== 0) throw new Error('head_dim must be even');
  const { theta, rope } = parseRope(raw);
  const attentionBias = bool(raw, 'attention_bias', false);
  let slidingWindow: number | null = null;
  if (modelType === 'mistral') {
    // MistralConfig: sliding_window defaults to 4096; an explicit null turns it off.
    slidingWindow = raw['sliding_window'] === undefined ? 4096 : raw['sliding_window'] === null ? null : num(raw, 'sliding_window');
  } else if (modelType === 'qwen2' || modelType === 'qwen3') {
    slidingWindow = bool(raw, 'use_sliding_window', false) && raw['sliding_window'] != null ? num(raw, 'sliding_window') : null;
  }
  return {
    modelType,
    hiddenSize,
    numLayers: num(raw, 'num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    intermediateSize: num(raw, 'intermediate_size'),
    vocabSize: num(raw, 'vocab_size'),
    rmsNormEps: num(raw, 'rms_norm_eps', 1e-6),
    ropeTheta: theta,
    rope,
    qkvBias: modelType === 'qwen2' ? true : modelType === 'mistral' ? false : attentionBias,
    oBias: modelType === 'qwen2' || modelType === 'mistral' ? false : attentionBias,
    mlpBias: modelType === 'llama' ? bool(raw, 'mlp_bias', false) : false,
    qkNorm: modelType === 'qwen3',
    tieWordEmbeddings: bool(raw, 'tie_word_embeddings', false),
    slidingWindow,
  };
}

// ---------------------------------------------------------------------------------------------------------
// Building blocks (exported for tests and for engine authors who want to check one op).

const fr = Math.fround;

/**
 * The inv_freq buffer transformers builds (float32 values, held in a Float64Array), for the config's rope
 * type. Each step rounds to float32 as torch's float32 tensors do.
 */
export function ropeInvFreq(c: Pick<ReferenceConfig, 'headDim' | 'ropeTheta' | 'rope'>): Float64Array {
  const dim = c.headDim;
  const base = fr(c.ropeTheta);
  const inv = new Float64Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) {
    const exponent = fr((2 * i) / dim); // torch.arange(0, dim, 2).float() / dim
    inv[i] = fr(1 / fr(Math.pow(base, exponent)));
  }
  const r = c.rope;
  if (r.type === 'linear') {
    for (let i = 0; i < inv.length; i++) inv[i] = fr(inv[i]! / r.factor);
  } else if (r.type === 'llama3') {
    const factor = r.factor;
    const low = r.lowFreqFactor!;
    const high = r.highFreqFactor!;
    const orig = r.originalMaxPositionEmbeddings!;
    const lowWavelen = fr(orig / low);
    const highWavelen = fr(orig / high);
    for (let i = 0; i < inv.length; i++) {
      const f = inv[i]!;
      const wavelen = fr((2 * Math.PI) / f);
      let v = wavelen > lowWavelen ? fr(f / factor) : f;
      if (!(wavelen < highWavelen) && !(wavelen > lowWavelen)) {
        const smooth = fr((fr(orig / wavelen) - low) / (high - low));
        v = fr(fr(fr(fr(1 - smooth) * v) / factor) + fr(smooth * v));
      }
      inv[i] = v;
    }
  }
  return inv;
}

/** cos/sin of each rotary pair at a position, as transformers' float32 tables (length head_dim / 2). */
export function ropeCosSin(invFreq: Float64Array, pos: number): { cos: Float64Array; sin: Float64Array } {
  const cos = new Float64Array(invFreq.length);
  const sin = new Float64Array(invFreq.length);
  for (let i = 0; i < invFreq.length; i++) {
    const angle = fr(invFreq[i]! * pos);
    cos[i] = fr(Math.cos(angle));
    sin[i] = fr(Math.sin(angle));
  }
  return { cos, sin };
}

/**
 * Rotates one head vector in place: x[offset .. offset + headDim), rotate_half layout (pairs j, j + headDim/2).
 */
export function applyRope(x: Float64Array, offset: number, headDim: number, cos: Float64Array, sin: Float64Array): void {
  const half = headDim / 2;
  for (let j = 0; j < half; j++) {
    const a = x[offset + j]!;
    const b = x[offset + j + half]!;
    x[offset + j] = a * cos[j]! - b * sin[j]!;
    x[offset + j + half] = b * cos[j]! + a * sin[j]!;
  }
}

/**
 * convert_hf_to_gguf.py's LlamaModel.permute on the rows of a q_proj/k_proj weight (or bias: cols = 1):
 * within each head, new row 2j + t = old row t·headDim/2 + j. With it, ggml rope NORMAL (adjacent pairs)
 * reproduces rotate_half (NEOX) on the original rows.
 */
export function permuteForNormalRope(w: ArrayLike<number>, nHeads: number, headDim: number, cols: number): Float64Array {
  const out = new Float64Array(w.length);
  if (w.length !== nHeads * headDim * cols) throw new Error('permuteForNormalRope: size mismatch');
  const half = headDim / 2;
  for (let h = 0; h < nHeads; h++) {
    for (let j = 0; j < half; j++) {
      for (let t = 0; t < 2; t++) {
        const src = (h * headDim + t * half + j) * cols;
        const dst = (h * headDim + 2 * j + t) * cols;
        for (let c = 0; c < cols; c++) out[dst + c] = w[src + c]!;
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// The model.

export type TraceName =
  'embed' | 'attn_norm' | 'q_proj' | 'k_proj' | 'v_proj' | 'q' | 'k' | 'attn' | 'attn_out' | 'ffn_norm' | 'ffn_out' | 'layer_out' | 'final_norm';

/**
 * Intermediate values, for debugging an engine layer by layer. `q`/`k` are after q_norm/k_norm and rope
 * (heads concatenated); `attn` is the heads' output before o_proj; `attn_out` after it. layer is -1 for
 * `embed` and numLayers for `final_norm`.
 */
export interface TraceEvent {
  layer: number;
  name: TraceName;
  pos: number;
  values: Float64Array;
}
export type TraceFn = (e: TraceEvent) => void;

export type TensorSource = Record<string, ArrayLike<number>> | Map<string, ArrayLike<number>>;

interface LayerWeights {
  inputNorm: Float64Array;
  q: Float64Array;
  k: Float64Array;
  v: Float64Array;
  o: Float64Array;
  qBias?: Float64Array;
  kBias?: Float64Array;
  vBias?: Float64Array;
  oBias?: Float64Array;
  qNorm?: Float64Array;
  kNorm?: Float64Array;
  postNorm: Float64Array;
  /** Absent in the layers whose MLP an MlpOverride computes. */
  gate?: Float64Array;
  up?: Float64Array;
  down?: Float64Array;
  gateBias?: Float64Array;
  upBias?: Float64Array;
  downBias?: Float64Array;
}

/**
 * Computes the MLP of some layers in place of the dense gate/up/down one (a mixture-of-experts block, as
 * in ./reference-moe.ts): `owns(l)` says which layers, whose dense weights are then not read; `forward`
 * maps the post-attention-normed hidden state to the MLP output that is added to the residual.
 */
export interface MlpOverride {
  owns(layer: number): boolean;
  forward(layer: number, h: Float64Array): Float64Array;
}

export class ReferenceLlama {
  readonly config: ReferenceConfig;
  readonly invFreq: Float64Array;
  private readonly embed: Float64Array;
  private readonly head: Float64Array;
  private readonly finalNorm: Float64Array;
  private readonly layers: LayerWeights[];
  /** Per layer, per position: keys (after rope) and values, numKvHeads × headDim each. */
  private keys: Float64Array[][];
  private values: Float64Array[][];

  /** `config` is a config.json object; `tensors` maps checkpoint names to values (shape as in PyTorch). */
  constructor(
    config: Record<string, unknown>,
    tensors: TensorSource,
    private readonly mlpOverride?: MlpOverride,
  ) {
    const c = parseReferenceConfig(config);
    this.config = c;
    this.invFreq = ropeInvFreq(c);
    const get = (name: string, count: number): Float64Array => {
      const t = tensors instanceof Map ? tensors.get(name) : tensors[name];
      if (!t) throw new Error(`tensor ${name} is missing`);
      if (t.length !== count) throw new Error(`tensor ${name} has ${t.length} values, expected ${count}`);
      return Float64Array.from(t);
    };
    const H = c.hiddenSize;
    const qDim = c.numHeads * c.headDim;
    const kvDim = c.numKvHeads * c.headDim;
    const I = c.intermediateSize;
    this.embed = get('model.embed_tokens.weight', c.vocabSize * H);
    this.head = c.tieWordEmbeddings ? this.embed : get('lm_head.weight', c.vocabSize * H);
    this.finalNorm = get('model.norm.weight', H);
    this.layers = [];
    for (let l = 0; l < c.numLayers; l++) {
      const p = `model.layers.${l}.`;
      const a = `${p}self_attn.`;
      const m = `${p}mlp.`;
      const lw: LayerWeights = {
        inputNorm: get(`${p}input_layernorm.weight`, H),
        q: get(`${a}q_proj.weight`, qDim * H),
        k: get(`${a}k_proj.weight`, kvDim * H),
        v: get(`${a}v_proj.weight`, kvDim * H),
        o: get(`${a}o_proj.weight`, H * qDim),
        postNorm: get(`${p}post_attention_layernorm.weight`, H),
      };
      if (!mlpOverride?.owns(l)) {
        lw.gate = get(`${m}gate_proj.weight`, I * H);
        lw.up = get(`${m}up_proj.weight`, I * H);
        lw.down = get(`${m}down_proj.weight`, H * I);
      }
      if (c.qkvBias) {
        lw.qBias = get(`${a}q_proj.bias`, qDim);
        lw.kBias = get(`${a}k_proj.bias`, kvDim);
        lw.vBias = get(`${a}v_proj.bias`, kvDim);
      }
      if (c.oBias) lw.oBias = get(`${a}o_proj.bias`, H);
      if (c.qkNorm) {
        lw.qNorm = get(`${a}q_norm.weight`, c.headDim);
        lw.kNorm = get(`${a}k_norm.weight`, c.headDim);
      }
      if (c.mlpBias && !mlpOverride?.owns(l)) {
        lw.gateBias = get(`${m}gate_proj.bias`, I);
        lw.upBias = get(`${m}up_proj.bias`, I);
        lw.downBias = get(`${m}down_proj.bias`, H);
      }
      this.layers.push(lw);
    }
    this.keys = this.layers.map(() => []);
    this.values = this.layers.map(() => []);
  }

  /** Tokens in the KV cache. */
  get cacheLength(): number {
    return this.keys[0]?.length ?? 0;
  }

  reset(): void {
    this.keys = this.layers.map(() => []);
    this.values = this.layers.map(() => []);
  }

  /**
   * Runs `tokens` at positions startPos, startPos + 1, … and returns their logits ([tokens.length][vocab]).
   * startPos defaults to the cache length (continue); a smaller startPos first drops the cache from there on
   * (so forward(prompt, 0) starts afresh); a larger one is an error.
   */
  forward(tokens: readonly number[], startPos: number = this.cacheLength, trace?: TraceFn): Float64Array[] {
    const c = this.config;
    if (!Number.isInteger(startPos) || startPos < 0 || startPos > this.cacheLength) {
      throw new Error(`startPos ${startPos} must be between 0 and the cache length ${this.cacheLength}`);
    }
    for (let l = 0; l < this.layers.length; l++) {
      this.keys[l]!.length = startPos;
      this.values[l]!.length = startPos;
    }
    if (c.slidingWindow !== null && startPos + tokens.length > c.slidingWindow) {
      throw new Error(`sequence of ${startPos + tokens.length} tokens passes the sliding window (${c.slidingWindow}), which the reference does not model`);
    }
    const H = c.hiddenSize;
    const D = c.headDim;
    const nRep = c.numHeads / c.numKvHeads;
    const scale = 1 / Math.sqrt(D);
    const emit = (layer: number, name: TraceName, i: number, values: Float64Array): void => {
      if (trace) trace({ layer, name, pos: startPos + i, values: Float64Array.from(values) });
    };

    const xs: Float64Array[] = tokens.map((t, i) => {
      if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize) throw new Error(`token ${t} outside the vocabulary (${c.vocabSize})`);
      const x = this.embed.slice(t * H, (t + 1) * H);
      emit(-1, 'embed', i, x);
      return x;
    });
    const tables = tokens.map((_, i) => ropeCosSin(this.invFreq, startPos + i));

    this.layers.forEach((w, l) => {
      const K = this.keys[l]!;
      const V = this.values[l]!;
      // Projections of the whole chunk first; the cache then holds every key a query may see.
      const qs = xs.map((x, i) => {
        const h = rmsNorm(x, w.inputNorm, c.rmsNormEps);
        emit(l, 'attn_norm', i, h);
        let q = linear(h, w.q, c.numHeads * D, w.qBias);
        let k = linear(h, w.k, c.numKvHeads * D, w.kBias);
        const v = linear(h, w.v, c.numKvHeads * D, w.vBias);
        emit(l, 'q_proj', i, q);
        emit(l, 'k_proj', i, k);
        emit(l, 'v_proj', i, v);
        if (w.qNorm && w.kNorm) {
          q = perHeadNorm(q, c.numHeads, D, w.qNorm, c.rmsNormEps);
          k = perHeadNorm(k, c.numKvHeads, D, w.kNorm, c.rmsNormEps);
        }
        const { cos, sin } = tables[i]!;
        for (let hd = 0; hd < c.numHeads; hd++) applyRope(q, hd * D, D, cos, sin);
        for (let g = 0; g < c.numKvHeads; g++) applyRope(k, g * D, D, cos, sin);
        emit(l, 'q', i, q);
        emit(l, 'k', i, k);
        K.push(k);
        V.push(v);
        return q;
      });
      xs.forEach((x, i) => {
        const pos = startPos + i;
        const q = qs[i]!;
        const attn = new Float64Array(c.numHeads * D);
        for (let hd = 0; hd < c.numHeads; hd++) {
          const g = Math.floor(hd / nRep); // repeat_kv: KV head g serves query heads g·nRep … g·nRep + nRep − 1
          const scores = new Float64Array(pos + 1); // causal: keys 0 … pos
          let max = -Infinity;
          for (let j = 0; j <= pos; j++) {
            const kj = K[j]!;
            let s = 0;
            for (let d = 0; d < D; d++) s += q[hd * D + d]! * kj[g * D + d]!;
            scores[j] = s * scale;
            if (scores[j]! > max) max = scores[j]!;
          }
          softmaxAttend(scores, pos, max, V, g * D, attn, hd * D, D);
        }
        emit(l, 'attn', i, attn);
        const o = linear(attn, w.o, H, w.oBias);
        emit(l, 'attn_out', i, o);
        for (let d = 0; d < H; d++) x[d] = x[d]! + o[d]!;
        const h2 = rmsNorm(x, w.postNorm, c.rmsNormEps);
        emit(l, 'ffn_norm', i, h2);
        let down: Float64Array;
        if (this.mlpOverride?.owns(l)) down = this.mlpOverride.forward(l, h2);
        else {
          const gate = linear(h2, w.gate!, c.intermediateSize, w.gateBias);
          const up = linear(h2, w.up!, c.intermediateSize, w.upBias);
          const act = new Float64Array(c.intermediateSize);
          for (let j = 0; j < act.length; j++) act[j] = silu(gate[j]!) * up[j]!;
          down = linear(act, w.down!, H, w.downBias);
        }
        emit(l, 'ffn_out', i, down);
        for (let d = 0; d < H; d++) x[d] = x[d]! + down[d]!;
        emit(l, 'layer_out', i, x);
      });
    });

    return xs.map((x, i) => {
      const h = rmsNorm(x, this.finalNorm, c.rmsNormEps);
      emit(c.numLayers, 'final_norm', i, h);
      return linear(h, this.head, c.vocabSize);
    });
  }
}

function perHeadNorm(x: Float64Array, heads: number, D: number, weight: Float64Array, eps: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let h = 0; h < heads; h++) out.set(rmsNorm(x, weight, eps, h * D, D), h * D);
  return out;
}

/** A reference model from a written tiny checkpoint (or anything with a config and tensors). */
export function createReferenceModel(checkpoint: { config: Record<string, unknown>; tensors: TensorSource }): ReferenceLlama {
  return new ReferenceLlama(checkpoint.config, checkpoint.tensors);
}

export interface GreedyResult {
  /** maxNewTokens tokens: generated[0] from the last prompt logits, generated[i + 1] from stepLogits[i]. */
  generated: number[];
  /** Logits of every prompt position, [promptIds.length][vocab]. */
  promptLogits: Float64Array[];
  /**
   * Logits after feeding generated[i] at position promptIds.length + i, for i < maxNewTokens − 1 (the last
   * generated token is not fed back, as in transformers' generate).
   */
  stepLogits: Float64Array[];
  /** Top-1 minus top-2 logit of the distribution each generated token was chosen from. */
  margins: number[];
}

/**
 * Greedy decoding as transformers' generate(do_sample=False) without an EOS stop: one forward over the
 * prompt from position 0 (the cache is reset), then one token at a time through the KV cache.
 */
export function referenceGreedy(model: ReferenceLlama, promptIds: readonly number[], maxNewTokens: number): GreedyResult {
  if (promptIds.length === 0) throw new Error('empty prompt');
  const promptLogits = model.forward(promptIds, 0);
  const generated: number[] = [];
  const stepLogits: Float64Array[] = [];
  const margins: number[] = [];
  let last = promptLogits[promptLogits.length - 1]!;
  for (let i = 0; i < maxNewTokens; i++) {
    const token = argmax(last);
    generated.push(token);
    margins.push(topMargin(last));
    if (i === maxNewTokens - 1) break;
    last = model.forward([token])[0]!;
    stepLogits.push(last);
  }
  return { generated, promptLogits, stepLogits, margins };
}

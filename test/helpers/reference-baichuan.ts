/**
 * A plain, slow, readable forward pass for Baichuan 2 (7B and 13B; also Baichuan 13B) following the remote
 * code `modeling_baichuan.py` of baichuan-inc/Baichuan2-7B-Chat and Baichuan2-13B-Chat in eval mode, to test
 * the engine against. float64 arithmetic, one token, one head, one row at a time, with a KV cache.
 *
 * WHAT IT COMPUTES (BaichuanForCausalLM, eval, no padding, batch 1):
 *   x = embed_tokens[token]
 *   per layer:  h = RMSNorm(x; input_layernorm)              RMSNorm(v) = v · 1/sqrt(mean(v²) + eps) · w
 *               proj = W_pack(h); proj.unflatten(-1, (3, hidden)) → q = proj[:hidden], k = next hidden, v = last
 *               heads: head j of q is q[j·D .. (j+1)·D), D = hidden / heads (no GQA)
 *               7B (Attention):  q, k ← rotary, rotate_half layout, RotaryEmbedding's default base 10000,
 *                                float32 cos/sin tables (see reference-llama.ts ropeInvFreq / ropeCosSin)
 *                                scores = q·k / sqrt(D) + causal mask (finfo.min above the diagonal)
 *               13B (BaichuanAttention): no rotary;
 *                                scores = q·k / sqrt(D) + future_mask[h, i, j], clamped at finfo.min
 *                                future_mask[h, i, j] = slope_h · j for j ≤ i, −inf for j > i (_gen_alibi_mask:
 *                                position_point − diag(position_point[0]) is arange(max_pos), the key position)
 *                                slopes = float32(_get_interleave(heads)), the product slope·j in float32
 *               softmax over keys, weighted sum of v, x = x + o_proj(heads)
 *               h2 = RMSNorm(x; post_attention_layernorm);  x = x + down_proj(silu(gate_proj(h2)) · up_proj(h2))
 *   logits = lm_head(RMSNorm(x; model.norm))
 *   NormHead (Baichuan 2): eval mode replaces lm_head.weight by F.normalize(weight) (each row / max(‖row‖₂, 1e-12))
 *   on the first call and then applies it as a plain linear; training normalises on every call — the same
 *   head either way. Here the rows are normalised once, in float64, at construction.
 *
 * WHICH FILE, WHICH HEAD: the config does not say whether a repo ships the 7B (RoPE) or the 13B (ALiBi) file; the
 * convention (vLLM's, and vramfit's reader) is hidden_size 4096 → RoPE, else ALiBi, unless the config carries
 * vramfit's override `"position_embedding": "ROPE" | "ALIBI"`. NormHead: vocab_size 125696 (Baichuan 2) unless
 * `"norm_head": true | false` says otherwise. This file re-implements both rules rather than importing them.
 *
 * CHUNKED PREFILL: the remote code supports a prompt with no past (q_len = kv_len) and single-token steps (it
 * takes the mask's last row). For a chunk of several tokens after a past, whose mask shape the remote code
 * cannot broadcast, this reference uses the one consistent extension: the query at absolute position p sees
 * keys 0 … p with the same slope·j bias (what a one-token-at-a-time run of the remote code computes).
 *
 * PRECISION: float64 on the weights as stored. The cos/sin tables and the ALiBi bias follow the remote code's
 * float32 values (both are float32 buffers there); everything else is float64. A bf16 run of the remote code
 * also rounds future_mask to bf16 (.to(tensor)) — not emulated.
 *
 * MAPPING FOR GGML: slope·j and slope·(j − i) differ by a constant per query row, which softmax ignores; ggml's
 * soft_max_ext with max_bias 8 adds slope_h · mask, with llama.cpp's ALiBi mask −|pos_k − pos_q| = j − i, and its
 * slopes (m0 = 2^(−8/p), m1 = 2^(−4/p), p = 2^floor(log2 heads); m0^(h+1) for h < p, m1^(2(h−p)+1) after) equal
 * _get_interleave's for every head count (`ggmlAlibiSlopes` below, compared in the tests).
 */
import { applyRope, ropeCosSin, ropeInvFreq, type TensorSource } from './reference-llama.js';
import { configNumber as num, linear, rmsNorm, silu, softmaxAttend } from './reference-math.js';

export interface BaichuanReferenceConfig {
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  headDim: number;
  intermediateSize: number;
  vocabSize: number;
  rmsNormEps: number;
  /** 7B file (RoPE) or 13B file (ALiBi). */
  rope: boolean;
  normHead: boolean;
}

/** A Baichuan config.json as BaichuanConfig fills it (rms_norm_eps defaults to 1e-6). */
export function parseBaichuanConfig(raw: Record<string, unknown>): BaichuanReferenceConfig {
  const archs = raw['architectures'];
  if (!Array.isArray(archs) || archs[0] !== 'BaichuanForCausalLM') throw new Error(`not a BaichuanForCausalLM config: ${JSON.stringify(archs)}`);
  const act = raw['hidden_act'] ?? 'silu';
  if (act !== 'silu') throw new Error(`hidden_act ${JSON.stringify(act)} is not modelled (silu is)`);
  if (raw['tie_word_embeddings'] === true) throw new Error('tied embeddings are not modelled');
  const hiddenSize = num(raw, 'hidden_size');
  const numHeads = num(raw, 'num_attention_heads');
  if (hiddenSize % numHeads !== 0) throw new Error('hidden_size must be a multiple of num_attention_heads');
  const declared = raw['position_embedding'];
  const rope = declared === undefined || declared === null ? hiddenSize === 4096 : String(declared).toUpperCase() === 'ROPE';
  const vocabSize = num(raw, 'vocab_size');
  const nh = raw['norm_head'];
  return {
    hiddenSize,
    numLayers: num(raw, 'num_hidden_layers'),
    numHeads,
    headDim: hiddenSize / numHeads,
    intermediateSize: num(raw, 'intermediate_size'),
    vocabSize,
    rmsNormEps: num(raw, 'rms_norm_eps', 1e-6),
    rope,
    normHead: typeof nh === 'boolean' ? nh : vocabSize === 125696,
  };
}

/** The remote code's _get_interleave(n), in Python's float64 arithmetic. */
export function baichuanInterleave(n: number): number[] {
  const powerOf2 = (m: number): number[] => {
    const start = 2 ** -(2 ** -(Math.log2(m) - 3));
    const ratio = start;
    return Array.from({ length: m }, (_, i) => start * ratio ** i);
  };
  if (Number.isInteger(Math.log2(n))) return powerOf2(n);
  const closest = 2 ** Math.floor(Math.log2(n));
  return [
    ...powerOf2(closest),
    ...baichuanInterleave(2 * closest)
      .filter((_, i) => i % 2 === 0)
      .slice(0, n - closest),
  ];
}

/** ggml's ALiBi slopes (ggml_compute_forward_soft_max_f32 with max_bias), in float32 steps as ggml computes them. */
export function ggmlAlibiSlopes(nHead: number, maxBias: number): number[] {
  const fr = Math.fround;
  const log2 = 2 ** Math.floor(Math.log2(nHead));
  const m0 = fr(2 ** fr(-maxBias / log2));
  const m1 = fr(2 ** fr(-(maxBias / 2) / log2));
  return Array.from({ length: nHead }, (_, h) => (h < log2 ? fr(m0 ** (h + 1)) : fr(m1 ** (2 * (h - log2) + 1))));
}

interface LayerWeights {
  inputNorm: Float64Array;
  wPack: Float64Array;
  o: Float64Array;
  postNorm: Float64Array;
  gate: Float64Array;
  up: Float64Array;
  down: Float64Array;
}

export class ReferenceBaichuan {
  readonly config: BaichuanReferenceConfig;
  /** float32 slopes of the 13B file (empty for 7B). */
  readonly slopes: Float64Array;
  private readonly invFreq: Float64Array;
  private readonly embed: Float64Array;
  private readonly head: Float64Array;
  private readonly finalNorm: Float64Array;
  private readonly layers: LayerWeights[];
  /** Per layer, per position: k (after rotary, for 7B) and v, hidden values each. */
  private keys: Float64Array[][];
  private values: Float64Array[][];

  constructor(config: Record<string, unknown>, tensors: TensorSource) {
    const c = parseBaichuanConfig(config);
    this.config = c;
    this.invFreq = ropeInvFreq({ headDim: c.headDim, ropeTheta: 10000, rope: { type: 'default', factor: 1 } });
    this.slopes = c.rope ? new Float64Array(0) : Float64Array.from(baichuanInterleave(c.numHeads), (s) => Math.fround(s));
    const get = (name: string, count: number): Float64Array => {
      const t = tensors instanceof Map ? tensors.get(name) : tensors[name];
      if (!t) throw new Error(`tensor ${name} is missing`);
      if (t.length !== count) throw new Error(`tensor ${name} has ${t.length} values, expected ${count}`);
      return Float64Array.from(t);
    };
    const H = c.hiddenSize;
    const I = c.intermediateSize;
    this.embed = get('model.embed_tokens.weight', c.vocabSize * H);
    this.head = get('lm_head.weight', c.vocabSize * H);
    if (c.normHead) {
      for (let r = 0; r < c.vocabSize; r++) {
        let ss = 0;
        for (let i = 0; i < H; i++) ss += this.head[r * H + i]! ** 2;
        const norm = Math.max(Math.sqrt(ss), 1e-12);
        for (let i = 0; i < H; i++) this.head[r * H + i] = this.head[r * H + i]! / norm;
      }
    }
    this.finalNorm = get('model.norm.weight', H);
    this.layers = [];
    for (let l = 0; l < c.numLayers; l++) {
      const p = `model.layers.${l}.`;
      this.layers.push({
        inputNorm: get(`${p}input_layernorm.weight`, H),
        wPack: get(`${p}self_attn.W_pack.weight`, 3 * H * H),
        o: get(`${p}self_attn.o_proj.weight`, H * H),
        postNorm: get(`${p}post_attention_layernorm.weight`, H),
        gate: get(`${p}mlp.gate_proj.weight`, I * H),
        up: get(`${p}mlp.up_proj.weight`, I * H),
        down: get(`${p}mlp.down_proj.weight`, H * I),
      });
    }
    this.keys = this.layers.map(() => []);
    this.values = this.layers.map(() => []);
  }

  get cacheLength(): number {
    return this.keys[0]?.length ?? 0;
  }

  /**
   * Runs `tokens` at positions startPos, startPos + 1, … and returns their logits ([tokens.length][vocab]).
   * startPos defaults to the cache length (continue); a smaller one first drops the cache from there on.
   */
  forward(tokens: readonly number[], startPos: number = this.cacheLength): Float64Array[] {
    const c = this.config;
    if (!Number.isInteger(startPos) || startPos < 0 || startPos > this.cacheLength) {
      throw new Error(`startPos ${startPos} must be between 0 and the cache length ${this.cacheLength}`);
    }
    for (let l = 0; l < this.layers.length; l++) {
      this.keys[l]!.length = startPos;
      this.values[l]!.length = startPos;
    }
    const H = c.hiddenSize;
    const D = c.headDim;
    const scale = 1 / Math.sqrt(D);
    const xs = tokens.map((t) => {
      if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize) throw new Error(`token ${t} outside the vocabulary (${c.vocabSize})`);
      return this.embed.slice(t * H, (t + 1) * H);
    });
    const tables = c.rope ? tokens.map((_, i) => ropeCosSin(this.invFreq, startPos + i)) : [];

    this.layers.forEach((w, l) => {
      const K = this.keys[l]!;
      const V = this.values[l]!;
      const qs = xs.map((x, i) => {
        const h = rmsNorm(x, w.inputNorm, c.rmsNormEps);
        const proj = linear(h, w.wPack, 3 * H);
        const q = proj.slice(0, H);
        const k = proj.slice(H, 2 * H);
        const v = proj.slice(2 * H, 3 * H);
        if (c.rope) {
          const { cos, sin } = tables[i]!;
          for (let hd = 0; hd < c.numHeads; hd++) {
            applyRope(q, hd * D, D, cos, sin);
            applyRope(k, hd * D, D, cos, sin);
          }
        }
        K.push(k);
        V.push(v);
        return q;
      });
      xs.forEach((x, i) => {
        const pos = startPos + i;
        const q = qs[i]!;
        const attn = new Float64Array(H);
        for (let hd = 0; hd < c.numHeads; hd++) {
          const scores = new Float64Array(pos + 1); // causal: keys 0 … pos
          let max = -Infinity;
          for (let j = 0; j <= pos; j++) {
            const kj = K[j]!;
            let s = 0;
            for (let d = 0; d < D; d++) s += q[hd * D + d]! * kj[hd * D + d]!;
            s *= scale;
            if (!c.rope) s += Math.fround(this.slopes[hd]! * j); // float32 future_mask value slope·j
            scores[j] = s;
            if (s > max) max = s;
          }
          softmaxAttend(scores, pos, max, V, hd * D, attn, hd * D, D);
        }
        const o = linear(attn, w.o, H);
        for (let d = 0; d < H; d++) x[d] = x[d]! + o[d]!;
        const h2 = rmsNorm(x, w.postNorm, c.rmsNormEps);
        const gate = linear(h2, w.gate, c.intermediateSize);
        const up = linear(h2, w.up, c.intermediateSize);
        const act = new Float64Array(c.intermediateSize);
        for (let j = 0; j < act.length; j++) act[j] = silu(gate[j]!) * up[j]!;
        const down = linear(act, w.down, H);
        for (let d = 0; d < H; d++) x[d] = x[d]! + down[d]!;
      });
    });

    return xs.map((x) => linear(rmsNorm(x, this.finalNorm, c.rmsNormEps), this.head, c.vocabSize));
  }
}

export function createBaichuanReference(checkpoint: { config: Record<string, unknown>; tensors: TensorSource }): ReferenceBaichuan {
  return new ReferenceBaichuan(checkpoint.config, checkpoint.tensors);
}

/**
 * The numeric pieces every plain-TypeScript reference model shares (float64 throughout): config.json readers,
 * normalisations, Linear, activations, the causal softmax-attention step over a KV cache, greedy selection.
 * Each architecture's reference (reference-llama.ts, reference-gpt2.ts, …) keeps its own wiring on top of these.
 */

/** A number from config.json, or the fallback where the key is absent or null (an error without one). */
export function configNumber(raw: Record<string, unknown>, key: string, fallback?: number): number {
  const v = raw[key];
  if (v === undefined || v === null) {
    if (fallback === undefined) throw new Error(`config: missing ${key}`);
    return fallback;
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`config: ${key} must be a number, got ${JSON.stringify(v)}`);
  return v;
}

/** A boolean from config.json, or the fallback where the key is absent or null. */
export function configBool(raw: Record<string, unknown>, key: string, fallback: boolean): boolean {
  const v = raw[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'boolean') throw new Error(`config: ${key} must be a boolean, got ${JSON.stringify(v)}`);
  return v;
}

/** RMSNorm of x[offset .. offset + n) times weight, into a new array. */
export function rmsNorm(x: ArrayLike<number>, weight: ArrayLike<number>, eps: number, offset = 0, n = weight.length): Float64Array {
  let ss = 0;
  for (let i = 0; i < n; i++) ss += x[offset + i]! * x[offset + i]!;
  const scale = 1 / Math.sqrt(ss / n + eps);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = x[offset + i]! * scale * weight[i]!;
  return out;
}

export function silu(v: number): number {
  return v / (1 + Math.exp(-v));
}

/** y = W x (+ b) for a PyTorch Linear weight [out, in], row-major. */
export function linear(x: Float64Array, w: Float64Array, outDim: number, bias?: Float64Array): Float64Array {
  const inDim = x.length;
  if (w.length !== outDim * inDim) throw new Error(`linear: weight has ${w.length} values, expected ${outDim}×${inDim}`);
  const y = new Float64Array(outDim);
  for (let o = 0; o < outDim; o++) {
    let s = 0;
    const row = o * inDim;
    for (let i = 0; i < inDim; i++) s += w[row + i]! * x[i]!;
    y[o] = bias ? s + bias[o]! : s;
  }
  return y;
}

/** Index of the largest value; the first one on ties, as torch.argmax. */
export function argmax(v: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i]! > v[best]!) best = i;
  return best;
}

/** Largest minus second-largest value: how safely an engine with small numeric error picks the same token. */
export function topMargin(v: ArrayLike<number>): number {
  let a = -Infinity;
  let b = -Infinity;
  for (let i = 0; i < v.length; i++) {
    const x = v[i]!;
    if (x > a) {
      b = a;
      a = x;
    } else if (x > b) b = x;
  }
  return a - b;
}

/** nn.LayerNorm over the whole vector: biased variance, eps inside the square root. */
export function layerNorm(x: ArrayLike<number>, weight: ArrayLike<number>, bias: ArrayLike<number>, eps: number): Float64Array {
  const n = weight.length;
  let mean = 0;
  for (let i = 0; i < n; i++) mean += x[i]!;
  mean /= n;
  let variance = 0;
  for (let i = 0; i < n; i++) variance += (x[i]! - mean) ** 2;
  variance /= n;
  const inv = 1 / Math.sqrt(variance + eps);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = (x[i]! - mean) * inv * weight[i]! + bias[i]!;
  return out;
}

/**
 * One head's causal attention step over a KV cache, after the caller filled scores[0 ..= pos] and found their max:
 * scores become softmax weights in place, and attn[outOffset + d] += Σ_j p_j · V[j][vOffset + d] for d < D.
 */
export function softmaxAttend(
  scores: Float64Array,
  pos: number,
  max: number,
  V: readonly Float64Array[],
  vOffset: number,
  attn: Float64Array,
  outOffset: number,
  D: number,
): void {
  let sum = 0;
  for (let j = 0; j <= pos; j++) {
    scores[j] = Math.exp(scores[j]! - max);
    sum += scores[j]!;
  }
  for (let j = 0; j <= pos; j++) {
    const p = scores[j]! / sum;
    const vj = V[j]!;
    for (let d = 0; d < D; d++) attn[outOffset + d] = attn[outOffset + d]! + p * vj[vOffset + d]!;
  }
}

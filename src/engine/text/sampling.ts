/**
 * Choosing the next token from a row of logits, the way transformers' generate() does:
 * greedy = argmax; sampling = TemperatureLogitsWarper → TopKLogitsWarper → TopPLogitsWarper → softmax → multinomial.
 * Everything is a pure function of its inputs; randomness comes only from a seeded PRNG, so a seed reproduces a run.
 * NaN logits count as -Infinity (never chosen unless nothing else is left).
 */
import { randomFillSync } from 'node:crypto';
import { InputError } from '../../util/errors.js';

export interface SamplerOptions {
  /** Always take the most likely token; temperature/top-k/top-p are then ignored. Default false. */
  greedy?: boolean;
  /** Divides the logits; > 0. Default 1. */
  temperature?: number;
  /** Keep the k most likely tokens (and any tied with the k-th); integer ≥ 1. Default: no limit. */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability sums to ≥ p; 0 < p ≤ 1. Default 1 (off). */
  topP?: number;
  /** Non-negative integer; the same seed and logits give the same tokens. Default: random. */
  seed?: number;
}

export type Sampler = (logits: Float32Array) => number;

/** Index of the largest logit; the lowest index wins ties, as torch.argmax does. */
export function argmax(logits: Float32Array): number {
  let best = 0;
  let bestValue = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i]!;
    if (v > bestValue) {
      bestValue = v;
      best = i;
    }
  }
  return best;
}

/** logits / temperature, in float32 as torch computes it. */
export function applyTemperature(logits: Float32Array, temperature: number): Float32Array {
  const out = new Float32Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i]! / temperature;
  return out;
}

/** TopKLogitsWarper: logits below the k-th largest become -Infinity; ties with the k-th value are kept. */
export function topKFilter(logits: Float32Array, k: number): Float32Array {
  const out = logits.slice();
  if (k >= logits.length) return out;
  const threshold = kthLargest(logits, k);
  for (let i = 0; i < out.length; i++) if (!(out[i]! >= threshold)) out[i] = -Infinity;
  return out;
}

/**
 * TopPLogitsWarper: keeps, in order of decreasing probability, each token whose more likely predecessors sum to < p
 * (the smallest set reaching p; always at least the most likely token). Others become -Infinity.
 * Equal probabilities are ordered by index so the cut is deterministic.
 */
export function topPFilter(logits: Float32Array, p: number): Float32Array {
  const out = logits.slice();
  if (p >= 1) return out;
  const probs = softmax(logits);
  const keep = nucleus(probs, p);
  const kept = new Uint8Array(logits.length);
  for (const i of keep) kept[i] = 1;
  for (let i = 0; i < out.length; i++) if (!kept[i]) out[i] = -Infinity;
  return out;
}

/** Softmax in float64; all -Infinity (or NaN) gives all zeros. */
export function softmax(logits: Float32Array): Float64Array {
  const out = new Float64Array(logits.length);
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
  if (max === -Infinity) return out;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i]!;
    // `v > -Infinity` is false for NaN too.
    const e = v > -Infinity ? Math.exp(v - max) : 0;
    out[i] = e;
    sum += e;
  }
  for (let i = 0; i < out.length; i++) out[i] = out[i]! / sum;
  return out;
}

/** Inverse-CDF draw: the first index whose cumulative probability exceeds u·total, u in [0, 1). */
export function sampleCategorical(probs: Float64Array, u: number): number {
  let total = 0;
  for (let i = 0; i < probs.length; i++) total += probs[i]!;
  const target = u * total;
  let cumulative = 0;
  let lastPositive = -1;
  for (let i = 0; i < probs.length; i++) {
    const q = probs[i]!;
    if (q <= 0) continue;
    cumulative += q;
    lastPositive = i;
    if (cumulative > target) return i;
  }
  // Only rounding in `cumulative` gets here; the last token with mass is the right answer then.
  return lastPositive;
}

/** A seeded source of uniform numbers. */
export interface Rng {
  /** Uniform in [0, 2^32). */
  nextUint32(): number;
  /** Uniform in [0, 1) with 53 random bits. */
  nextFloat(): number;
}

/**
 * xoshiro128** (Blackman & Vigna, https://prng.di.unimi.it/xoshiro128starstar.c): 128-bit state, period 2^128 − 1,
 * fast with 32-bit integer math. The state is filled by splitmix64 from the seed, as the authors recommend,
 * so nearby seeds give unrelated streams and the all-zero state cannot occur.
 */
export function createRng(seed?: number): Rng {
  const s = new Uint32Array(4);
  if (seed === undefined) {
    do randomFillSync(s);
    while ((s[0]! | s[1]! | s[2]! | s[3]!) === 0);
  } else {
    let x = BigInt(seed);
    const mask = (1n << 64n) - 1n;
    for (let w = 0; w < 4; w += 2) {
      x = (x + 0x9e3779b97f4a7c15n) & mask;
      let z = x;
      z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & mask;
      z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & mask;
      z ^= z >> 31n;
      s[w] = Number(z & 0xffffffffn);
      s[w + 1] = Number(z >> 32n);
    }
  }
  const rotl = (v: number, k: number): number => (v << k) | (v >>> (32 - k));
  const nextUint32 = (): number => {
    const result = Math.imul(rotl(Math.imul(s[1]!, 5), 7), 9) >>> 0;
    const t = s[1]! << 9;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = rotl(s[3]!, 11);
    return result;
  };
  return {
    nextUint32,
    nextFloat: () => ((nextUint32() >>> 5) * 67108864 + (nextUint32() >>> 6)) / 9007199254740992,
  };
}

/** Throws InputError naming the CLI flag of the first bad option. */
export function validateSamplerOptions(options: SamplerOptions): void {
  const { greedy = false, temperature, topK, topP, seed } = options;
  if (temperature !== undefined) {
    if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0) {
      throw new InputError('--temperature', `must be a number > 0, got ${String(temperature)}`);
    }
    if (!greedy && temperature === 0) {
      throw new InputError('--temperature', 'must be > 0 when sampling, got 0; for deterministic output use greedy decoding');
    }
  }
  if (topK !== undefined && (typeof topK !== 'number' || !Number.isInteger(topK) || topK < 1)) {
    throw new InputError('--top-k', `must be a whole number ≥ 1, got ${String(topK)}`);
  }
  if (topP !== undefined && (typeof topP !== 'number' || !Number.isFinite(topP) || topP <= 0 || topP > 1)) {
    throw new InputError('--top-p', `must be a number with 0 < p ≤ 1, got ${String(topP)}`);
  }
  if (seed !== undefined && (typeof seed !== 'number' || !Number.isSafeInteger(seed) || seed < 0)) {
    throw new InputError('--seed', `must be a whole number ≥ 0, got ${String(seed)}`);
  }
}

/** Validates the options (InputError) and returns a function from a row of logits to the chosen token id. */
export function createSampler(options: SamplerOptions = {}): Sampler {
  validateSamplerOptions(options);
  if (options.greedy) return argmax;
  const rng = createRng(options.seed);
  const { temperature = 1, topK, topP = 1 } = options;
  return (logits) => {
    if (logits.length === 0) throw new RangeError('cannot sample from an empty row of logits');
    let scores = temperature === 1 ? logits : applyTemperature(logits, temperature);
    if (topK !== undefined) scores = topKFilter(scores, topK);
    if (topP < 1) scores = topPFilter(scores, topP);
    const probs = softmax(scores);
    const token = sampleCategorical(probs, rng.nextFloat());
    // No finite logit at all: nothing to sample, fall back to the greedy rule's answer.
    return token < 0 ? argmax(logits) : token;
  };
}

// ---------------------------------------------------------------------------------------------------------------

/** The k-th largest value (k ≥ 1), NaN counted as -Infinity. Small k (the usual 20–50) keeps a heap, else sorts. */
function kthLargest(values: Float32Array, k: number): number {
  if (k > 256) {
    const sorted = Float32Array.from(values, (v) => (Number.isNaN(v) ? -Infinity : v)).sort();
    return sorted[sorted.length - k]!;
  }
  // Min-heap of the k largest seen so far; its root is the current k-th largest.
  const heap = new Float64Array(k);
  let size = 0;
  for (let i = 0; i < values.length; i++) {
    const raw = values[i]!;
    const v = Number.isNaN(raw) ? -Infinity : raw;
    if (size < k) {
      let j = size++;
      heap[j] = v;
      while (j > 0) {
        const parent = (j - 1) >> 1;
        if (heap[parent]! <= heap[j]!) break;
        [heap[parent], heap[j]] = [heap[j]!, heap[parent]!];
        j = parent;
      }
    } else if (v > heap[0]!) {
      heap[0] = v;
      let j = 0;
      for (;;) {
        const l = 2 * j + 1;
        const r = l + 1;
        let m = j;
        if (l < size && heap[l]! < heap[m]!) m = l;
        if (r < size && heap[r]! < heap[m]!) m = r;
        if (m === j) break;
        [heap[m], heap[j]] = [heap[j]!, heap[m]!];
        j = m;
      }
    }
  }
  return heap[0]!;
}

/**
 * Indices of the nucleus for 0 < p < 1. Sorting a whole 150k vocabulary per token is slow, and the nucleus
 * always lies among the most probable tokens: so only tokens with probability ≥ τ are sorted, lowering τ until
 * their mass reaches p (then every nucleus member is among them, since all of them outrank every token below τ).
 */
function nucleus(probs: Float64Array, p: number): number[] {
  let max = 0;
  for (let i = 0; i < probs.length; i++) if (probs[i]! > max) max = probs[i]!;
  let tau = max / 1024;
  let candidates: number[];
  for (;;) {
    candidates = [];
    let mass = 0;
    for (let i = 0; i < probs.length; i++) {
      if (probs[i]! >= tau) {
        candidates.push(i);
        mass += probs[i]!;
      }
    }
    if (mass >= p || tau === 0) break;
    tau = tau > 1e-300 ? tau / 1024 : 0;
  }
  candidates.sort((a, b) => probs[b]! - probs[a]! || a - b);
  const keep: number[] = [];
  let above = 0;
  for (const i of candidates) {
    if (keep.length > 0 && above >= p) break;
    keep.push(i);
    above += probs[i]!;
  }
  return keep;
}

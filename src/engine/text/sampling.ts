/**
 * Choosing the next token from a row of logits, the way transformers' generate() does:
 * greedy = argmax; sampling = TemperatureLogitsWarper → TopKLogitsWarper → TopPLogitsWarper → softmax → multinomial.
 * The functions here are pure; a sampler's only state is its PRNG, seeded, so a seed reproduces a run.
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
  const threshold = k >= logits.length ? -Infinity : kthLargest(logits, k);
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
  const kept = nucleusMask(probs, p);
  for (let i = 0; i < out.length; i++) if (!kept[i]) out[i] = -Infinity;
  return out;
}

/**
 * The distribution transformers samples from: softmax of the logits after temperature, top-k and top-p, in that
 * order. Removed tokens get probability 0. All logits -Infinity/NaN gives all zeros.
 */
export function samplingDistribution(logits: Float32Array, options: { temperature?: number; topK?: number; topP?: number } = {}): Float64Array {
  const { temperature = 1, topK, topP = 1 } = options;
  const n = logits.length;
  const scores = temperature === 1 ? logits : applyTemperature(logits, temperature);
  const threshold = topK !== undefined && topK < n ? kthLargest(scores, topK) : -Infinity;
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (scores[i]! > max) max = scores[i]!;
  const w = new Float64Array(n);
  if (max === -Infinity) return w;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const v = scores[i]!;
    // False for NaN, -Infinity and what top-k removed.
    if (v >= threshold && v > -Infinity) {
      const e = expShifted(v, max);
      w[i] = e;
      sum += e;
    }
  }
  if (topP < 1) {
    const kept = nucleusMask(w, topP, sum);
    sum = 0;
    for (let i = 0; i < n; i++) {
      if (kept[i]) sum += w[i]!;
      else w[i] = 0;
    }
  }
  for (let i = 0; i < n; i++) w[i] = w[i]! / sum;
  return w;
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
    const e = v > -Infinity ? expShifted(v, max) : 0;
    out[i] = e;
    sum += e;
  }
  for (let i = 0; i < out.length; i++) out[i] = out[i]! / sum;
  return out;
}

/** exp(v - max), with a +Infinity maximum taking all the mass (Infinity - Infinity would be NaN). */
function expShifted(v: number, max: number): number {
  if (max === Infinity) return v === Infinity ? 1 : 0;
  return Math.exp(v - max);
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
  const { temperature, topK, topP } = options;
  return (logits) => {
    if (logits.length === 0) throw new RangeError('cannot sample from an empty row of logits');
    const token = sampleCategorical(samplingDistribution(logits, { temperature, topK, topP }), rng.nextFloat());
    // No finite logit at all: nothing to sample, fall back to the greedy rule's answer.
    return token < 0 ? argmax(logits) : token;
  };
}

// ---------------------------------------------------------------------------------------------------------------

/**
 * The k-th largest value (1 ≤ k ≤ length), NaN counted as -Infinity. The usual k (20–50) keeps a min-heap of
 * the k largest, a single pass that mostly just compares with the root; large k uses three-way quickselect.
 */
function kthLargest(values: Float32Array, k: number): number {
  return k <= 256 ? kthLargestByHeap(values, k) : kthLargestBySelect(values, k);
}

function kthLargestByHeap(values: Float32Array, k: number): number {
  const heap = new Float64Array(k);
  let size = 0;
  for (let i = 0; i < values.length; i++) {
    const raw = values[i]!;
    const v = raw === raw ? raw : -Infinity;
    if (size < k) {
      let j = size++;
      heap[j] = v;
      while (j > 0) {
        const parent = (j - 1) >> 1;
        if (heap[parent]! <= v) break;
        heap[j] = heap[parent]!;
        j = parent;
      }
      heap[j] = v;
    } else if (v > heap[0]!) {
      let j = 0;
      for (;;) {
        const l = 2 * j + 1;
        if (l >= size) break;
        const c = l + 1 < size && heap[l + 1]! < heap[l]! ? l + 1 : l;
        if (heap[c]! >= v) break;
        heap[j] = heap[c]!;
        j = c;
      }
      heap[j] = v;
    }
  }
  return heap[0]!;
}

function kthLargestBySelect(values: Float32Array, k: number): number {
  const a = new Float32Array(values.length);
  for (let i = 0; i < a.length; i++) {
    const v = values[i]!;
    a[i] = Number.isNaN(v) ? -Infinity : v;
  }
  const target = k - 1;
  let lo = 0;
  let hi = a.length - 1;
  while (lo < hi) {
    const x = a[lo]!;
    const y = a[(lo + hi) >>> 1]!;
    const z = a[hi]!;
    const pivot = Math.max(Math.min(x, y), Math.min(Math.max(x, y), z));
    // Descending three-way partition: a[lo, lt) > pivot, a[lt, i) == pivot, a(gt, hi] < pivot.
    let lt = lo;
    let i = lo;
    let gt = hi;
    while (i <= gt) {
      const v = a[i]!;
      if (v > pivot) {
        a[i++] = a[lt]!;
        a[lt++] = v;
      } else if (v < pivot) {
        a[i] = a[gt]!;
        a[gt--] = v;
      } else {
        i++;
      }
    }
    if (target < lt) hi = lt - 1;
    else if (target > gt) lo = gt + 1;
    else return pivot;
  }
  return a[lo]!;
}

/**
 * Marks the top-p nucleus of non-negative weights (mass = their sum): a token is kept when the tokens ranked
 * above it (higher weight; equal weight and lower index) hold less than p·mass. Sorting a 150k vocabulary per
 * token costs tens of milliseconds, and only set membership matters, so this is a weighted quickselect instead:
 * partition around a pivot weight into higher / equal / lower, and either narrow into the higher group (the cut
 * lies inside it), settle the cut inside the equal group (by index), or keep higher and equal and go on in the
 * lower group with the mass still missing. Expected O(n).
 */
function nucleusMask(weights: Float64Array, p: number, mass?: number): Uint8Array {
  const n = weights.length;
  let total = mass ?? 0;
  let m = 0;
  const idx = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    if (weights[i]! > 0) {
      idx[m++] = i;
      if (mass === undefined) total += weights[i]!;
    }
  }
  const target = p * total;
  const kept = new Uint8Array(n);
  // idx[0, lo) are kept; idx[lo, hi) is undecided; idx[hi, m) are dropped. `above` is the kept mass.
  let lo = 0;
  let hi = m;
  let above = 0;
  while (lo < hi) {
    const a = weights[idx[lo]!]!;
    const b = weights[idx[(lo + hi) >>> 1]!]!;
    const c = weights[idx[hi - 1]!]!;
    const pivot = Math.max(Math.min(a, b), Math.min(Math.max(a, b), c));
    // Dutch-flag partition of idx[lo, hi) into [higher | equal | lower].
    let h = lo;
    let i = lo;
    let l = hi;
    let massHigher = 0;
    let massEqual = 0;
    while (i < l) {
      const id = idx[i]!;
      const v = weights[id]!;
      if (v > pivot) {
        idx[i] = idx[h]!;
        idx[h++] = id;
        i++;
        massHigher += v;
      } else if (v < pivot) {
        idx[i] = idx[--l]!;
        idx[l] = id;
      } else {
        i++;
        massEqual += v;
      }
    }
    if (h > lo && above + massHigher >= target) {
      hi = h;
    } else if (above + massHigher + massEqual >= target) {
      above += massHigher;
      const equal = idx.subarray(h, l).sort();
      let end = h;
      for (const id of equal) {
        if (above >= target) break;
        above += weights[id]!;
        end++;
      }
      lo = end;
      break;
    } else {
      above += massHigher + massEqual;
      lo = l;
    }
  }
  for (let j = 0; j < lo; j++) kept[idx[j]!] = 1;
  return kept;
}

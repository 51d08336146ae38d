/**
 * The figures `vramfit eval` reports, in float64: log-softmax with the maximum subtracted, KL(P_base ‖ P_model) of
 * two next-token distributions, each model's negative log-likelihood of the true next token, and whether both
 * rank the same token first. llama-perplexity --kl-divergence computes the same per position.
 */

/** The log of the softmax's denominator, log Σ exp(x_i), with the maximum subtracted first (float64 throughout). */
export function logSumExp(row: ArrayLike<number>): number {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i]! > max) max = row[i]!;
  if (max === -Infinity || !Number.isFinite(max)) return max;
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i]! - max);
  return max + Math.log(sum);
}

/** The first index holding the row's largest value (ties go to the lowest id, as llama.cpp's argmax). */
export function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
  return best;
}

/** One scored position: what both models said about the token that follows. */
export interface PositionFigures {
  /** KL(P_base ‖ P_model) in nats. */
  kl: number;
  /** −log P(true next token) under each model. */
  nllBase: number;
  nllModel: number;
  /** Both models' most likely token is the same. */
  sameTop1: boolean;
}

/**
 * KL(P_base ‖ P_model) = Σ_i p_i (log p_i − log q_i) with log p = base − logsumexp(base), log q likewise, every
 * term in float64; a token the base gives probability 0 adds nothing. Rows must be as long (one vocabulary).
 */
export function comparePosition(base: ArrayLike<number>, model: ArrayLike<number>, target: number): PositionFigures {
  const lseB = logSumExp(base);
  const lseM = logSumExp(model);
  let kl = 0;
  for (let i = 0; i < base.length; i++) {
    const logP = base[i]! - lseB;
    const p = Math.exp(logP);
    if (p === 0) continue;
    kl += p * (logP - (model[i]! - lseM));
  }
  return { kl, nllBase: lseB - base[target]!, nllModel: lseM - model[target]!, sameTop1: argmax(base) === argmax(model) };
}

/** The q-quantile (0 ≤ q ≤ 1) of ascending values, interpolating linearly between ranks (numpy's default). */
export function quantileSorted(sorted: ArrayLike<number>, q: number): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  const at = q * (n - 1);
  const lo = Math.floor(at);
  const hi = Math.min(lo + 1, n - 1);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (at - lo);
}

export interface EvalSummary {
  positions: number;
  kl: { mean: number; meanStderr: number; median: number; p99: number; max: number };
  top1: { same: number; percent: number };
  perplexity: { base: number; model: number };
}

/** Collects each position's figures (8 bytes of KL per position are kept for the median and p99). */
export class EvalAccumulator {
  private kls = new Float64Array(1024);
  private n = 0;
  private sumKl = 0;
  private sumKl2 = 0;
  private nllBase = 0;
  private nllModel = 0;
  private same = 0;

  add(f: PositionFigures): void {
    if (this.n === this.kls.length) {
      const grown = new Float64Array(this.kls.length * 2);
      grown.set(this.kls);
      this.kls = grown;
    }
    this.kls[this.n++] = f.kl;
    this.sumKl += f.kl;
    this.sumKl2 += f.kl * f.kl;
    this.nllBase += f.nllBase;
    this.nllModel += f.nllModel;
    if (f.sameTop1) this.same++;
  }

  summary(): EvalSummary {
    const n = this.n;
    const sorted = this.kls.slice(0, n).sort();
    const mean = n > 0 ? this.sumKl / n : NaN;
    // Standard error of the mean, as llama-perplexity prints after ±.
    const variance = n > 1 ? Math.max(0, (this.sumKl2 / n - mean * mean) * (n / (n - 1))) : NaN;
    return {
      positions: n,
      kl: {
        mean,
        meanStderr: Math.sqrt(variance / n),
        median: quantileSorted(sorted, 0.5),
        p99: quantileSorted(sorted, 0.99),
        max: n > 0 ? sorted[n - 1]! : NaN,
      },
      top1: { same: this.same, percent: n > 0 ? (100 * this.same) / n : NaN },
      perplexity: { base: Math.exp(this.nllBase / n), model: Math.exp(this.nllModel / n) },
    };
  }
}

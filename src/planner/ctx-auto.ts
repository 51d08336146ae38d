import { InfeasiblePlanError } from './fit.js';
import type { Plan } from './plan.js';

/**
 * `--ctx auto`: the longest context (a multiple of 256, up to the model's maximum) for which the plan
 * still keeps every byte of weights it keeps on the accelerators at a 256-token context — context never
 * pushes weights off a GPU. `plan(ctx)` throws when infeasible.
 */
export function largestContext(maxCtx: number, plan: (ctx: number) => Plan): Plan {
  const step = 256;
  const base = plan(Math.min(step, maxCtx));
  if (maxCtx <= step) return base;
  const onAccelerators = (p: Plan): number => p.devices.filter((d) => d.kind === 'gpu' || d.kind === 'virtual').reduce((s, d) => s + d.weights, 0);
  const target = onAccelerators(base);
  const ok = (ctx: number): Plan | undefined => {
    try {
      const p = plan(ctx);
      return onAccelerators(p) >= target ? p : undefined;
    } catch (e) {
      if (e instanceof InfeasiblePlanError) return undefined;
      throw e;
    }
  };
  let lo = 1;
  let hi = Math.floor(maxCtx / step);
  let best = base;
  const top = ok(hi * step);
  if (top) return top;
  while (lo + 1 < hi) {
    const mid = Math.floor((lo + hi) / 2);
    const p = ok(mid * step);
    if (p) {
      lo = mid;
      best = p;
    } else {
      hi = mid;
    }
  }
  return best;
}

/**
 * `--quantize auto`: the planner chooses, per unit (each block, the embedding, the head), the weight type, and the
 * KV cache's type, so that the whole model runs on the GPUs within every cap — most quality first, then fewest GPU
 * bytes. Pure: every candidate is checked by planning it (planFit) on the GPUs alone.
 *
 * Quality is an error model: each type's relative RMS error on N(0, 1) weights (measured with ggml's own quantizer
 * on rows of 4096; see RELATIVE_ERROR), squared, times the unit's parameters, times the role's sensitivity (the head's
 * error reaches every logit; an embedding row is read once per token). The KV cache counts as much as all the
 * blocks' weights (every attention step reads it). With `measured` (--measure), each tensor's own relative error
 * under each type, measured on its weights, replaces the model's figure. The search: for each KV type (best first), the best single type
 * all units can share, then one-step upgrades of single units in order of error removed per byte added, repeated
 * until no unit can move up a step and still fit; the KV choice with the least total error wins (fewer GPU bytes
 * on a tie). The result is maximal: no unit's type can be raised one step with everything else fixed.
 */
import { tensorBytes } from '../reader/dtypes.js';
import { formatBytes } from './units.js';
import type { Skeleton } from '../reader/skeleton.js';
import { InfeasiblePlanError, planFit, type FitInput } from './fit.js';
import type { Plan, PlanQuantization } from './plan.js';
import { chooseType, tensorRoles, type TensorRole } from './quantize.js';

/** Weight levels, best first; 'keep' is the checkpoint's own float type. */
export const AUTO_LEVELS = ['keep', 'q8_0', 'q6_k', 'q5_k', 'q4_k', 'q4_0'] as const;
export type AutoLevel = (typeof AUTO_LEVELS)[number];

/** Relative RMS error of each type on N(0, 1) weights (ggml's quantizer, rows of 4096; float16 by its rounding). */
export const RELATIVE_ERROR: Readonly<Record<string, number>> = {
  float32: 0,
  float16: 2.8e-4,
  bfloat16: 2.2e-3,
  q8_0: 5.1e-3,
  q6_k: 1.7e-2,
  q5_k: 3.5e-2,
  q4_k: 6.9e-2,
  q4_0: 8.2e-2,
};

const SENSITIVITY: Record<'block' | 'embedding' | 'head', number> = { block: 1, embedding: 0.5, head: 4 };

export interface AutoUnit {
  /** A block's module name, or the embedding's / head's tensor name. */
  name: string;
  role: 'block' | 'embedding' | 'head';
  params: number;
}

export interface AutoChoice {
  units: (AutoUnit & { level: AutoLevel; bytes: number })[];
  kvDtype: string;
  /** The error model's total (lower is better). */
  error: number;
  plan: Plan;
  skeleton: Skeleton;
}

/** Each tensor's relative RMS error under each level, measured on its own weights (`--measure`). */
export type MeasuredErrors = ReadonlyMap<string, Readonly<Partial<Record<AutoLevel, number>>>>;

export interface AutoQuantizeInput extends Omit<FitInput, 'remedies' | 'skeleton'> {
  skeleton: Skeleton;
  /** KV cache types allowed, best first (the first is the one asked for or the default). */
  kvDtypes: readonly string[];
  /** Measured errors replace the error model's for the tensors and levels they cover. */
  measured?: MeasuredErrors;
}

/** The units `--quantize auto` chooses a type for, and which unit each convertible tensor belongs to. */
export function autoUnits(skeleton: Skeleton): { units: AutoUnit[]; unitOf: Map<string, string>; roles: Map<string, TensorRole> } {
  const roles = tensorRoles(skeleton);
  const prefix = skeleton.blocks ? `${skeleton.blocks.prefix}.` : undefined;
  const units = new Map<string, AutoUnit>();
  const unitOf = new Map<string, string>();
  for (const t of skeleton.tensors) {
    const role = roles.get(t.name);
    if (role !== 'matrix' && role !== 'embedding' && role !== 'head') continue;
    const params = t.shape.reduce((a, b) => a * b, 1);
    let unit: AutoUnit;
    if (role === 'matrix' && prefix && t.name.startsWith(prefix)) {
      const name = `${prefix}${t.name.slice(prefix.length).split('.')[0]}`;
      unit = units.get(name) ?? { name, role: 'block', params: 0 };
    } else unit = units.get(t.name) ?? { name: t.name, role: role === 'head' ? 'head' : 'embedding', params: 0 };
    unit.params += params;
    units.set(unit.name, unit);
    unitOf.set(t.name, unit.name);
  }
  return { units: [...units.values()], unitOf, roles };
}

/** The skeleton as loaded with each unit at its level (rows that are not whole blocks fall back as --quantize's do). */
export function applyLevels(skeleton: Skeleton, levels: ReadonlyMap<string, AutoLevel>, unitOf: ReadonlyMap<string, string>): Skeleton {
  const tensors = skeleton.tensors.map((t) => {
    const unit = unitOf.get(t.name);
    const level = unit === undefined ? undefined : levels.get(unit);
    if (level === undefined || level === 'keep') return t;
    // The level is the unit's own choice: no head floor here (the search weighs the head's error instead).
    const c = chooseType('matrix', t.shape[t.shape.length - 1] ?? 0, level);
    return c ? { ...t, dtype: c.to } : t;
  });
  return { ...skeleton, tensors };
}

function levelError(level: AutoLevel, stored: string): number {
  const e = RELATIVE_ERROR[level === 'keep' ? stored : level] ?? 0;
  return e * e;
}

function gpuBytes(p: Plan): number {
  return p.devices.filter((d) => d.kind === 'gpu' || d.kind === 'virtual').reduce((n, d) => n + d.used, 0);
}

/**
 * The best assignment that fits, or an InfeasiblePlanError saying what the smallest configuration (every unit in
 * the last level, the last KV type) still lacks.
 */
export function planQuantizeAuto(input: AutoQuantizeInput): AutoChoice {
  const { skeleton } = input;
  const { units, unitOf } = autoUnits(skeleton);
  const blockParams = units.filter((u) => u.role === 'block').reduce((n, u) => n + u.params, 0);

  // The GPUs alone: a plan that needs host RAM or disk is not an answer.
  const devices = input.devices.filter((d) => d.kind === 'gpu' || d.kind === 'virtual');
  if (devices.length === 0) throw new InfeasiblePlanError('--quantize auto plans for GPUs, and none was given', []);
  const planWith = (levels: Map<string, AutoLevel>, kvDtype: string, remedies: boolean): { plan: Plan; skeleton: Skeleton } => {
    const s = applyLevels(skeleton, levels, unitOf);
    const fit: FitInput = { ...input, devices, skeleton: s, workload: { ...input.workload, kvDtype } };
    if (!remedies) fit.remedies = false;
    return { plan: planFit(fit), skeleton: s };
  };
  const tryPlan = (levels: Map<string, AutoLevel>, kvDtype: string): { plan: Plan; skeleton: Skeleton } | undefined => {
    try {
      return planWith(levels, kvDtype, false);
    } catch (e) {
      if (e instanceof InfeasiblePlanError) return undefined;
      throw e;
    }
  };
  // A unit's mean squared relative error at each level: its tensors' measured figures where given, else the model's.
  const unitError = new Map<string, Map<AutoLevel, number>>();
  const unitByName = new Map(units.map((u) => [u.name, u]));
  for (const u of units) {
    const byLevel = new Map<AutoLevel, number>();
    for (const level of AUTO_LEVELS) byLevel.set(level, 0);
    unitError.set(u.name, byLevel);
  }
  for (const t of skeleton.tensors) {
    const unit = unitOf.get(t.name);
    if (unit === undefined) continue;
    const params = t.shape.reduce((a, b) => a * b, 1);
    const byLevel = unitError.get(unit)!;
    const u = unitByName.get(unit)!;
    for (const level of AUTO_LEVELS) {
      const m = level === 'keep' ? undefined : input.measured?.get(t.name)?.[level];
      const e = m !== undefined ? m * m : levelError(level, t.dtype);
      byLevel.set(level, byLevel.get(level)! + (e * params) / u.params);
    }
  }
  const errorAt = (u: AutoUnit, level: AutoLevel): number => unitError.get(u.name)!.get(level)!;
  const errorOf = (levels: Map<string, AutoLevel>, kvDtype: string): number =>
    units.reduce((sum, u) => sum + u.params * SENSITIVITY[u.role] * errorAt(u, levels.get(u.name)!), 0) +
    blockParams * levelError(kvDtype === 'float32' || kvDtype === 'float16' || kvDtype === 'bfloat16' ? 'keep' : (kvDtype as AutoLevel), kvDtype);
  const unitBytes = (u: AutoUnit, level: AutoLevel): number => {
    const s = applyLevels(skeleton, new Map([[u.name, level]]), unitOf);
    return s.tensors.filter((t) => unitOf.get(t.name) === u.name).reduce((n, t) => n + tensorBytes(t.shape, t.dtype), 0);
  };

  let best: AutoChoice | undefined;
  for (const kvDtype of input.kvDtypes) {
    // The best type every unit can share.
    let levels: Map<string, AutoLevel> | undefined;
    let fitted: { plan: Plan; skeleton: Skeleton } | undefined;
    for (const level of AUTO_LEVELS) {
      const all = new Map(units.map((u) => [u.name, level]));
      fitted = tryPlan(all, kvDtype);
      if (fitted) {
        levels = all;
        break;
      }
    }
    if (!levels || !fitted) continue;
    let current: Map<string, AutoLevel> = levels;
    let currentPlan: { plan: Plan; skeleton: Skeleton } = fitted;
    // Single-unit upgrades, most error removed per byte added first, until none fits.
    for (let moved = true; moved;) {
      moved = false;
      const candidates = units
        .map((u) => {
          const at = AUTO_LEVELS.indexOf(current.get(u.name)!);
          if (at === 0) return undefined;
          const up = AUTO_LEVELS[at - 1]!;
          const gain = u.params * SENSITIVITY[u.role] * (errorAt(u, AUTO_LEVELS[at]!) - errorAt(u, up));
          const cost = Math.max(1, unitBytes(u, up) - unitBytes(u, AUTO_LEVELS[at]!));
          return { u, up, worth: gain / cost };
        })
        .filter((c): c is NonNullable<typeof c> => c !== undefined)
        .sort((a, b) => b.worth - a.worth || a.u.name.localeCompare(b.u.name));
      for (const c of candidates) {
        const next = new Map<string, AutoLevel>(current);
        next.set(c.u.name, c.up);
        const p = tryPlan(next, kvDtype);
        if (p) {
          current = next;
          currentPlan = p;
          moved = true;
        }
      }
    }
    const error = errorOf(current, kvDtype);
    if (!best || error < best.error || (error === best.error && gpuBytes(currentPlan.plan) < gpuBytes(best.plan))) {
      const chosen = current;
      best = {
        units: units.map((u) => ({ ...u, level: chosen.get(u.name)!, bytes: unitBytes(u, chosen.get(u.name)!) })),
        kvDtype,
        error,
        plan: currentPlan.plan,
        skeleton: currentPlan.skeleton,
      };
    }
  }
  if (best) return best;
  // Nothing fits: the smallest caps, in proportion to the given ones, with which the smallest configuration fits.
  const smallest = new Map(units.map((u) => [u.name, AUTO_LEVELS[AUTO_LEVELS.length - 1]!]));
  const kv = input.kvDtypes[input.kvDtypes.length - 1]!;
  const fitsAt = (f: number): boolean => {
    try {
      planFit({
        ...input,
        devices: devices.map((d) => ({ ...d, cap: Math.ceil(d.cap * f) })),
        skeleton: applyLevels(skeleton, smallest, unitOf),
        workload: { ...input.workload, kvDtype: kv },
        remedies: false,
      });
      return true;
    } catch (e) {
      if (e instanceof InfeasiblePlanError) return false;
      throw e;
    }
  };
  let hi = 2;
  while (!fitsAt(hi) && hi < 2 ** 40) hi *= 2;
  let lo = hi / 2;
  // A factor within 0.1 % of the least one: caps of gigabytes to the megabyte.
  while (hi / lo > 1.001) {
    const mid = Math.sqrt(lo * hi);
    if (fitsAt(mid)) hi = mid;
    else lo = mid;
  }
  const needed = devices.map((d) => Math.ceil(d.cap * hi));
  throw new InfeasiblePlanError(
    `--quantize auto: even with every unit in ${AUTO_LEVELS[AUTO_LEVELS.length - 1]} and a ${kv} KV cache the model does not fit the GPUs; that configuration fits with caps of at least ${devices.map((d, i) => `${d.id}=${formatBytes(needed[i]!)}`).join(', ')} (×${hi.toFixed(2)} the given ones)`,
    devices.map((d, i) => ({ device: d.id, label: d.name ?? d.id, short: needed[i]! - d.cap })),
  );
}

/** What --quantize did to each unit: `source` as stored, `loaded` with the chosen dtypes. */
export function summarizeQuantization(source: Skeleton, loaded: Skeleton, mode: string, kvDtype: string): PlanQuantization {
  const { units, unitOf } = autoUnits(source);
  const dtypeOf = new Map(loaded.tensors.map((t) => [t.name, t.dtype]));
  return {
    mode,
    kvDtype,
    units: units.map((u) => {
      const byType = new Map<string, number>();
      let bytes = 0;
      let storedBytes = 0;
      for (const t of source.tensors) {
        if (unitOf.get(t.name) !== u.name) continue;
        const dtype = dtypeOf.get(t.name) ?? t.dtype;
        const b = tensorBytes(t.shape, dtype);
        byType.set(dtype, (byType.get(dtype) ?? 0) + b);
        bytes += b;
        storedBytes += tensorBytes(t.shape, t.dtype);
      }
      const type = [...byType].sort((a, b) => b[1] - a[1])[0]?.[0] ?? '?';
      return { name: u.name, type, params: u.params, bytes, storedBytes };
    }),
  };
}

import { bytesPerElement } from '../reader/dtypes.js';
import type { FitInput } from './fit.js';
import { dominantDtype } from './memory-model.js';
import { label } from './plan-builder.js';
import type { PlanDeviceSpec } from './plan.js';
import { formatBytes, GiB, MiB } from './units.js';

/** What the command that planned lets a user change: a suggestion names only flags and values it accepts. */
export interface RemedyKnobs {
  /** Values `--kv-dtype` takes. */
  kvDtypes: readonly string[];
  /** Values `--dtype` takes (floating weights are converted). */
  dtypes: readonly string[];
  /** `--ctx auto` is accepted. */
  ctxAuto: boolean;
  /** `--max-memory` takes cpu and disk budgets. */
  offload: boolean;
}

/** `vramfit plan`: every KV dtype the memory model prices. */
export const PLAN_KNOBS: RemedyKnobs = {
  kvDtypes: ['float32', 'float16', 'bfloat16', 'q8_0', 'q4_0'],
  dtypes: ['float32', 'float16', 'bfloat16'],
  ctxAuto: true,
  offload: true,
};

/** A change that makes the plan succeed (it was planned again with it) and how to ask for it. */
export interface Remedy {
  text: string;
  input: FitInput;
}

/** A cap rounded up to what a person types: hundredths of a GiB from 1 GiB, whole MiB below. */
export function roundCapUp(bytes: number): { bytes: number; text: string } {
  if (bytes >= GiB) {
    const hundredths = Math.ceil((bytes / GiB) * 100 - 1e-9);
    return { bytes: Math.ceil((hundredths / 100) * GiB), text: `${(hundredths / 100).toFixed(2)}GiB` };
  }
  const mib = Math.max(1, Math.ceil(bytes / MiB - 1e-9));
  return { bytes: mib * MiB, text: `${mib}MiB` };
}

/** The least x in [lo, hi] with ok(x), for a monotone ok, searched to `step`; undefined when ok(hi) fails. */
function least(lo: number, hi: number, step: number, ok: (x: number) => boolean): number | undefined {
  if (!ok(hi)) return undefined;
  while (hi - lo > step) {
    const mid = Math.floor((lo + hi) / 2);
    if (ok(mid)) hi = mid;
    else lo = mid;
  }
  return hi;
}

const isAcc = (d: PlanDeviceSpec): boolean => d.kind === 'gpu' || d.kind === 'virtual';

/**
 * Changes that each alone would make an infeasible plan fit, every one checked by planning again with
 * it (`fits`): a smaller KV dtype, the longest context that fits, 16-bit weights, a cpu or disk budget,
 * a larger cap on a short device, another GPU. Only flags and values `knobs` says the command accepts.
 */
export function findRemedies(input: FitInput, shortDevices: readonly string[], knobs: RemedyKnobs, fits: (i: FitInput) => boolean): Remedy[] {
  const out: Remedy[] = [];
  const w = input.workload;
  const a = input.skeleton.attention;
  const offer = (text: string, candidate: FitInput): boolean => {
    if (!fits(candidate)) return false;
    out.push({ text, input: candidate });
    return true;
  };
  const withDevices = (devices: PlanDeviceSpec[]): FitInput => ({ ...input, devices });
  const replace = (id: string, d: PlanDeviceSpec): PlanDeviceSpec[] => input.devices.map((x) => (x.id === id ? d : x));

  // The KV cache: a smaller dtype the command takes (the largest that fits loses least), or a shorter context.
  if (a && a.kvElementsPerToken > 0) {
    const smaller = knobs.kvDtypes.filter((d) => bytesPerElement(d) < bytesPerElement(w.kvDtype)).sort((x, y) => bytesPerElement(y) - bytesPerElement(x));
    for (const kvDtype of smaller) if (offer(`--kv-dtype ${kvDtype}`, { ...input, workload: { ...w, kvDtype } })) break;
    // A context far shorter than asked for is no answer to the question asked.
    const useful = Math.min(256, Math.ceil(w.ctx / 2));
    if (w.ctx > useful) {
      const ctx = largestFitting(useful, w.ctx - 1, (c) => fits({ ...input, workload: { ...w, ctx: c, ubatch: Math.min(w.ubatch, c) } }));
      if (ctx !== undefined) {
        out.push({
          text: `--ctx ${ctx}${knobs.ctxAuto ? ' (or --ctx auto)' : ''}: the longest context that fits`,
          input: { ...input, workload: { ...w, ctx, ubatch: Math.min(w.ubatch, ctx) } },
        });
      }
    }
  }
  // Fewer tokens per forward pass: smaller activations and logits (prompts are processed in more steps).
  const minUbatch = Math.min(32, w.ubatch);
  if (w.ubatch > minUbatch) {
    const ubatch = largestFitting(minUbatch, w.ubatch - 1, (u) => fits({ ...input, workload: { ...w, ubatch: u } }));
    if (ubatch !== undefined)
      out.push({ text: `--ubatch ${ubatch}: smaller activations, prompts processed in more steps`, input: { ...input, workload: { ...w, ubatch } } });
  }
  // 16-bit weights for a 32-bit checkpoint.
  if (dominantDtype(input.skeleton, w.dtype) === 'float32') {
    const half = knobs.dtypes.find((d) => d === 'bfloat16') ?? knobs.dtypes.find((d) => d === 'float16');
    if (half) offer(`--dtype ${half}: load the weights in 16 bits`, { ...input, workload: { ...w, dtype: half } });
  }
  // Room elsewhere: bounded by what the whole model could possibly need.
  const ceiling = wholeModelBound(input);
  const cpu = input.devices.find((d) => d.kind === 'cpu');
  const disk = input.devices.find((d) => d.kind === 'disk');
  if (knobs.offload) {
    const cpuAt = (cap: number): PlanDeviceSpec[] =>
      cpu
        ? replace('cpu', { ...cpu, cap })
        : [...input.devices.filter((d) => d.kind !== 'disk'), { id: 'cpu', kind: 'cpu', cap, overhead: 0 }, ...(disk ? [disk] : [])];
    const need = least(cpu?.cap ?? 0, ceiling, MiB, (cap) => fits(withDevices(cpuAt(cap))));
    if (need !== undefined) {
      const cap = roundCapUp(need);
      out.push({ text: `--max-memory …,cpu=${cap.text}${cpu ? ` (cpu is capped at ${formatBytes(cpu.cap)} now)` : ''}`, input: withDevices(cpuAt(cap.bytes)) });
    }
    if (cpu && !disk) {
      const withDisk = [...input.devices, { id: 'disk', kind: 'disk' as const, cap: Infinity, overhead: 0 }];
      const needDisk = least(0, ceiling, MiB, (cap) => fits(withDevices(withDisk.map((d) => (d.kind === 'disk' ? { ...d, cap } : d)))));
      if (needDisk !== undefined) {
        const cap = roundCapUp(needDisk);
        out.push({
          text: `--max-memory …,disk=${cap.text}: offload to disk`,
          input: withDevices(withDisk.map((d) => (d.kind === 'disk' ? { ...d, cap: cap.bytes } : d))),
        });
      }
    }
  }
  // A larger cap on one short accelerator, within what the card has.
  for (const id of shortDevices.slice(0, 2)) {
    const d = input.devices.find((x) => x.id === id);
    if (!d || !isAcc(d)) continue;
    const top = Math.min(d.totalBytes ?? Infinity, d.cap + ceiling);
    const need = least(d.cap, top, MiB, (cap) => fits(withDevices(replace(id, { ...d, cap }))));
    if (need === undefined) continue;
    const cap = roundCapUp(need);
    if (cap.bytes > top) continue;
    out.push({
      text: `--max-memory ${id}=${cap.text}: ${label(d)} with ${formatBytes(cap.bytes - d.cap)} more`,
      input: withDevices(replace(id, { ...d, cap: cap.bytes })),
    });
  }
  // One more accelerator like the last one.
  const accs = input.devices.filter(isAcc);
  const last = accs[accs.length - 1];
  if (last) {
    const extraId = String(Math.max(-1, ...accs.map((d) => Number(d.id)).filter(Number.isFinite)) + 1);
    const more = (cap: number): PlanDeviceSpec[] => {
      const extra: PlanDeviceSpec = { id: extraId, kind: last.kind, cap, overhead: last.overhead };
      const i = input.devices.indexOf(last) + 1;
      return [...input.devices.slice(0, i), extra, ...input.devices.slice(i)];
    };
    const need = least(0, ceiling, MiB, (cap) => fits(withDevices(more(cap))));
    if (need !== undefined) {
      const cap = roundCapUp(need);
      out.push({
        text: `another ${last.kind === 'virtual' ? 'device' : 'GPU'} with ${formatBytes(cap.bytes)} for this process`,
        input: withDevices(more(cap.bytes)),
      });
    }
  }
  return out;
}

/** The largest x in [lo, hi] with ok(x), for an ok that holds below some point; undefined when ok(lo) fails. */
function largestFitting(lo: number, hi: number, ok: (x: number) => boolean): number | undefined {
  if (!ok(lo)) return undefined;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (ok(mid)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** More than any one device could need for this model: every weight, the whole KV cache, generous workspace and overhead. */
function wholeModelBound(input: FitInput): number {
  const s = input.skeleton;
  const weights = s.tensors.reduce((sum, t) => sum + t.shape.reduce((p, x) => p * x, 1) * Math.max(4, bytesPerElement(t.dtype)), 0);
  const a = s.attention;
  const w = input.workload;
  const kv = a ? a.kvElementsPerToken * a.kvLayers * Math.max(4, bytesPerElement(w.kvDtype)) * w.ctx * w.batch : 0;
  const overhead = Math.max(0, ...input.devices.map((d) => d.overhead));
  const workspace = a ? 64 * w.ubatch * w.batch * (a.vocabSize + 8 * a.hiddenSize + 4 * (a.intermediateSize ?? 4 * a.hiddenSize) + 4 * a.numHeads * w.ctx) : 0;
  return Math.ceil(weights + kv + overhead + workspace + GiB);
}

/**
 * Shared pieces of the benchmarks: timing statistics, formatting, and the plan set-up the CLI uses
 * (simulated GPUs → devicesForPlan → planFit, and planAccelerateCompat), with a fixed CPU RAM figure
 * so results do not depend on the machine the bench runs on.
 *
 * Benchmarks report ratios against a baseline measured in the same run, never pass/fail thresholds.
 */
import { resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { simulatedInventory, type Inventory } from '../src/planner/devices/inventory.js';
import { devicesForPlan } from '../src/planner/devices-for-plan.js';
import { planFit } from '../src/planner/fit.js';
import { pinsFor } from '../src/planner/pins.js';
import type { Plan, PlanDeviceSpec, Target, Workload } from '../src/planner/plan.js';
import { kvDefaultDtype } from '../src/reader/summary.js';
import type { Skeleton } from '../src/reader/skeleton.js';
import { planAccelerateCompat } from '../src/cli/plan-compat.js';

export const GiB = 2 ** 30;
export const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
export const CORPUS = resolve(ROOT, 'test/fixtures/real-models');

/** True when this module is the script node was started with (so each bench also runs alone). */
export function isMain(metaUrl: string): boolean {
  const argv1 = process.argv[1];
  return argv1 !== undefined && pathToFileURL(resolve(argv1)).href === metaUrl;
}

export interface Stats {
  runs: number;
  min: number;
  median: number;
  max: number;
}

export function stats(samples: readonly number[]): Stats {
  const s = [...samples].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
  return { runs: s.length, min: s[0]!, median, max: s[s.length - 1]! };
}

/**
 * Times `fn` (ms, performance.now): untimed warm-up runs (at least `warmup`, and until `warmupMs`
 * are spent, at most 200: V8 needs a dozen or more calls before it optimises a hot path), then at
 * least `minRuns` runs and until `minMs` of samples are collected, never more than `maxRuns`.
 */
export async function timeIt(
  fn: () => unknown,
  opts: { minRuns?: number; maxRuns?: number; minMs?: number; warmup?: number; warmupMs?: number } = {},
): Promise<Stats> {
  const { minRuns = 5, maxRuns = 50, minMs = 0, warmup = 1, warmupMs = 0 } = opts;
  const warmStart = performance.now();
  for (let i = 0; i < 200 && (i < warmup || performance.now() - warmStart < warmupMs); i++) await fn();
  const samples: number[] = [];
  let spent = 0;
  while (samples.length < minRuns || (spent < minMs && samples.length < maxRuns)) {
    const t0 = performance.now();
    await fn();
    const dt = performance.now() - t0;
    samples.push(dt);
    spent += dt;
  }
  return stats(samples);
}

export const ms = (x: number): string => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x >= 1 ? x.toFixed(2) : x.toFixed(3));
export const ratio = (a: number, b: number): string => `${(a / b).toFixed(b > 0 && a / b < 10 ? 2 : 1)}×`;
export const gib = (b: number): string => (b / GiB).toFixed(1);
export const group = (n: number): string => n.toLocaleString('en-US');

/** A simulated machine as `--gpu-memory SIZES` builds it, with a fixed amount of available CPU RAM. */
export async function machine(gpuMemory: string, cpuBytes: number): Promise<Inventory> {
  const inv = await simulatedInventory({ gpuMemory });
  return { ...inv, cpu: { totalBytes: cpuBytes, availableBytes: cpuBytes } };
}

/** The workload `vramfit plan` builds from its defaults (--batch 1 --ubatch 512) at `ctx` tokens. */
export function defaultWorkload(s: Skeleton, ctx: number): Workload {
  return { ctx, batch: 1, ubatch: Math.min(512, ctx), kvDtype: kvDefaultDtype(s) };
}

/**
 * What makePlan does for `--strategy fit` without --max-memory: every simulated GPU up to its free
 * memory, the available CPU RAM, no disk; pins for the target.
 */
export function fitDevices(inv: Inventory, target: Target): PlanDeviceSpec[] {
  return devicesForPlan(inv, { target });
}

export function planFitLikeCli(s: Skeleton, inv: Inventory, target: Target, ctx: number, devices = fitDevices(inv, target)): Plan {
  return planFit({ skeleton: s, devices, workload: defaultWorkload(s, ctx), target, pins: pinsFor(s, target) });
}

export type AccelerateStrategy = 'sequential' | 'balanced' | 'balanced_low_0' | 'auto';
export const ACCELERATE_STRATEGIES: readonly AccelerateStrategy[] = ['sequential', 'balanced', 'balanced_low_0', 'auto'];

/** `vramfit plan --compat accelerate --strategy S` on the same machine (no_split classes from the skeleton). */
export function planAccelerateLikeCli(s: Skeleton, inv: Inventory, strategy: AccelerateStrategy): Promise<Plan> {
  return planAccelerateCompat(s, { strategy }, inv);
}

/** Weight bytes a plan puts on GPUs. */
export function gpuWeights(plan: Plan): number {
  return plan.devices.filter((d) => d.kind === 'gpu' || d.kind === 'virtual').reduce((sum, d) => sum + d.weights, 0);
}

/** A markdown table from a header row and body rows. */
export function markdownTable(header: string[], rows: string[][]): string {
  const line = (cells: string[]): string => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

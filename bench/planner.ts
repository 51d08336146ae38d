/**
 * Planner benchmark: how long vramfit's fit strategy takes against accelerate compat (sequential,
 * balanced, balanced_low_0, auto) on the largest models people plan, from the catalog and from the
 * real-model corpus. The baseline is accelerate compat 'auto' on the same skeleton and machine.
 *
 *   node --import tsx bench/planner.ts
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Inventory } from '../src/planner/devices/inventory.js';
import { readModel } from '../src/reader/read-model.js';
import type { Skeleton } from '../src/reader/skeleton.js';
import {
  ACCELERATE_STRATEGIES,
  CORPUS,
  GiB,
  fitDevices,
  gib,
  gpuWeights,
  isMain,
  machine,
  markdownTable,
  ms,
  planAccelerateLikeCli,
  planFitLikeCli,
  ratio,
  timeIt,
  type AccelerateStrategy,
} from './common.js';

export const CATALOG_MODELS = ['bloom-176b', 'falcon-180b', 'mixtral-8x22b'];
export const CORPUS_MODELS = ['bigscience__bloom', 'tiiuae__falcon-180B-chat', 'alpindale__WizardLM-2-8x22B'];

/** Both planners see the same machine; CPU RAM is fixed so the tight set-up offloads the same everywhere. */
export const PLANNER_SETUPS: { name: string; gpuMemory: string; cpu: number }[] = [
  { name: '8×80GB', gpuMemory: '8x80GB', cpu: 512 * GiB },
  { name: '2×24GiB + cpu (offload)', gpuMemory: '2x24GiB', cpu: 512 * GiB },
];

const TARGET = 'transformers';
const CTX = 4096;

export interface PlannerRow {
  model: string;
  setup: string;
  units: string;
  fit: number;
  accelerate: Record<AccelerateStrategy, number>;
  fitGpuGiB: number;
  fitCpuGiB: number;
  autoGpuGiB: number;
}

async function benchOne(model: string, s: Skeleton, setup: (typeof PLANNER_SETUPS)[number], inv: Inventory): Promise<PlannerRow> {
  const devices = fitDevices(inv, TARGET);
  const timing = { minRuns: 5, maxRuns: 40, minMs: 150, warmup: 20, warmupMs: 150 };
  const fitPlan = planFitLikeCli(s, inv, TARGET, CTX, devices);
  const fit = await timeIt(() => planFitLikeCli(s, inv, TARGET, CTX, devices), timing);
  const accelerate = {} as Record<AccelerateStrategy, number>;
  for (const strategy of ACCELERATE_STRATEGIES) {
    accelerate[strategy] = (await timeIt(() => planAccelerateLikeCli(s, inv, strategy), timing)).median;
  }
  const auto = await planAccelerateLikeCli(s, inv, 'auto');
  const cpu = fitPlan.devices.find((d) => d.kind === 'cpu');
  return {
    model,
    setup: setup.name,
    units: `${s.tensors.length} tensors / ${s.modules.length} modules`,
    fit: fit.median,
    accelerate,
    fitGpuGiB: gpuWeights(fitPlan) / GiB,
    fitCpuGiB: (cpu?.weights ?? 0) / GiB,
    autoGpuGiB: gpuWeights(auto) / GiB,
  };
}

export async function runPlannerBench(): Promise<{ rows: PlannerRow[]; skipped: string[] }> {
  const models: [string, string][] = CATALOG_MODELS.map((m) => [m, m]);
  const skipped: string[] = [];
  for (const folder of CORPUS_MODELS) {
    const path = join(CORPUS, folder);
    if (existsSync(path)) models.push([folder, path]);
    else skipped.push(`${folder} (not in ${CORPUS})`);
  }
  const machines = await Promise.all(PLANNER_SETUPS.map((s) => machine(s.gpuMemory, s.cpu)));
  const rows: PlannerRow[] = [];
  for (const [name, where] of models) {
    const s = await readModel(where);
    for (const [i, setup] of PLANNER_SETUPS.entries()) rows.push(await benchOne(name, s, setup, machines[i]!));
  }
  return { rows, skipped };
}

export function renderPlannerBench(r: { rows: PlannerRow[]; skipped: string[] }): string {
  const header = ['model', 'set-up', 'fit ms', ...ACCELERATE_STRATEGIES.map((s) => `acc ${s} ms`), 'fit / acc auto', 'GPU GiB fit / auto', 'fit cpu GiB'];
  const rows = r.rows.map((x) => [
    x.model,
    x.setup,
    ms(x.fit),
    ...ACCELERATE_STRATEGIES.map((s) => ms(x.accelerate[s])),
    ratio(x.fit, x.accelerate.auto),
    `${x.fitGpuGiB.toFixed(1)} / ${x.autoGpuGiB.toFixed(1)}`,
    gib(x.fitCpuGiB * GiB),
  ]);
  const fitTotal = r.rows.reduce((s, x) => s + x.fit, 0);
  const autoTotal = r.rows.reduce((s, x) => s + x.accelerate.auto, 0);
  return [
    `## planner: median ms per plan (target ${TARGET}, ctx ${CTX}; machines via simulatedInventory + devicesForPlan as the CLI builds them)`,
    markdownTable(header, rows),
    `summed over rows: fit ${ms(fitTotal)} ms vs accelerate auto ${ms(autoTotal)} ms → fit/auto ${ratio(fitTotal, autoTotal)}`,
    ...r.skipped.map((s) => `skipped: ${s}`),
  ].join('\n');
}

if (isMain(import.meta.url)) {
  console.log(renderPlannerBench(await runPlannerBench()));
}

/**
 * fit vs accelerate, over every model of the real-model corpus and common machines: weight bytes each
 * puts on the GPUs, and whether accelerate's plan (which budgets weights only) would overflow a GPU
 * once vramfit's memory model for target transformers adds the KV cache of its blocks at 4096 tokens,
 * the compute workspace and the runtime overhead.
 *
 *   node --import tsx bench/compare-accelerate.ts
 */
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Inventory } from '../src/planner/devices/inventory.js';
import { InfeasiblePlanError } from '../src/planner/fit.js';
import { blockWorkspace, dominantDtype, headWorkspace, kvBytesPerLayer, TARGETS } from '../src/planner/memory-model.js';
import { linearize, type PlacementUnit } from '../src/planner/placement-units.js';
import type { Plan } from '../src/planner/plan.js';
import { readModel } from '../src/reader/read-model.js';
import type { Skeleton } from '../src/reader/skeleton.js';
import { summarize } from '../src/reader/summary.js';
import { isVramfitError } from '../src/util/errors.js';
import { CORPUS, GiB, defaultWorkload, fitDevices, gpuWeights, isMain, machine, markdownTable, planAccelerateLikeCli, planFitLikeCli } from './common.js';

const TARGET = 'transformers';
const CTX = 4096;
const CPU = 256 * GiB;
const BIG = 60e9;

export const COMPARE_SETUPS: { name: string; gpuMemory: string; onlyBig?: boolean }[] = [
  { name: '2×24 GiB', gpuMemory: '2x24GiB' },
  { name: '4×80 GB', gpuMemory: '4x80GB' },
  { name: '5 GB + 10 GB', gpuMemory: '5GB,10GB' },
  { name: '8×80 GB', gpuMemory: '8x80GB', onlyBig: true },
];

export interface GpuPeak {
  id: string;
  cap: number;
  weights: number;
  kv: number;
  workspace: number;
  overhead: number;
  /** accelerate's main device: the offloaded layers' KV (part of kv) and the largest offloaded module in transit. */
  hostedKv: number;
  transit: number;
  peak: number;
}

export interface CompareRow {
  model: string;
  setup: string;
  /** Weight bytes on GPUs under fit; undefined when fit found no plan. */
  fitGpu?: number;
  /** fit needed disk offload (not allowed by the set-up) to find a plan: the number is with disk. */
  fitWithDisk?: boolean;
  fitError?: string;
  /** fit's own accounting exceeded a cap (must never happen). */
  fitOverCap?: string;
  accGpu?: number;
  accError?: string;
  tightest?: GpuPeak;
  oom?: boolean;
  /** Would overflow even without the compute workspace term (weights + KV + overhead alone). */
  oomWithoutWorkspace?: boolean;
}

/**
 * Which device each placement unit landed on in an accelerate device map: the entry that is the unit
 * or its nearest ancestor; a unit accelerate split goes to the devices of its parts.
 */
function unitDevices(units: readonly PlacementUnit[], deviceMap: readonly [string, string][]): Map<string, string[]> {
  const byKey = new Map(deviceMap);
  const out = new Map<string, string[]>();
  for (const u of units) {
    let found: string | undefined;
    for (let name = u.name; ;) {
      const d = byKey.get(name);
      if (d !== undefined) {
        found = d;
        break;
      }
      if (name === '') break;
      const cut = name.lastIndexOf('.');
      name = cut < 0 ? '' : name.slice(0, cut);
    }
    if (found !== undefined) out.set(u.name, [found]);
    else out.set(u.name, [...new Set(deviceMap.filter(([k]) => k.startsWith(`${u.name}.`)).map(([, d]) => d))]);
  }
  return out;
}

/** Every GPU of an accelerate plan with what it would really need under vramfit's memory model. */
export function acceleratePeaks(s: Skeleton, plan: Plan, inv: Inventory): GpuPeak[] {
  const a = s.attention;
  const workload = defaultWorkload(s, CTX);
  const profile = TARGETS[TARGET];
  const dtype = dominantDtype(s, workload.dtype);
  // The same per-block KV, workspace and overhead terms planFit charges (fit.ts costsFor / deviceNeed).
  const kvPerBlock = a ? kvBytesPerLayer(a, workload) * (a.kvLayers / Math.max(1, s.blocks?.count ?? a.kvLayers)) : 0;
  const blockWs = a ? blockWorkspace(a, workload, profile, dtype) : 0;
  const headWs = a ? headWorkspace(a, workload, profile, dtype) : 0;
  const units = linearize(s, workload.dtype ? { dtype: workload.dtype } : {});
  const where = unitDevices(units, plan.deviceMap);
  // dispatch_model runs what is mapped to cpu/disk on its main device, the lowest GPU index in the map:
  // their KV cache and activations live there, and one module's weights at a time are copied in.
  const offloaded = units.filter((u) => where.get(u.name)?.some((x) => x === 'cpu' || x === 'disk'));
  const gpusUsed = plan.devices.filter((d) => d.kind === 'gpu' && (d.weights > 0 || units.some((u) => where.get(u.name)?.includes(d.id))));
  const main = offloaded.length > 0 ? gpusUsed.sort((x, y) => Number(x.id) - Number(y.id))[0]?.id : undefined;
  const peaks: GpuPeak[] = [];
  for (const d of plan.devices) {
    if (d.kind !== 'gpu') continue;
    const mine = units.filter((u) => where.get(u.name)?.includes(d.id));
    if (d.weights === 0 && mine.length === 0) continue;
    const run = d.id === main ? [...mine, ...offloaded] : mine;
    const blocks = run.filter((u) => u.block !== undefined).length;
    const hostedKv = d.id === main ? offloaded.filter((u) => u.block !== undefined).length * kvPerBlock : 0;
    const kv = blocks * kvPerBlock;
    const workspace = (blocks > 0 ? blockWs : 0) + (run.some((u) => u.head) ? headWs : 0);
    const transit = d.id === main ? Math.max(0, ...offloaded.map((u) => u.transit)) : 0;
    const overhead = profile.gpuOverhead;
    const gpu = inv.gpus.find((g) => String(g.logicalIndex) === d.id);
    const cap = gpu?.freeBytes ?? d.cap;
    peaks.push({ id: d.id, cap, weights: d.weights, kv, workspace, overhead, hostedKv, transit, peak: d.weights + kv + workspace + overhead + transit });
  }
  return peaks;
}

function fitPlan(s: Skeleton, inv: Inventory): { plan: Plan; withDisk: boolean } {
  const devices = fitDevices(inv, TARGET);
  try {
    return { plan: planFitLikeCli(s, inv, TARGET, CTX, devices), withDisk: false };
  } catch (e) {
    if (!(e instanceof InfeasiblePlanError)) throw e;
    // What --offload-folder with room to spare would give.
    return { plan: planFitLikeCli(s, inv, TARGET, CTX, [...devices, { id: 'disk', kind: 'disk', cap: Infinity, overhead: 0 }]), withDisk: true };
  }
}

const message = (e: unknown): string => (isVramfitError(e) ? `${e.code}: ${e.message}` : e instanceof Error ? e.message : String(e));

export interface CompareResult {
  rows: CompareRow[];
  models: number;
  skipped: string[];
  failed: string[];
}

export async function runCompare(): Promise<CompareResult> {
  const folders = readdirSync(CORPUS)
    .filter((f) => statSync(join(CORPUS, f)).isDirectory())
    .sort();
  const machines = await Promise.all(COMPARE_SETUPS.map((m) => machine(m.gpuMemory, CPU)));
  const rows: CompareRow[] = [];
  const skipped: string[] = [];
  const failed: string[] = [];
  let models = 0;
  for (const folder of folders) {
    let s: Skeleton;
    try {
      s = await readModel(join(CORPUS, folder));
    } catch (e) {
      if (isVramfitError(e) && e.code === 'UNKNOWN_ARCHITECTURE') skipped.push(folder);
      else failed.push(`${folder}: ${message(e)}`);
      continue;
    }
    models++;
    const params = summarize(s).parameters;
    for (const [i, setup] of COMPARE_SETUPS.entries()) {
      if (setup.onlyBig && params < BIG) continue;
      const inv = machines[i]!;
      const row: CompareRow = { model: folder, setup: setup.name };
      try {
        const { plan, withDisk } = fitPlan(s, inv);
        row.fitGpu = gpuWeights(plan);
        if (withDisk) row.fitWithDisk = true;
        const over = plan.devices.find((d) => d.kind === 'gpu' && d.used > d.cap);
        if (over) row.fitOverCap = `GPU ${over.id} ${(over.used / GiB).toFixed(2)} > ${(over.cap / GiB).toFixed(2)} GiB`;
      } catch (e) {
        row.fitError = message(e);
      }
      try {
        const acc = await planAccelerateLikeCli(s, inv, 'auto');
        row.accGpu = gpuWeights(acc);
        const peaks = acceleratePeaks(s, acc, inv);
        const tightest = peaks.reduce<GpuPeak | undefined>((best, p) => (!best || p.peak / p.cap > best.peak / best.cap ? p : best), undefined);
        if (tightest) row.tightest = tightest;
        row.oom = peaks.some((p) => p.peak > p.cap);
        row.oomWithoutWorkspace = peaks.some((p) => p.weights + p.kv + p.overhead + p.transit > p.cap);
      } catch (e) {
        row.accError = message(e);
      }
      rows.push(row);
    }
  }
  return { rows, models, skipped, failed };
}

const g = (b: number): string => (b / GiB).toFixed(2);

export function renderCompare(r: CompareResult): string {
  const header = ['model', 'setup', 'fit GPU GiB', 'accelerate GPU GiB', 'accelerate peak vs cap on its tightest GPU (OOM?)', 'fit ≥ accelerate?'];
  const body = r.rows.map((x) => {
    const fit =
      x.fitGpu === undefined ? `error (${x.fitError})` : `${g(x.fitGpu)}${x.fitWithDisk ? ' †' : ''}${x.fitOverCap ? ` ‼ over cap: ${x.fitOverCap}` : ''}`;
    const acc = x.accGpu === undefined ? `error (${x.accError})` : g(x.accGpu);
    const t = x.tightest;
    const peak = !t
      ? x.accGpu === undefined
        ? '—'
        : 'no GPU used'
      : `GPU ${t.id}: ${g(t.peak)} / ${g(t.cap)} (${((100 * t.peak) / t.cap).toFixed(0)} %; w ${g(t.weights)} + kv ${g(t.kv)}${t.hostedKv ? ` (of which offloaded layers' ${g(t.hostedKv)})` : ''} + ws ${g(t.workspace)} + oh ${g(t.overhead)}${t.transit ? ` + in transit ${g(t.transit)}` : ''})${x.oom ? ' **OOM**' : ''}`;
    const ge = x.fitGpu === undefined || x.accGpu === undefined ? '—' : x.fitGpu >= x.accGpu ? 'yes' : 'no';
    return [x.model, x.setup, fit, acc, peak, ge];
  });
  const both = r.rows.filter((x) => x.fitGpu !== undefined && x.accGpu !== undefined);
  const ge = both.filter((x) => x.fitGpu! >= x.accGpu!).length;
  const oom = r.rows.filter((x) => x.oom).length;
  const oomNoWs = r.rows.filter((x) => x.oomWithoutWorkspace).length;
  const oomWhereLess = r.rows.filter((x) => x.oom && x.fitGpu !== undefined && x.accGpu !== undefined && x.fitGpu < x.accGpu).length;
  const less = both.length - ge;
  const overCap = r.rows.filter((x) => x.fitOverCap).length;
  return [
    `## fit vs accelerate compat 'auto' (target ${TARGET}, ctx ${CTX}, batch 1, ubatch 512; cpu = 256 GiB available; ` +
      `${r.models} corpus models, 8×80 GB only for ≥ 60B params)`,
    markdownTable(header, body),
    '',
    `† fit found no plan within GPUs + 256 GiB CPU (this set-up allows no disk); the number is with an unlimited disk (--offload-folder). accelerate always spills to disk.`,
    `peak = accelerate's weights on that GPU + KV cache of its decoder blocks at ${CTX} tokens (on the main device also of the cpu/disk-mapped ones, which dispatch_model runs there, and their largest module in transit) + compute workspace + ${TARGETS[TARGET].gpuOverhead / 2 ** 20} MiB overhead, as planFit counts them; cap = the GPU's memory.`,
    `summary: fit ≥ accelerate in ${ge} of ${both.length} rows; accelerate's plan would overflow a GPU in ${oom} of ${r.rows.length} rows` +
      ` (${oomNoWs} even without the workspace term; fit puts fewer weight bytes on GPUs in ${less} rows, ${oomWhereLess} of which are rows where accelerate would overflow)` +
      (overCap ? `; ‼ fit exceeded a cap in ${overCap} rows` : ''),
    ...(r.skipped.length ? [`skipped (UNKNOWN_ARCHITECTURE): ${r.skipped.join(', ')}`] : []),
    ...r.failed.map((f) => `failed to read: ${f}`),
  ].join('\n');
}

if (isMain(import.meta.url)) {
  console.log(renderCompare(await runCompare()));
}

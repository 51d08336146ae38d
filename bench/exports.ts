/**
 * Engine exports benchmark: under the same per-GPU caps, how much of them each engine's own setting lets it use
 * (vLLM's and SGLang's one fraction for every GPU against exllamav3's absolute GiB per GPU and vramfit's caps), and
 * what an export costs in planning time against a plain vramfit plan of the same model and caps (the baseline,
 * measured in the same run). Also: planning across hosts (--cluster, which tries the fewest leading hosts first)
 * against the same GPUs on one machine.
 *
 *   node --import tsx bench/exports.ts
 */
import { makePlan, renderPlan, type Format, type PlanFlags } from '../src/cli/plan-command.js';
import type { Plan } from '../src/planner/plan.js';
import { TORCH_CUDA_CONTEXT } from '../src/planner/memory-model.js';
import { GiB, isMain, markdownTable, ms, ratio, timeIt } from './common.js';

const BASE: PlanFlags = { strategy: 'fit', ctx: '4096', batch: '1', ubatch: '512', format: 'table' };

export const EXPORT_SETUPS: { model: string; flags: Partial<PlanFlags>; caps: number[] }[] = [
  { model: 'llama-2-13b', flags: { deviceSpec: '1xRTX-3090,1xRTX-4090', maxMemory: '0=12GiB,1=20GiB' }, caps: [12, 20] },
  { model: 'llama-2-7b', flags: { gpuMemory: '24GiB,24GiB', maxMemory: '0=12GiB,1=10GiB' }, caps: [12, 10] },
  { model: 'qwen2.5-72b', flags: { deviceSpec: '4xA100-80GB', maxMemory: '0=60GiB,1=70GiB,2=75GiB,3=45GiB', ctx: '8192' }, caps: [60, 70, 75, 45] },
];

const FORMATS: Format[] = ['vllm', 'sglang', 'exllamav3'];

export interface ExportRow {
  model: string;
  caps: string;
  /** Share of the summed caps each engine's setting lets it reach; undefined where the export refused. */
  share: Record<string, number | undefined>;
  /** Median ms per plan + export, and the vramfit plan's (the baseline). */
  ms: Record<string, number | undefined>;
  baselineMs: number;
  refused: Record<string, string>;
}

/**
 * Of the caps typed, the bytes each engine's setting lets it reach on each GPU. vLLM and SGLang: their one fraction
 * of the GPU's memory (SGLang's plus what it runs outside the fraction); exllamav3: what each GPU gives its loader
 * plus the CUDA context it keeps outside, and a GPU it does not need keeps its whole cap for whatever asks.
 */
function reachable(p: Plan, format: Format, caps: readonly number[]): number {
  return p.devices
    .filter((d) => d.kind === 'gpu')
    .reduce((n, d) => {
      const cap = caps[Number(d.id)]! * GiB;
      const x = p.exllamav3;
      const at = x?.gpus.indexOf(d.id) ?? -1;
      const budget =
        format === 'vllm'
          ? p.vllm!.gpu_memory_utilization * d.totalBytes!
          : format === 'sglang'
            ? p.sglang!.mem_fraction_static * d.totalBytes! + p.sglang!.dynamic_bytes
            : at >= 0
              ? x!.use_per_device[at]! * GiB + TORCH_CUDA_CONTEXT
              : cap;
      return n + Math.min(cap, budget);
    }, 0);
}

export async function runExportsBench(): Promise<{ rows: ExportRow[]; cluster: { one: number; across: number; hosts: number } }> {
  const timing = { minRuns: 5, maxRuns: 30, minMs: 100, warmup: 5, warmupMs: 100 };
  const rows: ExportRow[] = [];
  for (const setup of EXPORT_SETUPS) {
    const flags = { ...BASE, ...setup.flags };
    const capSum = setup.caps.reduce((n, c) => n + c, 0) * GiB;
    const baseline = await timeIt(() => makePlan(setup.model, flags), timing);
    const row: ExportRow = {
      model: setup.model,
      caps: setup.caps.map((c) => `${c}`).join(' + ') + ' GiB',
      share: {},
      ms: {},
      baselineMs: baseline.median,
      refused: {},
    };
    for (const format of FORMATS) {
      const f = { ...flags, format };
      try {
        const { plan, skeleton } = await makePlan(setup.model, f);
        renderPlan(plan, skeleton, setup.model, format);
        row.share[format] = reachable(plan, format, setup.caps) / capSum;
        row.ms[format] = (
          await timeIt(async () => {
            const r = await makePlan(setup.model, f);
            renderPlan(r.plan, r.skeleton, setup.model, format);
          }, timing)
        ).median;
      } catch (e) {
        row.refused[format] = (e as Error).message.split('\n')[0]!;
      }
    }
    rows.push(row);
  }
  // Across hosts: three hosts of 2, 2 and 1 GPUs against the same five GPUs on one machine.
  const cards = '2xRTX-4090,2xRTX-4090,1xA100-80GB';
  const caps = '0=20GiB,1=20GiB,2=20GiB,3=20GiB,4=70GiB';
  const one = await timeIt(() => makePlan('llama-2-70b', { ...BASE, deviceSpec: cards, maxMemory: caps }), timing);
  const across = await timeIt(
    () => makePlan('llama-2-70b', { ...BASE, cluster: 'a=2xRTX-4090,b@10.0.0.2=2xRTX-4090,c@10.0.0.3=1xA100-80GB', maxMemory: caps }),
    timing,
  );
  return { rows, cluster: { one: one.median, across: across.median, hosts: 3 } };
}

export function renderExportsBench(r: Awaited<ReturnType<typeof runExportsBench>>): string {
  const pct = (x: number | undefined): string => (x === undefined ? 'refused' : `${(x * 100).toFixed(1)} %`);
  const header = ['model', 'caps', ...FORMATS.map((f) => `${f} share of caps`), ...FORMATS.map((f) => `${f} / vramfit plan time`)];
  const rows = r.rows.map((x) => [
    x.model,
    x.caps,
    ...FORMATS.map((f) => pct(x.share[f])),
    ...FORMATS.map((f) => (x.ms[f] === undefined ? '—' : `${ratio(x.ms[f]!, x.baselineMs)} (${ms(x.ms[f]!)} ms)`)),
  ]);
  return [
    '## exports: the share of the per-GPU caps each engine’s own setting lets it reach, and plan + export time against a vramfit plan of the same caps (baseline, same run)',
    markdownTable(header, rows),
    ...r.rows.flatMap((x) => Object.entries(x.refused).map(([f, why]) => `refused: ${x.model} ${f}: ${why}`)),
    `--cluster over ${r.cluster.hosts} hosts / the same GPUs on one machine (plan time): ${ratio(r.cluster.across, r.cluster.one)} (${ms(r.cluster.across)} ms vs ${ms(r.cluster.one)} ms, llama-2-70b)`,
  ].join('\n');
}

if (isMain(import.meta.url)) {
  console.log(renderExportsBench(await runExportsBench()));
}

/**
 * GPU benchmark: the same F16 Llama-architecture checkpoint (random weights) on the CPU (virtual:1),
 * on one GPU and split over two, with every device's memory: its cap, the plan's prediction and the
 * backend allowance on top, the capped allocator's peak, and the device's own figure where the backend
 * reports its use. Greedy tokens must agree across set-ups. Every speed is a ratio to a baseline
 * measured in the same run (one GPU against the CPU; two GPUs against one).
 *
 * With no GPU in sight it runs on Mesa's lavapipe (a CPU implementation of Vulkan, two devices through
 * GGML_VK_VISIBLE_DEVICES=0,0) in a child process, with a smaller model, and says so: those figures
 * show the pipeline and the memory accounting, not GPU speed.
 *
 *   node --import tsx bench/gpu.ts [--runs N]
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEMO_CONFIG, writeDemoCheckpoint } from '../src/engine/demo-checkpoint.js';
import { listEngineGpus } from '../src/engine/gpus.js';
import { loadModel } from '../src/engine/load.js';
import type { DeviceReport } from '../src/engine/model.js';
import { formatBytes } from '../src/planner/units.js';
import { BENCH_CONFIG, engineRun, promptIds } from './engine.js';
import { isMain, markdownTable, ratio, stats } from './common.js';

const EMULATED = 'VRAMFIT_BENCH_EMULATED';
/** lavapipe runs every kernel on the CPU: a model a tenth the size keeps the run to a minute or two. */
const EMULATED_CONFIG: Record<string, unknown> = {
  ...DEMO_CONFIG,
  hidden_size: 512,
  intermediate_size: 1408,
  num_hidden_layers: 8,
  vocab_size: 8000,
  torch_dtype: 'float16',
};
const PROMPT = 64;
const DECODE = 32;
const CTX = 256;

export interface GpuSetup {
  devices: string;
  prefillTokS: number;
  decodeTokS: number;
  tokens: number[];
  report: DeviceReport[];
}

export interface GpuBenchResult {
  emulated: boolean;
  gpus: string[];
  params: string;
  setups: GpuSetup[];
  skipped?: string;
}

async function measure(dir: string, devices: string, runs: number): Promise<GpuSetup> {
  const model = await loadModel(dir, { devices, ctx: CTX, ubatch: PROMPT, kvDtype: 'float16', threads: 1 });
  try {
    const prompt = promptIds(model.hyper.vocab, PROMPT);
    engineRun(model, prompt, 2); // warm-up: a backend compiles each kernel shape on first use
    const samples = Array.from({ length: runs }, () => engineRun(model, prompt, DECODE));
    return {
      devices,
      prefillTokS: (PROMPT * 1000) / stats(samples.map((s) => s.prefillMs)).median,
      decodeTokS: (DECODE * 1000) / stats(samples.map((s) => s.decodeMs)).median,
      tokens: samples[0]!.tokens,
      report: model.report(),
    };
  } finally {
    model.dispose();
  }
}

export async function runGpuBench(runs = 3): Promise<GpuBenchResult> {
  const emulated = process.env[EMULATED] === '1';
  const gpus = listEngineGpus().gpus;
  if (gpus.length === 0) {
    if (emulated)
      return {
        emulated,
        gpus: [],
        params: '',
        setups: [],
        skipped: 'no Vulkan device, even emulated (install mesa-vulkan-drivers and the pinned Vulkan package)',
      };
    // Re-run in a child that sees the two emulated devices (the variable must be set before ggml-vulkan loads).
    const r = spawnSync(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--json', '--runs', String(runs)], {
      encoding: 'utf8',
      env: { ...process.env, [EMULATED]: '1', GGML_VK_VISIBLE_DEVICES: '0,0' },
      timeout: 900_000,
    });
    const line = r.stdout.split('\n').find((l) => l.startsWith('@@GPU@@'));
    if (!line)
      return { emulated: true, gpus: [], params: '', setups: [], skipped: `the emulated run failed: ${r.stderr.trim().split('\n').slice(-3).join(' ')}` };
    return JSON.parse(line.slice('@@GPU@@'.length)) as GpuBenchResult;
  }
  const config = emulated ? EMULATED_CONFIG : { ...BENCH_CONFIG, torch_dtype: 'float16' };
  const dir = mkdtempSync(join(tmpdir(), 'vramfit-gpu-bench-'));
  try {
    writeDemoCheckpoint(dir, config, 7, 'float16');
    const h = config as { hidden_size: number; num_hidden_layers: number; vocab_size: number; intermediate_size: number };
    const params = `hidden ${h.hidden_size}, ${h.num_hidden_layers} layers, FFN ${h.intermediate_size}, vocab ${h.vocab_size}, F16, F16 KV, ctx ${CTX}`;
    const setups = [await measure(dir, 'virtual:1', runs), await measure(dir, 'gpu:0', runs)];
    if (gpus.length > 1) setups.push(await measure(dir, 'gpu:0,1', runs));
    return { emulated, gpus: gpus.map((g) => `${g.id} ${g.name} (${g.description})`), params, setups };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function renderGpuBench(r: GpuBenchResult): string {
  const out = ['## GPU devices'];
  if (r.skipped) return [...out, `skipped: ${r.skipped}`].join('\n');
  out.push(`${r.emulated ? 'EMULATED (Mesa lavapipe: Vulkan on the CPU; speeds show the pipeline, not a GPU) — ' : ''}GPUs: ${r.gpus.join(', ')}`);
  out.push(`model: ${r.params}; prefill ${PROMPT} tokens, greedy decode ${DECODE}, 1 CPU thread for CPU work`);
  const [cpu, one, two] = r.setups as [GpuSetup, GpuSetup, GpuSetup | undefined];
  const rows = r.setups.map((s) => [
    s.devices,
    s.prefillTokS.toFixed(1),
    s.decodeTokS.toFixed(1),
    s === cpu ? '—' : ratio(s.decodeTokS, s === two ? one.decodeTokS : cpu.decodeTokS),
    s === cpu ? '—' : s === two ? 'gpu:0' : 'virtual:1 (CPU)',
    s.tokens.join() === cpu.tokens.join() ? 'same' : 'DIFFERENT',
  ]);
  out.push(markdownTable(['devices', 'prefill tok/s', 'decode tok/s', 'decode ratio', 'against', 'greedy tokens vs CPU'], rows));
  const last = two ?? one;
  out.push('', `memory per device (${last.devices}):`);
  out.push(
    markdownTable(
      ['device', 'cap', 'predicted (+ backend allowance)', 'allocator peak', 'device-measured'],
      last.report.map((d) => [
        `${d.id} ${d.name}`,
        formatBytes(d.cap),
        `${formatBytes(d.predicted)} (+ ${formatBytes(d.overhead)})`,
        formatBytes(d.measured),
        d.deviceMeasured === null ? 'not reported by the backend' : formatBytes(d.deviceMeasured),
      ]),
    ),
  );
  return out.join('\n');
}

if (isMain(import.meta.url)) {
  const i = process.argv.indexOf('--runs');
  const result = await runGpuBench(i > 0 ? Number(process.argv[i + 1]) : 3);
  if (process.argv.includes('--json')) console.log(`@@GPU@@${JSON.stringify(result)}`);
  else console.log(renderGpuBench(result));
}

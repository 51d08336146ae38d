/** What `vramfit run` and `vramfit demo` do; loaded only when one of them runs (it pulls in the engine). */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import cliProgress from 'cli-progress';
import { writeDemoCheckpoint } from '../engine/demo-checkpoint.js';
import { generate, type GenerationResult } from '../engine/generate.js';
import { type DeviceReport } from '../engine/model.js';
import { loadModel } from '../engine/load.js';
import type { SamplerOptions } from '../engine/text/sampling.js';
import { hasModelTokenizer, loadModelTokenizer } from '../engine/text/model-tokenizer.js';
import type { TextTokenizer } from '../engine/text/tokenizer.js';
import { renderPlanTable } from '../planner/export/table.js';
import { formatBytes } from '../planner/units.js';
import { InputError } from '../util/errors.js';

const { SingleBar, Presets } = cliProgress;
import type { Io } from './main.js';
import { intFlag, loadOptionsFrom, type LoadFlags } from './load-flags.js';

export interface RunFlags extends LoadFlags {
  prompt?: string;
  inputIds?: string;
  chat?: boolean;
  maxNewTokens: string;
  greedy?: boolean;
  temperature?: string;
  topK?: string;
  topP?: string;
  seed?: string;
  stop?: string[];
  json?: boolean;
  logits?: boolean;
}

const int = intFlag;

function num(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n)) throw new InputError(flag, `expected a number, got ${JSON.stringify(value)}`);
  return n;
}

function parseIds(value: string): number[] {
  const ids = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map(Number);
  if (ids.length === 0 || ids.some((n) => !Number.isSafeInteger(n) || n < 0))
    throw new InputError('--input-ids', `expected comma-separated token ids, got ${JSON.stringify(value)}`);
  return ids;
}

function samplingFrom(f: RunFlags): SamplerOptions {
  const s: SamplerOptions = {};
  const temperature = num(f.temperature, '--temperature');
  const topK = int(f.topK, '--top-k', 1);
  const topP = num(f.topP, '--top-p');
  const seed = int(f.seed, '--seed', 0);
  // Greedy unless a sampling parameter is given, so a plain run is reproducible.
  const sampling = temperature !== undefined || topK !== undefined || topP !== undefined;
  if (f.greedy && sampling) throw new InputError('--greedy', 'cannot be combined with --temperature, --top-k or --top-p');
  if (!sampling) s.greedy = true;
  if (temperature !== undefined) s.temperature = temperature;
  if (topK !== undefined) s.topK = topK;
  if (topP !== undefined) s.topP = topP;
  if (seed !== undefined) s.seed = seed;
  return s;
}

/**
 * The per-device report: the allocator's figure is what vramfit's own buffers held; the device's own
 * figure (GPUs whose backend reports its use) counts everything the backend holds there, and is what
 * the cap is promised against.
 */
export function renderReport(devices: DeviceReport[], r: GenerationResult): string {
  const rows = [['device', 'cap', 'predicted peak', 'measured peak (allocator)', 'device-measured', 'moved in']];
  for (const d of devices) {
    const cap = d.cap >= Number.MAX_SAFE_INTEGER ? 'uncapped' : formatBytes(d.cap);
    const err = d.predicted > 0 ? ` (${(((d.measured - d.predicted) / d.predicted) * 100).toFixed(2)} %)` : '';
    const predicted = formatBytes(d.predicted) + (d.overhead > 0 ? ` + ${formatBytes(d.overhead)} backend` : '');
    const own = d.deviceMeasured === null ? (d.name.startsWith('CPU') || d.id === 'disk' ? '-' : 'not reported') : formatBytes(d.deviceMeasured);
    rows.push([d.name === 'CPU' || d.id === 'disk' ? d.id : `${d.id} ${d.name}`, cap, predicted, formatBytes(d.measured) + err, own, formatBytes(d.bytesIn)]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  const lines = rows.map((row) =>
    row
      .map((cell, c) => cell.padEnd(widths[c]!))
      .join('  ')
      .trimEnd(),
  );
  const pps = r.promptSeconds > 0 ? r.promptIds.length / r.promptSeconds : 0;
  const gps = r.generateSeconds > 0 ? r.generatedIds.length / r.generateSeconds : 0;
  lines.push(
    `prompt: ${r.promptIds.length} tokens at ${pps.toFixed(1)} tokens/s · generation: ${r.generatedIds.length} tokens at ${gps.toFixed(1)} tokens/s · stop: ${typeof r.stop === 'string' ? r.stop : r.stop.kind}`,
  );
  return lines.join('\n');
}

export async function runModel(model: string, f: RunFlags, io: Io, tty: boolean): Promise<void> {
  if ((f.prompt === undefined) === (f.inputIds === undefined)) throw new InputError('--prompt', 'give exactly one of --prompt or --input-ids');
  if (f.chat && f.inputIds !== undefined)
    throw new InputError('--chat', 'wraps --prompt in the chat template; --input-ids are used as given, so give one or the other');
  const maxNewTokens = int(f.maxNewTokens, '--max-new-tokens', 0)!;
  const sampling = samplingFrom(f);
  const load = loadOptionsFrom(f);
  const bar =
    tty && !f.json
      ? new SingleBar(
          { format: 'loading [{bar}] {percentage}% {done} / {all}', stream: process.stderr, hideCursor: true, clearOnComplete: true },
          Presets.shades_classic,
        )
      : undefined;
  const progress = bar
    ? (done: number, total: number) => {
        if (!bar.isActive) bar.start(total, 0, { done: formatBytes(0), all: formatBytes(total) });
        bar.update(done, { done: formatBytes(done), all: formatBytes(total) });
      }
    : undefined;
  const loaded = await loadModel(model, { ...load, ...(progress ? { onProgress: progress } : {}) });
  bar?.stop();
  try {
    if (f.showPlan) io.stderr(`${renderPlanTable(loaded.plan)}\n\n`);
    let tokenizer: TextTokenizer | undefined;
    let promptIds: number[];
    if (f.prompt !== undefined) {
      tokenizer = loadModelTokenizer(loaded);
      promptIds = f.chat ? tokenizer.encodeChat([{ role: 'user', content: f.prompt }], { addGenerationPrompt: true }) : tokenizer.encode(f.prompt);
    } else {
      promptIds = parseIds(f.inputIds!);
      if (hasModelTokenizer(loaded)) tokenizer = loadModelTokenizer(loaded);
    }
    if (promptIds.length === 0) throw new InputError('--prompt', 'the prompt encodes to no tokens');
    const stream = generate(loaded, promptIds, {
      maxNewTokens,
      sampling,
      eosTokenIds: tokenizer?.eosTokenIds ?? [],
      stopStrings: f.stop ?? [],
      keepLogits: f.logits === true,
      ...(tokenizer ? { decoder: tokenizer.createStreamDecoder({ skipSpecialTokens: true }) } : {}),
    });
    let printed = '';
    let step = await stream.next();
    while (!step.done) {
      if (!f.json && tokenizer && step.value.text) {
        io.stdout(step.value.text);
        printed += step.value.text;
      }
      step = await stream.next();
    }
    const result = step.value;
    const devices = loaded.report();
    if (f.json) {
      const out: Record<string, unknown> = {
        prompt_ids: result.promptIds,
        generated_ids: result.generatedIds,
        text: tokenizer ? result.text : null,
        stop: typeof result.stop === 'string' ? result.stop : result.stop.kind,
        devices: devices.map((d) => ({
          id: d.id,
          name: d.name,
          cap: d.cap >= Number.MAX_SAFE_INTEGER ? null : d.cap,
          predicted_peak: d.predicted,
          backend_overhead: d.overhead,
          measured_peak: d.measured,
          device_measured_peak: d.deviceMeasured,
          breakdown: d.breakdown,
          bytes_moved_in: d.bytesIn,
        })),
        prompt_tokens_per_second: result.promptSeconds > 0 ? result.promptIds.length / result.promptSeconds : null,
        generation_tokens_per_second: result.generateSeconds > 0 ? result.generatedIds.length / result.generateSeconds : null,
      };
      if (f.logits) {
        out['prompt_logits'] = result.promptLogits!.map((r) => Array.from(r));
        out['step_logits'] = result.stepLogits!.map((r) => Array.from(r));
      }
      io.stdout(`${JSON.stringify(out)}\n`);
      return;
    }
    if (tokenizer) {
      if (result.text.length > printed.length) io.stdout(result.text.slice(printed.length));
      io.stdout('\n');
    } else {
      io.stdout(`${result.generatedIds.join(',')}\n`);
    }
    io.stderr(`\n${renderReport(devices, result)}\n`);
  } finally {
    loaded.dispose();
  }
}

/** `vramfit demo`: a random-weight checkpoint in a temp folder, run over capped virtual devices. */
export async function runDemo(opts: { devices: string; keep?: boolean }, io: Io): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vramfit-demo-'));
  // Ctrl-C or a kill would end the process past the `finally`: remove the checkpoint first, then end
  // as the signal would have (128 + its number).
  const onSignal = (signal: NodeJS.Signals): void => {
    if (!opts.keep) rmSync(dir, { recursive: true, force: true });
    process.exit(128 + (signal === 'SIGINT' ? 2 : 15));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    writeDemoCheckpoint(dir);
    const n = Number(/^virtual:(\d+)$/.exec(opts.devices)?.[1] ?? NaN);
    if (!Number.isSafeInteger(n) || n < 1 || n > 16)
      throw new InputError('--devices', `expected virtual:N with N from 1 to 16, got ${JSON.stringify(opts.devices)}`);
    // Caps that force a real split: each device gets a bit more than its share of the model.
    const caps = Array.from({ length: n }, (_, i) => `${i}=${Math.ceil(40 / n + 8)}MiB`).join(',');
    io.stdout(`demo checkpoint: ${dir} (random weights, Llama architecture, ~28 MB)\ncaps: ${caps}\n\n`);
    await runModel(
      dir,
      { inputIds: '1,2,3,4,5,6,7,8', maxNewTokens: '16', devices: opts.devices, maxMemory: caps, ctx: '256', ubatch: '64', showPlan: true },
      { stdout: io.stdout, stderr: io.stdout },
      false,
    );
    if (opts.keep) io.stdout(`kept ${dir}\n`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (!opts.keep) rmSync(dir, { recursive: true, force: true });
  }
}

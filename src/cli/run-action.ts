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
import { createChatFormat, describeDefaults, mergeStops, readModelDefaults, type GenerationDefaults } from '../engine/text/chat-format.js';
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
  /** Default: the Ollama model's num_predict, else 64. */
  maxNewTokens?: string;
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

/**
 * Sampling from the flags, with the model's defaults (an Ollama model's params) filling in each value the flags leave
 * out, as if it had been given as a flag; --greedy overrides them all. A model temperature of 0 is Ollama's greedy,
 * unless the user asks to sample with --top-k/--top-p (then the sampler's default temperature applies).
 */
export function samplingFrom(f: RunFlags, d: GenerationDefaults = {}): SamplerOptions {
  const s: SamplerOptions = {};
  const temperature = num(f.temperature, '--temperature');
  const topK = int(f.topK, '--top-k', 1);
  const topP = num(f.topP, '--top-p');
  const seed = int(f.seed, '--seed', 0) ?? d.seed;
  const flagged = temperature !== undefined || topK !== undefined || topP !== undefined;
  if (f.greedy && flagged) throw new InputError('--greedy', 'cannot be combined with --temperature, --top-k or --top-p');
  if (seed !== undefined) s.seed = seed;
  if (f.greedy || (temperature === undefined && d.temperature === 0 && !flagged)) return { ...s, greedy: true };
  const t = temperature ?? (d.temperature === 0 ? undefined : d.temperature);
  const k = topK ?? d.topK;
  const p = topP ?? d.topP;
  // Greedy unless a sampling parameter is given, so a plain run is reproducible.
  const sampling = t !== undefined || k !== undefined || p !== undefined;
  if (!sampling) s.greedy = true;
  if (t !== undefined) s.temperature = t;
  if (k !== undefined) s.topK = k;
  if (p !== undefined) s.topP = p;
  return s;
}

/** --max-new-tokens, else the model's num_predict (unlimited: until the context is full), else 64. */
function maxNewTokensFrom(f: RunFlags, d: GenerationDefaults): number {
  if (f.maxNewTokens !== undefined) return int(f.maxNewTokens, '--max-new-tokens', 0)!;
  if (d.numPredict === 'unlimited') return Number.MAX_SAFE_INTEGER;
  return d.numPredict ?? 64;
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
  // The flags are checked before the model is looked up, so a bad flag is the error whatever the model.
  if (f.maxNewTokens !== undefined) int(f.maxNewTokens, '--max-new-tokens', 0);
  samplingFrom(f);
  const load = loadOptionsFrom(f);
  // An Ollama model's params: its num_ctx must be known before the plan is made.
  const md = await readModelDefaults(model);
  const maxNewTokens = maxNewTokensFrom(f, md.defaults);
  const sampling = samplingFrom(f, md.defaults);
  const stopStrings = mergeStops(f.stop ?? [], md.defaults);
  if (load.ctx === undefined && md.ctx !== undefined) {
    load.ctx = md.ctx;
    for (const note of md.notes) io.stderr(`note: ${note}\n`);
  }
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
    let chatTemplate: string | undefined;
    if (f.prompt !== undefined) {
      tokenizer = loadModelTokenizer(loaded);
      if (f.chat) {
        const format = createChatFormat(tokenizer, md.store);
        for (const w of format.warnings) io.stderr(`warning: ${w}\n`);
        chatTemplate = format.description;
        promptIds = format.encodeChat([{ role: 'user', content: f.prompt }], { addGenerationPrompt: true });
      } else promptIds = tokenizer.encode(f.prompt);
    } else {
      promptIds = parseIds(f.inputIds!);
      if (hasModelTokenizer(loaded)) tokenizer = loadModelTokenizer(loaded);
    }
    if (promptIds.length === 0) throw new InputError('--prompt', 'the prompt encodes to no tokens');
    const stream = generate(loaded, promptIds, {
      maxNewTokens,
      sampling,
      eosTokenIds: tokenizer?.eosTokenIds ?? [],
      stopStrings,
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
        ...(chatTemplate !== undefined ? { chat_template: chatTemplate } : {}),
        ...(md.store?.kind === 'ollama' ? { model_defaults: describeDefaults(md) } : {}),
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
    if (chatTemplate !== undefined) io.stderr(`chat template: ${chatTemplate}\n`);
    const defaults = describeDefaults(md);
    if (defaults) io.stderr(`model params (${md.store?.name ?? model}; flags override): ${defaults}\n`);
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

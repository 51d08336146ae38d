/** What `vramfit eval` does; loaded only when it runs (it pulls in the engine). */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { loadModel, type LoadOptions } from '../engine/load.js';
import type { LoadedModel } from '../engine/model.js';
import { chunkStream, compareModels, scoredPerChunk, type CompareResult } from '../engine/eval/compare.js';
import { DEFAULT_EVAL_TEXT } from '../engine/eval/default-text.js';
import { hasModelTokenizer, loadModelTokenizer } from '../engine/text/model-tokenizer.js';
import type { TextTokenizer } from '../engine/text/tokenizer.js';
import { renderPlanTable } from '../planner/export/table.js';
import { readModel } from '../reader/read-model.js';
import { InputError } from '../util/errors.js';
import { intFlag, loadOptionsFrom, type LoadFlags } from './load-flags.js';
import type { Io } from './main.js';
import { tokenizerSourceFor } from './tokenize-command.js';

export interface EvalFlags extends LoadFlags {
  compareTo?: string;
  text?: string;
  file?: string;
  inputIds?: string;
  chunks?: string;
  json?: boolean;
}

/** Default tokens per chunk, llama-perplexity's default context. */
export const DEFAULT_EVAL_CTX = 512;

type StreamSource = 'built-in' | 'text' | 'file' | 'input-ids';

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

/** A model's tokenizer, when it has one (tokenizer files beside it or a GGUF's metadata); read from headers alone. */
async function tokenizerOf(model: string): Promise<TextTokenizer | undefined> {
  const src = await tokenizerSourceFor(model).catch(() => undefined);
  return src && hasModelTokenizer(src) ? loadModelTokenizer(src) : undefined;
}

/** Whether the tokenizer puts BOS in front of a text by default (then each chunk starts with BOS, as llama-perplexity does). */
function addsBos(t: TextTokenizer): boolean {
  if (t.bosTokenId === null) return false;
  return t.encode('a')[0] === t.bosTokenId && t.encode('a', { addSpecialTokens: false })[0] !== t.bosTokenId;
}

/** The vocabulary size a model's headers give (0 when they do not say). */
async function headerVocab(model: string): Promise<number> {
  return (await readModel(model)).attention?.vocabSize ?? 0;
}

function modelChoices(o: LoadOptions): string {
  const parts: string[] = [];
  if (o.quantize !== undefined) parts.push(`--quantize ${o.quantize}`);
  if (o.dtype !== undefined) parts.push(`--dtype ${o.dtype}`);
  if (o.kvDtype !== undefined) parts.push(`--kv-dtype ${o.kvDtype}`);
  return parts.length > 0 ? parts.join(' ') : 'as stored';
}

/** KL figures: fixed decimals, or three significant digits once they are small. */
function kl(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  if (x === 0) return '0';
  return Math.abs(x) < 1e-3 ? x.toExponential(3) : x.toFixed(6);
}

export function renderEval(r: EvalReport): string {
  const rows = [
    ['', 'BASE', 'MODEL'],
    ['perplexity', r.result.perplexity.base.toFixed(4), r.result.perplexity.model.toFixed(4)],
    ['seconds', r.result.seconds.base.toFixed(2), r.result.seconds.model.toFixed(2)],
  ];
  const w = [0, 1, 2].map((c) => Math.max(...rows.map((row) => row[c]!.length)));
  const label = 'top-1 agreement'.length;
  const width = Math.max(w[0]!, label);
  const k = r.result.kl;
  return [
    `MODEL ${r.model} (${r.modelChoices}) against BASE ${r.base} (as stored)`,
    `stream: ${r.tokens} tokens (${r.source === 'built-in' ? 'built-in English text' : r.source === 'input-ids' ? '--input-ids' : `--${r.source}`}) · ${r.chunks} chunk${r.chunks === 1 ? '' : 's'} of ${r.ctx} tokens · ${r.result.positions} positions scored (the second half of each chunk)`,
    '',
    ...rows.map((row) => [row[0]!.padEnd(width), row[1]!.padStart(w[1]!), row[2]!.padStart(w[2]!)].join('  ').trimEnd()),
    `${'KL divergence'.padEnd(width)}  mean ${kl(k.mean)} ± ${kl(k.meanStderr)} · median ${kl(k.median)} · p99 ${kl(k.p99)} · max ${kl(k.max)}`,
    `${'top-1 agreement'.padEnd(width)}  ${r.result.top1.percent.toFixed(2)} % (${r.result.top1.same} of ${r.result.positions} positions)`,
  ].join('\n');
}

export interface EvalReport {
  model: string;
  base: string;
  modelChoices: string;
  source: StreamSource;
  tokens: number;
  ctx: number;
  chunks: number;
  bosPerChunk: boolean;
  result: CompareResult;
}

export function evalJson(r: EvalReport, load: LoadOptions): Record<string, unknown> {
  const x = r.result;
  return {
    model: r.model,
    base: r.base,
    model_options: { quantize: load.quantize ?? null, dtype: load.dtype ?? null, kv_dtype: load.kvDtype ?? null },
    stream: { source: r.source, tokens: r.tokens, bos_per_chunk: r.bosPerChunk },
    ctx: r.ctx,
    chunks: r.chunks,
    scored_per_chunk: scoredPerChunk(r.ctx),
    positions: x.positions,
    vocab: x.vocab,
    kl_divergence: { mean: x.kl.mean, mean_stderr: x.kl.meanStderr, median: x.kl.median, p99: x.kl.p99, max: x.kl.max },
    top1_agreement_percent: x.top1.percent,
    top1_same: x.top1.same,
    perplexity: { base: x.perplexity.base, model: x.perplexity.model },
    seconds: x.seconds,
    base_logits: { kept: x.baseLogits, bytes: x.baseLogitsBytes },
  };
}

export async function evalModel(model: string, f: EvalFlags, io: Io, tty: boolean): Promise<void> {
  // Every flag is checked before a model is read.
  const base = f.compareTo;
  if (base === undefined || base === '') throw new InputError('--compare-to', 'give the reference model MODEL is measured against: --compare-to BASE');
  const given = [f.text !== undefined && '--text', f.file !== undefined && '--file', f.inputIds !== undefined && '--input-ids'].filter(Boolean);
  if (given.length > 1) throw new InputError(given[0] as string, `give at most one of --text, --file or --input-ids, not ${given.join(' and ')}`);
  const ctxFlag = intFlag(f.ctx, '--ctx', 4);
  const maxChunks = intFlag(f.chunks, '--chunks', 1);
  const { ctx: _ctx, ...modelLoad } = loadOptionsFrom(f);
  const shared: LoadOptions = {
    ...(modelLoad.devices !== undefined ? { devices: modelLoad.devices } : {}),
    ...(modelLoad.backend !== undefined ? { backend: modelLoad.backend } : {}),
    ...(modelLoad.maxMemory !== undefined ? { maxMemory: modelLoad.maxMemory } : {}),
    ...(modelLoad.ubatch !== undefined ? { ubatch: modelLoad.ubatch } : {}),
    ...(modelLoad.threads !== undefined ? { threads: modelLoad.threads } : {}),
  };
  if (f.file !== undefined && (!existsSync(f.file) || !statSync(f.file).isFile()))
    throw new InputError('--file', `${f.file} is not a readable file`, 'NOT_FOUND');
  const parsedIds = f.inputIds !== undefined ? parseIds(f.inputIds) : undefined;

  // One vocabulary, checked from the headers before anything runs (and again from the loaded models).
  const [modelVocab, baseVocab] = await Promise.all([headerVocab(model), headerVocab(base)]);
  if (modelVocab > 0 && baseVocab > 0 && modelVocab !== baseVocab)
    throw new InputError(
      '--compare-to',
      `MODEL ${model} has a vocabulary of ${modelVocab} tokens and BASE ${base} one of ${baseVocab}; KL divergence needs the same vocabulary`,
    );

  const source: StreamSource = parsedIds ? 'input-ids' : f.text !== undefined ? 'text' : f.file !== undefined ? 'file' : 'built-in';
  const streamFlag = source === 'built-in' ? '--compare-to' : `--${source}`;
  let ids: number[];
  let bos: number | null = null;
  if (parsedIds) ids = parsedIds;
  else {
    const text = f.text ?? (f.file !== undefined ? readFileSync(f.file, 'utf8') : DEFAULT_EVAL_TEXT);
    const tokenizer = await tokenizerOf(base);
    if (!tokenizer)
      throw new InputError(
        streamFlag,
        `BASE ${base} has no tokenizer (tokenizer.json or tokenizer.model beside it, or a GGUF's metadata) to read the text with; give the stream as --input-ids`,
      );
    ids = tokenizer.encode(text, { addSpecialTokens: false });
    if (addsBos(tokenizer)) bos = tokenizer.bosTokenId;
    const modelTokenizer = await tokenizerOf(model);
    if (modelTokenizer) {
      const other = modelTokenizer.encode(text, { addSpecialTokens: false });
      if (other.length !== ids.length || other.some((id, i) => id !== ids[i]))
        io.stderr(`warning: MODEL's tokenizer reads the text as ${other.length} tokens, BASE's as ${ids.length}; both models are fed BASE's ids\n`);
    }
  }
  if (ids.length < 4) throw new InputError(streamFlag, `the stream is ${ids.length} token${ids.length === 1 ? '' : 's'}; eval needs at least 4`);
  let ctx = ctxFlag;
  if (ctx === undefined) {
    const skeleton = await readModel(base);
    const limit = skeleton.attention?.maxPositionEmbeddings;
    ctx = Math.min(DEFAULT_EVAL_CTX, ids.length, limit !== undefined && limit >= 4 ? limit : Infinity);
  } else if (ctx > ids.length)
    throw new InputError('--ctx', `${ctx} tokens per chunk, but the stream is only ${ids.length} tokens; give a smaller --ctx or a longer text`);
  const chunks = chunkStream(ids, ctx, { ...(maxChunks !== undefined ? { maxChunks } : {}), bos });

  const loaded = async (name: string, which: string, opts: LoadOptions): Promise<LoadedModel> => {
    const m = await loadModel(name, opts);
    if (f.showPlan) io.stderr(`${which} ${name}:\n${renderPlanTable(m.plan)}\n\n`);
    return m;
  };
  const progress =
    tty && !f.json
      ? (which: 'base' | 'model', done: number) => {
          io.stderr(`\r${which === 'base' ? 'BASE' : 'MODEL'}: chunk ${done} of ${chunks.length}`);
          if (done === chunks.length) io.stderr('\n');
        }
      : undefined;
  const result = await compareModels({
    loadBase: () => loaded(base, 'BASE', { ...shared, ctx }),
    loadModel: () => loaded(model, 'MODEL', { ...modelLoad, ctx }),
    baseName: base,
    modelName: model,
    chunks,
    ...(parsedIds ? { idsFlag: '--input-ids' } : {}),
    ...(progress ? { onProgress: progress } : {}),
  });
  const report: EvalReport = {
    model,
    base,
    modelChoices: modelChoices(modelLoad),
    source,
    tokens: ids.length,
    ctx,
    chunks: chunks.length,
    bosPerChunk: bos !== null,
    result,
  };
  io.stdout(f.json ? `${JSON.stringify(evalJson(report, modelLoad))}\n` : `${renderEval(report)}\n`);
}

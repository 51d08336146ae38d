/**
 * `vramfit eval`'s engine side, as llama-perplexity --kl-divergence does it: the token stream cut into chunks of
 * ctx tokens, each run from an empty cache, and only the second half of each chunk scored (every scored position
 * has at least ctx/2 tokens of context). BASE runs first and its logits rows at the scored positions are kept
 * (in memory up to a bound, else in a temp file); BASE is disposed before MODEL is loaded, so only one model is
 * ever in memory; MODEL then runs the same chunks and each position is compared in float64.
 */
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LoadedModel } from '../model.js';
import { InputError } from '../../util/errors.js';
import { comparePosition, EvalAccumulator, type EvalSummary } from './kl.js';

/** BASE's rows are kept in memory up to this many bytes (vocab × scored positions × 4); past it they go to a temp file. */
export const IN_MEMORY_LOGITS_LIMIT = 256 * 2 ** 20;

/** The first scored position of a chunk of ctx tokens: positions first … ctx − 2 are scored, each predicting the next token. */
export function firstScored(ctx: number): number {
  return Math.floor(ctx / 2);
}

/** Positions scored per chunk of ctx tokens. */
export function scoredPerChunk(ctx: number): number {
  return Math.max(0, ctx - 1 - firstScored(ctx));
}

/**
 * Whole chunks of ctx tokens from the stream (a shorter tail is dropped, as llama-perplexity does), at most
 * maxChunks. With a BOS id, each chunk's first token becomes BOS (llama-perplexity's rule for models that add one);
 * the first half is never scored, so no target changes.
 */
export function chunkStream(ids: readonly number[], ctx: number, opts: { maxChunks?: number; bos?: number | null } = {}): number[][] {
  const n = Math.min(Math.floor(ids.length / ctx), opts.maxChunks ?? Infinity);
  const chunks: number[][] = [];
  for (let c = 0; c < n; c++) {
    const chunk = ids.slice(c * ctx, (c + 1) * ctx);
    if (opts.bos !== undefined && opts.bos !== null) chunk[0] = opts.bos;
    chunks.push(chunk);
  }
  return chunks;
}

/**
 * Runs every chunk from an empty cache: the unscored first half without the head's rows, then the scored positions
 * in micro-batches, calling `visit` with each scored position's logits and the token that follows it. The last token
 * of a chunk is only a target, so it is never fed. Memory beyond the model: one micro-batch of logits rows.
 */
export function forEachScoredRow(
  model: LoadedModel,
  chunks: readonly (readonly number[])[],
  visit: (row: Float32Array, target: number) => void,
  onChunk?: (done: number) => void,
): void {
  for (const [c, chunk] of chunks.entries()) {
    const ctx = chunk.length;
    const first = firstScored(ctx);
    model.resetSlot(0);
    if (first > 0) model.forward(chunk.slice(0, first));
    for (let s = first; s < ctx - 1; s += model.ubatch) {
      const end = Math.min(s + model.ubatch, ctx - 1);
      const rows = model.forward(chunk.slice(s, end), true);
      rows.forEach((row, k) => visit(row, chunk[s + k + 1]!));
    }
    onChunk?.(c + 1);
  }
  model.resetSlot(0);
}

/** Logits rows written once in order and read back once in order: in memory up to a byte bound, else in a temp file. */
export class LogitRows {
  private readonly memory: Float32Array | undefined;
  private readonly dir: string | undefined;
  private fd: number | undefined;
  private written = 0;
  private readonly buffer: Float32Array;

  constructor(
    readonly vocab: number,
    readonly rows: number,
    limitBytes = IN_MEMORY_LOGITS_LIMIT,
  ) {
    this.buffer = new Float32Array(vocab);
    if (vocab * rows * 4 <= limitBytes) this.memory = new Float32Array(vocab * rows);
    else {
      this.dir = mkdtempSync(join(tmpdir(), 'vramfit-eval-'));
      this.fd = openSync(join(this.dir, 'base-logits.f32'), 'w+');
    }
  }

  /** The temp file holding the rows, when they did not fit the bound. */
  get file(): string | undefined {
    return this.dir === undefined ? undefined : join(this.dir, 'base-logits.f32');
  }

  push(row: Float32Array): void {
    if (row.length !== this.vocab) throw new Error(`a logits row of ${row.length} values in a table of ${this.vocab}`);
    if (this.written >= this.rows) throw new Error('more logits rows than planned');
    if (this.memory) this.memory.set(row, this.written * this.vocab);
    else writeSync(this.fd!, new Uint8Array(row.buffer, row.byteOffset, row.byteLength), 0, row.byteLength, this.written * this.vocab * 4);
    this.written++;
  }

  /** Row i; from the file it is read into one reused buffer, valid until the next call. */
  row(i: number): Float32Array {
    if (i < 0 || i >= this.written) throw new Error(`logits row ${i} of ${this.written}`);
    if (this.memory) return this.memory.subarray(i * this.vocab, (i + 1) * this.vocab);
    const bytes = new Uint8Array(this.buffer.buffer);
    let got = 0;
    while (got < bytes.length) {
      const n = readSync(this.fd!, bytes, got, bytes.length - got, i * this.vocab * 4 + got);
      if (n === 0) throw new Error(`the temp file of logits ended at row ${i}`);
      got += n;
    }
    return this.buffer;
  }

  dispose(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
    if (this.dir !== undefined) rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface CompareOptions {
  /** Loads BASE and MODEL; each is disposed before the next is loaded. */
  loadBase: () => Promise<LoadedModel>;
  loadModel: () => Promise<LoadedModel>;
  /** How BASE and MODEL are named in errors (the command line's words). */
  baseName: string;
  modelName: string;
  /** The stream as chunks of equal length (chunkStream). */
  chunks: readonly (readonly number[])[];
  /** The flag the ids came from, named when one is outside the vocabulary. */
  idsFlag?: string;
  memoryLimitBytes?: number;
  onProgress?: (which: 'base' | 'model', chunksDone: number) => void;
}

export interface CompareResult extends EvalSummary {
  vocab: number;
  /** Seconds each model spent running the chunks (loading excluded). */
  seconds: { base: number; model: number };
  /** Where BASE's rows were kept: 'memory' or the temp file's path (deleted when done). */
  baseLogits: 'memory' | 'file';
  baseLogitsBytes: number;
}

function checkIds(chunks: readonly (readonly number[])[], vocab: number, where: string): void {
  for (const chunk of chunks)
    for (const id of chunk) if (id >= vocab) throw new InputError(where, `token id ${id} is outside the vocabulary of ${vocab} tokens`);
}

/** Runs BASE, keeps its scored rows, disposes it, runs MODEL and compares position by position. */
export async function compareModels(o: CompareOptions): Promise<CompareResult> {
  const positions = o.chunks.length * (o.chunks.length > 0 ? scoredPerChunk(o.chunks[0]!.length) : 0);
  let store: LogitRows | undefined;
  try {
    let vocab: number;
    let baseSeconds: number;
    const base = await o.loadBase();
    try {
      vocab = base.hyper.vocab;
      checkIds(o.chunks, vocab, o.idsFlag ?? o.baseName);
      store = new LogitRows(vocab, positions, o.memoryLimitBytes);
      const s = store;
      const t0 = performance.now();
      forEachScoredRow(
        base,
        o.chunks,
        (row) => s.push(row),
        (done) => o.onProgress?.('base', done),
      );
      baseSeconds = (performance.now() - t0) / 1000;
    } finally {
      base.dispose();
    }
    const model = await o.loadModel();
    const acc = new EvalAccumulator();
    let modelSeconds: number;
    try {
      if (model.hyper.vocab !== vocab)
        throw new InputError(
          '--compare-to',
          `MODEL ${o.modelName} has a vocabulary of ${model.hyper.vocab} tokens and BASE ${o.baseName} one of ${vocab}; KL divergence needs the same vocabulary`,
        );
      const t0 = performance.now();
      let i = 0;
      const s = store;
      forEachScoredRow(
        model,
        o.chunks,
        (row, target) => acc.add(comparePosition(s.row(i++), row, target)),
        (done) => o.onProgress?.('model', done),
      );
      modelSeconds = (performance.now() - t0) / 1000;
    } finally {
      model.dispose();
    }
    return {
      ...acc.summary(),
      vocab,
      seconds: { base: baseSeconds, model: modelSeconds },
      baseLogits: store.file === undefined ? 'memory' : 'file',
      baseLogitsBytes: vocab * positions * 4,
    };
  } finally {
    store?.dispose();
  }
}

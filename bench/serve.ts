/**
 * Server benchmark: `vramfit serve` over the engine benchmark's ~100M-parameter Llama (random weights
 * in F32 and in F16, written to a temporary folder), one CPU thread, real HTTP on 127.0.0.1.
 *
 *  1. aggregate decode tokens/s with 1, 4 and 8 concurrent streams (greedy, 64 tokens each, after a
 *     16-token prompt), as a ratio to 1 stream: batching reads the weights once per step for all, which
 *     pays where a step waits on memory (F32 here) and less where one core's arithmetic is the limit
 *     (F16 on one thread: 8 tokens are 8 times the multiply-adds);
 *  2. time to first token of a new request while 8 streams are busy (p50/p99 of 16 probes), against
 *     the same probe on an idle server;
 *  3. GET /health latency while the engine computes (8 streams busy), against an idle server.
 * Nothing passes or fails; every figure is measured in this run.
 *
 *   node --import tsx bench/serve.ts        (VRAMFIT_BENCH_SERVE_THREADS=N: N ggml threads instead of 1)
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeDemoCheckpoint } from '../src/engine/demo-checkpoint.js';
import { startServer, type RunningServer } from '../src/server/server.js';
import { isMain, ms, ratio, stats } from './common.js';
import { BENCH_CONFIG, paramCount, promptIds, THREADS } from './engine.js';

const CONCURRENCY = [1, 4, 8] as const;
const DECODE = 64;
const PROMPT = 16;
const CTX = 256;
/** ggml threads for the server's engine (the engine benchmark's one by default); VRAMFIT_BENCH_SERVE_THREADS overrides. */
const SERVE_THREADS = Number(process.env['VRAMFIT_BENCH_SERVE_THREADS'] ?? THREADS);

type Dtype = 'float32' | 'float16';
const DTYPES: readonly Dtype[] = ['float32', 'float16'];

export interface ServeBenchResult {
  params: string;
  threads: number;
  /** Aggregate decode tokens/s by weight dtype and number of concurrent streams. */
  decodeTokS: Record<Dtype, Record<number, number>>;
  ttftIdle: { p50: number; p99: number };
  ttftBusy: { p50: number; p99: number };
  healthIdle: { p50: number; p99: number };
  healthBusy: { p50: number; p99: number; max: number };
  totalMs: number;
}

interface StreamTiming {
  sent: number;
  first: number;
  end: number;
  tokens: number;
}

/**
 * A word-level tokenizer with one word per model id ("w0" … "wN"): every generated token decodes to
 * visible text, so each one is streamed as it is made (random weights pick ids all over the vocabulary).
 */
function wordTokenizer(vocab: number): Record<string, unknown> {
  const words: Record<string, number> = {};
  for (let i = 0; i < vocab; i++) words[`w${i}`] = i;
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: { type: 'Whitespace' },
    post_processor: null,
    decoder: null,
    model: { type: 'WordLevel', vocab: words, unk_token: 'w0' },
  };
}

/** One streamed completion from token ids; times its first token and its end. */
async function streamCompletion(url: string, ids: number[], maxTokens: number): Promise<StreamTiming> {
  const sent = performance.now();
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    body: JSON.stringify({ model: 'bench', prompt: ids, max_tokens: maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true } }),
  });
  if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let first = 0;
  let tokens = 0;
  let buffered = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let cut: number;
    while ((cut = buffered.indexOf('\n\n')) >= 0) {
      const event = buffered.slice(0, cut);
      buffered = buffered.slice(cut + 2);
      if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
      const chunk = JSON.parse(event.slice(6)) as { usage?: { completion_tokens: number }; choices: unknown[] };
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      else if (!first) first = performance.now();
    }
  }
  return { sent, first: first || performance.now(), end: performance.now(), tokens };
}

/** Decode tokens/s over all streams: tokens after each stream's first, over the span from the first first-token to the last end. */
function aggregateDecode(runs: StreamTiming[]): number {
  const tokens = runs.reduce((s, r) => s + r.tokens - 1, 0);
  const span = Math.max(...runs.map((r) => r.end)) - Math.max(...runs.map((r) => r.first));
  return (tokens / span) * 1000;
}

async function healthLatencies(url: string, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const res = await fetch(`${url}/health`);
    await res.arrayBuffer();
    out.push(performance.now() - t0);
    await new Promise((r) => setTimeout(r, 5));
  }
  return out;
}

const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

export async function runServeBench(log: (line: string) => void = (l) => process.stderr.write(`${l}\n`)): Promise<ServeBenchResult> {
  const started = performance.now();
  const root = mkdtempSync(join(tmpdir(), 'vramfit-serve-bench-'));
  let server: RunningServer | undefined;
  const vocab = BENCH_CONFIG['vocab_size'] as number;
  const prompt = (i: number): number[] => promptIds(vocab, PROMPT).map((t) => (t + 97 * i) % vocab);
  // Nine slots: eight busy streams and room for the probe whose first token is timed.
  const serve = async (dtype: Dtype): Promise<RunningServer> => {
    const dir = join(root, dtype);
    writeDemoCheckpoint(dir, { ...BENCH_CONFIG, torch_dtype: dtype }, 7, dtype);
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(wordTokenizer(vocab)));
    const s = await startServer({
      model: dir,
      load: { devices: 'cpu', threads: SERVE_THREADS, ctx: CTX, ubatch: 64, parallel: 9, kvDtype: 'float16' },
      port: 0,
      name: 'bench',
    });
    await s.ready;
    // Warm-up: the graphs of the shapes used below.
    await Promise.all(Array.from({ length: 8 }, (_, i) => streamCompletion(s.url, prompt(i), 4)));
    return s;
  };
  try {
    const decodeTokS = { float32: {}, float16: {} } as Record<Dtype, Record<number, number>>;
    for (const dtype of DTYPES) {
      server = await serve(dtype);
      for (const c of CONCURRENCY) {
        const runs = await Promise.all(Array.from({ length: c }, (_, i) => streamCompletion(server!.url, prompt(i), DECODE)));
        decodeTokS[dtype][c] = aggregateDecode(runs);
        log(`${dtype}, ${c} stream${c > 1 ? 's' : ''}: ${decodeTokS[dtype][c]!.toFixed(1)} decode tokens/s in all`);
      }
      if (dtype !== 'float16') {
        await server.close();
        server = undefined;
      }
    }
    // Latencies on the F16 server.
    const url = server!.url;

    const probe = async (): Promise<number> => {
      const t = await streamCompletion(url, prompt(100), 1);
      return t.first - t.sent;
    };
    const ttftIdleSamples: number[] = [];
    for (let i = 0; i < 16; i++) ttftIdleSamples.push(await probe());
    const healthIdleSamples = await healthLatencies(url, 40);

    // Eight long streams keep the engine busy while the probes run.
    const busy = Array.from({ length: 8 }, (_, i) => streamCompletion(url, prompt(i), CTX - PROMPT));
    await new Promise((r) => setTimeout(r, 500));
    const healthBusySamples = await healthLatencies(url, 40);
    const ttftBusySamples: number[] = [];
    for (let i = 0; i < 16; i++) ttftBusySamples.push(await probe());
    await Promise.all(busy);

    const two = (xs: number[]): { p50: number; p99: number } => ({ p50: pct(xs, 50), p99: pct(xs, 99) });
    return {
      params: `${(paramCount(BENCH_CONFIG) / 1e6).toFixed(1)}M`,
      threads: SERVE_THREADS,
      decodeTokS,
      ttftIdle: two(ttftIdleSamples),
      ttftBusy: two(ttftBusySamples),
      healthIdle: two(healthIdleSamples),
      healthBusy: { ...two(healthBusySamples), max: stats(healthBusySamples).max },
      totalMs: performance.now() - started,
    };
  } finally {
    await server?.close();
    rmSync(root, { recursive: true, force: true });
  }
}

export function renderServeBench(r: ServeBenchResult): string {
  const f32 = r.decodeTokS.float32;
  const f16 = r.decodeTokS.float16;
  const lines = [
    `## serve: ${r.params}-parameter Llama, CPU (${r.threads} thread${r.threads > 1 ? 's' : ''}), 127.0.0.1`,
    '',
    '| streams | F32: decode tokens/s (all streams) | / 1 stream | F16: decode tokens/s | / 1 stream |',
    '|---|---|---|---|---|',
    ...CONCURRENCY.map((c) => `| ${c} | ${f32[c]!.toFixed(1)} | ${ratio(f32[c]!, f32[1]!)} | ${f16[c]!.toFixed(1)} | ${ratio(f16[c]!, f16[1]!)} |`),
    '',
    `F16, time to first token, 8 streams busy: p50 ${ms(r.ttftBusy.p50)} ms, p99 ${ms(r.ttftBusy.p99)} ms (idle server: p50 ${ms(r.ttftIdle.p50)} ms, p99 ${ms(r.ttftIdle.p99)} ms; busy/idle p50 ${ratio(r.ttftBusy.p50, r.ttftIdle.p50)})`,
    `GET /health while busy: p50 ${ms(r.healthBusy.p50)} ms, p99 ${ms(r.healthBusy.p99)} ms, max ${ms(r.healthBusy.max)} ms (idle: p50 ${ms(r.healthIdle.p50)} ms, p99 ${ms(r.healthIdle.p99)} ms)`,
  ];
  return lines.join('\n');
}

if (isMain(import.meta.url)) {
  const r = await runServeBench();
  console.log(renderServeBench(r));
  console.log(`(serve took ${(r.totalMs / 1000).toFixed(1)} s)`);
}

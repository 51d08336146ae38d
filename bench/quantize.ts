/**
 * Quantize-to-fit benchmark, three parts, each a ratio against a baseline measured in the same run:
 *
 * 1. Quantize on load: `loadModel(dir, { quantize })` of the 100M-parameter F16 bench checkpoint (read, widen,
 *    ggml_quantize_chunk, copy into the device buffer), in MB/s of source weights, against ggml_quantize_chunk — the
 *    function llama.cpp's llama-quantize calls — on the same tensors already in memory as float32, each tensor's rows
 *    split over as many threads as the load uses.
 * 2. Decode and prefill with Q8_0 and Q4_K weights (the types `--quantize` gives each tensor, in GGUF files written
 *    by `vramfit quantize`'s writer, so llama.cpp loading them checks the writer too),
 *    the engine against llama.cpp (node-llama-cpp, installed on demand into bench/.peer) on the very same file,
 *    and their greedy tokens compared.
 * 3. A table for corpus model shapes and cap pairs: whether full precision fits on the GPUs, what `--quantize auto`
 *    chooses (bits per weight per GPU, KV type), and a uniform `--quantize q4_k` plan, as `vramfit plan` makes them.
 *
 *   node --import tsx bench/quantize.ts [--runs N] [--no-peer]
 */
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeDemoCheckpoint } from '../src/engine/demo-checkpoint.js';
import { loadGgml, type Ggml } from '../src/engine/ggml/binding.js';
import { loadModel } from '../src/engine/load.js';
import { exportGguf } from '../src/engine/gguf-export.js';
import { llamaQuantize } from './llama-quantize.js';
import { ggmlTypeFor } from '../src/engine/weights.js';
import { makePlan, type PlanFlags } from '../src/cli/plan-command.js';
import type { Plan } from '../src/planner/plan.js';
import { quantizeSkeleton, type QuantizeType } from '../src/planner/quantize.js';
import { readModel } from '../src/reader/read-model.js';
import { isMain, markdownTable, ratio, stats } from './common.js';
import {
  BENCH_CONFIG,
  CTX,
  DECODE_TOKENS,
  PROMPT_TOKENS,
  THREADS,
  engineRun,
  ensurePeer,
  promptIds,
  runPeer,
  summarize,
  writeLlamaGguf,
  type GenSummary,
  type PeerResult,
} from './engine.js';

const MiB = 2 ** 20;
const TYPES = ['q8_0', 'q4_k'] as const satisfies readonly QuantizeType[];

export interface QuantizeLoadSample {
  /** ggml_quantize_chunk over every converted tensor, in memory. */
  baselineMs: number;
  /** llama.cpp's own quantizer (llama_model_quantize, as llama-quantize runs it): the same model's F16 GGUF to a file. */
  toolMs: number;
  loadMs: number;
}

export interface QuantizeBenchResult {
  sourceBytes: number;
  convertedBytes: number;
  loadThreads: number;
  load: Record<string, QuantizeLoadSample[]>;
  gen: Record<string, GenSummary | undefined>;
  peer: Record<string, PeerResult>;
  agreement: Record<string, string>;
  peerInstall: string;
  fits: FitRow[];
}

export interface FitRow {
  model: string;
  caps: string;
  full: string;
  auto: string;
  q4k: string;
}

/** The float32 values of every tensor `--quantize type` converts, and their source bytes. */
function convertedTensors(
  file: string,
  type: QuantizeType,
  skeletonDtypes: Map<string, string>,
): { values: Float32Array; rows: number; cols: number; to: string }[] {
  const bytes = readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const g = loadGgml();
  const out: { values: Float32Array; rows: number; cols: number; to: string }[] = [];
  for (const [name, t] of Object.entries(header)) {
    const to = skeletonDtypes.get(name);
    if (name === '__metadata__' || !to || to === 'float16' || t.shape.length !== 2) continue;
    const raw = bytes.subarray(8 + n + t.data_offsets[0], 8 + n + t.data_offsets[1]);
    const values = new Float32Array(raw.length / 2);
    g.raw.ggml_fp16_to_fp32_row(new Uint8Array(raw), values, values.length);
    out.push({ values, rows: t.shape[0]!, cols: t.shape[1]!, to });
  }
  void type;
  return out;
}

/**
 * A byte-fallback vocabulary for the random bench model (`<unk>`, `<s>`, `</s>`, the 256 byte pieces, then `▁tN`), as
 * tokenizer files: the GGUF writer carries it into the file, and llama.cpp needs one to load a model. The bench
 * passes token ids, so no text is ever tokenized with it.
 */
function writeBenchTokenizer(dir: string, vocab: number): void {
  const tokens = ['<unk>', '<s>', '</s>'];
  for (let b = 0; b < 256; b++) tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  while (tokens.length < vocab) tokens.push(`▁t${tokens.length}`);
  const tokenizer = {
    version: '1.0',
    added_tokens: tokens
      .slice(0, 3)
      .map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: null,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      vocab: Object.fromEntries(tokens.map((t, i) => [t, i])),
      merges: [],
    },
  };
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tokenizer));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', add_bos_token: false }));
}

/** Quantizing at load may use every core (libuv's pool: 4 threads under this ES module entry); the baseline gets as many, as llama-quantize's nthread. */
const LOAD_THREADS = Math.min(4, availableParallelism());

/** ggml_quantize_chunk over `threads` slices of a tensor's rows at once, as llama-quantize splits a tensor. */
async function quantizeOnThreads(g: Ggml, t: { values: Float32Array; rows: number; cols: number; to: string }, threads: number): Promise<void> {
  const per = Math.ceil(t.rows / threads);
  const runs: Promise<Uint8Array>[] = [];
  for (let r = 0; r < t.rows; r += per) {
    const n = Math.min(per, t.rows - r);
    runs.push(g.quantizeAsync(ggmlTypeFor(t.to), t.values.subarray(r * t.cols, (r + n) * t.cols), n, t.cols));
  }
  await Promise.all(runs);
}

async function planOf(model: string, caps: string, extra: Partial<PlanFlags>): Promise<Plan | string> {
  const flags: PlanFlags = { strategy: 'fit', ctx: '4096', batch: '1', ubatch: '512', format: 'table', gpuMemory: '80GiB,80GiB', maxMemory: caps, ...extra };
  try {
    return (await makePlan(model, flags)).plan;
  } catch (e) {
    return (e as Error).message.split('\n')[0]!;
  }
}

const gpuBits = (p: Plan): string =>
  p.quantization!.units.length === 0
    ? ''
    : p.devices
        .filter((d) => d.kind === 'gpu')
        .map((d) => {
          const mine = p.quantization!.units.filter((u) =>
            p.deviceMap.some(([m, dev]) => dev === d.id && (u.name === m || u.name.startsWith(`${m}.`) || m.startsWith(`${u.name}.`))),
          );
          const params = mine.reduce((s, u) => s + u.params, 0);
          return `${d.id}: ${params ? ((8 * mine.reduce((s, u) => s + u.bytes, 0)) / params).toFixed(2) : '–'}`;
        })
        .join(', ');

/** What fits where: full precision, --quantize auto, a uniform q4_k. */
async function fitTable(): Promise<FitRow[]> {
  const rows: FitRow[] = [];
  const models = ['llama-2-7b', 'qwen3-8b', 'mixtral-8x7b'];
  const capSets = ['0=5GB,1=10GB', '0=8GB,1=8GB', '0=24GB,1=12GB'];
  for (const model of models) {
    for (const caps of capSets) {
      const full = await planOf(model, `${caps},cpu=512GiB`, {});
      const auto = await planOf(model, caps, { quantize: 'auto' });
      const q4k = await planOf(model, caps, { quantize: 'q4_k' });
      const offloaded = (p: Plan): number => p.devices.filter((d) => d.kind !== 'gpu').reduce((s, d) => s + d.weights, 0);
      rows.push({
        model,
        caps,
        full: typeof full === 'string' ? full : offloaded(full) === 0 ? 'fits' : `offloads ${(offloaded(full) / 2 ** 30).toFixed(1)} GiB`,
        auto:
          typeof auto === 'string'
            ? auto.replace(
                /^plan: --quantize auto: even with every unit in q4_0 and a \S+ KV cache the model does not fit the GPUs; that configuration fits with caps of at least /,
                'no; needs ',
              )
            : `${gpuBits(auto)} bits/weight, KV ${auto.quantization!.kvDtype}`,
        q4k: typeof q4k === 'string' ? 'does not fit' : `${gpuBits(q4k)} bits/weight`,
      });
    }
  }
  return rows;
}

export async function runQuantizeBench(o: { runs?: number; peer?: boolean; log?: (line: string) => void } = {}): Promise<QuantizeBenchResult> {
  const runs = o.runs ?? 3;
  const log = o.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const root = mkdtempSync(join(tmpdir(), 'vramfit-quantize-bench-'));
  const result: QuantizeBenchResult = {
    sourceBytes: 0,
    convertedBytes: 0,
    loadThreads: LOAD_THREADS,
    load: {},
    gen: {},
    peer: {},
    agreement: {},
    peerInstall: 'skipped (--no-peer)',
    fits: [],
  };
  try {
    const dir = join(root, 'f16');
    writeDemoCheckpoint(dir, { ...BENCH_CONFIG, torch_dtype: 'float16' }, 7, 'float16');
    writeBenchTokenizer(dir, BENCH_CONFIG['vocab_size'] as number);
    const file = join(dir, 'model.safetensors');
    result.sourceBytes = statSync(file).size;
    const skeleton = await readModel(dir);
    const prompt = promptIds(BENCH_CONFIG['vocab_size'] as number);
    const opts = { devices: 'virtual:1', threads: THREADS, ctx: CTX, kvDtype: 'float16' } as const;
    const g = loadGgml();

    // 1. Quantize on load against llama.cpp's quantizer on the same model and ggml_quantize_chunk on the same tensors.
    const f16Gguf = join(root, 'f16.gguf');
    writeLlamaGguf(f16Gguf, file, BENCH_CONFIG, 'float16');
    for (const type of TYPES) {
      const q = quantizeSkeleton(skeleton, type).skeleton;
      const tensors = convertedTensors(file, type, new Map(q.tensors.map((t) => [t.name, t.dtype])));
      result.convertedBytes = tensors.reduce((s, t) => s + t.values.length * 2, 0);
      result.load[type] = [];
      for (let r = 0; r < runs; r++) {
        const t0 = performance.now();
        for (const t of tensors) await quantizeOnThreads(g, t, LOAD_THREADS);
        const baselineMs = performance.now() - t0;
        const t1 = performance.now();
        const m = await loadModel(dir, { ...opts, threads: LOAD_THREADS, quantize: type });
        const loadMs = performance.now() - t1;
        m.dispose();
        const toolMs = llamaQuantize(f16Gguf, join(root, `tool-${type}.gguf`), type, LOAD_THREADS);
        rmSync(join(root, `tool-${type}.gguf`), { force: true });
        result.load[type].push({ baselineMs, toolMs, loadMs });
      }
      const s = result.load[type];
      log(
        `${type}: load ${stats(s.map((x) => x.loadMs)).median.toFixed(0)} ms, llama_model_quantize ${stats(s.map((x) => x.toolMs)).median.toFixed(0)} ms, ggml_quantize_chunk alone ${stats(s.map((x) => x.baselineMs)).median.toFixed(0)} ms`,
      );
    }

    // 2. Decode and prefill on the same GGUF, engine and llama.cpp.
    let peerOk = false;
    if (o.peer !== false) {
      try {
        result.peerInstall = ensurePeer();
        peerOk = true;
      } catch (e) {
        result.peerInstall = `could not install: ${(e as Error).message}`;
      }
      log(result.peerInstall);
    }
    for (const type of TYPES) {
      // Written by `vramfit quantize`'s writer: llama.cpp loading it and agreeing on the tokens checks the file too.
      const gguf = join(root, `${type}.gguf`);
      await exportGguf({ source: skeleton, loaded: quantizeSkeleton(skeleton, type).skeleton, out: gguf });
      const samples = [];
      for (let r = 0; r < runs; r++) {
        const m = await loadModel(gguf, opts);
        try {
          engineRun(m, prompt.slice(0, 8), 4);
          samples.push(engineRun(m, prompt));
        } finally {
          m.dispose();
        }
      }
      result.gen[type] = summarize(samples, prompt.length, DECODE_TOKENS);
      result.peer[type] = peerOk ? runPeer(gguf, prompt, runs) : { ok: false, reason: result.peerInstall };
      const p = result.peer[type];
      if (p.ok) {
        const ours = samples[0]!.tokens;
        const theirs = p.summary!.runs[0]!.tokens;
        let same = 0;
        while (same < ours.length && ours[same] === theirs[same]) same++;
        result.agreement[type] = `${same} of ${ours.length}`;
      }
      log(`${type}: engine ${result.gen[type]!.decodeTokS.toFixed(1)} tok/s decode${p.ok ? `, llama.cpp ${p.summary!.decodeTokS.toFixed(1)}` : ''}`);
      rmSync(gguf, { force: true });
    }

    // 3. What fits.
    result.fits = await fitTable();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  return result;
}

export function renderQuantizeBench(r: QuantizeBenchResult): string {
  const out: string[] = ['## quantize to fit'];
  out.push(
    `The engine bench's 100M-parameter Llama, F16 safetensors (${(r.sourceBytes / MiB).toFixed(0)} MiB; ${(r.convertedBytes / MiB).toFixed(0)} MiB of it converted). ` +
      `Quantize on load = loadModel with --quantize (read, widen, quantize, copy) on ${r.loadThreads} threads, MB/s of source weights; ` +
      `Baselines on as many threads: llama.cpp's own quantizer (llama_model_quantize, what llama-quantize runs; the same model as an F16 GGUF to a ${'`'}Q8_0${'`'} / ${'`'}Q4_K_S${'`'} file), ` +
      `and ggml_quantize_chunk alone on the same tensors already in memory (no reading at all, each tensor's rows split over the threads).`,
  );
  out.push('');
  const load = TYPES.filter((t) => r.load[t]?.length).map((t) => {
    const s = r.load[t]!;
    const mbs = (ms: number): number => r.convertedBytes / 1e6 / (ms / 1000);
    const ours = mbs(stats(s.map((x) => x.loadMs)).median);
    const base = mbs(stats(s.map((x) => x.baselineMs)).median);
    const tool = mbs(stats(s.map((x) => x.toolMs)).median);
    return [t, `${ours.toFixed(0)}`, `${tool.toFixed(0)}`, ratio(ours, tool), `${base.toFixed(0)}`, ratio(ours, base)];
  });
  out.push(
    markdownTable(['type', 'quantize on load MB/s (whole load)', 'llama_model_quantize MB/s', 'ratio', 'ggml_quantize_chunk in memory MB/s', 'ratio '], load),
  );
  out.push('');
  out.push(
    `Decode (${DECODE_TOKENS} tokens) and prefill (${PROMPT_TOKENS} tokens) on the same GGUF, ctx ${CTX}, KV F16, median of runs; llama.cpp = node-llama-cpp (${r.peerInstall}).`,
  );
  out.push('');
  const gen = TYPES.map((t) => {
    const e = r.gen[t];
    const p = r.peer[t];
    if (!e) return [t, '–', '–', '–', '–', '–', '–', '–'];
    const pe = p?.ok ? p.summary! : undefined;
    return [
      t,
      e.prefillTokS.toFixed(1),
      pe ? pe.prefillTokS.toFixed(1) : '–',
      pe ? ratio(e.prefillTokS, pe.prefillTokS) : '–',
      e.decodeTokS.toFixed(1),
      pe ? pe.decodeTokS.toFixed(1) : '–',
      pe ? ratio(e.decodeTokS, pe.decodeTokS) : (p?.reason?.split('\n')[0] ?? '–'),
      r.agreement[t] ?? '–',
    ];
  });
  out.push(markdownTable(['weights', 'prefill tok/s', 'llama.cpp', 'ratio', 'decode tok/s', 'llama.cpp', 'ratio', 'greedy tokens equal'], gen));
  out.push('');
  out.push('What fits on two GPUs at ctx 4096 (vramfit target; `vramfit plan … --max-memory CAPS [--quantize auto|q4_k]`); bits per weight per GPU.');
  out.push('');
  out.push(
    markdownTable(
      ['model', 'caps', 'float as stored', '--quantize auto', 'uniform --quantize q4_k'],
      r.fits.map((f) => [f.model, f.caps, f.full, f.auto, f.q4k]),
    ),
  );
  return out.join('\n');
}

if (isMain(import.meta.url)) {
  const at = process.argv.indexOf('--runs');
  const r = await runQuantizeBench({ runs: at > 0 ? Number(process.argv[at + 1]) : 3, peer: !process.argv.includes('--no-peer') });
  console.log(renderQuantizeBench(r));
}

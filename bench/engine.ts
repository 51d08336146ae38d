/**
 * Engine benchmark on a ~100M-parameter Llama-architecture checkpoint with random weights (F32 and
 * F16 versions, written to a temporary folder and deleted at the end):
 *
 *  1. prefill (128-token prompt) and greedy decode (64 tokens) on 2 and 4 virtual devices, each
 *     against one device on the same weights;
 *  2. loading: bytes/s of loadModel (weights read into device buffers) against a plain sequential
 *     fs.readSync of the same file in 8 MiB chunks into one reused buffer, page cache warm for both;
 *     also against the same reads into freshly allocated memory, which shows what first-touching
 *     new pages costs (every load into new device buffers pays it; the reused-buffer read does not);
 *  3. llama.cpp (node-llama-cpp, installed on demand into bench/.peer, outside the project's
 *     dependencies) on a GGUF written from the same tensors: prefill and decode from token ids,
 *     run in a child process so its own copy of ggml never meets the engine's.
 * A 1-device decode is also split into time inside ggml_backend_graph_compute and the engine's own
 * time around it (graph building, allocation, inputs, logits), where the two implementations differ.
 *
 * Every number is a ratio against a baseline measured in the same run; nothing passes or fails.
 * Every engine and llama.cpp run uses ONE thread: ggml's CPU threads spin at barriers, so more
 * threads than free cores (2 here) would measure contention, not the engine.
 *
 *   node --import tsx bench/engine.ts [--runs N] [--no-peer] [--keep]
 */
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEMO_CONFIG, writeDemoCheckpoint } from '../src/engine/demo-checkpoint.js';
import { cpuDevice, hostBytes, loadGgml } from '../src/engine/ggml/binding.js';
import { type LoadedModel } from '../src/engine/model.js';
import { loadModel } from '../src/engine/load.js';
import { gv, writeGguf, type GgufWriteTensor, type GgufWriteValue } from '../src/reader/formats/gguf-writer.js';
import { isMain, markdownTable, ratio, ROOT, stats } from './common.js';

/** hidden 768, 12 layers, 12 heads over 4 KV heads, FFN 2048, vocab 16000, untied: 100.1M parameters. */
export const BENCH_CONFIG: Record<string, unknown> = {
  ...DEMO_CONFIG,
  hidden_size: 768,
  intermediate_size: 2048,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  num_key_value_heads: 4,
  vocab_size: 16000,
  max_position_embeddings: 2048,
  tie_word_embeddings: false,
};

export const THREADS = 1;
export const CTX = 256;
export const PROMPT_TOKENS = 128;
export const DECODE_TOKENS = 64;
/** KV cache F16 on both sides: llama.cpp's default, set explicitly on the engine so the two match. */
const KV_DTYPE = 'float16';
const DEVICE_COUNTS = [1, 2, 4] as const;
type Dtype = 'float32' | 'float16';
const DTYPES: readonly Dtype[] = ['float32', 'float16'];
const SHORT: Record<Dtype, string> = { float32: 'F32', float16: 'F16' };

export const PEER_PACKAGE = 'node-llama-cpp';
export const PEER_VERSION = '3.22.1';
export const PEER_DIR = join(ROOT, 'bench', '.peer');

const MiB = 2 ** 20;

export interface GenTiming {
  prefillMs: number;
  decodeMs: number;
  /** The token chosen from the prompt's logits, then one per decode step. */
  tokens: number[];
}

export interface GenSummary {
  prefillTokS: number;
  decodeTokS: number;
  runs: GenTiming[];
}

export interface LoadSample {
  baselineMs: number;
  baselineBytes: number;
  /** The same reads into a freshly allocated buffer of the file's size: what first-touching new memory adds. */
  freshMs: number;
  loadMs: number;
  loadBytes: number;
  /** From loadModel's start to the first weight chunk read (parse, plan, graph reservation, allocation, prefault). */
  setupMs: number;
}

export interface PeerResult {
  ok: boolean;
  /** Why llama.cpp was not measured, verbatim. */
  reason?: string;
  info?: Record<string, unknown>;
  summary?: GenSummary;
}

export interface EngineBenchResult {
  params: number;
  bytes: Record<Dtype, number>;
  writeMs: Record<Dtype, number>;
  split: Record<number, string>;
  gen: Record<Dtype, Record<number, GenSummary>>;
  load: Record<Dtype, LoadSample[]>;
  peer: Record<Dtype, PeerResult>;
  peerInstall: string;
  agreement: Record<Dtype, string>;
  /** Where a 1-device decode step's time goes: inside ggml_backend_graph_compute, and everything else. */
  stepProfile: Record<Dtype, { computeMs: number; otherMs: number } | undefined>;
  loadAvg: { start: number[]; end: number[] };
  totalMs: number;
}

/** Deterministic prompt ids, clear of the special and byte tokens of the GGUF vocabulary. */
export function promptIds(vocab: number, n = PROMPT_TOKENS): number[] {
  return Array.from({ length: n }, (_, i) => 259 + ((i * 7919 + 104729) % (vocab - 259)));
}

function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
  return best;
}

/** Prefill, then greedy decode through the KV cache, timed separately (argmax included in both). */
export function engineRun(model: LoadedModel, prompt: readonly number[], decode = DECODE_TOKENS): GenTiming {
  model.reset();
  const t0 = performance.now();
  let id = argmax(model.forward(prompt)[0]!);
  const t1 = performance.now();
  const tokens = [id];
  for (let i = 0; i < decode; i++) {
    id = argmax(model.forward([id])[0]!);
    tokens.push(id);
  }
  const t2 = performance.now();
  return { prefillMs: t1 - t0, decodeMs: t2 - t1, tokens };
}

/**
 * One more 1-device decode with ggml_backend_graph_compute timed, so a step splits into the kernels'
 * time and the engine's own (graph building, allocation, inputs, logits copy, argmax).
 */
function profileDecode(model: LoadedModel, prompt: readonly number[]): { computeMs: number; otherMs: number } {
  const raw = loadGgml().raw;
  const compute = raw.ggml_backend_graph_compute;
  let inCompute = 0;
  raw.ggml_backend_graph_compute = (...a: unknown[]) => {
    const t = performance.now();
    try {
      return compute(...a);
    } finally {
      inCompute += performance.now() - t;
    }
  };
  try {
    model.reset();
    let id = argmax(model.forward(prompt)[0]!);
    inCompute = 0;
    const t0 = performance.now();
    for (let i = 0; i < DECODE_TOKENS; i++) id = argmax(model.forward([id])[0]!);
    const total = performance.now() - t0;
    return { computeMs: inCompute / DECODE_TOKENS, otherMs: (total - inCompute) / DECODE_TOKENS };
  } finally {
    raw.ggml_backend_graph_compute = compute;
  }
}

export function summarize(runs: GenTiming[], prompt: number, decode: number): GenSummary {
  return {
    prefillTokS: (prompt * 1000) / stats(runs.map((r) => r.prefillMs)).median,
    decodeTokS: (decode * 1000) / stats(runs.map((r) => r.decodeMs)).median,
    runs,
  };
}

// ---------------------------------------------------------------------------------------------
// Checkpoints: safetensors through writeDemoCheckpoint, GGUF from the very same tensor bytes.

export function paramCount(cfg: Record<string, unknown>): number {
  const h = cfg['hidden_size'] as number;
  const f = cfg['intermediate_size'] as number;
  const l = cfg['num_hidden_layers'] as number;
  const v = cfg['vocab_size'] as number;
  const kv = ((cfg['num_key_value_heads'] as number) * h) / (cfg['num_attention_heads'] as number);
  const layer = 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h;
  return l * layer + 2 * v * h + h;
}

interface StTensor {
  name: string;
  dtype: string;
  shape: number[];
  data: Uint8Array;
}

/** The tensors of a single-file safetensors checkpoint, as views into one read of the file. */
function readSafetensors(file: string): StTensor[] {
  const bytes = readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const base = 8 + n;
  const dtypes: Record<string, string> = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' };
  return Object.entries(header)
    .filter(([k]) => k !== '__metadata__')
    .map(([name, t]) => ({
      name,
      dtype: dtypes[t.dtype] ?? t.dtype,
      shape: t.shape,
      data: new Uint8Array(bytes.buffer, bytes.byteOffset + base + t.data_offsets[0], t.data_offsets[1] - t.data_offsets[0]),
    }));
}

/**
 * convert_hf_to_gguf.py's LlamaModel.permute on whole rows: within each head, row t·d/2 + j moves to
 * 2j + t, so that ggml's NORMAL rope (adjacent pairs) on the permuted weights equals NEOX
 * (rotate_half) on the checkpoint's. Same permutation as test/helpers/reference-llama.ts.
 */
export function permuteRows(data: Uint8Array, heads: number, headDim: number, rowBytes: number): Uint8Array {
  if (data.length !== heads * headDim * rowBytes) throw new Error('permuteRows: size mismatch');
  const out = new Uint8Array(data.length);
  const half = headDim / 2;
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < half; j++) {
      for (let t = 0; t < 2; t++) {
        const src = (h * headDim + t * half + j) * rowBytes;
        const dst = (h * headDim + 2 * j + t) * rowBytes;
        out.set(data.subarray(src, src + rowBytes), dst);
      }
    }
  }
  return out;
}

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

const GGUF_NAMES: Record<string, string> = {
  input_layernorm: 'attn_norm',
  'self_attn.q_proj': 'attn_q',
  'self_attn.k_proj': 'attn_k',
  'self_attn.v_proj': 'attn_v',
  'self_attn.o_proj': 'attn_output',
  post_attention_layernorm: 'ffn_norm',
  'mlp.gate_proj': 'ffn_gate',
  'mlp.up_proj': 'ffn_up',
  'mlp.down_proj': 'ffn_down',
};

/**
 * A llama-architecture GGUF of the same tensors, as convert_hf_to_gguf.py lays it out: q/k rows
 * permuted for NORMAL rope, 1-D norms F32, and a minimal SentencePiece-style vocabulary (unk, bos,
 * eos, 256 byte tokens, then placeholders) of the config's size.
 */
export function writeLlamaGguf(path: string, safetensorsFile: string, cfg: Record<string, unknown>, dtype: Dtype): void {
  const hidden = cfg['hidden_size'] as number;
  const heads = cfg['num_attention_heads'] as number;
  const kvHeads = cfg['num_key_value_heads'] as number;
  const headDim = hidden / heads;
  const vocab = cfg['vocab_size'] as number;
  const tensors: GgufWriteTensor[] = [];
  for (const t of readSafetensors(safetensorsFile)) {
    let name: string;
    let data = t.data;
    let tdtype = t.dtype;
    const layer = /^model\.layers\.(\d+)\.(.+)\.weight$/.exec(t.name);
    if (t.name === 'model.embed_tokens.weight') name = 'token_embd.weight';
    else if (t.name === 'model.norm.weight') name = 'output_norm.weight';
    else if (t.name === 'lm_head.weight') name = 'output.weight';
    else if (layer && GGUF_NAMES[layer[2]!]) name = `blk.${layer[1]}.${GGUF_NAMES[layer[2]!]}.weight`;
    else throw new Error(`no GGUF name for ${t.name}`);
    const rowBytes = t.shape.length === 2 ? t.data.length / t.shape[0]! : 0;
    if (layer?.[2] === 'self_attn.q_proj') data = permuteRows(data, heads, headDim, rowBytes);
    if (layer?.[2] === 'self_attn.k_proj') data = permuteRows(data, kvHeads, headDim, rowBytes);
    if (t.shape.length === 1 && t.dtype === 'float16') {
      // llama.cpp wants norm weights in F32.
      const src = new Uint16Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.length));
      data = new Uint8Array(Float32Array.from(src, halfToFloat).buffer);
      tdtype = 'float32';
    }
    tensors.push({ name, shape: t.shape, dtype: tdtype, data });
  }
  const tokens: string[] = ['<unk>', '<s>', '</s>'];
  for (let b = 0; b < 256; b++) tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  while (tokens.length < vocab) tokens.push(`▁t${tokens.length}`);
  const tokenType = tokens.map((_, i) => gv.i32(i === 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1));
  const scores = tokens.map((_, i) => gv.f32(i < 259 ? 0 : -(i - 259)));
  const metadata: Record<string, GgufWriteValue> = {
    'general.architecture': 'llama',
    'general.name': 'vramfit bench random llama',
    // llama_ftype: ALL_F32 0, MOSTLY_F16 1.
    'general.file_type': gv.u32(dtype === 'float32' ? 0 : 1),
    'llama.block_count': gv.u32(cfg['num_hidden_layers'] as number),
    'llama.context_length': gv.u32(cfg['max_position_embeddings'] as number),
    'llama.embedding_length': gv.u32(hidden),
    'llama.feed_forward_length': gv.u32(cfg['intermediate_size'] as number),
    'llama.attention.head_count': gv.u32(heads),
    'llama.attention.head_count_kv': gv.u32(kvHeads),
    'llama.attention.layer_norm_rms_epsilon': gv.f32(cfg['rms_norm_eps'] as number),
    'llama.rope.freq_base': gv.f32(cfg['rope_theta'] as number),
    'llama.rope.dimension_count': gv.u32(headDim),
    'llama.vocab_size': gv.u32(vocab),
    'tokenizer.ggml.model': 'llama',
    'tokenizer.ggml.tokens': gv.array('string', tokens),
    'tokenizer.ggml.scores': gv.array('f32', scores),
    'tokenizer.ggml.token_type': gv.array('i32', tokenType),
    'tokenizer.ggml.unknown_token_id': gv.u32(0),
    'tokenizer.ggml.bos_token_id': gv.u32(1),
    'tokenizer.ggml.eos_token_id': gv.u32(2),
    'tokenizer.ggml.add_bos_token': gv.bool(false),
  };
  writeGguf(path, { metadata, tensors });
}

// ---------------------------------------------------------------------------------------------
// Loading throughput.

const CHUNK = 8 * MiB;

/** The baseline: one sequential pass over the file with fs.readSync into a reused 8 MiB buffer. */
function readWhole(file: string, chunk: Uint8Array): number {
  const fd = openSync(file, 'r');
  try {
    let at = 0;
    for (;;) {
      const n = readSync(fd, chunk, 0, chunk.length, at);
      if (n === 0) return at;
      at += n;
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * Sequential 8 MiB reads into a freshly allocated CPU buffer as big as the file (every page touched
 * for the first time, as loading into new device buffers must), freed again before loadModel runs.
 */
function readIntoFresh(file: string, size: number): void {
  const g = loadGgml();
  const buffer = g.raw.ggml_backend_buft_alloc_buffer(g.raw.ggml_backend_dev_buffer_type(cpuDevice(g)), size) as bigint | null;
  if (!buffer) throw new Error(`could not allocate ${size} bytes`);
  const base = g.raw.ggml_backend_buffer_get_base(buffer) as bigint;
  const fd = openSync(file, 'r');
  try {
    for (let at = 0; at < size;) {
      const want = Math.min(CHUNK, size - at);
      const n = readSync(fd, hostBytes(base + BigInt(at), want), 0, want, at);
      if (n === 0) break;
      at += n;
    }
  } finally {
    closeSync(fd);
    g.raw.ggml_backend_buffer_free(buffer);
  }
}

async function loadSample(dir: string, chunk: Uint8Array): Promise<LoadSample> {
  const file = join(dir, 'model.safetensors');
  const b0 = performance.now();
  const baselineBytes = readWhole(file, chunk);
  const baselineMs = performance.now() - b0;
  const f0 = performance.now();
  readIntoFresh(file, baselineBytes);
  const freshMs = performance.now() - f0;
  let first = 0;
  let loadBytes = 0;
  const t0 = performance.now();
  const model = await loadModel(dir, {
    devices: 'virtual:1',
    threads: THREADS,
    ctx: CTX,
    kvDtype: KV_DTYPE,
    onProgress: (done) => {
      if (first === 0) first = performance.now();
      loadBytes = done;
    },
  });
  const loadMs = performance.now() - t0;
  model.dispose();
  return { baselineMs, baselineBytes, freshMs, loadMs, loadBytes, setupMs: first - t0 };
}

// ---------------------------------------------------------------------------------------------
// llama.cpp through node-llama-cpp, in a child process so its own copy of ggml never meets ours.

const RUNNER = String.raw`// Written by bench/engine.ts: times llama.cpp (node-llama-cpp) from token ids, one thread.
import { getLlama } from 'node-llama-cpp';
const o = JSON.parse(process.argv[2]);
const t0 = performance.now();
const llama = await getLlama({ gpu: false, build: 'never', maxThreads: o.threads, logLevel: 'error', progressLogs: false, skipDownload: true });
const model = await llama.loadModel({ modelPath: o.modelPath, gpuLayers: 0 });
const context = await model.createContext({ contextSize: o.ctx, threads: o.threads, sequences: 1 });
const loadMs = performance.now() - t0;
const seq = context.getSequence();
async function run(prompt, decode) {
  await seq.clearHistory();
  const tokens = [];
  const start = performance.now();
  let first = 0;
  for await (const t of seq.evaluate(prompt, { temperature: 0 })) {
    tokens.push(t);
    if (tokens.length === 1) first = performance.now();
    if (tokens.length === decode + 1) break;
  }
  return { prefillMs: first - start, decodeMs: performance.now() - first, tokens };
}
await run(o.prompt.slice(0, 8), 4);
const runs = [];
for (let r = 0; r < o.runs; r++) runs.push(await run(o.prompt, o.decode));
const info = {
  version: o.version, buildType: llama.buildType, gpu: llama.gpu, threads: context.currentThreads, contextSize: context.contextSize,
  batchSize: context.batchSize, flashAttention: context.flashAttention, kvCacheKeyType: context.kvCacheKeyType,
  kvCacheValueType: context.kvCacheValueType, useMmap: model.useMmap, loadMs,
  systemInfo: llama.systemInfo,
};
process.stdout.write('\n@@RESULT@@' + JSON.stringify({ info, runs }) + '\n');
await context.dispose();
await model.dispose();
await llama.dispose();
`;

/** Makes node-llama-cpp@PEER_VERSION available in PEER_DIR; returns what happened, or throws why not. */
export function ensurePeer(): string {
  const pkg = join(PEER_DIR, 'node_modules', PEER_PACKAGE, 'package.json');
  const installed = existsSync(pkg) ? (JSON.parse(readFileSync(pkg, 'utf8')) as { version: string }).version : undefined;
  if (installed === PEER_VERSION && existsSync(join(PEER_DIR, 'node_modules', '@node-llama-cpp', 'linux-x64', 'package.json')))
    return `found ${PEER_PACKAGE}@${installed} in bench/.peer`;
  mkdirSync(PEER_DIR, { recursive: true });
  writeFileSync(
    join(PEER_DIR, 'package.json'),
    `${JSON.stringify({ name: 'vramfit-bench-peer', private: true, description: 'llama.cpp peer for bench/engine.ts; not a vramfit dependency' }, null, 2)}\n`,
  );
  // Only the CPU binaries: --omit=optional skips the CUDA/Vulkan packages (hundreds of MB), and
  // --ignore-scripts the postinstall that would try to download or build llama.cpp.
  const args = [
    'install',
    '--no-audit',
    '--no-fund',
    '--ignore-scripts',
    '--omit=optional',
    '--no-package-lock',
    `${PEER_PACKAGE}@${PEER_VERSION}`,
    `@node-llama-cpp/${process.platform}-${process.arch}@${PEER_VERSION}`,
  ];
  const t0 = performance.now();
  const r = spawnSync('npm', args, { cwd: PEER_DIR, encoding: 'utf8', timeout: 300_000 });
  if (r.error || r.status !== 0) {
    // npm's first error lines say why (code, then the message); the rest is a stack trace.
    const lines = `${r.stderr ?? ''}${r.stdout ?? ''}`.split('\n').filter((l) => /^npm (error|ERR!)/.test(l) && !/^npm (error|ERR!)\s+at /.test(l));
    throw new Error(`npm ${args.join(' ')} (in bench/.peer) failed: ${r.error?.message ?? `exit ${r.status}`}\n${lines.slice(0, 4).join('\n')}`);
  }
  return `installed ${PEER_PACKAGE}@${PEER_VERSION} + @node-llama-cpp/${process.platform}-${process.arch} into bench/.peer in ${((performance.now() - t0) / 1000).toFixed(1)} s`;
}

export function runPeer(gguf: string, prompt: number[], runs: number): PeerResult {
  const runner = join(PEER_DIR, 'run-llamacpp.mjs');
  writeFileSync(runner, RUNNER);
  const args = JSON.stringify({ modelPath: gguf, prompt, decode: DECODE_TOKENS, runs, ctx: CTX, threads: THREADS, version: PEER_VERSION });
  const r = spawnSync(process.execPath, [runner, args], { cwd: PEER_DIR, encoding: 'utf8', timeout: 240_000, maxBuffer: 64 * MiB });
  const marker = r.stdout?.lastIndexOf('@@RESULT@@') ?? -1;
  if (r.error || r.status !== 0 || marker < 0) {
    const why = r.error ? r.error.message : r.signal ? `killed by ${r.signal}` : `exit ${r.status}`;
    const lines = `${r.stderr ?? ''}${r.stdout ?? ''}`.trim().split('\n');
    const first = lines.findIndex((l) => /error/i.test(l));
    const shown = first >= 0 ? lines.slice(first, first + 4) : lines.slice(-8);
    return { ok: false, reason: `node-llama-cpp run failed (${why}):\n${shown.join('\n')}` };
  }
  const out = JSON.parse(r.stdout.slice(marker + '@@RESULT@@'.length).trim()) as { info: Record<string, unknown>; runs: GenTiming[] };
  return { ok: true, info: out.info, summary: summarize(out.runs, prompt.length, DECODE_TOKENS) };
}

// ---------------------------------------------------------------------------------------------

export interface EngineBenchOptions {
  runs?: number;
  peer?: boolean;
  keep?: boolean;
  log?: (line: string) => void;
}

export async function runEngineBench(o: EngineBenchOptions = {}): Promise<EngineBenchResult> {
  const runs = o.runs ?? 3;
  const log = o.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const started = performance.now();
  const root = mkdtempSync(join(tmpdir(), 'vramfit-engine-bench-'));
  const vocab = BENCH_CONFIG['vocab_size'] as number;
  const prompt = promptIds(vocab);
  const result: EngineBenchResult = {
    params: paramCount(BENCH_CONFIG),
    bytes: { float32: 0, float16: 0 },
    writeMs: { float32: 0, float16: 0 },
    split: {},
    gen: { float32: {}, float16: {} },
    load: { float32: [], float16: [] },
    peer: { float32: { ok: false, reason: 'not run' }, float16: { ok: false, reason: 'not run' } },
    peerInstall: 'skipped (--no-peer)',
    agreement: { float32: '', float16: '' },
    stepProfile: { float32: undefined, float16: undefined },
    loadAvg: { start: loadavg(), end: [] },
    totalMs: 0,
  };
  try {
    const dirs = {} as Record<Dtype, string>;
    for (const dtype of DTYPES) {
      const t0 = performance.now();
      dirs[dtype] = join(root, dtype);
      writeDemoCheckpoint(dirs[dtype], { ...BENCH_CONFIG, torch_dtype: dtype }, 7, dtype);
      result.writeMs[dtype] = performance.now() - t0;
      result.bytes[dtype] = statSync(join(dirs[dtype], 'model.safetensors')).size;
      log(`wrote the ${SHORT[dtype]} checkpoint (${(result.bytes[dtype] / MiB).toFixed(0)} MiB) in ${(result.writeMs[dtype] / 1000).toFixed(1)} s`);
    }

    // 1. Devices: each run loads, measures and disposes every set-up in turn, so the set-ups share
    //    the machine's state (page cache, freed memory) as evenly as possible.
    for (const dtype of DTYPES) {
      const samples = new Map<number, GenTiming[]>(DEVICE_COUNTS.map((n) => [n, []]));
      for (let r = 0; r < runs; r++) {
        for (const n of DEVICE_COUNTS) {
          const model = await loadModel(dirs[dtype], { devices: `virtual:${n}`, threads: THREADS, ctx: CTX, kvDtype: KV_DTYPE });
          try {
            if (r === 0 && dtype === DTYPES[0]) {
              result.split[n] = model.plan.devices
                .filter((d) => d.modules.length > 0)
                .map(
                  (d) =>
                    `${d.id}:${d.modules.filter((m) => m.startsWith('model.layers.')).length}L${d.modules.includes('model.embed_tokens') ? '+emb' : ''}${d.modules.includes('lm_head') ? '+head' : ''}`,
                )
                .join(' ');
            }
            engineRun(model, prompt.slice(0, 8), 4); // warm-up
            samples.get(n)!.push(engineRun(model, prompt));
            if (n === 1 && r === runs - 1) result.stepProfile[dtype] = profileDecode(model, prompt);
          } finally {
            model.dispose();
          }
        }
      }
      for (const n of DEVICE_COUNTS) result.gen[dtype][n] = summarize(samples.get(n)!, prompt.length, DECODE_TOKENS);
      log(`${SHORT[dtype]} devices: ${DEVICE_COUNTS.map((n) => `${n}: ${result.gen[dtype][n]!.decodeTokS.toFixed(1)} tok/s decode`).join(', ')}`);
    }

    // 2. Loading, right after a baseline read of the same file, page cache warmed first.
    const chunk = new Uint8Array(CHUNK);
    for (const dtype of DTYPES) {
      readWhole(join(dirs[dtype], 'model.safetensors'), chunk);
      for (let r = 0; r < runs; r++) result.load[dtype].push(await loadSample(dirs[dtype], chunk));
    }

    // 3. llama.cpp on the same weights.
    if (o.peer !== false) {
      let install: string | undefined;
      try {
        install = ensurePeer();
        result.peerInstall = install;
        log(result.peerInstall);
      } catch (e) {
        result.peerInstall = `could not install: ${(e as Error).message}`;
        for (const dtype of DTYPES) result.peer[dtype] = { ok: false, reason: 'node-llama-cpp could not be installed (see the peer line above)' };
        log(result.peerInstall);
      }
      if (install) {
        for (const dtype of DTYPES) {
          const gguf = join(root, `${dtype}.gguf`);
          try {
            writeLlamaGguf(gguf, join(dirs[dtype], 'model.safetensors'), BENCH_CONFIG, dtype);
          } catch (e) {
            result.peer[dtype] = { ok: false, reason: `could not write the GGUF: ${(e as Error).message}` };
            continue;
          }
          result.peer[dtype] = runPeer(gguf, prompt, runs);
          rmSync(gguf, { force: true });
          const p = result.peer[dtype];
          if (p.ok) {
            const ours = result.gen[dtype][1]!.runs[0]!.tokens;
            const theirs = p.summary!.runs[0]!.tokens;
            let same = 0;
            while (same < ours.length && ours[same] === theirs[same]) same++;
            result.agreement[dtype] = `${same} of ${ours.length} greedy tokens identical before the first difference`;
            log(`${SHORT[dtype]} llama.cpp: ${p.summary!.decodeTokS.toFixed(1)} tok/s decode; ${result.agreement[dtype]}`);
          } else log(`${SHORT[dtype]} llama.cpp: ${p.reason}`);
        }
      }
    }
  } finally {
    if (!o.keep) rmSync(root, { recursive: true, force: true });
    else log(`kept ${root}`);
  }
  result.totalMs = performance.now() - started;
  result.loadAvg.end = loadavg();
  return result;
}

const f1 = (x: number): string => x.toFixed(1);
const ggmlTypeName = (t: unknown): string => (({ 0: 'F32', 1: 'F16', 30: 'BF16', 8: 'Q8_0' }) as Record<string, string>)[String(t)] ?? String(t);
const gbs = (bytes: number, ms: number): number => bytes / (ms / 1000) / 1e9;

export function renderEngineBench(r: EngineBenchResult): string {
  const out: string[] = [];
  const n = r.gen.float32[1]?.runs.length ?? 0;
  out.push('## engine');
  out.push(
    `Random-weight Llama, ${(r.params / 1e6).toFixed(1)}M parameters (hidden 768, 12 layers, 12 heads / 4 KV heads, FFN 2048, vocab 16000, untied); ` +
      `safetensors ${(r.bytes.float32 / MiB).toFixed(0)} MiB F32, ${(r.bytes.float16 / MiB).toFixed(0)} MiB F16. ` +
      `ONE thread everywhere (engine devices and llama.cpp): ggml's threads spin at barriers, so more threads than free cores measure contention. ` +
      `ctx ${CTX}, KV cache F16 on both sides, prompt ${PROMPT_TOKENS} tokens, greedy decode ${DECODE_TOKENS} tokens, median of ${n} runs.`,
  );
  out.push('');
  out.push(
    `Layer split (plan): ${Object.entries(r.split)
      .map(([k, v]) => `${k} device(s) → ${v}`)
      .join('; ')}`,
  );
  out.push('');
  const rows: string[][] = [];
  for (const dtype of DTYPES) {
    const one = r.gen[dtype][1];
    if (!one) continue;
    for (const d of DEVICE_COUNTS) {
      const s = r.gen[dtype][d]!;
      const each = (k: 'prefillMs' | 'decodeMs', tokens: number): string => s.runs.map((x) => ((tokens * 1000) / x[k]).toFixed(0)).join(', ');
      rows.push([
        SHORT[dtype],
        `virtual:${d}`,
        `${f1(s.prefillTokS)} (${each('prefillMs', PROMPT_TOKENS)})`,
        d === 1 ? '—' : ratio(s.prefillTokS, one.prefillTokS),
        `${f1(s.decodeTokS)} (${each('decodeMs', DECODE_TOKENS)})`,
        d === 1 ? '—' : ratio(s.decodeTokS, one.decodeTokS),
      ]);
    }
  }
  out.push(markdownTable(['weights', 'devices', 'prefill tok/s (each run)', '÷ 1 device', 'decode tok/s (each run)', '÷ 1 device'], rows));
  out.push('');
  const lrows: string[][] = [];
  for (const dtype of DTYPES) {
    const s = r.load[dtype];
    if (s.length === 0) continue;
    const base = stats(s.map((x) => x.baselineMs)).median;
    const load = stats(s.map((x) => x.loadMs)).median;
    const setup = stats(s.map((x) => x.setupMs)).median;
    const fresh = stats(s.map((x) => x.freshMs)).median;
    lrows.push([
      SHORT[dtype],
      `${gbs(s[0]!.baselineBytes, base).toFixed(2)} GB/s (${base.toFixed(0)} ms)`,
      `${gbs(s[0]!.baselineBytes, fresh).toFixed(2)} GB/s (${fresh.toFixed(0)} ms)`,
      `${gbs(s[0]!.loadBytes, load).toFixed(2)} GB/s (${load.toFixed(0)} ms)`,
      `${setup.toFixed(0)} ms`,
      ratio(gbs(s[0]!.loadBytes, load), gbs(s[0]!.baselineBytes, base)),
      ratio(gbs(s[0]!.loadBytes, load), gbs(s[0]!.baselineBytes, fresh)),
    ]);
  }
  out.push(
    markdownTable(
      [
        'weights',
        'readSync, reused 8 MiB chunk',
        'readSync into fresh memory',
        'loadModel virtual:1',
        'of which before the first read (parse, plan, reserve, allocate, prefault)',
        'loadModel ÷ readSync',
        'loadModel ÷ fresh-memory read',
      ],
      lrows,
    ),
  );
  out.push(
    '(page cache warm for all three; "fresh memory" reads the file into a new buffer of its size, so every page is touched for the first time, as loading into newly allocated device buffers must)',
  );
  out.push('');
  for (const dtype of DTYPES) {
    const p = r.stepProfile[dtype];
    if (p)
      out.push(
        `${SHORT[dtype]} decode step on 1 device: ${p.computeMs.toFixed(2)} ms in ggml_backend_graph_compute + ${p.otherMs.toFixed(2)} ms in the engine around it (graph build, allocation, inputs, logits copy, argmax) = ${((100 * p.otherMs) / (p.computeMs + p.otherMs)).toFixed(0)} % overhead`,
      );
  }
  out.push('');
  out.push(`llama.cpp peer: ${r.peerInstall}`);
  for (const dtype of DTYPES) {
    const p = r.peer[dtype];
    if (!p.ok) {
      out.push(`${SHORT[dtype]}: llama.cpp not measured: ${p.reason}`);
      continue;
    }
    const i = p.info!;
    out.push(
      `${SHORT[dtype]}: node-llama-cpp ${String(i['version'])} (${String(i['buildType'])}, gpu ${String(i['gpu'])}), threads ${String(i['threads'])}, context ${String(i['contextSize'])}, batch ${String(i['batchSize'])}, flash attention ${String(i['flashAttention'])}, KV ${ggmlTypeName(i['kvCacheKeyType'])}/${ggmlTypeName(i['kvCacheValueType'])}, mmap ${String(i['useMmap'])}; ${r.agreement[dtype]}`,
    );
  }
  out.push('');
  // The compact report.
  const head: string[][] = [];
  for (const dtype of DTYPES) {
    const one = r.gen[dtype][1];
    if (!one) continue;
    for (const d of [2, 4]) {
      const s = r.gen[dtype][d]!;
      head.push([
        `${SHORT[dtype]} decode, virtual:${d} ÷ virtual:1`,
        `${f1(s.decodeTokS)} / ${f1(one.decodeTokS)} tok/s`,
        ratio(s.decodeTokS, one.decodeTokS),
        '≥ 0.95×',
      ]);
      head.push([
        `${SHORT[dtype]} prefill, virtual:${d} ÷ virtual:1`,
        `${f1(s.prefillTokS)} / ${f1(one.prefillTokS)} tok/s`,
        ratio(s.prefillTokS, one.prefillTokS),
        '≥ 0.95×',
      ]);
    }
  }
  for (const dtype of DTYPES) {
    const s = r.load[dtype];
    if (s.length === 0) continue;
    const base = stats(s.map((x) => x.baselineMs)).median;
    const load = stats(s.map((x) => x.loadMs)).median;
    const a = gbs(s[0]!.loadBytes, load);
    const b = gbs(s[0]!.baselineBytes, base);
    head.push([`${SHORT[dtype]} load, loadModel ÷ readSync`, `${a.toFixed(2)} / ${b.toFixed(2)} GB/s`, ratio(a, b), '≥ 0.8×']);
  }
  for (const dtype of DTYPES) {
    const p = r.peer[dtype];
    const one = r.gen[dtype][1];
    if (!one) continue;
    if (!p.ok) {
      head.push([`${SHORT[dtype]} vs llama.cpp`, 'not measured (see above)', '—', '≥ 0.9×']);
      continue;
    }
    head.push([
      `${SHORT[dtype]} decode, vramfit ÷ llama.cpp`,
      `${f1(one.decodeTokS)} / ${f1(p.summary!.decodeTokS)} tok/s`,
      ratio(one.decodeTokS, p.summary!.decodeTokS),
      '≥ 0.9×',
    ]);
    head.push([
      `${SHORT[dtype]} prefill, vramfit ÷ llama.cpp`,
      `${f1(one.prefillTokS)} / ${f1(p.summary!.prefillTokS)} tok/s`,
      ratio(one.prefillTokS, p.summary!.prefillTokS),
      '(none)',
    ]);
  }
  out.push('### engine report (threads 1)');
  out.push(markdownTable(['measure', 'values', 'ratio', "issue's target"], head));
  const la = (x: number[]): string => x.map((v) => v.toFixed(2)).join(' ');
  out.push(
    `total ${(r.totalMs / 1000).toFixed(1)} s; load average at start ${la(r.loadAvg.start)}, at end ${la(r.loadAvg.end)} (2 cores: above ~0.5, other processes share the machine and the ratios are noisy)`,
  );
  return out.join('\n');
}

if (isMain(import.meta.url)) {
  const argv = process.argv.slice(2);
  const runsAt = argv.indexOf('--runs');
  const runs = runsAt >= 0 ? Number(argv[runsAt + 1]) : 3;
  if (!Number.isSafeInteger(runs) || runs < 1) throw new Error('--runs needs a positive integer');
  console.log(renderEngineBench(await runEngineBench({ runs, peer: !argv.includes('--no-peer'), keep: argv.includes('--keep') })));
}

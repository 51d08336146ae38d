/**
 * Reader benchmark: a 163-shard DeepSeek-V3 checkpoint with real-size headers (about 1.37 TB of
 * bfloat16 weights written as sparse holes, so it costs almost no disk), read with readModel, against
 * the least I/O any header reader needs: open each shard, read its 8 + N header bytes, close.
 * Also times the whole `vramfit inspect` process against `node -e 0`.
 *
 *   node --import tsx bench/reader.ts
 */
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findArchitecture } from '../src/reader/architectures/index.js';
import { CATALOG } from '../src/reader/catalog/models.js';
import { ConfigReader } from '../src/reader/config.js';
import { tensorBytes } from '../src/reader/dtypes.js';
import { writeSparseSafetensors } from '../src/reader/formats/safetensors-writer.js';
import { readModel } from '../src/reader/read-model.js';
import { isMain, ms, ratio, ROOT, stats, timeIt, group, type Stats } from './common.js';

export const SHARDS = 163;

interface Tensor {
  name: string;
  shape: number[];
  dtype: string;
}

/**
 * DeepSeek-V3's config.json from the catalog, without `quantization_config`: the published
 * checkpoint is FP8 with block scales (`weight_scale_inv`), but this bench writes the bfloat16
 * checkpoint (as DeepSeek's fp8_cast_bf16.py produces), whose config drops that block too.
 */
export function deepseekV3Config(): Record<string, unknown> {
  const entry = CATALOG['deepseek-v3'];
  if (!entry) throw new Error('catalog has no deepseek-v3');
  const config: Record<string, unknown> = { ...entry.config, ...(entry.overrides ?? {}) };
  delete config['quantization_config'];
  return config;
}

/**
 * What the checkpoint stores, in order: the architecture spec's persistent tensors (tied groups once,
 * as test/helpers storedTensorsFor does), then the multi-token-prediction layer DeepSeek stores as
 * `model.layers.61` (a full MoE decoder layer plus embed_tokens, enorm, hnorm, eh_proj, shared_head),
 * which transformers skips on load and the reader must set aside.
 */
export function deepseekV3Tensors(config: Record<string, unknown>): Tensor[] {
  const cfg = new ConfigReader(config, 'config.json');
  const spec = findArchitecture(cfg);
  if (!spec) throw new Error('no architecture spec for DeepSeek-V3');
  const dtype = cfg.dtype() ?? 'bfloat16';
  const layout = spec.build(cfg, dtype);
  const aliases = new Set(layout.tied.flatMap((g) => g.slice(1)));
  const tensors = layout.tree.tensors
    .filter((t) => !(t.kind === 'buffer' && t.persistent === false) && !aliases.has(t.name))
    .map((t) => ({ name: t.name, shape: [...t.shape], dtype: t.dtype }));

  const layers = cfg.int('num_hidden_layers');
  const nextN = cfg.optInt('num_nextn_predict_layers', 0);
  const hidden = cfg.int('hidden_size');
  const vocab = cfg.int('vocab_size');
  const last = `model.layers.${layers - 1}.`;
  for (let k = 0; k < nextN; k++) {
    const p = `model.layers.${layers + k}.`;
    tensors.push(
      { name: `${p}embed_tokens.weight`, shape: [vocab, hidden], dtype },
      { name: `${p}enorm.weight`, shape: [hidden], dtype },
      { name: `${p}hnorm.weight`, shape: [hidden], dtype },
      { name: `${p}eh_proj.weight`, shape: [hidden, 2 * hidden], dtype },
      ...tensors.filter((t) => t.name.startsWith(last)).map((t) => ({ ...t, name: p + t.name.slice(last.length) })),
      { name: `${p}shared_head.norm.weight`, shape: [hidden], dtype },
      { name: `${p}shared_head.head.weight`, shape: [vocab, hidden], dtype },
    );
  }
  return tensors;
}

export interface BuiltCheckpoint {
  dir: string;
  shardFiles: string[];
  tensors: number;
  /** Sum of tensor bytes (the index's metadata.total_size). */
  totalSize: number;
  /** Size of every file in the folder (shards with headers, index, config). */
  folderBytes: number;
  /** Bytes the filesystem actually allocated for the folder (st_blocks × 512). */
  diskBytes: number;
  headerBytes: number;
  /** config.json + model.safetensors.index.json sizes. */
  metaBytes: number;
  buildMs: number;
}

/** Splits tensors, in order, into `shards` runs of about equal bytes (as save_pretrained's max_shard_size does). */
export function buildDeepseekCheckpoint(shards = SHARDS): BuiltCheckpoint {
  const t0 = performance.now();
  const dir = mkdtempSync(join(tmpdir(), 'vramfit-bench-dsv3-'));
  try {
    const config = deepseekV3Config();
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
    const tensors = deepseekV3Tensors(config);
    const sizes = tensors.map((t) => tensorBytes(t.shape, t.dtype));
    const totalSize = sizes.reduce((a, b) => a + b, 0);
    const parts: Tensor[][] = Array.from({ length: shards }, () => []);
    let before = 0;
    tensors.forEach((t, i) => {
      parts[Math.min(shards - 1, Math.floor((before / totalSize) * shards))]!.push(t);
      before += sizes[i]!;
    });
    if (parts.some((p) => p.length === 0)) throw new Error('a shard came out empty');
    // DeepSeek names its shards with a 6-digit total: model-00001-of-000163.safetensors.
    const shardFiles = parts.map((_, i) => `model-${String(i + 1).padStart(5, '0')}-of-${String(shards).padStart(6, '0')}.safetensors`);
    const weightMap: Record<string, string> = {};
    let headerBytes = 0;
    parts.forEach((part, i) => {
      const r = writeSparseSafetensors(join(dir, shardFiles[i]!), part, { format: 'pt' });
      headerBytes += r.headerBytes;
      for (const t of part) weightMap[t.name] = shardFiles[i]!;
    });
    // save_pretrained writes the index with sorted keys.
    const sorted: Record<string, string> = {};
    for (const k of Object.keys(weightMap).sort()) sorted[k] = weightMap[k]!;
    writeFileSync(join(dir, 'model.safetensors.index.json'), `${JSON.stringify({ metadata: { total_size: totalSize }, weight_map: sorted }, null, 2)}\n`);
    let folderBytes = 0;
    let diskBytes = 0;
    for (const f of readdirSync(dir)) {
      const st = statSync(join(dir, f));
      folderBytes += st.size;
      diskBytes += st.blocks * 512;
    }
    const metaBytes = statSync(join(dir, 'config.json')).size + statSync(join(dir, 'model.safetensors.index.json')).size;
    return { dir, shardFiles, tensors: tensors.length, totalSize, folderBytes, diskBytes, headerBytes, metaBytes, buildMs: performance.now() - t0 };
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/** The minimum I/O of any header reader: per shard open, read the u64 length, read N bytes, close. */
function readHeadersRaw(dir: string, files: readonly string[]): number {
  let bytes = 0;
  const prefix = new Uint8Array(8);
  for (const f of files) {
    const fd = openSync(join(dir, f), 'r');
    try {
      readSync(fd, prefix, 0, 8, 0);
      const n = Number(new DataView(prefix.buffer).getBigUint64(0, true));
      const body = new Uint8Array(n);
      let got = 0;
      while (got < n) {
        const r = readSync(fd, body, got, n - got, 8 + got);
        if (r === 0) break;
        got += r;
      }
      bytes += 8 + got;
    } finally {
      closeSync(fd);
    }
  }
  return bytes;
}

/** The raw read plus UTF-8 decoding and JSON.parse of every header: what parsing alone adds. */
function readHeadersParsed(dir: string, files: readonly string[]): number {
  let entries = 0;
  const decoder = new TextDecoder();
  const prefix = new Uint8Array(8);
  for (const f of files) {
    const fd = openSync(join(dir, f), 'r');
    try {
      readSync(fd, prefix, 0, 8, 0);
      const n = Number(new DataView(prefix.buffer).getBigUint64(0, true));
      const body = new Uint8Array(n);
      readSync(fd, body, 0, n, 8);
      entries += Object.keys(JSON.parse(decoder.decode(body)) as object).length;
    } finally {
      closeSync(fd);
    }
  }
  return entries;
}

/** Builds dist/ with `npm run build` when it is missing or older than src/. Returns what it did. */
export function ensureBuilt(): string {
  const entry = join(ROOT, 'dist', 'cli', 'main.js');
  const newest = (dir: string): number => {
    let t = 0;
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
    }
    return t;
  };
  if (existsSync(entry) && statSync(entry).mtimeMs >= newest(join(ROOT, 'src'))) return 'dist/ is up to date';
  const why = existsSync(entry) ? 'older than src/' : 'missing';
  const r = spawnSync('npm', ['run', 'build'], { cwd: ROOT, encoding: 'utf8', shell: process.platform === 'win32' });
  if (r.status === 0) return `dist/ was ${why}: ran npm run build`;
  // tsc still emits on type errors (src/ may be mid-edit): time what was emitted, and say so.
  if (existsSync(entry)) return `dist/ was ${why}; npm run build FAILED (exit ${r.status}), timing the dist/ it left`;
  throw new Error(`npm run build failed (${r.status}) and dist/ is missing:\n${r.stdout}\n${r.stderr}`);
}

function timeProcess(args: string[], runs: number): { stats: Stats; stdout: string } {
  const samples: number[] = [];
  let stdout = '';
  for (let i = 0; i < runs + 1; i++) {
    const t0 = performance.now();
    const r = spawnSync(process.execPath, args, { cwd: ROOT, encoding: 'utf8', maxBuffer: 64 << 20 });
    const dt = performance.now() - t0;
    if (r.status !== 0) throw new Error(`node ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
    stdout = r.stdout;
    if (i > 0) samples.push(dt); // the first run warms the page cache
  }
  return { stats: stats(samples), stdout };
}

export interface ReaderBenchResult {
  checkpoint: Omit<BuiltCheckpoint, 'dir' | 'shardFiles'>;
  bytesRead: number;
  filesRead: number;
  readModel: Stats;
  baseline: Stats;
  parsedBaseline: Stats;
  cli: Stats;
  nodeStartup: Stats;
  build: string;
  inspectHead: string[];
  warnings: string[];
  params: number;
}

export async function runReaderBench(opts: { runs?: number; cliRuns?: number } = {}): Promise<ReaderBenchResult> {
  const runs = opts.runs ?? 7;
  const cliRuns = opts.cliRuns ?? 5;
  const build = ensureBuilt();
  const ck = buildDeepseekCheckpoint();
  // An interrupted run still removes its folder (the sparse shards cost little disk, but 163 of them).
  const onSignal = (): void => {
    rmSync(ck.dir, { recursive: true, force: true });
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const skeleton = await readModel(ck.dir);
    if (skeleton.source.shapes !== 'headers') throw new Error(`expected shapes from headers, got ${skeleton.source.shapes}`);
    const readModelStats = await timeIt(() => readModel(ck.dir), { minRuns: runs, warmup: 1 });
    const rawBytes = readHeadersRaw(ck.dir, ck.shardFiles);
    if (rawBytes !== ck.headerBytes) throw new Error(`baseline read ${rawBytes} header bytes, expected ${ck.headerBytes}`);
    const baseline = await timeIt(() => readHeadersRaw(ck.dir, ck.shardFiles), { minRuns: runs, warmup: 1 });
    const parsedBaseline = await timeIt(() => readHeadersParsed(ck.dir, ck.shardFiles), { minRuns: runs, warmup: 1 });
    const cli = timeProcess(['bin/vramfit.cjs', 'inspect', ck.dir], cliRuns);
    const nodeStartup = timeProcess(['-e', '0'], cliRuns);
    const params = skeleton.tensors.filter((t) => t.kind === 'param').reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1), 0);
    const { dir: _dir, shardFiles: _files, ...checkpoint } = ck;
    return {
      checkpoint,
      bytesRead: skeleton.source.bytesRead,
      filesRead: skeleton.source.files.length,
      readModel: readModelStats,
      baseline,
      parsedBaseline,
      cli: cli.stats,
      nodeStartup: nodeStartup.stats,
      build,
      inspectHead: cli.stdout.split('\n').filter((l) => /^(read from|parameters|weights|index total|blocks|warning)/.test(l)),
      warnings: skeleton.warnings,
      params,
    };
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    rmSync(ck.dir, { recursive: true, force: true });
  }
}

export function renderReaderBench(r: ReaderBenchResult): string {
  const c = r.checkpoint;
  const TB = 1e12;
  const lines = [
    `## reader: DeepSeek-V3, ${SHARDS} bfloat16 shards (config from catalog 'deepseek-v3', quantization_config dropped)`,
    `checkpoint   ${group(c.tensors)} tensors, total_size ${(c.totalSize / TB).toFixed(3)} TB; files ${(c.folderBytes / TB).toFixed(3)} TB apparent, ${(c.diskBytes / 2 ** 20).toFixed(1)} MiB on disk (sparse); built in ${ms(c.buildMs)} ms`,
    `bytes read   ${group(r.bytesRead)} of ${group(c.folderBytes)} (${((100 * r.bytesRead) / c.folderBytes).toExponential(2)} %) from ${r.filesRead} files; ` +
      `the minimum (8+N of every shard ${group(c.headerBytes)} + index and config ${group(c.metaBytes)}) is ${group(c.headerBytes + c.metaBytes)}` +
      (r.bytesRead === c.headerBytes + c.metaBytes ? ': read exactly that' : `: read ${group(r.bytesRead - c.headerBytes - c.metaBytes)} more`),
    `readModel    min ${ms(r.readModel.min)} ms, median ${ms(r.readModel.median)} ms (${r.readModel.runs} runs)`,
    `baseline     raw 8+N header reads: min ${ms(r.baseline.min)} ms, median ${ms(r.baseline.median)} ms → readModel/baseline ${ratio(r.readModel.median, r.baseline.median)} (median), ${ratio(r.readModel.min, r.baseline.min)} (min)`,
    `             raw reads + JSON.parse: median ${ms(r.parsedBaseline.median)} ms → readModel/(read+parse) ${ratio(r.readModel.median, r.parsedBaseline.median)}`,
    `CLI          node bin/vramfit.cjs inspect: min ${ms(r.cli.min)} ms, median ${ms(r.cli.median)} ms; node -e 0: median ${ms(r.nodeStartup.median)} ms → ${ratio(r.cli.median, r.nodeStartup.median)}, +${ms(r.cli.median - r.nodeStartup.median)} ms over bare node (${r.build})`,
    ...r.inspectHead.map((l) => `  inspect> ${l}`),
  ];
  return lines.join('\n');
}

if (isMain(import.meta.url)) {
  console.log(renderReaderBench(await runReaderBench()));
}

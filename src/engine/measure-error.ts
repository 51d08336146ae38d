/**
 * `--measure`: how much each tensor of this checkpoint loses under each type `--quantize auto` may choose, measured
 * on its own weights instead of the error model's Gaussian stand-in. For every matrix the auto planner converts,
 * evenly spaced rows (ROWS of them, every row of a smaller matrix) are widened to float32, quantized by ggml's
 * quantizer to each level's type (with the fallbacks a level takes when rows are not whole blocks), dequantized,
 * and compared: relative RMS error ‖W − Q(W)‖ / ‖W‖ over those rows. The figures are cached beside the model
 * (a hidden JSON keyed by each weight file's size and modification time), else in the user's cache folder.
 */
import { createHash } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import type { Skeleton } from '../reader/skeleton.js';
import { AUTO_LEVELS, autoUnits, type AutoLevel, type MeasuredErrors } from '../planner/quantize-auto.js';
import { chooseType } from '../planner/quantize.js';
import { InputError } from '../util/errors.js';
import { readAt } from '../util/read-fully.js';
import { GGML_TYPE, loadGgml, type Ggml } from './ggml/binding.js';
import { convert, ggmlTypeFor, isLoadableFloat } from './weights.js';
import { QuantizePipeline } from './quantize-pipeline.js';

/** Rows measured per tensor: 64 rows of a 4096-wide matrix are 262,144 weights, an estimate within about 1 %. */
export const ROWS = 64;
const CACHE_VERSION = 1;
const CACHE_NAME = '.vramfit-quant-error.json';
const MEASURED_LEVELS = AUTO_LEVELS.filter((l): l is Exclude<AutoLevel, 'keep'> => l !== 'keep');

interface CacheFile {
  version: number;
  rows: number;
  files: Record<string, { size: number; mtimeMs: number }>;
  tensors: Record<string, Partial<Record<AutoLevel, number>>>;
}

export interface MeasureResult {
  errors: MeasuredErrors;
  /** Where the figures are kept, or undefined when neither place could be written. */
  cacheFile: string | undefined;
  fromCache: boolean;
  tensors: number;
  warnings: string[];
}

/**
 * Measures (or reads from the cache) every convertible tensor's relative error under each level. `base` is the
 * folder relative tensor locations start from; `flag` names what a refusal is about.
 */
export async function measureQuantError(skeleton: Skeleton, base: string, opts: { threads?: number; flag?: string } = {}): Promise<MeasureResult> {
  const flag = opts.flag ?? '--measure';
  if (skeleton.source.shapes !== 'headers')
    throw new InputError(flag, `needs the weights at hand; ${skeleton.source.path} has only a config (shapes synthesized)`);
  const { unitOf } = autoUnits(skeleton);
  const tensors = skeleton.tensors.filter((t) => unitOf.has(t.name) && isLoadableFloat(t.dtype));
  if (tensors.length === 0) throw new InputError(flag, `${skeleton.source.path} has no float matrices to measure (its weights are already quantized)`);
  const pathOf = (file: string): string => (isAbsolute(file) ? file : join(base, file));
  const files: CacheFile['files'] = {};
  for (const t of tensors) {
    if (!t.location?.range) throw new InputError(flag, `${t.name} has no byte range in ${skeleton.source.path}; its weights cannot be read`);
    const path = pathOf(t.location.file);
    if (files[path]) continue;
    const st = statSync(path);
    files[path] = { size: st.size, mtimeMs: st.mtimeMs };
  }
  const warnings: string[] = [];
  const places = [
    join(base, CACHE_NAME),
    join(process.env['XDG_CACHE_HOME'] ?? join(homedir(), '.cache'), 'vramfit', `quant-error-${hashOf(resolve(base))}.json`),
  ];
  for (const place of places) {
    const cached = readCache(place, files);
    if (cached && tensors.every((t) => cached.tensors[t.name])) {
      return { errors: new Map(Object.entries(cached.tensors)), cacheFile: place, fromCache: true, tensors: tensors.length, warnings };
    }
  }

  const g = loadGgml();
  const measured: CacheFile['tensors'] = {};
  const pipe = new QuantizePipeline(opts.threads ?? 4);
  const fds = new Map<string, number>();
  try {
    for (const t of tensors) {
      const path = pathOf(t.location!.file);
      let fd = fds.get(path);
      if (fd === undefined) fds.set(path, (fd = openSync(path, 'r')));
      const sample = sampleRows(g, fd, path, t.name, t.shape, t.dtype, t.location!.range!);
      await pipe.start(async () => {
        measured[t.name] = await levelErrors(g, sample.values, sample.rows, sample.cols);
      });
    }
    await pipe.drain();
  } finally {
    await pipe.abandon();
    for (const fd of fds.values()) closeSync(fd);
  }
  const cache: CacheFile = { version: CACHE_VERSION, rows: ROWS, files, tensors: measured };
  let cacheFile: string | undefined;
  for (const place of places) {
    if (writeCache(place, cache)) {
      cacheFile = place;
      break;
    }
  }
  if (!cacheFile) warnings.push(`--measure: could not keep the figures in ${places.join(' or ')}; the next run measures again`);
  return { errors: new Map(Object.entries(measured)), cacheFile, fromCache: false, tensors: tensors.length, warnings };
}

/** Evenly spaced rows of a 2-D-or-more float tensor (rows = all but the last dimension), widened to float32. */
function sampleRows(
  g: Ggml,
  fd: number,
  path: string,
  name: string,
  shape: number[],
  dtype: string,
  range: [number, number],
): { values: Float32Array; rows: number; cols: number } {
  const cols = shape[shape.length - 1] ?? 1;
  const total = shape.slice(0, -1).reduce((a, b) => a * b, 1);
  const elem = (range[1] - range[0]) / (total * cols);
  if (!Number.isInteger(elem) || elem < 2)
    throw new InputError(path, `${name}: ${range[1] - range[0]} bytes do not hold ${total} rows of ${cols} ${dtype} values`);
  const rows = Math.min(total, ROWS);
  const values = new Float32Array(rows * cols);
  const row = new Uint8Array(cols * elem);
  for (let i = 0; i < rows; i++) {
    const r = Math.floor(((i + 0.5) * total) / rows);
    if (readAt(fd, row, row.length, range[0] + r * row.length) < row.length) throw new InputError(path, `ended inside ${name}`);
    convert(g, row, dtype, GGML_TYPE.F32, cols, values.subarray(i * cols, (i + 1) * cols));
  }
  return { values, rows, cols };
}

/** Each level's relative RMS error on these rows, by the type the level gives rows this wide. */
async function levelErrors(g: Ggml, values: Float32Array, rows: number, cols: number): Promise<Partial<Record<AutoLevel, number>>> {
  let norm = 0;
  for (const v of values) norm += v * v;
  const out: Partial<Record<AutoLevel, number>> = {};
  for (const level of MEASURED_LEVELS) {
    const to = chooseType('matrix', cols, level)?.to ?? 'float16';
    let back: Float32Array;
    if (to === 'float16') {
      back = new Float32Array(values.length);
      const half = convert(
        g,
        new Uint8Array(values.buffer, values.byteOffset, values.byteLength),
        'float32',
        GGML_TYPE.F16,
        values.length,
        new Float32Array(values.length),
      );
      convert(g, half, 'float16', GGML_TYPE.F32, values.length, back);
    } else {
      const type = ggmlTypeFor(to);
      back = g.dequantize(type, await g.quantizeAsync(type, values, rows, cols), values.length);
    }
    let err = 0;
    for (let i = 0; i < values.length; i++) err += (values[i]! - back[i]!) ** 2;
    out[level] = norm > 0 ? Math.sqrt(err / norm) : 0;
  }
  return out;
}

function hashOf(s: string): string {
  return createHash('sha256').update(s).digest('hex').slice(0, 16);
}

function readCache(place: string, files: CacheFile['files']): CacheFile | undefined {
  let c: CacheFile;
  try {
    c = JSON.parse(readFileSync(place, 'utf8')) as CacheFile;
  } catch {
    return undefined;
  }
  if (c?.version !== CACHE_VERSION || c.rows !== ROWS || typeof c.tensors !== 'object' || typeof c.files !== 'object') return undefined;
  const same = Object.entries(files).every(([p, f]) => c.files[p]?.size === f.size && c.files[p]?.mtimeMs === f.mtimeMs);
  return same ? c : undefined;
}

/** Written whole or not at all (a temp file renamed into place). */
function writeCache(place: string, cache: CacheFile): boolean {
  const tmp = `${place}.${process.pid}.tmp`;
  try {
    mkdirSync(dirname(place), { recursive: true });
    writeFileSync(tmp, `${JSON.stringify(cache)}\n`);
    renameSync(tmp, place);
    return true;
  } catch {
    try {
      unlinkSync(tmp);
    } catch {
      // Never created.
    }
    return false;
  }
}

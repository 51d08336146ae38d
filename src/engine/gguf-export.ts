/**
 * `vramfit quantize`: a Llama-style safetensors checkpoint written as a GGUF file llama.cpp loads, each tensor in
 * the type the plan chose (`loaded`: the skeleton with converted dtypes), as llama.cpp's converter lays it out —
 * its tensor names, `<arch>.*` hyper-parameters, q/k rows permuted for NORMAL rope where the architecture is
 * `llama`, vectors in F32, Llama 3 rope scaling as `rope_freqs`, the tokenizer and chat template as metadata.
 * Tensors are streamed: float ones copied or converted in chunks, quantized ones read in runs of rows and
 * quantized on the thread pool, so host memory stays bounded (a permuted q/k matrix is read whole). The file is
 * written beside its destination under a temporary name and renamed when complete.
 */
import { closeSync, existsSync, openSync, renameSync, unlinkSync } from 'node:fs';
import { basename, dirname, isAbsolute, join } from 'node:path';
import { ConfigReader } from '../reader/config.js';
import { tensorBytes } from '../reader/dtypes.js';
import { encodeGgufHeader, gv, layoutGgufTensors, type GgufWriteValue } from '../reader/formats/gguf-writer.js';
import { writeAll } from '../reader/formats/safetensors-writer.js';
import { GGUF_EXPORT_ARCHITECTURE, ggufNameForHf } from '../reader/gguf-model.js';
import type { Skeleton, SkeletonTensor } from '../reader/skeleton.js';
import { InputError } from '../util/errors.js';
import { readJsonObjectFile } from '../util/json-file.js';
import { readAt } from '../util/read-fully.js';
import { llamaHyper, type LlamaHyper } from './architectures/llama.js';
import { GGML_TYPE, loadGgml, type Ggml, type GgmlType } from './ggml/binding.js';
import { QuantizePipeline } from './quantize-pipeline.js';
import { ggufVocabMetadata } from './text/gguf-vocab.js';
import { convert, ggmlTypeFor, isLoadableFloat } from './weights.js';

export interface GgufExportOptions {
  /** The checkpoint as stored (float dtypes, byte ranges). */
  source: Skeleton;
  /** The same tensors with the dtypes to write (quantized or kept). */
  loaded: Skeleton;
  out: string;
  threads?: number;
  /** Replace an existing `out`. */
  force?: boolean;
  /** Called with source bytes done and the total. */
  onProgress?: (done: number, total: number) => void;
}

export interface GgufExportResult {
  path: string;
  bytes: number;
  sourceBytes: number;
  /** Per written type: tensors and bytes. */
  types: Map<string, { tensors: number; bytes: number }>;
  params: number;
  seconds: number;
}

/** llama.cpp's `general.file_type` (enum llama_ftype) for the type that holds most of the matrices. */
const FILE_TYPE: Record<string, number> = { float32: 0, float16: 1, q4_0: 2, q8_0: 7, q4_k: 15, q5_k: 17, q6_k: 18, bfloat16: 32 };

/** Source bytes per quantization run (as loading does). */
const RUN = 2 * 1024 * 1024;

/** Refusals that need no weights read: which models, which destinations. */
export function checkGgufExport(source: Skeleton, out: string, force: boolean): { arch: string; modelDir: string } {
  const arch = GGUF_EXPORT_ARCHITECTURE[source.family];
  if (!arch)
    throw new InputError(
      source.source.path,
      `GGUF export writes the dense Llama family (${Object.keys(GGUF_EXPORT_ARCHITECTURE).join(', ')}); this model is ${source.family}`,
      'UNSUPPORTED_ARCHITECTURE',
    );
  if (source.source.kind !== 'safetensors' || source.source.shapes !== 'headers')
    throw new InputError(
      source.source.path,
      `GGUF export reads safetensors checkpoints with their weights; this is ${source.source.kind}${source.source.shapes === 'synthesized' ? ' without weights' : ''}`,
    );
  const modelDir = dirname(source.source.files[0]!);
  if (!/\.gguf$/i.test(out)) throw new InputError('-o', `${out}: the output file name should end in .gguf`);
  if (existsSync(out) && !force) throw new InputError('-o', `${out} exists; pass --force to replace it`);
  if (source.source.files.some((f) => f === out || (!isAbsolute(out) && join(process.cwd(), out) === f)))
    throw new InputError('-o', `${out} is one of the model's own files`);
  if (!existsSync(dirname(out) || '.')) throw new InputError('-o', `${dirname(out)} does not exist`);
  return { arch, modelDir };
}

export async function exportGguf(o: GgufExportOptions): Promise<GgufExportResult> {
  const t0 = performance.now();
  const { arch, modelDir } = checkGgufExport(o.source, o.out, o.force ?? false);
  const configFile = join(modelDir, 'config.json');
  const h = llamaHyper(new ConfigReader(readJsonObjectFile(configFile), configFile), o.source.family);
  const loadedDtype = new Map(o.loaded.tensors.map((t) => [t.name, t.dtype]));
  const aliases = new Set(o.source.tied.flatMap((group) => group.slice(1)));

  // What is written, in the checkpoint's order: each stored parameter under llama.cpp's name.
  const plan: { src: SkeletonTensor; name: string; dtype: string; permuteHeads?: number }[] = [];
  for (const t of o.source.tensors) {
    if (aliases.has(t.name) || t.kind === 'buffer') continue;
    const name = ggufNameForHf(t.name);
    if (!name) throw new InputError(o.source.source.path, `${t.name} has no llama.cpp name; GGUF export cannot place it`, 'UNSUPPORTED_ARCHITECTURE');
    if (!isLoadableFloat(t.dtype)) throw new InputError(o.source.source.path, `${t.name} is ${t.dtype}; GGUF export converts float checkpoints`);
    if (!t.location?.range) throw new InputError(o.source.source.path, `${t.name} has no byte range`);
    // Vectors (norms, biases) in F32 as llama.cpp's converter writes them; matrices as the plan chose.
    const chosen = loadedDtype.get(t.name) ?? t.dtype;
    const dtype = t.shape.length === 1 ? 'float32' : chosen === 'float64' ? 'float32' : chosen;
    const permute = arch === 'llama' && /\.self_attn\.(q|k)_proj\.(weight|bias)$/.exec(t.name);
    plan.push({ src: t, name, dtype, ...(permute ? { permuteHeads: permute[1] === 'q' ? h.heads : h.kvHeads } : {}) });
  }
  const extra: { name: string; shape: number[]; dtype: string; data: Uint8Array }[] = [];
  if (h.freqFactors)
    extra.push({ name: 'rope_freqs.weight', shape: [h.freqFactors.length], dtype: 'float32', data: new Uint8Array(h.freqFactors.slice().buffer) });

  const metadata = { ...hyperMetadata(arch, h, o.source.source.path, plan), ...ggufVocabMetadata(modelDir, { vocabSize: h.vocab }) };
  const alignment = 32;
  const all = [...plan.map((p) => ({ name: p.name, shape: p.src.shape, dtype: p.dtype })), ...extra];
  const { infos, sizes, dataBytes } = layoutGgufTensors(all, alignment);
  const header = encodeGgufHeader({ metadata, tensors: infos, alignment });
  const dataStart = header.length;
  const partial = join(dirname(o.out) || '.', `.${basename(o.out)}.partial-${process.pid}`);
  const g = loadGgml();
  const sourceBytes = plan.reduce((n, p) => n + (p.src.location!.range![1] - p.src.location!.range![0]), 0);
  let done = 0;
  const progress = (n: number): void => {
    done += n;
    o.onProgress?.(done, sourceBytes);
  };
  const out = openSync(partial, 'w');
  const fds = new Map<string, number>();
  const pipe = new QuantizePipeline(o.threads ?? 4);
  try {
    writeAll(out, header, 0);
    for (const [i, p] of plan.entries()) {
      const file = isAbsolute(p.src.location!.file) ? p.src.location!.file : join(modelDir, p.src.location!.file);
      let fd = fds.get(file);
      if (fd === undefined) fds.set(file, (fd = openSync(file, 'r')));
      await writeTensor(g, pipe, fd, file, out, dataStart + Number(infos[i]!.offset), sizes[i]!, p, h, progress);
    }
    for (const [j, e] of extra.entries()) writeAll(out, e.data, dataStart + Number(infos[plan.length + j]!.offset));
    await pipe.drain();
    // ggml pads after the last tensor too: the file is a whole number of alignments long.
    writeAll(out, new Uint8Array(dataStart + dataBytes - lastEnd(dataStart, infos, sizes)), lastEnd(dataStart, infos, sizes));
    closeSync(out);
    renameSync(partial, o.out);
  } catch (e) {
    await pipe.abandon();
    try {
      closeSync(out);
    } catch {
      // Already closed before the rename failed.
    }
    if (existsSync(partial)) unlinkSync(partial);
    throw e;
  } finally {
    for (const fd of fds.values()) closeSync(fd);
  }
  const types = new Map<string, { tensors: number; bytes: number }>();
  all.forEach((t, i) => {
    const e = types.get(t.dtype) ?? { tensors: 0, bytes: 0 };
    e.tensors++;
    e.bytes += sizes[i]!;
    types.set(t.dtype, e);
  });
  return {
    path: o.out,
    bytes: dataStart + dataBytes,
    sourceBytes,
    types,
    params: plan.reduce((n, p) => n + p.src.shape.reduce((a, b) => a * b, 1), 0),
    seconds: (performance.now() - t0) / 1000,
  };
}

function lastEnd(dataStart: number, infos: { offset: number | bigint }[], sizes: number[]): number {
  return infos.length === 0 ? dataStart : dataStart + Number(infos[infos.length - 1]!.offset) + sizes[sizes.length - 1]!;
}

/** `<arch>.*` keys llama.cpp reads for a Llama-style model, and general.* */
function hyperMetadata(arch: string, h: LlamaHyper, source: string, plan: { src: SkeletonTensor; dtype: string }[]): Record<string, GgufWriteValue> {
  const matrixBytes = new Map<string, number>();
  for (const p of plan) if (p.src.shape.length === 2) matrixBytes.set(p.dtype, (matrixBytes.get(p.dtype) ?? 0) + tensorBytes(p.src.shape, p.dtype));
  const main = [...matrixBytes].sort((a, b) => b[1] - a[1])[0]?.[0] ?? 'float16';
  return {
    'general.architecture': arch,
    'general.name': basename(source.replace(/[/\\]+$/, '')),
    'general.file_type': gv.u32(FILE_TYPE[main] ?? 1),
    'general.quantization_version': gv.u32(2),
    'general.alignment': gv.u32(32),
    [`${arch}.vocab_size`]: gv.u32(h.vocab),
    [`${arch}.context_length`]: gv.u32(h.maxPositions),
    [`${arch}.embedding_length`]: gv.u32(h.hidden),
    [`${arch}.block_count`]: gv.u32(h.layers),
    [`${arch}.feed_forward_length`]: gv.u32(h.ffn),
    [`${arch}.attention.head_count`]: gv.u32(h.heads),
    [`${arch}.attention.head_count_kv`]: gv.u32(h.kvHeads),
    [`${arch}.attention.key_length`]: gv.u32(h.headDim),
    [`${arch}.attention.value_length`]: gv.u32(h.headDim),
    [`${arch}.rope.dimension_count`]: gv.u32(h.headDim),
    [`${arch}.attention.layer_norm_rms_epsilon`]: gv.f32(h.eps),
    [`${arch}.rope.freq_base`]: gv.f32(h.ropeTheta),
    ...(h.freqScale !== 1 ? { [`${arch}.rope.scaling.type`]: gv.string('linear'), [`${arch}.rope.scaling.factor`]: gv.f32(1 / h.freqScale) } : {}),
  };
}

/** One tensor into the file at `at`: copied, converted in chunks, or quantized in runs of rows. */
async function writeTensor(
  g: Ggml,
  pipe: QuantizePipeline,
  fd: number,
  file: string,
  out: number,
  at: number,
  size: number,
  p: { src: SkeletonTensor; dtype: string; permuteHeads?: number },
  h: LlamaHyper,
  progress: (n: number) => void,
): Promise<void> {
  const [start, end] = p.src.location!.range!;
  const total = end - start;
  // A vector is one row, except a permuted q/k bias: its values move as the matrix's rows do.
  const [rows, cols] =
    p.src.shape.length === 1
      ? p.permuteHeads
        ? [p.src.shape[0]!, 1]
        : [1, p.src.shape[0]!]
      : [p.src.shape.slice(0, -1).reduce((a, b) => a * b, 1), p.src.shape[p.src.shape.length - 1]!];
  const srcElem = total / (rows * cols);
  if (!Number.isInteger(srcElem)) throw new InputError(file, `${p.src.name}: ${total} bytes are not ${rows} rows of ${cols} values`);
  const to: GgmlType = ggmlTypeFor(p.dtype);
  const dstRow = g.rowSize(to, cols);
  if (dstRow * rows !== size) throw new InputError(file, `${p.src.name}: ${rows} rows of ${cols} make ${dstRow * rows} bytes of ${p.dtype}, not ${size}`);
  // Rows are read in order, except for a permuted q/k matrix: llama.cpp interleaves each head's two rotary halves.
  const order = p.permuteHeads ? permutedRows(rows, p.permuteHeads, h.headDim) : undefined;
  const readRows = (first: number, n: number, into: Uint8Array): void => {
    const rowBytes = cols * srcElem;
    if (!order) {
      if (readAt(fd, into, n * rowBytes, start + first * rowBytes) < n * rowBytes) throw new InputError(file, `ended inside ${p.src.name}`);
      return;
    }
    for (let r = 0; r < n; r++) {
      const view = into.subarray(r * rowBytes, (r + 1) * rowBytes);
      if (readAt(fd, view, rowBytes, start + order[first + r]! * rowBytes) < rowBytes) throw new InputError(file, `ended inside ${p.src.name}`);
    }
  };
  const perRun = Math.max(1, Math.floor(RUN / (cols * srcElem)));
  const quantized = to !== GGML_TYPE.F32 && to !== GGML_TYPE.F16 && to !== GGML_TYPE.BF16;
  for (let row = 0; row < rows; row += perRun) {
    const n = Math.min(perRun, rows - row);
    const bytes = new Uint8Array(n * cols * srcElem);
    readRows(row, n, bytes);
    const dst = at + row * dstRow;
    if (!quantized) {
      const data = p.src.dtype === p.dtype ? bytes : convert(g, bytes, p.src.dtype, to, n * cols, new Float32Array(n * cols));
      writeAll(out, data, dst);
      progress(bytes.length);
      continue;
    }
    await pipe.start(async () => {
      const f32 = new Float32Array(n * cols);
      if (p.src.dtype === 'float16' || p.src.dtype === 'bfloat16') await g.widenAsync(p.src.dtype, bytes, f32, n * cols);
      else convert(g, bytes, p.src.dtype, GGML_TYPE.F32, n * cols, f32);
      const q = await g.quantizeAsync(to, f32, n, cols);
      if (pipe.abandoned) return;
      writeAll(out, q, dst);
      progress(bytes.length);
    });
  }
}

/** Source row of each written row of a q/k matrix (or bias) of `heads` heads: (h, i, j) ← (h, j, i). */
function permutedRows(rows: number, heads: number, headDim: number): Int32Array {
  if (rows !== heads * headDim) throw new InputError('config.json', `a q/k projection of ${rows} rows is not ${heads} heads of ${headDim}`);
  const half = headDim / 2;
  const order = new Int32Array(rows);
  for (let hd = 0; hd < heads; hd++) for (let i = 0; i < half; i++) for (let j = 0; j < 2; j++) order[hd * headDim + 2 * i + j] = hd * headDim + j * half + i;
  return order;
}

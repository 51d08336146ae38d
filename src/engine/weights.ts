import { appendTo } from '../util/append.js';
import { closeSync, fstatSync, openSync } from 'node:fs';
import { alignUp } from '../planner/placement-units.js';
import { readAt } from '../util/read-fully.js';
import { isAbsolute, join } from 'node:path';
import { VramfitError } from '../util/errors.js';
import {
  cpuRepackBufferType,
  GGML_TYPE,
  hostBytes,
  mapFile,
  prefaultForWrite,
  type Buffer_,
  type Ctx,
  type GgmlType,
  type Ggml,
  type MappedFile,
  type Tensor,
} from './ggml/binding.js';
import type { Allocation, EngineDevice } from './device.js';
import type { SkeletonTensor } from '../reader/skeleton.js';
import { ggmlTypeId } from '../reader/formats/gguf.js';
import { QuantizePipeline } from './quantize-pipeline.js';

/** The ggml type each stored dtype loads as (matrices keep theirs; 1-D tensors become F32; float64 narrows to F32). */
const GGML_OF: Record<string, GgmlType> = { float32: GGML_TYPE.F32, float16: GGML_TYPE.F16, bfloat16: GGML_TYPE.BF16, float64: GGML_TYPE.F32 };
/** Bytes per element of the floating dtypes the loader converts between: the floats the engine loads. */
const ELEMENT: Record<string, number> = { float64: 8, float32: 4, float16: 2, bfloat16: 2 };

export function isLoadableFloat(dtype: string): boolean {
  return dtype in ELEMENT;
}

/** ggml's type for a stored dtype: the float types, and GGUF's block formats (used as stored). */
export function ggmlTypeFor(dtype: string): GgmlType {
  const t = GGML_OF[dtype] ?? ggmlTypeId(dtype);
  if (t === undefined)
    throw new VramfitError('UNSUPPORTED_DTYPE', `the engine cannot load ${dtype} weights (float32, float16, bfloat16 and GGUF block formats)`, 2);
  return t as GgmlType;
}

export interface WeightSpec {
  name: string;
  /** ggml shape, innermost first. */
  ne: number[];
  type: GgmlType;
  source: SkeletonTensor;
  /** Used in place from the memory-mapped checkpoint (disk offload) instead of copied into RAM. */
  mapped?: boolean;
  /** Of a disk-offloaded unit, but converted or transformed at load, so held in RAM after all. */
  offloadedToRam?: boolean;
  /** A change of layout applied while loading (see TensorTransform). */
  transform?: TensorTransform;
  /**
   * Checkpoint tensors stacked in order along the outermost dimension (ArchTensor.stack: an MoE
   * layer's experts); `source` is then the first of them. Loaded part by part, never mapped.
   */
  parts?: SkeletonTensor[];
  /**
   * Held in the CPU backend's repack buffer (CPU_REPACK: interleaved for its GEMM kernels), set in one piece (the
   * repacking needs the whole tensor). Only matrices the graph reads directly with ggml_mul_mat.
   */
  repacked?: boolean;
}

/** Bytes a spec reads from the checkpoint (every part of a stacked tensor). */
export function storedBytes(s: WeightSpec): number {
  return (s.parts ?? [s.source]).reduce((sum, p) => sum + (p.location!.range![1] - p.location!.range![0]), 0);
}

/**
 * Layout changes some checkpoints need once, at load time, instead of on every forward pass:
 * `transpose` a 2-D matrix (GPT-2's Conv1D stores [in, out]); `normalize-rows` to unit L2 norm
 * (Baichuan2's NormHead normalises its rows on every call; the result never changes).
 */
export type TensorTransform = 'transpose' | 'normalize-rows';

/** A device's weights: ggml tensors laid out in one capped buffer. */
export interface DeviceWeights {
  ctx: Ctx;
  tensors: Map<string, Tensor>;
  specs: WeightSpec[];
  /** Bytes of the RAM/VRAM buffers, the repack buffer's included (mapped tensors excluded). */
  bytes: number;
  /** Of `bytes`, those in the CPU repack buffer. */
  repackBytes: number;
  repackAllocation?: Allocation;
  /** Bytes used in place from mapped files. */
  mappedBytes: number;
  allocation?: Allocation;
  maps: { buffer: Buffer_; file: MappedFile }[];
}

const pad = alignUp;

/** Creates the tensors (no data yet) and says how many bytes their buffer needs on this device. */
export function describeWeights(g: Ggml, device: EngineDevice, specs: WeightSpec[]): DeviceWeights {
  const ctx = g.init(g.tensorOverhead() * (specs.length + 4) + 4096, true);
  const tensors = new Map<string, Tensor>();
  let bytes = 0;
  let repackBytes = 0;
  let mappedBytes = 0;
  const repack = cpuRepackBufferType(g);
  for (const s of specs) {
    const t = g.newTensor(ctx, s.type, s.ne);
    g.setName(t, s.name);
    tensors.set(s.name, t);
    if (s.mapped) mappedBytes += g.nbytes(t);
    else if (s.repacked && repack) {
      const n = pad(g.raw.ggml_backend_buft_get_alloc_size(repack, t) as number, device.alignment);
      bytes += n;
      repackBytes += n;
    } else bytes += pad(g.raw.ggml_backend_buft_get_alloc_size(device.buft, t) as number, device.alignment);
  }
  return { ctx, tensors, specs, bytes, repackBytes, mappedBytes, maps: [] };
}

/**
 * Allocates the buffer through the device's capped allocator and places every tensor in it; mapped
 * tensors point into their shard's mapping instead.
 */
export function placeWeights(g: Ggml, device: EngineDevice, w: DeviceWeights, modelDir: string): void {
  placeMapped(g, w, modelDir);
  const plain = w.bytes - w.repackBytes;
  if (plain > 0) {
    w.allocation = device.allocator.allocate(plain, 'weights');
    placeIn(g, device, w, w.allocation, device.buft, (s) => !s.mapped && !s.repacked);
  }
  const repack = cpuRepackBufferType(g);
  if (w.repackBytes > 0 && repack) {
    w.repackAllocation = device.allocator.allocate(w.repackBytes, 'weights-repacked', repack);
    placeIn(g, device, w, w.repackAllocation, repack, (s) => Boolean(s.repacked) && !s.mapped);
  }
}

function placeIn(g: Ggml, device: EngineDevice, w: DeviceWeights, a: Allocation, buft: unknown, mine: (s: WeightSpec) => boolean): void {
  const base = g.raw.ggml_backend_buffer_get_base(a.buffer) as bigint;
  let offset = 0;
  for (const s of w.specs) {
    if (!mine(s)) continue;
    const t = w.tensors.get(s.name)!;
    // ggml_backend_tensor_alloc runs the buffer's init_tensor: the repack buffer chooses the tensor's layout there.
    const status = g.raw.ggml_backend_tensor_alloc(a.buffer, t, base + BigInt(offset)) as number;
    if (status !== 0) throw new VramfitError('GGML', `could not place ${s.name} in device ${device.id}'s buffer`, 1);
    offset += pad(g.raw.ggml_backend_buft_get_alloc_size(buft, t) as number, device.alignment);
  }
}

function placeMapped(g: Ggml, w: DeviceWeights, modelDir: string): void {
  const byFile = new Map<string, WeightSpec[]>();
  for (const s of w.specs) if (s.mapped) appendTo(byFile, s.source.location!.file, s);
  for (const [rel, specs] of byFile) {
    const file = isAbsolute(rel) ? rel : join(modelDir, rel);
    const fd = openSync(file, 'r');
    let mapped: MappedFile;
    try {
      mapped = mapFile(fd, fstatSync(fd).size);
    } finally {
      closeSync(fd);
    }
    const buffer = g.raw.ggml_backend_cpu_buffer_from_ptr(mapped.ptr, mapped.size) as Buffer_ | null;
    if (!buffer) {
      mapped.unmap();
      throw new VramfitError('GGML', `could not wrap the mapping of ${file}`, 1);
    }
    w.maps.push({ buffer, file: mapped });
    for (const s of specs) {
      const t = w.tensors.get(s.name)!;
      const [start, end] = s.source.location!.range!;
      if (end - start !== g.nbytes(t)) throw new VramfitError('MMAP', `${s.name}: ${end - start} bytes on disk, ${g.nbytes(t)} needed in place`, 1);
      if (g.raw.ggml_backend_tensor_alloc(buffer, t, mapped.ptr + BigInt(start)) !== 0)
        throw new VramfitError('GGML', `could not place ${s.name} in its mapping`, 1);
    }
  }
}

const CHUNK = 8 * 1024 * 1024;

/**
 * Streams each tensor's bytes from its shard into the device buffer through one reusable chunk, so
 * host memory stays bounded whatever the shard size; converts dtype on the way when needed.
 */
export async function loadWeightData(g: Ggml, modelDir: string, w: DeviceWeights, onBytes: (n: number) => void, threads = 1): Promise<void> {
  const chunk = new Uint8Array(CHUNK);
  const pipe = new QuantizePipeline(threads);
  const buffers = new RunBuffers();
  const converted = new Float32Array(CHUNK / 2);
  const fds = new Map<string, number>();
  // A host (CPU) buffer is faulted in with one call up front, which is cheaper than a page fault per
  // 4 KiB as the copy first touches it, and tensors stored as used are then read straight into it:
  // one copy (page cache → buffer) instead of two (page cache → chunk → buffer).
  const host = w.allocation !== undefined && (g.raw.ggml_backend_buffer_is_host(w.allocation.buffer) as boolean);
  if (host) prefaultForWrite(g.raw.ggml_backend_buffer_get_base(w.allocation!.buffer) as bigint, w.allocation!.bytes);
  try {
    const ordered = w.specs
      .filter((s) => !s.mapped && !s.parts)
      .sort((a, b) => (a.source.location!.file + a.source.location!.range![0]).localeCompare(b.source.location!.file + b.source.location!.range![0]));
    for (const s of ordered) {
      const loc = s.source.location;
      if (!loc?.range) throw new VramfitError('NO_DATA', `${s.name} has no byte range (the engine loads safetensors checkpoints)`, 2);
      const file = isAbsolute(loc.file) ? loc.file : join(modelDir, loc.file);
      let fd = fds.get(file);
      if (fd === undefined) {
        fd = openSync(file, 'r');
        fds.set(file, fd);
      }
      const t = w.tensors.get(s.name)!;
      const from = s.source.dtype;
      const to = s.type;
      const [start, end] = loc.range;
      const total = end - start;
      if (s.transform) {
        loadTransformed(g, fd, file, s, t, start, total);
        onBytes(total);
        continue;
      }
      if (sameType(from, to) && s.repacked) {
        // The repack buffer rearranges a tensor as it is set, whole.
        if (total !== g.nbytes(t)) throw new VramfitError('SIZE', `${s.name}: ${total} bytes stored, ${g.nbytes(t)} expected`, 2);
        const whole = new Uint8Array(total);
        readFully(fd, whole, total, start, file, s.name);
        g.raw.ggml_backend_tensor_set(t, whole, 0, total);
        onBytes(total);
        continue;
      }
      if (sameType(from, to)) {
        // Stored as it will be used (any ggml type, block formats included): copy bytes through.
        if (total > g.nbytes(t)) throw new VramfitError('SIZE', `${s.name}: ${total} bytes stored, ${g.nbytes(t)} expected`, 2);
        const data = host ? (g.raw.ggml_get_data(t) as bigint) : 0n;
        for (let done = 0; done < total;) {
          const n = Math.min(CHUNK, total - done);
          if (host) readFully(fd, hostBytes(data + BigInt(done), n), n, start + done, file, s.name);
          else {
            readFully(fd, chunk, n, start + done, file, s.name);
            g.raw.ggml_backend_tensor_set(t, chunk.subarray(0, n), done, n);
          }
          done += n;
          onBytes(n);
        }
        continue;
      }
      if (isBlockType(to)) {
        await loadQuantized(g, pipe, buffers, host, fd, file, s, t, start, total, onBytes);
        continue;
      }
      const srcElem = ELEMENT[from] ?? 2;
      const dstElem = to === GGML_TYPE.F32 ? 4 : 2;
      const step = Math.floor(CHUNK / Math.max(srcElem, dstElem) / 4) * 4 * srcElem;
      for (let done = 0; done < total;) {
        const n = Math.min(step, total - done);
        readFully(fd, chunk, n, start + done, file, s.name);
        const elems = n / srcElem;
        const dstOffset = (done / srcElem) * dstElem;
        const out = convert(g, chunk.subarray(0, n), from, to, elems, converted);
        g.raw.ggml_backend_tensor_set(t, out, dstOffset, elems * dstElem);
        done += n;
        onBytes(n);
      }
    }
    for (const s of w.specs)
      if (s.parts && !s.mapped) await loadStacked(g, pipe, buffers, host, modelDir, s, w.tensors.get(s.name)!, fds, chunk, converted, onBytes);
    await pipe.drain();
  } finally {
    // Runs still in flight hold the file's bytes and would write into a buffer the caller is about to free.
    await pipe.abandon();
    for (const fd of fds.values()) closeSync(fd);
  }
}

/**
 * A stacked tensor is read part by part, each part into its own slice of the stack (part i at
 * i · nbytes / parts), converting dtype on the way as for any other tensor.
 */
async function loadStacked(
  g: Ggml,
  pipe: QuantizePipeline,
  buffers: RunBuffers,
  host: boolean,
  modelDir: string,
  s: WeightSpec,
  t: Tensor,
  fds: Map<string, number>,
  chunk: Uint8Array,
  converted: Float32Array,
  onBytes: (n: number) => void,
): Promise<void> {
  const parts = s.parts!;
  const slice = g.nbytes(t) / parts.length;
  for (const [i, part] of parts.entries()) {
    const loc = part.location;
    if (!loc?.range) throw new VramfitError('NO_DATA', `${s.name}: part ${i} has no byte range`, 2);
    const file = isAbsolute(loc.file) ? loc.file : join(modelDir, loc.file);
    let fd = fds.get(file);
    if (fd === undefined) {
      fd = openSync(file, 'r');
      fds.set(file, fd);
    }
    const [start, end] = loc.range;
    const total = end - start;
    const same = sameType(part.dtype, s.type);
    if (!same && isBlockType(s.type)) {
      // Each part is whole rows, so it quantizes into its own slice (--quantize on an MoE layer's experts).
      if ((total / (ELEMENT[part.dtype] ?? 2) / s.ne[0]!) * g.rowSize(s.type, s.ne[0]!) !== slice)
        throw new VramfitError('SIZE', `${s.name}: part ${i} does not fill its slice`, 2);
      await loadQuantized(g, pipe, buffers, host, fd, file, { ...s, source: part }, t, start, total, onBytes, i * slice);
      continue;
    }
    if (!same && !(part.dtype in GGML_OF))
      throw new VramfitError('UNSUPPORTED_DTYPE', `${s.name}: cannot convert ${part.dtype} parts to ggml type ${s.type}`, 2);
    const srcElem = ELEMENT[part.dtype] ?? 2;
    const dstElem = s.type === GGML_TYPE.F32 ? 4 : 2;
    // A part that does not fill its slice exactly would be written past it: ggml aborts on that.
    const fills = same ? total : (total / srcElem) * dstElem;
    if (!Number.isInteger(slice) || fills !== slice) throw new VramfitError('SIZE', `${s.name}: part ${i} holds ${fills} bytes, its slice ${slice}`, 2);
    const base = i * slice;
    const step = same ? CHUNK : Math.floor(CHUNK / Math.max(srcElem, dstElem) / 4) * 4 * srcElem;
    for (let done = 0; done < total;) {
      const n = Math.min(step, total - done);
      readFully(fd, chunk, n, start + done, file, s.name);
      if (same) g.raw.ggml_backend_tensor_set(t, chunk.subarray(0, n), base + done, n);
      else {
        const elems = n / srcElem;
        const out = convert(g, chunk.subarray(0, n), part.dtype, s.type, elems, converted);
        g.raw.ggml_backend_tensor_set(t, out, base + (done / srcElem) * dstElem, elems * dstElem);
      }
      done += n;
      onBytes(n);
    }
  }
}

/**
 * A transformed tensor is read whole (one tensor, never a whole shard), widened to float32, changed, and narrowed to
 * its load type. A block-quantized one (a GGUF's NormHead) is dequantized and quantized back to its type by ggml;
 * only row normalisation applies to it (a transpose would cut across its blocks).
 */
function loadTransformed(g: Ggml, fd: number, file: string, s: WeightSpec, t: Tensor, start: number, total: number): void {
  const float = s.source.dtype in GGML_OF;
  if (s.ne.length !== 2 || (!float && s.transform !== 'normalize-rows'))
    throw new VramfitError('TRANSFORM', `${s.name}: ${s.transform} needs a 2-D ${s.transform === 'transpose' ? 'float ' : ''}tensor`, 2);
  const raw = new Uint8Array(total);
  readFully(fd, raw, total, start, file, s.name);
  const elems = s.ne[0]! * s.ne[1]!;
  let f32: Float32Array;
  if (float) {
    f32 = new Float32Array(elems);
    convert(g, raw, s.source.dtype, GGML_TYPE.F32, elems, f32);
  } else f32 = g.dequantize(ggmlTypeFor(s.source.dtype), raw, elems);
  // Stored row-major as the checkpoint's [rows, cols]; ggml's ne is [cols', rows'] of the result.
  const [cols, rows] = s.transform === 'transpose' ? [s.ne[1]!, s.ne[0]!] : [s.ne[0]!, s.ne[1]!];
  let out = f32;
  if (s.transform === 'transpose') {
    out = new Float32Array(elems);
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = f32[r * cols + c]!;
  } else {
    for (let r = 0; r < rows; r++) {
      let sum = 0;
      for (let c = 0; c < cols; c++) sum += f32[r * cols + c]! ** 2;
      // torch.nn.functional.normalize: divide by max(norm, 1e-12).
      const scale = 1 / Math.max(Math.sqrt(sum), 1e-12);
      for (let c = 0; c < cols; c++) out[r * cols + c]! *= scale;
    }
  }
  const isFloat = s.type === GGML_TYPE.F32 || s.type === GGML_TYPE.F16 || s.type === GGML_TYPE.BF16;
  const bytes = isFloat ? convert(g, new Uint8Array(out.buffer), 'float32', s.type, elems, new Float32Array(elems)) : g.quantize(s.type, out, rows, cols);
  g.raw.ggml_backend_tensor_set(t, bytes, 0, bytes.byteLength);
}

function isBlockType(t: GgmlType): boolean {
  return t !== GGML_TYPE.F32 && t !== GGML_TYPE.F16 && t !== GGML_TYPE.BF16;
}

/**
 * A float tensor converted to a block type at load (`--quantize`): runs of whole rows (about QUANTIZE_RUN bytes of
 * source each) are read on the main thread, then widened to float32 and quantized by ggml_quantize_chunk on libuv's
 * pool, `threads` runs at once, each landing in the device buffer as it finishes. Host memory stays bounded by the
 * runs in flight.
 */
async function loadQuantized(
  g: Ggml,
  pipe: QuantizePipeline,
  buffers: RunBuffers,
  host: boolean,
  fd: number,
  file: string,
  s: WeightSpec,
  t: Tensor,
  start: number,
  total: number,
  onBytes: (n: number) => void,
  base = 0,
): Promise<void> {
  const from = s.source.dtype;
  if (!(from in ELEMENT)) throw new VramfitError('UNSUPPORTED_DTYPE', `${s.name}: cannot convert ${from} to ggml type ${s.type}`, 2);
  const cols = s.ne[0]!;
  const rows = total / (cols * ELEMENT[from]!);
  if (!Number.isInteger(rows) || cols % g.blockSize(s.type) !== 0)
    throw new VramfitError('SIZE', `${s.name}: ${total} bytes are not whole rows of ${cols} values in whole blocks of ggml type ${s.type}`, 2);
  const srcRow = cols * ELEMENT[from]!;
  const dstRow = g.rowSize(s.type, cols);
  const perRun = Math.max(1, Math.floor(QUANTIZE_RUN / srcRow));
  // A repacked tensor is set whole (the repack buffer rearranges it then): its quantized rows are gathered first.
  const whole = s.repacked ? new Uint8Array(rows * dstRow) : undefined;
  const data = host && !whole ? (g.raw.ggml_get_data(t) as bigint) : undefined;
  const runs: Promise<void>[] = [];
  for (let row = 0; row < rows;) {
    const n = Math.min(perRun, rows - row);
    const at = row;
    const { settled } = await pipe.start(async () => {
      const b = buffers.take(n * srcRow, n * cols, n * dstRow);
      try {
        readFully(fd, b.src, n * srcRow, start + at * srcRow, file, s.name);
        const f32 = await widen(g, b.src, from, n * cols, b.f32);
        if (pipe.abandoned) return;
        // In host memory the rows are quantized straight into the tensor: no copy.
        const into = whole ? whole.subarray(at * dstRow) : data !== undefined ? hostBytes(data + BigInt(base + at * dstRow), n * dstRow) : b.out;
        const q = await g.quantizeAsync(s.type, f32, n, cols, into);
        if (pipe.abandoned) return;
        if (!whole && data === undefined) g.raw.ggml_backend_tensor_set(t, q, base + at * dstRow, q.byteLength);
        onBytes(n * srcRow);
      } finally {
        buffers.give(b);
      }
    });
    runs.push(settled);
    row += n;
  }
  // Set once its rows are in, while the next tensor is read and quantized (the repack itself is single-threaded).
  if (whole) pipe.follow(runs, () => g.raw.ggml_backend_tensor_set(t, whole, 0, whole.byteLength));
}

/** Source bytes per quantization run: big enough that a call's cost is noise, small enough that runs × threads stay small. */
const QUANTIZE_RUN = 2 * 1024 * 1024;

/** Float bytes as float32 in `into`: float16/bfloat16 by ggml's row functions on the pool, the others here. */
async function widen(g: Ggml, bytes: Uint8Array, from: string, n: number, into: Float32Array): Promise<Float32Array> {
  const out = into.subarray(0, n);
  if (from === 'float16' || from === 'bfloat16') await g.widenAsync(from, bytes, out, n);
  else convert(g, bytes, from, GGML_TYPE.F32, n, out);
  return out;
}

interface RunBuffer {
  src: Uint8Array;
  f32: Float32Array;
  out: Uint8Array;
}

/**
 * Each run's source, float32 and quantized bytes, reused from run to run: fresh buffers per run cost more in
 * zero-filling and garbage collection than quantizing to q8_0 does. At most one set per run in flight.
 */
class RunBuffers {
  private readonly free: RunBuffer[] = [];

  take(srcBytes: number, elems: number, outBytes: number): RunBuffer {
    const b = this.free.pop() ?? { src: new Uint8Array(0), f32: new Float32Array(0), out: new Uint8Array(0) };
    if (b.src.length < srcBytes) b.src = new Uint8Array(Math.max(srcBytes, QUANTIZE_RUN));
    if (b.f32.length < elems) b.f32 = new Float32Array(Math.max(elems, QUANTIZE_RUN / 2));
    if (b.out.length < outBytes) b.out = new Uint8Array(Math.max(outBytes, QUANTIZE_RUN / 2));
    return b;
  }

  give(b: RunBuffer): void {
    this.free.push(b);
  }
}

function sameType(from: string, to: GgmlType): boolean {
  // float64 loads as F32 but its bytes are not F32's: it always goes through the conversion.
  return from !== 'float64' && (GGML_OF[from] ?? ggmlTypeId(from)) === to;
}

function readFully(fd: number, into: Uint8Array, n: number, position: number, file: string, tensor: string): void {
  if (readAt(fd, into, n, position) < n) throw new VramfitError('TRUNCATED', `${file}: ended inside ${tensor}`, 2);
}

/** Converts `elems` values from float64/float32/float16/bfloat16 to the load type through float32. */
export function convert(g: Ggml, src: Uint8Array, from: string, to: GgmlType, elems: number, f32: Float32Array): Uint8Array {
  const tmp = f32.subarray(0, elems);
  if (from === 'float32') tmp.set(new Float32Array(src.buffer, src.byteOffset, elems));
  else if (from === 'float64') {
    // A Float64Array view needs 8-byte alignment; the read chunk may not give it.
    const f64 = src.byteOffset % 8 === 0 ? new Float64Array(src.buffer, src.byteOffset, elems) : new Float64Array(src.slice(0, elems * 8).buffer);
    for (let i = 0; i < elems; i++) tmp[i] = f64[i]!;
  } else if (from === 'bfloat16') {
    const u16 = new Uint16Array(src.buffer, src.byteOffset, elems);
    const u32 = new Uint32Array(tmp.buffer, tmp.byteOffset, elems);
    for (let i = 0; i < elems; i++) u32[i] = u16[i]! << 16;
  } else g.raw.ggml_fp16_to_fp32_row(src, tmp, elems);
  if (to === GGML_TYPE.F32) return new Uint8Array(tmp.buffer, tmp.byteOffset, elems * 4);
  const out = new Uint16Array(elems);
  if (to === GGML_TYPE.F16) g.raw.ggml_fp32_to_fp16_row(tmp, out, elems);
  else g.raw.ggml_fp32_to_bf16_row(tmp, out, elems);
  return new Uint8Array(out.buffer);
}

export function freeWeights(g: Ggml, device: EngineDevice, w: DeviceWeights): void {
  if (w.allocation) device.allocator.free(w.allocation);
  if (w.repackAllocation) device.allocator.free(w.repackAllocation);
  for (const m of w.maps) {
    g.raw.ggml_backend_buffer_free(m.buffer);
    m.file.unmap();
  }
  w.maps = [];
  g.free(w.ctx);
}

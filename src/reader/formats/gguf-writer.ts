/**
 * Writes GGUF v3 files for tests and demos. Metadata types are explicit where JavaScript cannot say
 * them (`gv.u32(5)` vs `gv.f32(5)`); plain values get the types llama.cpp's converter would use.
 * `encodeGgufHeader` works on raw tensor infos and count overrides so tests can craft broken files.
 */
import { closeSync, ftruncateSync, openSync } from 'node:fs';
import { tensorBytes } from '../dtypes.js';
import { GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VALUE_TYPES, ggmlTypeId, type GgufValueType } from './gguf.js';
import { writeAll, writeRandom } from './safetensors-writer.js';

type ScalarType = Exclude<GgufValueType, 'array'>;

/** A metadata value with its GGUF type spelled out. `raw` writes any type id and payload, for crafting bad files. */
export type GgufTyped =
  | { type: ScalarType; value: number | bigint | boolean | string }
  | { type: 'array'; itemType: GgufValueType; value: GgufWriteValue[] }
  | { type: 'raw'; typeId: number; bytes: Uint8Array };

/**
 * Plain values are typed by inference: string → string, boolean → bool, bigint → i64/u64,
 * integer → u32 (i32 if negative, u64/i64 beyond 32 bits), other numbers → f32, arrays by their items.
 */
export type GgufWriteValue = GgufTyped | string | number | bigint | boolean | GgufWriteValue[];

/** Typed-value constructors: `gv.u32(4096)`, `gv.array('f32', scores)`. */
export const gv = {
  u8: (value: number): GgufTyped => ({ type: 'u8', value }),
  i8: (value: number): GgufTyped => ({ type: 'i8', value }),
  u16: (value: number): GgufTyped => ({ type: 'u16', value }),
  i16: (value: number): GgufTyped => ({ type: 'i16', value }),
  u32: (value: number): GgufTyped => ({ type: 'u32', value }),
  i32: (value: number): GgufTyped => ({ type: 'i32', value }),
  f32: (value: number): GgufTyped => ({ type: 'f32', value }),
  u64: (value: number | bigint): GgufTyped => ({ type: 'u64', value }),
  i64: (value: number | bigint): GgufTyped => ({ type: 'i64', value }),
  f64: (value: number): GgufTyped => ({ type: 'f64', value }),
  bool: (value: boolean): GgufTyped => ({ type: 'bool', value }),
  string: (value: string): GgufTyped => ({ type: 'string', value }),
  array: (itemType: GgufValueType, value: GgufWriteValue[]): GgufTyped => ({ type: 'array', itemType, value }),
};

/** A tensor info as stored: ggml `ne` order, raw type id and data-relative offset, all unchecked. */
export interface GgufRawTensorInfo {
  name: string;
  ne: (number | bigint)[];
  ggmlType: number;
  offset: number | bigint;
}

export interface GgufHeaderSpec {
  /** Default 3. */
  version?: number;
  metadata?: Record<string, GgufWriteValue>;
  tensors?: GgufRawTensorInfo[];
  /** Pads the header to this; default `general.alignment` from metadata, else 32. */
  alignment?: number;
  /** Override the stored counts (to craft files that lie about them). */
  tensorCount?: number | bigint;
  kvCount?: number | bigint;
}

export interface GgufWriteTensor {
  name: string;
  /** PyTorch order; written reversed as ggml `ne`. */
  shape: number[];
  dtype: string;
  /** Exactly the tensor's byte size; omitted means zero- or random-filled per `fill`. */
  data?: Uint8Array;
}

export interface GgufWriteSpec {
  metadata?: Record<string, GgufWriteValue>;
  tensors: GgufWriteTensor[];
}

export interface GgufWriteOptions {
  /** `zero` (default) leaves a sparse hole; `random` streams deterministic bytes from `seed`. */
  fill?: 'zero' | 'random';
  seed?: number;
}

export interface GgufWriteResult {
  dataStart: number;
  fileSize: number;
  alignment: number;
  /** Absolute byte range of each tensor, in the order given. */
  ranges: [number, number][];
}

const TYPE_ID = new Map<string, number>(GGUF_VALUE_TYPES.map((t, i) => [t, i]));
const enc = new TextEncoder();

/** Growable little-endian byte sink. */
class Sink {
  private buf = new Uint8Array(256);
  private view = new DataView(this.buf.buffer);
  length = 0;

  private room(n: number): DataView {
    if (this.length + n > this.buf.length) {
      const next = new Uint8Array(Math.max(this.buf.length * 2, this.length + n));
      next.set(this.buf.subarray(0, this.length));
      this.buf = next;
      this.view = new DataView(next.buffer);
    }
    return this.view;
  }
  u8(v: number): void {
    this.room(1).setUint8(this.length, v);
    this.length += 1;
  }
  i8(v: number): void {
    this.room(1).setInt8(this.length, v);
    this.length += 1;
  }
  u16(v: number): void {
    this.room(2).setUint16(this.length, v, true);
    this.length += 2;
  }
  i16(v: number): void {
    this.room(2).setInt16(this.length, v, true);
    this.length += 2;
  }
  u32(v: number): void {
    this.room(4).setUint32(this.length, v, true);
    this.length += 4;
  }
  i32(v: number): void {
    this.room(4).setInt32(this.length, v, true);
    this.length += 4;
  }
  f32(v: number): void {
    this.room(4).setFloat32(this.length, v, true);
    this.length += 4;
  }
  f64(v: number): void {
    this.room(8).setFloat64(this.length, v, true);
    this.length += 8;
  }
  u64(v: number | bigint): void {
    this.room(8).setBigUint64(this.length, BigInt(v), true);
    this.length += 8;
  }
  i64(v: number | bigint): void {
    this.room(8).setBigInt64(this.length, BigInt(v), true);
    this.length += 8;
  }
  bytes(b: Uint8Array): void {
    this.room(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  string(s: string): void {
    const b = enc.encode(s);
    this.u64(b.length);
    this.bytes(b);
  }
  pad(alignment: number): void {
    while (this.length % alignment !== 0) this.u8(0);
  }
  result(): Uint8Array {
    return this.buf.slice(0, this.length);
  }
}

function inferType(v: GgufWriteValue): GgufValueType | 'raw' {
  if (Array.isArray(v)) return 'array';
  switch (typeof v) {
    case 'string':
      return 'string';
    case 'boolean':
      return 'bool';
    case 'bigint':
      return v < 0n ? 'i64' : 'u64';
    case 'number':
      if (!Number.isInteger(v)) return 'f32';
      if (v >= 0) return v <= 0xffffffff ? 'u32' : 'u64';
      return v >= -0x80000000 ? 'i32' : 'i64';
    default:
      return v.type;
  }
}

/** Item type for a plain array: the widest its items need, so [1, -2, 0.5] is f32 and [1, 2] is u32. */
function inferItemType(items: GgufWriteValue[]): GgufValueType {
  const types = new Set(items.map(inferType));
  if (types.size === 0) return 'u32';
  if (types.has('raw')) throw new Error('raw values cannot be array items');
  if (types.size === 1) return [...types][0] as GgufValueType;
  if ([...types].every((t) => ['u32', 'i32', 'u64', 'i64', 'f32'].includes(t))) {
    if (types.has('f32')) return 'f32';
    if (types.has('i64') || (types.has('u64') && types.has('i32'))) return 'i64';
    return types.has('u64') ? 'u64' : 'i32';
  }
  throw new Error(`array mixes item types ${[...types].join(', ')}`);
}

function unwrap(v: GgufWriteValue): unknown {
  return typeof v === 'object' && !Array.isArray(v) ? (v as { value?: unknown }).value : v;
}

/** Writes a value's payload (not its type id) as `type`. */
function writePayload(sink: Sink, type: GgufValueType, v: GgufWriteValue): void {
  const raw = unwrap(v);
  switch (type) {
    case 'u8':
      return sink.u8(Number(raw));
    case 'i8':
      return sink.i8(Number(raw));
    case 'u16':
      return sink.u16(Number(raw));
    case 'i16':
      return sink.i16(Number(raw));
    case 'u32':
      return sink.u32(Number(raw));
    case 'i32':
      return sink.i32(Number(raw));
    case 'f32':
      return sink.f32(Number(raw));
    case 'f64':
      return sink.f64(Number(raw));
    case 'u64':
      return sink.u64(raw as number | bigint);
    case 'i64':
      return sink.i64(raw as number | bigint);
    case 'bool':
      return sink.u8(raw ? 1 : 0);
    case 'string':
      return sink.string(String(raw));
    case 'array': {
      const items = (Array.isArray(v) ? v : raw) as GgufWriteValue[];
      const itemType = !Array.isArray(v) && typeof v === 'object' && v.type === 'array' ? v.itemType : inferItemType(items);
      sink.u32(TYPE_ID.get(itemType)!);
      sink.u64(items.length);
      for (const item of items) {
        // Nested arrays carry their own item type, so each is written from its own value.
        writePayload(sink, itemType, item);
      }
      return;
    }
  }
}

function writeValue(sink: Sink, v: GgufWriteValue): void {
  if (typeof v === 'object' && !Array.isArray(v) && v.type === 'raw') {
    sink.u32(v.typeId);
    sink.bytes(v.bytes);
    return;
  }
  const type = inferType(v) as GgufValueType;
  sink.u32(TYPE_ID.get(type)!);
  writePayload(sink, type, v);
}

function alignmentFrom(metadata: Record<string, GgufWriteValue>): number {
  const v = metadata['general.alignment'];
  const n = v === undefined ? GGUF_DEFAULT_ALIGNMENT : Number(unwrap(v));
  return Number.isInteger(n) && n > 0 ? n : GGUF_DEFAULT_ALIGNMENT;
}

/** Magic, counts, metadata and tensor infos, zero-padded to the alignment: the bytes before the data section. */
export function encodeGgufHeader(spec: GgufHeaderSpec): Uint8Array {
  const metadata = spec.metadata ?? {};
  const tensors = spec.tensors ?? [];
  const sink = new Sink();
  sink.u32(GGUF_MAGIC);
  sink.u32(spec.version ?? 3);
  sink.u64(spec.tensorCount ?? tensors.length);
  sink.u64(spec.kvCount ?? Object.keys(metadata).length);
  for (const [key, value] of Object.entries(metadata)) {
    sink.string(key);
    writeValue(sink, value);
  }
  for (const t of tensors) {
    sink.string(t.name);
    sink.u32(t.ne.length);
    for (const d of t.ne) sink.u64(d);
    sink.u32(t.ggmlType);
    sink.u64(t.offset);
  }
  sink.pad(spec.alignment ?? alignmentFrom(metadata));
  return sink.result();
}

/** Tensor infos for tensors laid out back to back, each padded to the alignment as ggml's writer does. */
export function layoutGgufTensors(
  tensors: readonly Pick<GgufWriteTensor, 'name' | 'shape' | 'dtype'>[],
  alignment: number,
): { infos: GgufRawTensorInfo[]; sizes: number[]; dataBytes: number } {
  const infos: GgufRawTensorInfo[] = [];
  const sizes: number[] = [];
  let at = 0;
  for (const t of tensors) {
    const id = ggmlTypeId(t.dtype);
    if (id === undefined) throw new Error(`tensor ${t.name}: dtype ${JSON.stringify(t.dtype)} cannot be stored in GGUF`);
    const size = tensorBytes(t.shape, t.dtype);
    if (!Number.isSafeInteger(size)) throw new Error(`tensor ${t.name}: shape [${t.shape.join(', ')}] is not whole ${t.dtype} blocks`);
    infos.push({ name: t.name, ne: [...t.shape].reverse(), ggmlType: id, offset: at });
    sizes.push(size);
    at += Math.ceil(size / alignment) * alignment;
  }
  // ggml pads after the last tensor too, so the file length is a multiple of the alignment.
  return { infos, sizes, dataBytes: at };
}

/** Writes a valid GGUF v3 file, streaming tensor data so large files never sit in memory. */
export function writeGguf(path: string, spec: GgufWriteSpec, options: GgufWriteOptions = {}): GgufWriteResult {
  const metadata = spec.metadata ?? {};
  const alignment = alignmentFrom(metadata);
  const { infos, sizes, dataBytes } = layoutGgufTensors(spec.tensors, alignment);
  const header = encodeGgufHeader({ metadata, tensors: infos, alignment });
  const dataStart = header.length;
  const fileSize = dataStart + dataBytes;
  const ranges: [number, number][] = infos.map((info, i) => {
    const start = dataStart + Number(info.offset);
    return [start, start + sizes[i]!];
  });
  const state = { s: options.seed ?? 1 };
  const fd = openSync(path, 'w');
  try {
    writeAll(fd, header, 0);
    spec.tensors.forEach((t, i) => {
      const [start, end] = ranges[i]!;
      if (t.data) {
        if (t.data.length !== end - start) throw new Error(`tensor ${t.name}: data is ${t.data.length} bytes, shape and dtype need ${end - start}`);
        writeAll(fd, t.data, start);
      } else if (options.fill === 'random') {
        writeRandom(fd, end - start, start, state);
      }
    });
    ftruncateSync(fd, fileSize);
  } finally {
    closeSync(fd);
  }
  return { dataStart, fileSize, alignment, ranges };
}

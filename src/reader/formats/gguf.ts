/**
 * GGUF header parser (versions 2 and 3, little-endian). Layout: magic `GGUF`, u32 version,
 * u64 tensor count, u64 metadata count, the metadata key/values, the tensor infos, padding to
 * `general.alignment`, then the data section. Only the header is read, through a cursor that pulls
 * bounded chunks, so a many-MB tokenizer array costs a few chunk reads and the weights none.
 * Every length or count in the file is checked against the bytes left before anything is sized by it.
 */
import { closeSync, fstatSync, openSync } from 'node:fs';
import { readBytes } from '../../util/read-fully.js';
import { lookupDType, tensorBytes } from '../dtypes.js';
import { FormatError } from '../../util/errors.js';
import { assertRegularFile } from '../../util/regular-file.js';

/** Random access to a file's bytes. `read` returns fewer bytes than asked only at the end of the source. */
export interface ChunkSource {
  readonly size: number;
  read(position: number, length: number): Uint8Array;
}

export function bufferSource(bytes: Uint8Array): ChunkSource {
  return { size: bytes.length, read: (position, length) => bytes.subarray(position, position + length) };
}

export function fileSource(fd: number): ChunkSource {
  return {
    size: fstatSync(fd).size,
    read: (position, length) => readBytes(fd, length, position),
  };
}

/** Metadata value types in GGUF id order (GGUF_TYPE_UINT8 = 0 ... GGUF_TYPE_FLOAT64 = 12). */
export const GGUF_VALUE_TYPES = ['u8', 'i8', 'u16', 'i16', 'u32', 'i32', 'f32', 'bool', 'string', 'array', 'u64', 'i64', 'f64'] as const;
export type GgufValueType = (typeof GGUF_VALUE_TYPES)[number];

/** 64-bit integers are numbers when exactly representable, bigints otherwise. */
export type GgufValue = number | bigint | string | boolean | GgufValue[];

/** ggml type id → vramfit dtype name (ggml.h `enum ggml_type`; 4, 5, 31-33, 36-38 were removed from ggml). */
export const GGML_TYPES: Readonly<Record<number, string>> = {
  0: 'float32',
  1: 'float16',
  2: 'q4_0',
  3: 'q4_1',
  6: 'q5_0',
  7: 'q5_1',
  8: 'q8_0',
  9: 'q8_1',
  10: 'q2_k',
  11: 'q3_k',
  12: 'q4_k',
  13: 'q5_k',
  14: 'q6_k',
  15: 'q8_k',
  16: 'iq2_xxs',
  17: 'iq2_xs',
  18: 'iq3_xxs',
  19: 'iq1_s',
  20: 'iq4_nl',
  21: 'iq3_s',
  22: 'iq2_s',
  23: 'iq4_xs',
  24: 'int8',
  25: 'int16',
  26: 'int32',
  27: 'int64',
  28: 'float64',
  29: 'iq1_m',
  30: 'bfloat16',
  34: 'tq1_0',
  35: 'tq2_0',
  39: 'mxfp4',
};

const GGML_IDS = new Map(Object.entries(GGML_TYPES).map(([id, name]) => [name, Number(id)]));

/** The ggml type id for a dtype name or alias; undefined when GGUF cannot hold it. */
export function ggmlTypeId(dtype: string): number | undefined {
  const info = lookupDType(dtype);
  return info ? GGML_IDS.get(info.name) : undefined;
}

export interface GgufTensor {
  name: string;
  /** PyTorch order: ggml's `ne` reversed, so the last dimension is ggml's contiguous row. */
  shape: number[];
  ggmlType: number;
  dtype: string;
  /** Absolute byte range [start, end) inside the file. */
  range: [number, number];
}

export interface GgufHeader {
  version: number;
  metadata: Record<string, GgufValue>;
  /** The stored type of each metadata value (arrays report `array`). */
  metadataTypes: Record<string, GgufValueType>;
  /** In tensor-info order, as llama.cpp lists them. */
  tensors: GgufTensor[];
  alignment: number;
  /** Absolute offset of the data section; tensor offsets are relative to it. */
  dataStart: number;
  fileSize: number;
  /** Bytes actually read from the source. */
  bytesRead: number;
}

export interface GgufParseOptions {
  /** Largest single read, in bytes (default 1 MiB). Longer strings are read in one piece of their own size. */
  chunkSize?: number;
  /** Lower (or raise) the sanity caps; tests use small ones. */
  limits?: Partial<GgufLimits>;
}

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_DEFAULT_ALIGNMENT = 32;
const MAX_DIMS = 4;
/** ggml itself rejects nested arrays; we read them but cap the depth so a crafted file cannot exhaust the stack. */
const MAX_ARRAY_DEPTH = 16;
/**
 * Checks against the file size alone do not protect a multi-GB file with one corrupted count: its
 * data section would be parsed as metadata into JS arrays many times its size. Real headers are a
 * few MB (the largest vocabularies are ~260k tokens), so these caps are far above any real file.
 */
export interface GgufLimits {
  /** Bytes of header (metadata + tensor infos) the parser will read before calling the file corrupt. */
  headerBytes: number;
  /** Items in one metadata array. */
  arrayLength: number;
  /** Bytes in one string (a chat template is tens of KB). */
  stringBytes: number;
}

export const GGUF_LIMITS: Readonly<GgufLimits> = {
  headerBytes: 1 << 30,
  arrayLength: 1 << 24,
  stringBytes: 64 << 20,
};
/** Smallest encoding of each value type, so a count can be checked against the bytes left. */
const MIN_VALUE_BYTES = [1, 1, 2, 2, 4, 4, 4, 1, 8, 12, 8, 8, 8];
/** name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8). */
const MIN_TENSOR_INFO_BYTES = 32;
/** key length (8) + value type (4) + the smallest value (1). */
const MIN_KV_BYTES = 13;
const FIRST_CHUNK = 64 * 1024;

const decoder = new TextDecoder('utf-8');

/** Quotes an untrusted name for a one-line message, cut short because keys and names can be megabytes. */
function show(s: string): string {
  // Cut after escaping: a name of control bytes grows sixfold when escaped.
  const q = JSON.stringify(s.slice(0, 121));
  return q.length > 122 ? `${q.slice(0, 120)}…"` : q;
}

/** A forward-only reader over a ChunkSource holding one window of bytes at a time. */
class Cursor {
  private buf = new Uint8Array(0);
  private view = new DataView(this.buf.buffer);
  private bufStart = 0;
  private nextChunk: number;
  pos = 0;
  bytesRead = 0;

  constructor(
    private readonly src: ChunkSource,
    private readonly file: string,
    private readonly maxChunk: number,
    readonly limits: GgufLimits,
  ) {
    this.nextChunk = Math.min(FIRST_CHUNK, maxChunk);
  }

  get size(): number {
    return this.src.size;
  }

  get remaining(): number {
    return this.src.size - this.pos;
  }

  /** Makes bytes [pos, pos + n) available, reading at least a chunk ahead; throws when the file ends first. */
  private need(n: number, what: string): number {
    const end = this.pos + n;
    const bufEnd = this.bufStart + this.buf.length;
    if (end <= bufEnd) return this.pos - this.bufStart;
    if (end > this.src.size) {
      throw new FormatError(this.file, `file is truncated: ${what} needs ${n} bytes at offset ${this.pos} but the file is ${this.src.size} bytes`);
    }
    if (end > this.limits.headerBytes) {
      throw new FormatError(this.file, `header runs past ${this.limits.headerBytes} bytes (at ${what}); no real GGUF header is that large`);
    }
    // Keep the unread tail so no byte is read twice; growing chunks keep small files to one small read.
    const tail = this.pos < bufEnd ? this.buf.subarray(this.pos - this.bufStart) : new Uint8Array(0);
    const from = Math.max(this.pos, bufEnd);
    const length = Math.min(Math.max(this.nextChunk, end - from), this.src.size - from);
    this.nextChunk = Math.min(this.nextChunk * 2, this.maxChunk);
    const fresh = this.src.read(from, length);
    this.bytesRead += fresh.length;
    if (tail.length + fresh.length < n) {
      throw new FormatError(this.file, `file is truncated: ${what} needs ${n} bytes at offset ${this.pos}, only ${tail.length + fresh.length} could be read`);
    }
    const next = new Uint8Array(tail.length + fresh.length);
    next.set(tail, 0);
    next.set(fresh, tail.length);
    this.buf = next;
    this.view = new DataView(next.buffer);
    this.bufStart = this.pos;
    return 0;
  }

  u8(what: string): number {
    const at = this.need(1, what);
    this.pos += 1;
    return this.view.getUint8(at);
  }
  i8(what: string): number {
    const at = this.need(1, what);
    this.pos += 1;
    return this.view.getInt8(at);
  }
  u16(what: string): number {
    const at = this.need(2, what);
    this.pos += 2;
    return this.view.getUint16(at, true);
  }
  i16(what: string): number {
    const at = this.need(2, what);
    this.pos += 2;
    return this.view.getInt16(at, true);
  }
  u32(what: string): number {
    const at = this.need(4, what);
    this.pos += 4;
    return this.view.getUint32(at, true);
  }
  i32(what: string): number {
    const at = this.need(4, what);
    this.pos += 4;
    return this.view.getInt32(at, true);
  }
  f32(what: string): number {
    const at = this.need(4, what);
    this.pos += 4;
    return this.view.getFloat32(at, true);
  }
  f64(what: string): number {
    const at = this.need(8, what);
    this.pos += 8;
    return this.view.getFloat64(at, true);
  }
  u64(what: string): bigint {
    const at = this.need(8, what);
    this.pos += 8;
    return this.view.getBigUint64(at, true);
  }
  i64(what: string): bigint {
    const at = this.need(8, what);
    this.pos += 8;
    return this.view.getBigInt64(at, true);
  }

  /**
   * A u64 count of items each at least `minBytes` long, refused when they cannot fit in the rest of
   * the file or exceed `max`.
   */
  count(what: string, minBytes: number, max: number): number {
    const at = this.pos;
    const n = this.u64(what);
    if (n * BigInt(minBytes) > BigInt(this.remaining)) {
      throw new FormatError(this.file, `${what} ${n} at offset ${at} cannot fit in the ${this.remaining} bytes left in the file`);
    }
    if (n > BigInt(max)) throw new FormatError(this.file, `${what} ${n} at offset ${at} is absurdly large (limit ${max})`);
    return Number(n);
  }

  string(what: string): string {
    const len = this.count(`${what} length`, 1, this.limits.stringBytes);
    const at = this.need(len, what);
    this.pos += len;
    return decoder.decode(this.buf.subarray(at, at + len));
  }
}

function int64Value(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

/** Names a metadata value in messages; built once per key, not once per array item. */
interface ValueContext {
  file: string;
  /** The key, quoted for messages. */
  q: string;
  what: string;
}

function readValue(cur: Cursor, type: number, ctx: ValueContext, depth: number): GgufValue {
  const what = ctx.what;
  switch (type) {
    case 0:
      return cur.u8(what);
    case 1:
      return cur.i8(what);
    case 2:
      return cur.u16(what);
    case 3:
      return cur.i16(what);
    case 4:
      return cur.u32(what);
    case 5:
      return cur.i32(what);
    case 6:
      return cur.f32(what);
    case 7: {
      const at = cur.pos;
      const b = cur.u8(what);
      // The GGUF spec calls any other byte invalid rather than truthy.
      if (b > 1) throw new FormatError(ctx.file, `metadata ${ctx.q}: bool at offset ${at} holds ${b}, not 0 or 1`);
      return b === 1;
    }
    case 8:
      return cur.string(what);
    case 9: {
      if (depth >= MAX_ARRAY_DEPTH) throw new FormatError(ctx.file, `metadata ${ctx.q}: arrays nested deeper than ${MAX_ARRAY_DEPTH}`);
      const at = cur.pos;
      const itemType = cur.u32(`array type of ${ctx.q}`);
      const min = MIN_VALUE_BYTES[itemType];
      if (min === undefined) throw new FormatError(ctx.file, `metadata ${ctx.q}: unknown array item type ${itemType} at offset ${at}`);
      const n = cur.count(`array length of ${ctx.q}`, min, cur.limits.arrayLength);
      const out: GgufValue[] = [];
      for (let i = 0; i < n; i++) out.push(readValue(cur, itemType, ctx, depth + 1));
      return out;
    }
    case 10:
      return int64Value(cur.u64(what));
    case 11:
      return int64Value(cur.i64(what));
    case 12:
      return cur.f64(what);
    default:
      // Unreachable from parseGguf, which checks top-level and array item types first.
      throw new FormatError(ctx.file, `metadata ${ctx.q}: unknown value type ${type}`);
  }
}

interface RawInfo {
  name: string;
  shape: number[];
  ggmlType: number;
  dtype: string;
  offset: number;
}

function readTensorInfo(cur: Cursor, file: string): RawInfo {
  const name = cur.string('tensor name');
  const q = show(name);
  const nDims = cur.u32(`n_dims of tensor ${q}`);
  if (nDims === 0 || nDims > MAX_DIMS) throw new FormatError(file, `tensor ${q}: n_dims ${nDims} is not between 1 and ${MAX_DIMS}`);
  const ne: number[] = [];
  for (let i = 0; i < nDims; i++) {
    const d = cur.u64(`ne[${i}] of tensor ${q}`);
    // ggml stores ne as int64; anything past 2^53 cannot index a real file either.
    if (d > BigInt(Number.MAX_SAFE_INTEGER)) throw new FormatError(file, `tensor ${q}: ne[${i}] = ${d} is absurdly large`);
    ne.push(Number(d));
  }
  const ggmlType = cur.u32(`type of tensor ${q}`);
  const dtype = GGML_TYPES[ggmlType];
  if (dtype === undefined) throw new FormatError(file, `tensor ${q}: unknown ggml type ${ggmlType}`);
  const offset = cur.u64(`offset of tensor ${q}`);
  if (offset > BigInt(cur.size)) throw new FormatError(file, `tensor ${q}: offset ${offset} lies outside the ${cur.size}-byte file`);
  const blockSize = lookupDType(dtype)!.blockSize;
  // ggml quantizes rows, so the row (ne[0]) must hold whole blocks, not merely the element count.
  if (ne[0]! % blockSize !== 0) {
    throw new FormatError(file, `tensor ${q}: row length ne[0] = ${ne[0]} is not a multiple of the ${dtype} block size ${blockSize}`);
  }
  return { name, shape: ne.reverse(), ggmlType, dtype, offset: Number(offset) };
}

/** Byte size, or -1 when it exceeds `limit` (keeps products of untrusted dims from losing precision). */
function boundedBytes(info: RawInfo, limit: number): number {
  if (info.shape.includes(0)) return 0;
  let n = 1;
  for (const d of info.shape) {
    n *= d;
    if (n > limit * 64) return -1; // no dtype stores more than 64 elements per byte
  }
  const bytes = tensorBytes(info.shape, info.dtype);
  return bytes > limit ? -1 : bytes;
}

function alignmentOf(metadata: Map<string, [GgufValueType, GgufValue]>, file: string): number {
  const entry = metadata.get('general.alignment');
  if (!entry) return GGUF_DEFAULT_ALIGNMENT;
  const [type, value] = entry;
  if (type !== 'u32') throw new FormatError(file, `general.alignment has type ${type}, expected u32`);
  const a = value as number;
  if (a === 0 || (a & (a - 1)) !== 0) throw new FormatError(file, `general.alignment ${a} is not a power of two`);
  return a;
}

export function parseGguf(source: ChunkSource, file: string, options: GgufParseOptions = {}): GgufHeader {
  const cur = new Cursor(source, file, Math.max(16, options.chunkSize ?? 1 << 20), { ...GGUF_LIMITS, ...options.limits });
  if (source.size < 4) throw new FormatError(file, `file is ${source.size} bytes, too short for the GGUF magic`);
  const magic = cur.u32('magic');
  if (magic !== GGUF_MAGIC) throw new FormatError(file, 'bad magic: not a GGUF file');
  const version = cur.u32('version');
  if (version !== 2 && version !== 3) {
    const swapped = (((version & 0xff) << 24) | ((version & 0xff00) << 8) | ((version >>> 8) & 0xff00) | (version >>> 24)) >>> 0;
    const hint = swapped === 2 || swapped === 3 ? ' (a big-endian file; only little-endian GGUF is supported)' : ' (only versions 2 and 3 are)';
    throw new FormatError(file, `unsupported GGUF version ${version}${hint}`);
  }
  // The header-size cap bounds these too; the explicit limit just gives a clearer message.
  const tensorCount = cur.count('tensor count', MIN_TENSOR_INFO_BYTES, Math.floor(cur.limits.headerBytes / MIN_TENSOR_INFO_BYTES));
  const kvCount = cur.count('metadata count', MIN_KV_BYTES, Math.floor(cur.limits.headerBytes / MIN_KV_BYTES));

  const kv = new Map<string, [GgufValueType, GgufValue]>();
  for (let i = 0; i < kvCount; i++) {
    const key = cur.string('metadata key');
    const q = show(key);
    const at = cur.pos;
    const type = cur.u32(`value type of ${q}`);
    const typeName = GGUF_VALUE_TYPES[type];
    if (typeName === undefined) throw new FormatError(file, `metadata ${q}: unknown value type ${type} at offset ${at}`);
    const value = readValue(cur, type, { file, q, what: `value of ${q}` }, 0);
    if (kv.has(key)) throw new FormatError(file, `duplicate metadata key ${q}`);
    kv.set(key, [typeName, value]);
  }

  const infos: RawInfo[] = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const info = readTensorInfo(cur, file);
    if (names.has(info.name)) throw new FormatError(file, `duplicate tensor name ${show(info.name)}`);
    names.add(info.name);
    infos.push(info);
  }

  const alignment = alignmentOf(kv, file);
  const dataStart = Math.ceil(cur.pos / alignment) * alignment;
  const fileSize = source.size;
  const tensors: GgufTensor[] = infos.map((info) => {
    const q = show(info.name);
    if (info.offset % alignment !== 0) {
      throw new FormatError(file, `tensor ${q}: offset ${info.offset} is not a multiple of the alignment ${alignment}`);
    }
    const bytes = boundedBytes(info, fileSize);
    const start = dataStart + info.offset;
    if (bytes < 0 || start + bytes > fileSize) {
      const size = bytes < 0 ? 'more than the file' : `${bytes} bytes`;
      throw new FormatError(file, `tensor ${q}: data (${size} at offset ${start}) lies outside the ${fileSize}-byte file`);
    }
    return { name: info.name, shape: info.shape, ggmlType: info.ggmlType, dtype: info.dtype, range: [start, start + bytes] };
  });

  // Empty tensors occupy nothing, so only non-empty ranges can collide.
  const sorted = tensors.filter((t) => t.range[1] > t.range[0]).sort((a, b) => a.range[0] - b.range[0]);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const t = sorted[i]!;
    if (t.range[0] < prev.range[1]) {
      throw new FormatError(file, `tensor ${show(t.name)} overlaps tensor ${show(prev.name)} in the data section`);
    }
  }

  return {
    version,
    // fromEntries defines own properties, so a `__proto__` key stays data instead of a prototype.
    metadata: Object.fromEntries([...kv].map(([k, [, v]]) => [k, v])),
    metadataTypes: Object.fromEntries([...kv].map(([k, [t]]) => [k, t])),
    tensors,
    alignment,
    dataStart,
    fileSize,
    bytesRead: cur.bytesRead,
  };
}

/** Opens `path` and reads only its GGUF header, in bounded chunks. */
export function readGgufHeader(path: string, options: GgufParseOptions = {}): GgufHeader {
  assertRegularFile(path);
  const fd = openSync(path, 'r');
  try {
    return parseGguf(fileSource(fd), path, options);
  } finally {
    closeSync(fd);
  }
}

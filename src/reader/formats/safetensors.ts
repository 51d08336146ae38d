/**
 * safetensors header parser. A file is: u64 little-endian header length N, N bytes of UTF-8 JSON,
 * then the data section. We only ever read the first 8 + N bytes; everything about the tensors
 * (dtype, shape, byte range) is in the JSON, and the data section is checked for exact coverage
 * so a truncated or padded shard is caught without touching its weights.
 */
import { closeSync, fstatSync, openSync } from 'node:fs';
import { readBytes } from '../../util/read-fully.js';
import { lookupDType, tensorBytes } from '../dtypes.js';
import { FormatError } from '../../util/errors.js';
import { assertRegularFile } from '../../util/regular-file.js';

export interface SafetensorsTensor {
  name: string;
  /** Canonical vramfit dtype name (`float16`, `bfloat16`, ...). */
  dtype: string;
  shape: number[];
  /** Absolute byte range [start, end) inside the file. */
  range: [number, number];
}

export interface SafetensorsHeader {
  /** In data-section (offset) order. */
  tensors: SafetensorsTensor[];
  metadata: Record<string, string>;
  /** 8 + N: where the data section starts. */
  headerBytes: number;
  fileSize: number;
  /** Bytes actually read to produce this header. */
  bytesRead: number;
}

/** The reference implementation refuses headers above 100 MB; we allow 100 MiB, then call it corrupt. */
export const MAX_HEADER_LENGTH = 100 * 1024 * 1024;

/**
 * dtype codes the safetensors format defines that vramfit can size. Codes are case-sensitive in the
 * format, so `f16` is not accepted even though lookupDType would resolve it.
 */
export const SAFETENSORS_DTYPE_CODES: readonly string[] = [
  'F64',
  'F32',
  'F16',
  'BF16',
  'I64',
  'I32',
  'I16',
  'I8',
  'U8',
  'BOOL',
  'F8_E4M3',
  'F8_E5M2',
  'U16',
  'U32',
  'U64',
];
const CODE_TO_DTYPE = new Map(SAFETENSORS_DTYPE_CODES.map((c) => [c, lookupDType(c)!.name]));

/** Reads the 8-byte header length; a number is exact because it is compared with MAX_HEADER_LENGTH first. */
function headerLength(bytes: Uint8Array, file: string, fileSize: number): number {
  if (fileSize < 8) {
    throw new FormatError(file, `file is ${fileSize} bytes, shorter than the 8-byte safetensors header length`);
  }
  if (bytes.length < 8) throw new FormatError(file, `safetensors header is truncated: ${bytes.length} of 8 length bytes present`);
  const n = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_LENGTH)) {
    throw new FormatError(file, `safetensors header length ${n} is absurdly large (over ${MAX_HEADER_LENGTH} bytes)`);
  }
  const len = Number(n);
  if (8 + len > fileSize) {
    throw new FormatError(file, `safetensors header length ${len} runs past the end of the ${fileSize}-byte file`);
  }
  return len;
}

const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A short, one-line rendering of an untrusted value for messages (names and values can be megabytes). */
function show(v: unknown): string {
  if (typeof v === 'string') {
    // Cut after escaping: a name of control characters grows sixfold when escaped.
    const q = JSON.stringify(v.slice(0, 121));
    return q.length > 122 ? `${q.slice(0, 120)}…"` : q;
  }
  if (typeof v === 'number' || typeof v === 'boolean' || v === null) return String(v);
  return Array.isArray(v) ? 'an array' : typeof v;
}

function showShape(shape: readonly number[]): string {
  return shape.length <= 8 ? `[${shape.join(', ')}]` : `[${shape.slice(0, 8).join(', ')}, … (${shape.length} dims)]`;
}

function parseMetadata(v: unknown, file: string): Record<string, string> {
  if (!isPlainObject(v)) throw new FormatError(file, '__metadata__ is not a map of strings to strings');
  for (const [k, s] of Object.entries(v)) {
    if (typeof s !== 'string') {
      throw new FormatError(file, `__metadata__ is not a map of strings to strings (key ${show(k)} holds ${typeof s})`);
    }
  }
  // fromEntries defines own properties, so a `__proto__` key stays data instead of a prototype.
  return Object.fromEntries(Object.entries(v as Record<string, string>));
}

function parseShape(name: string, v: unknown, file: string): number[] {
  if (!Array.isArray(v)) throw new FormatError(file, `tensor ${show(name)}: shape is not an array`);
  for (const dim of v) {
    if (typeof dim !== 'number' || !Number.isSafeInteger(dim) || dim < 0) {
      throw new FormatError(file, `tensor ${show(name)}: shape dimension ${show(dim)} is not a non-negative safe integer`);
    }
  }
  return v as number[];
}

function parseOffsets(name: string, v: unknown, file: string): [number, number] {
  if (!Array.isArray(v) || v.length !== 2 || !v.every((o) => typeof o === 'number' && Number.isSafeInteger(o) && o >= 0)) {
    throw new FormatError(file, `tensor ${show(name)}: data_offsets is not a pair of non-negative integers`);
  }
  const [begin, end] = v as [number, number];
  if (end < begin) throw new FormatError(file, `tensor ${show(name)}: data_offsets [${begin}, ${end}] end before they begin`);
  return [begin, end];
}

/** Byte size implied by shape × dtype, or -1 past 2^53 (where products of dims stop being exact). */
function impliedBytes(shape: number[], dtype: string): number {
  const limit = Number.MAX_SAFE_INTEGER;
  if (shape.includes(0)) return 0;
  const per = tensorBytes([], dtype);
  let n = per;
  for (const dim of shape) {
    n *= dim;
    if (n > limit) return -1;
  }
  return tensorBytes(shape, dtype);
}

/**
 * Parses a safetensors header. `bytes` holds at least the first 8 + N bytes of the file; `fileSize`
 * is the size of the whole file, so the data section can be checked without reading it.
 */
export function parseSafetensorsHeader(bytes: Uint8Array, fileSize: number, file: string): SafetensorsHeader {
  const len = headerLength(bytes, file, fileSize);
  const headerBytes = 8 + len;
  if (bytes.length < headerBytes) {
    throw new FormatError(file, `safetensors header is truncated: ${bytes.length} of ${headerBytes} bytes present`);
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes.subarray(8, headerBytes));
  } catch {
    throw new FormatError(file, 'safetensors header is not valid UTF-8');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    // V8 quotes a slice of the input in its message; escape it so the reason stays one printable line.
    const detail = JSON.stringify((e as Error).message.slice(0, 120)).slice(1, -1);
    throw new FormatError(file, `safetensors header is not valid JSON (${detail})`);
  }
  if (!isPlainObject(json)) throw new FormatError(file, 'safetensors header is not a JSON object');

  const dataLength = fileSize - headerBytes;
  let metadata: Record<string, string> = {};
  const tensors: SafetensorsTensor[] = [];
  for (const [name, entry] of Object.entries(json)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(entry, file);
      continue;
    }
    // Extra keys are ignored, as the reference implementation does; the three it needs must be there.
    if (!isPlainObject(entry) || !('dtype' in entry) || !('shape' in entry) || !('data_offsets' in entry)) {
      throw new FormatError(file, `tensor ${show(name)}: entry is not {dtype, shape, data_offsets}`);
    }
    const code = entry.dtype;
    const dtype = typeof code === 'string' ? CODE_TO_DTYPE.get(code) : undefined;
    if (dtype === undefined) throw new FormatError(file, `tensor ${show(name)}: unknown dtype ${show(code)}`);
    const shape = parseShape(name, entry.shape, file);
    const [begin, end] = parseOffsets(name, entry.data_offsets, file);
    if (end > dataLength) {
      throw new FormatError(file, `tensor ${show(name)}: data_offsets [${begin}, ${end}] run past the ${dataLength}-byte data section`);
    }
    const expected = impliedBytes(shape, dtype);
    if (expected !== end - begin) {
      const what = expected < 0 ? 'over 2^53 bytes' : `${expected} bytes`;
      throw new FormatError(file, `tensor ${show(name)}: shape ${showShape(shape)} of ${dtype} needs ${what} but data_offsets span ${end - begin}`);
    }
    tensors.push({ name, dtype, shape, range: [headerBytes + begin, headerBytes + end] });
  }

  // The data section must be tiled exactly: sorted by offset, each tensor starts where the last ended.
  tensors.sort((a, b) => a.range[0] - b.range[0] || a.range[1] - b.range[1]);
  let cursor = headerBytes;
  let previous = '';
  for (const t of tensors) {
    if (t.range[0] < cursor) {
      throw new FormatError(file, `tensor ${show(t.name)} overlaps tensor ${show(previous)} in the data section`);
    }
    if (t.range[0] > cursor) {
      throw new FormatError(file, `data section has a hole of ${t.range[0] - cursor} bytes before tensor ${show(t.name)}`);
    }
    cursor = t.range[1];
    previous = t.name;
  }
  if (cursor !== fileSize) {
    throw new FormatError(file, `tensors cover ${cursor - headerBytes} bytes but the data section is ${dataLength} bytes`);
  }
  return { tensors, metadata, headerBytes, fileSize, bytesRead: headerBytes };
}

/** Opens `path` and reads only the length prefix and the JSON header, never the data section. */
export function readSafetensorsHeader(path: string): SafetensorsHeader {
  assertRegularFile(path);
  const fd = openSync(path, 'r');
  try {
    const fileSize = fstatSync(fd).size;
    const prefix = readBytes(fd, Math.min(8, fileSize), 0);
    // Validates N against the file size before allocating a buffer of that size.
    const len = headerLength(prefix, path, fileSize);
    const bytes = new Uint8Array(8 + len);
    bytes.set(prefix, 0);
    const body = readBytes(fd, len, 8);
    bytes.set(body, 8);
    const bytesRead = prefix.length + body.length;
    const header = parseSafetensorsHeader(bytes.subarray(0, 8 + body.length), fileSize, path);
    return { ...header, bytesRead };
  } finally {
    closeSync(fd);
  }
}

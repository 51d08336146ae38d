/**
 * PyTorch `.bin` / `.pt` checkpoints (what `torch.save(state_dict)` writes), read without running any of it.
 *
 * Since torch 1.6 the file is a ZIP archive of STORED entries: `<name>/data.pkl` (the pickled state_dict,
 * whose tensors point at storages by key), `<name>/data/<key>` (each storage's raw little-endian bytes) and
 * small `version` / `byteorder` records. Only the directory, data.pkl and a few local headers are read; a
 * tensor's byte range is where its elements lie inside its storage entry, when they are contiguous.
 *
 * The legacy format (torch < 1.6) is a run of pickles — magic number, protocol version, system info, the
 * state_dict, the list of storage keys — followed by each storage as an 8-byte element count and its bytes.
 */
import { lookupDType } from '../dtypes.js';
import { FormatError } from '../../util/errors.js';
import { TruncatedPickle, parseStateDictPickle, stateDictFrom, unpickle, type StateDict, type StateDictTensor } from './pickle.js';
import { looksLikeZip, readStoredEntry, readZipDirectory, storedRange, withFileSource, type ByteSource } from './zip.js';

export interface PytorchBinTensor extends StateDictTensor {
  /** Absolute byte range [start, end) of the tensor's elements in the file, when they are contiguous. */
  range?: [number, number];
  /** Why there is no range (a non-contiguous view of its storage). */
  noRange?: string;
}

export interface PytorchBinHeader {
  format: 'zip' | 'legacy';
  /** In the state_dict's order. */
  tensors: PytorchBinTensor[];
  fileSize: number;
  /** Bytes read to produce this (directory, pickle, local headers; never tensor data). */
  bytesRead: number;
}

/** data.pkl is a few hundred bytes per tensor; a larger one is not a state_dict. */
export const MAX_PICKLE_BYTES = 256 * 1024 * 1024;
/** First chunk read of a legacy file; it grows eightfold until the pickles fit (up to MAX_PICKLE_BYTES). */
const LEGACY_FIRST_CHUNK = 64 * 1024;
const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;
const LEGACY_PROTOCOL = 1001;

function show(s: string): string {
  const q = JSON.stringify(s.slice(0, 81));
  return q.length > 82 ? `${q.slice(0, 80)}…"` : q;
}

function showDims(d: readonly number[]): string {
  return d.length <= 8 ? `[${d.join(', ')}]` : `[${d.slice(0, 8).join(', ')}, … (${d.length} dims)]`;
}

/** Where a storage's bytes are: its absolute start and how many bytes the file really holds for it. */
interface StorageData {
  start: number;
  available: number;
}

/**
 * Checks each tensor against its storage and gives contiguous ones their byte range: the storage must hold
 * every element the tensor's offset, shape and strides reach.
 */
function locate(sd: StateDict, data: Map<string, StorageData>, file: string): PytorchBinTensor[] {
  for (const s of sd.storages.values()) {
    const d = data.get(s.key)!;
    if (d.available < s.bytes) {
      throw new FormatError(
        file,
        `storage ${show(s.key)} holds ${d.available} bytes but the pickle declares ${s.numel} ${s.dtype} elements (${s.bytes} bytes)`,
      );
    }
  }
  return sd.tensors.map((t) => {
    const storage = sd.storages.get(t.storageKey)!;
    const base = data.get(t.storageKey)!.start;
    const elem = BigInt(lookupDType(t.dtype)!.blockBytes);
    const size = BigInt(storage.bytes);
    const offset = BigInt(t.storageOffset);
    let count = 1n;
    let last = offset;
    for (let i = 0; i < t.shape.length; i++) {
      count *= BigInt(t.shape[i]!);
      if (t.shape[i]! > 0) last += BigInt(t.shape[i]! - 1) * BigInt(t.strides[i]!);
    }
    const end = count === 0n ? offset * elem : (last + 1n) * elem;
    if (end > size) {
      throw new FormatError(
        file,
        `tensor ${show(t.name)} (${t.dtype} ${showDims(t.shape)}, strides ${showDims(t.strides)}, offset ${t.storageOffset}) reaches byte ${end} of storage ${show(t.storageKey)}, which holds ${size}`,
      );
    }
    const out: PytorchBinTensor = { ...t };
    if (isContiguous(t.shape, t.strides)) {
      const start = base + Number(offset * elem);
      out.range = [start, start + Number(count * elem)];
    } else {
      out.noRange = `not contiguous (shape ${showDims(t.shape)}, strides ${showDims(t.strides)}): a view whose elements are not one byte range`;
    }
    return out;
  });
}

/** Row-major with no gaps; a dimension of size 1 may have any stride (as torch's is_contiguous says). */
export function isContiguous(shape: readonly number[], strides: readonly number[]): boolean {
  let expected = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] === 0) return true;
    if (shape[i] !== 1 && strides[i] !== expected) return false;
    expected *= shape[i]!;
  }
  return true;
}

function readZip(src: ByteSource): PytorchBinHeader {
  const file = src.name;
  const dir = readZipDirectory(src);
  let bytesRead = dir.bytesRead;
  const pickles = dir.entries.filter((e) => /^[^/]+\/data\.pkl$/.test(e.name));
  if (pickles.length === 0) throw new FormatError(file, 'zip archive has no <name>/data.pkl: not a torch.save checkpoint');
  if (pickles.length > 1)
    throw new FormatError(
      file,
      `zip archive has ${pickles.length} data.pkl entries (${pickles
        .slice(0, 3)
        .map((e) => show(e.name))
        .join(', ')}): ambiguous`,
    );
  const prefix = pickles[0]!.name.slice(0, -'data.pkl'.length);

  const order = dir.byName.get(`${prefix}byteorder`);
  if (order) {
    const entry = readStoredEntry(src, dir, order, 16);
    if (entry.read) bytesRead += entry.bytes.length;
    const text = new TextDecoder('latin1').decode(entry.bytes).trim();
    if (text !== 'little') throw new FormatError(file, `byteorder is ${show(text)}: only little-endian checkpoints are read`);
  }

  const entry = readStoredEntry(src, dir, pickles[0]!, MAX_PICKLE_BYTES);
  if (entry.read) bytesRead += entry.bytes.length;
  const pkl = entry.bytes;
  const sd = parseStateDictPickle(pkl, file);
  if (sd.end !== pkl.length) throw new FormatError(file, `data.pkl has ${pkl.length - sd.end} bytes after its STOP opcode`);

  const data = new Map<string, StorageData>();
  for (const s of sd.storages.values()) {
    const entry = dir.byName.get(`${prefix}data/${s.key}`);
    if (!entry) throw new FormatError(file, `storage ${show(s.key)} has no entry ${show(`${prefix}data/${s.key}`)} in the archive`);
    const [start, end] = storedRange(dir, entry);
    data.set(s.key, { start, available: end - start });
  }
  return { format: 'zip', tensors: locate(sd, data, file), fileSize: src.size, bytesRead };
}

/** Reads the head of a legacy file, growing it until every pickle fits. */
function readLegacy(src: ByteSource): PytorchBinHeader {
  const limit = Math.min(src.size, MAX_PICKLE_BYTES);
  let head = src.read(0, Math.min(limit, LEGACY_FIRST_CHUNK));
  for (;;) {
    try {
      return parseLegacy(src, head);
    } catch (e) {
      if (!(e instanceof TruncatedPickle) || head.length >= limit) throw e;
      const grown = new Uint8Array(Math.min(limit, head.length * 8));
      grown.set(head);
      const more = src.read(head.length, grown.length - head.length);
      grown.set(more, head.length);
      head = grown.subarray(0, head.length + more.length);
    }
  }
}

function parseLegacy(src: ByteSource, head: Uint8Array): PytorchBinHeader {
  const file = src.name;
  const magic = unpickle(head, file);
  if (magic.value !== LEGACY_MAGIC)
    throw new FormatError(file, "not a PyTorch checkpoint: a pickle, but without torch.save's magic number (a plain pickle is not read)");
  const protocol = unpickle(head, file, { start: magic.end });
  if (protocol.value !== LEGACY_PROTOCOL)
    throw new FormatError(file, `legacy checkpoint of protocol version ${String(protocol.value)}; only ${LEGACY_PROTOCOL} is read`);
  const sysInfo = unpickle(head, file, { start: protocol.end });
  const info = sysInfo.value;
  if (info === null || typeof info !== 'object' || info.t !== 'dict' || info.map.get('little_endian') !== true) {
    throw new FormatError(file, 'legacy checkpoint was not saved little-endian: only little-endian checkpoints are read');
  }
  const sd = stateDictFrom(unpickle(head, file, { start: sysInfo.end, legacy: true }), file);
  const keysResult = unpickle(head, file, { start: sd.end });
  const keys = keysResult.value;
  if (keys === null || typeof keys !== 'object' || keys.t !== 'list' || !keys.items.every((k) => typeof k === 'string')) {
    throw new FormatError(file, 'legacy checkpoint: the storage key list is not a list of strings');
  }
  let bytesRead = head.length;
  let pos = keysResult.end;
  const data = new Map<string, StorageData>();
  for (const key of keys.items as string[]) {
    const s = sd.storages.get(key);
    if (!s) throw new FormatError(file, `legacy checkpoint stores storage ${show(key)}, which no tensor uses`);
    if (data.has(key)) throw new FormatError(file, `legacy checkpoint stores storage ${show(key)} twice`);
    if (pos + 8 > src.size) throw new FormatError(file, `file ended before storage ${show(key)} (at byte ${pos})`);
    const inHead = pos + 8 <= head.length;
    const prefix = inHead ? head.subarray(pos, pos + 8) : src.read(pos, 8);
    if (!inHead) bytesRead += prefix.length;
    const numel = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigInt64(0, true);
    if (numel !== BigInt(s.numel)) throw new FormatError(file, `storage ${show(key)} at byte ${pos} has ${numel} elements, the pickle says ${s.numel}`);
    const start = pos + 8;
    if (start + s.bytes > src.size)
      throw new FormatError(file, `storage ${show(key)} (${s.bytes} bytes at ${start}) runs past the end of the ${src.size}-byte file`);
    data.set(key, { start, available: s.bytes });
    pos = start + s.bytes;
  }
  for (const key of sd.storages.keys()) {
    if (!data.has(key)) throw new FormatError(file, `storage ${show(key)} is used by a tensor but not stored in the file`);
  }
  return { format: 'legacy', tensors: locate(sd, data, file), fileSize: src.size, bytesRead };
}

/** Reads a torch.save checkpoint's structure from a byte source: the zip format, or the legacy one. */
export function parsePytorchBin(src: ByteSource): PytorchBinHeader {
  const file = src.name;
  const head = src.read(0, Math.min(512, src.size));
  if (looksLikeZip(head)) return readZip(src);
  // Legacy: PROTO 2, then LONG1 of 10 bytes (the magic number).
  if (head.length >= 4 && head[0] === 0x80 && head[1] === 0x02 && head[2] === 0x8a && head[3] === 0x0a) return readLegacy(src);
  if (head.length >= 262 && new TextDecoder('latin1').decode(head.subarray(257, 262)) === 'ustar') {
    throw new FormatError(file, 'tar-format checkpoint (torch < 0.4) is not supported');
  }
  if (src.size === 0) throw new FormatError(file, 'file is empty');
  throw new FormatError(file, 'not a PyTorch checkpoint: neither a zip archive nor a legacy torch.save pickle');
}

/** Opens `path` and reads its checkpoint structure; never reads tensor data. */
export function readPytorchBinHeader(path: string): PytorchBinHeader {
  return withFileSource(path, parsePytorchBin);
}

/**
 * Writes PyTorch checkpoints as `torch.save(state_dict)` does, so tests never need torch:
 *
 * - the zip format (torch ≥ 1.6): STORED entries `<archive>/data.pkl`, `<archive>/data/<key>`,
 *   `<archive>/version` (and `byteorder` as torch ≥ 2.1 adds), each local header padded with an `FB` extra
 *   field so data starts on a 64-byte boundary, data descriptors after each entry, a ZIP64 end record and
 *   locator before the classic one — the layout of PyTorch's miniz-based writer;
 * - the protocol-2 pickle its C pickler emits: the same opcodes, memo slots and SETITEMS batching, so the
 *   data.pkl of a state_dict torch saved is reproduced byte for byte;
 * - the legacy format (torch < 1.6): magic number, protocol, system info, state_dict and key-list pickles,
 *   then every storage as an int64 element count and its bytes.
 *
 * The lower layers (PickleWriter, buildZip) are exported so tests can assemble malformed files.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { deflateRawSync } from 'node:zlib';
import { storedTensorsFor } from './tiny-models.js';

export type PtDtype = 'float64' | 'float32' | 'float16' | 'bfloat16' | 'int64' | 'int32' | 'int16' | 'int8' | 'uint8' | 'bool';

const STORAGE_CLASS: Record<PtDtype, string> = {
  float64: 'DoubleStorage',
  float32: 'FloatStorage',
  float16: 'HalfStorage',
  bfloat16: 'BFloat16Storage',
  int64: 'LongStorage',
  int32: 'IntStorage',
  int16: 'ShortStorage',
  int8: 'CharStorage',
  uint8: 'ByteStorage',
  bool: 'BoolStorage',
};
export const PT_ELEMENT_SIZE: Record<PtDtype, number> = {
  float64: 8,
  float32: 4,
  float16: 2,
  bfloat16: 2,
  int64: 8,
  int32: 4,
  int16: 2,
  int8: 1,
  uint8: 1,
  bool: 1,
};

/** A storage: raw little-endian element bytes. Tensors sharing one object share the storage. */
export interface PtStorage {
  dtype: PtDtype;
  bytes: Uint8Array;
  /** Overrides the storage class written in the persistent id (`torch.<name>`), for malformed files. */
  className?: string;
  /** Overrides the element count written in the persistent id. */
  numel?: number;
}

export interface PtTensor {
  name: string;
  storage: PtStorage;
  shape: number[];
  /** Row-major when omitted. */
  strides?: number[];
  /** In elements. */
  offset?: number;
}

export function contiguousStrides(shape: readonly number[]): number[] {
  const out = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    out[i] = s;
    s *= shape[i]!;
  }
  return out;
}

/** A tensor with its own storage holding exactly its elements. */
export function ptTensor(name: string, dtype: PtDtype, shape: number[], bytes: Uint8Array): PtTensor {
  return { name, storage: { dtype, bytes }, shape };
}

// ---------------------------------------------------------------------------------------------------------
// Pickle

export class PickleWriter {
  private chunks: number[] = [];
  private memoCount = 0;
  constructor(readonly protocol: 2 | 4 = 2) {}

  byte(...b: number[]): this {
    for (const x of b) this.chunks.push(x & 0xff);
    return this;
  }
  raw(bytes: Uint8Array): this {
    for (const x of bytes) this.chunks.push(x);
    return this;
  }
  u32(v: number): this {
    return this.byte(v, v >>> 8, v >>> 16, v >>> 24);
  }
  u64(v: bigint): this {
    for (let i = 0n; i < 8n; i++) this.byte(Number((v >> (8n * i)) & 0xffn));
    return this;
  }
  proto(): this {
    return this.byte(0x80, this.protocol);
  }
  stop(): this {
    return this.byte(0x2e);
  }
  mark(): this {
    return this.byte(0x28);
  }
  /** Memoizes the top of the stack, as the pickler does after most values; returns the slot. */
  put(): number {
    const slot = this.memoCount++;
    if (this.protocol >= 4) this.byte(0x94);
    else if (slot < 256) this.byte(0x71, slot);
    else this.byte(0x72).u32(slot);
    return slot;
  }
  get(slot: number): this {
    return slot < 256 ? this.byte(0x68, slot) : this.byte(0x6a).u32(slot);
  }
  str(s: string): this {
    const b = new TextEncoder().encode(s);
    if (this.protocol >= 4 && b.length < 256) return this.byte(0x8c, b.length).raw(b);
    return this.byte(0x58).u32(b.length).raw(b);
  }
  /** As pickle's save_long: BININT1, BININT2, BININT, else LONG1. */
  int(v: number | bigint): this {
    const n = BigInt(v);
    if (n >= 0n && n <= 0xffn) return this.byte(0x4b, Number(n));
    if (n >= 0n && n <= 0xffffn) return this.byte(0x4d, Number(n), Number(n) >>> 8);
    if (n >= -0x80000000n && n <= 0x7fffffffn) return this.byte(0x4a).u32(Number(BigInt.asUintN(32, n)));
    const bytes: number[] = [];
    let x = n;
    for (;;) {
      bytes.push(Number(BigInt.asUintN(8, x)));
      x >>= 8n;
      if ((x === 0n && (bytes[bytes.length - 1]! & 0x80) === 0) || (x === -1n && (bytes[bytes.length - 1]! & 0x80) !== 0)) break;
    }
    return this.byte(0x8a, bytes.length, ...bytes);
  }
  bool(v: boolean): this {
    return this.byte(v ? 0x88 : 0x89);
  }
  none(): this {
    return this.byte(0x4e);
  }
  global(module: string, name: string): this {
    if (this.protocol >= 4) {
      this.str(module);
      this.put();
      this.str(name);
      this.put();
      return this.byte(0x93);
    }
    return this.byte(0x63).raw(new TextEncoder().encode(`${module}\n${name}\n`));
  }
  emptyTuple(): this {
    return this.byte(0x29);
  }
  emptyDict(): this {
    return this.byte(0x7d);
  }
  emptyList(): this {
    return this.byte(0x5d);
  }
  /** Closes a tuple of `n` values already pushed (after a MARK when n > 3). */
  tuple(n: number): this {
    if (n === 0) return this.emptyTuple();
    if (n <= 3) return this.byte(0x84 + n);
    return this.byte(0x74);
  }
  reduce(): this {
    return this.byte(0x52);
  }
  build(): this {
    return this.byte(0x62);
  }
  binpersid(): this {
    return this.byte(0x51);
  }
  setitem(): this {
    return this.byte(0x73);
  }
  setitems(): this {
    return this.byte(0x75);
  }
  appends(): this {
    return this.byte(0x65);
  }
  bytes(): Uint8Array {
    const body = Uint8Array.from(this.chunks);
    if (this.protocol < 4 || body.length < 3 || body[0] !== 0x80) return body;
    // One frame around everything after PROTO (a valid framing; Python cuts frames at 64 KiB).
    const framed = new Uint8Array(body.length + 9);
    framed.set(body.subarray(0, 2), 0);
    framed[2] = 0x95;
    new DataView(framed.buffer).setBigUint64(3, BigInt(body.length - 2), true);
    framed.set(body.subarray(2), 11);
    return framed;
  }
}

export interface PickleOptions {
  protocol?: 2 | 4;
  /** `collections.OrderedDict` (what state_dict() returns, default) or a plain dict (HF's shards). */
  container?: 'ordereddict' | 'dict';
  /** Module names for the `_metadata` state a module's state_dict carries (written with BUILD). */
  moduleMetadata?: string[];
  /** Wrap tensors in `_rebuild_parameter` as `state_dict(keep_vars=True)` does. */
  parameters?: boolean;
  /** Legacy persistent ids: ('storage', type, key, location, numel, None). */
  legacy?: boolean;
  /** Storage keys; default '0', '1', ... in first-use order. */
  keys?: Map<PtStorage, string>;
}

/** Storage keys in first-use order, as torch.save assigns them. */
export function storageKeys(tensors: readonly PtTensor[]): Map<PtStorage, string> {
  const keys = new Map<PtStorage, string>();
  for (const t of tensors) if (!keys.has(t.storage)) keys.set(t.storage, String(keys.size));
  return keys;
}

/** The pickle torch.save writes for a state_dict of these tensors. */
export function stateDictPickle(tensors: readonly PtTensor[], opts: PickleOptions = {}): Uint8Array {
  const w = new PickleWriter(opts.protocol ?? 2);
  const keys = opts.keys ?? storageKeys(tensors);
  const slots = new Map<string, number>();
  /** Writes a value the pickler memoizes by identity: BINGET when already written. */
  const once = (id: string, write: () => void): void => {
    const slot = slots.get(id);
    if (slot !== undefined) {
      w.get(slot);
      return;
    }
    write();
    slots.set(id, w.put());
  };
  const ordered = (opts.container ?? 'ordereddict') === 'ordereddict';
  const newOrderedDict = (): void => {
    once('global:OrderedDict', () => w.global('collections', 'OrderedDict'));
    w.emptyTuple().reduce();
    w.put();
  };
  w.proto();
  if (ordered) newOrderedDict();
  else {
    w.emptyDict();
    w.put();
  }
  // Items in batches of 1000, as pickle's _batch_setitems; a batch of one is a plain SETITEM.
  for (let i = 0; i < tensors.length; i += 1000) {
    const batch = tensors.slice(i, i + 1000);
    if (batch.length > 1) w.mark();
    for (const t of batch) {
      w.str(t.name);
      w.put();
      if (opts.parameters) once('global:_rebuild_parameter', () => w.global('torch._utils', '_rebuild_parameter'));
      once('global:_rebuild_tensor_v2', () => w.global('torch._utils', '_rebuild_tensor_v2'));
      w.mark();
      // Persistent id.
      const s = t.storage;
      const key = keys.get(s)!;
      w.mark();
      once('str:storage', () => w.str('storage'));
      const cls = s.className ?? STORAGE_CLASS[s.dtype];
      once(`global:${cls}`, () => w.global('torch', cls));
      // The zip writer reuses one key string per storage; the legacy one formats it afresh each time.
      if (opts.legacy) {
        w.str(key);
        w.put();
      } else once(`key:${key}`, () => w.str(key));
      once('str:cpu', () => w.str('cpu'));
      w.int(s.numel ?? s.bytes.length / PT_ELEMENT_SIZE[s.dtype]);
      if (opts.legacy) w.none();
      w.byte(0x74);
      w.put();
      w.binpersid();
      w.int(t.offset ?? 0);
      for (const dims of [t.shape, t.strides ?? contiguousStrides(t.shape)]) {
        if (dims.length > 3) w.mark();
        for (const d of dims) w.int(d);
        w.tuple(dims.length);
        if (dims.length > 0) w.put();
      }
      w.bool(false);
      newOrderedDict();
      w.byte(0x74);
      w.put();
      w.reduce();
      w.put();
      if (opts.parameters) {
        w.bool(true);
        newOrderedDict();
        w.tuple(3);
        w.put();
        w.reduce();
        w.put();
      }
    }
    if (batch.length > 1) w.setitems();
    else w.setitem();
  }
  if (ordered && opts.moduleMetadata) {
    w.emptyDict();
    w.put();
    w.str('_metadata');
    w.put();
    newOrderedDict();
    if (opts.moduleMetadata.length > 1) w.mark();
    for (const m of opts.moduleMetadata) {
      w.str(m);
      w.put();
      w.emptyDict();
      w.put();
      once('str:version', () => w.str('version'));
      w.int(1);
      w.setitem();
    }
    if (opts.moduleMetadata.length > 1) w.setitems();
    else if (opts.moduleMetadata.length === 1) w.setitem();
    w.setitem();
    w.build();
  }
  w.stop();
  return w.bytes();
}

// ---------------------------------------------------------------------------------------------------------
// Zip

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

export interface ZipWriteEntry {
  name: string;
  data: Uint8Array;
  /** Write it deflated (method 8) instead of stored. */
  deflate?: boolean;
}

export interface ZipWriteOptions {
  /** Central directory sizes and offsets as 0xffffffff with a ZIP64 extra field, as for entries past 4 GiB. */
  zip64Entries?: boolean;
  /** Leave out the ZIP64 end record and locator (torch always writes them). */
  noZip64End?: boolean;
}

class Bytes {
  private parts: Uint8Array[] = [];
  length = 0;
  add(b: Uint8Array): void {
    this.parts.push(b);
    this.length += b.length;
  }
  le(v: number, n: number): void {
    const b = new Uint8Array(n);
    let x = BigInt(v);
    for (let i = 0; i < n; i++) {
      b[i] = Number(x & 0xffn);
      x >>= 8n;
    }
    this.add(b);
  }
  concat(): Uint8Array {
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const p of this.parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}

/** A zip archive laid out as PyTorch's writer does (64-byte aligned data, data descriptors, ZIP64 end). */
export function buildZip(entries: readonly ZipWriteEntry[], opts: ZipWriteOptions = {}): Uint8Array {
  const out = new Bytes();
  const central: { name: Uint8Array; crc: number; csize: number; usize: number; offset: number; method: number }[] = [];
  const enc = new TextEncoder();
  for (const e of entries) {
    const name = enc.encode(e.name);
    const offset = out.length;
    const payload = e.deflate ? new Uint8Array(deflateRawSync(e.data)) : e.data;
    const method = e.deflate ? 8 : 0;
    const start = offset + 30 + name.length + 4;
    const padding = (64 - (start % 64)) % 64;
    out.le(0x04034b50, 4);
    out.le(0, 2); // version needed
    out.le(0x0808, 2); // data descriptor, UTF-8
    out.le(method, 2);
    out.le(0, 4); // time, date
    out.le(0, 4); // crc (in the descriptor)
    out.le(0, 4);
    out.le(0, 4);
    out.le(name.length, 2);
    out.le(4 + padding, 2);
    out.add(name);
    out.add(enc.encode('FB'));
    out.le(padding, 2);
    out.add(new Uint8Array(padding).fill(0x5a));
    out.add(payload);
    const crc = crc32(e.data);
    out.le(0x08074b50, 4);
    out.le(crc, 4);
    out.le(payload.length, 4);
    out.le(e.data.length, 4);
    central.push({ name, crc, csize: payload.length, usize: e.data.length, offset, method });
  }
  const cdOffset = out.length;
  for (const c of central) {
    const big = opts.zip64Entries === true;
    out.le(0x02014b50, 4);
    out.le(0, 2);
    out.le(0, 2);
    out.le(0x0808, 2);
    out.le(c.method, 2);
    out.le(0, 4);
    out.le(c.crc, 4);
    out.le(big ? 0xffffffff : c.csize, 4);
    out.le(big ? 0xffffffff : c.usize, 4);
    out.le(c.name.length, 2);
    out.le(big ? 28 : 0, 2);
    out.le(0, 2); // comment
    out.le(0, 2); // disk
    out.le(0, 2); // internal attributes
    out.le(0, 4); // external attributes
    out.le(big ? 0xffffffff : c.offset, 4);
    out.add(c.name);
    if (big) {
      out.le(0x0001, 2);
      out.le(24, 2);
      out.le(c.usize, 8);
      out.le(c.csize, 8);
      out.le(c.offset, 8);
    }
  }
  const cdSize = out.length - cdOffset;
  if (!opts.noZip64End) {
    const recordAt = out.length;
    out.le(0x06064b50, 4);
    out.le(44, 8);
    out.le(0x031e, 2);
    out.le(0x002d, 2);
    out.le(0, 4);
    out.le(0, 4);
    out.le(central.length, 8);
    out.le(central.length, 8);
    out.le(cdSize, 8);
    out.le(cdOffset, 8);
    out.le(0x07064b50, 4);
    out.le(0, 4);
    out.le(recordAt, 8);
    out.le(1, 4);
  }
  out.le(0x06054b50, 4);
  out.le(0, 2);
  out.le(0, 2);
  out.le(central.length, 2);
  out.le(central.length, 2);
  out.le(cdSize, 4);
  out.le(cdOffset, 4);
  out.le(0, 2);
  return out.concat();
}

// ---------------------------------------------------------------------------------------------------------
// Checkpoints

export interface PytorchBinOptions extends PickleOptions, ZipWriteOptions {
  /** The archive's top folder: torch.save uses the file name without extension. */
  archiveName?: string;
  /** Add `<archive>/byteorder` holding this, as torch ≥ 2.1 does. */
  byteorder?: string;
}

/** The bytes of a zip-format checkpoint of these tensors. */
export function buildPytorchBin(tensors: readonly PtTensor[], opts: PytorchBinOptions = {}): Uint8Array {
  const archive = opts.archiveName ?? 'archive';
  const keys = opts.keys ?? storageKeys(tensors);
  const entries: ZipWriteEntry[] = [{ name: `${archive}/data.pkl`, data: stateDictPickle(tensors, { ...opts, keys }) }];
  if (opts.byteorder !== undefined) entries.push({ name: `${archive}/byteorder`, data: new TextEncoder().encode(opts.byteorder) });
  for (const [storage, key] of keys) entries.push({ name: `${archive}/data/${key}`, data: storage.bytes });
  entries.push({ name: `${archive}/version`, data: new TextEncoder().encode('3\n') });
  return buildZip(entries, opts);
}

export function writePytorchBin(path: string, tensors: readonly PtTensor[], opts: PytorchBinOptions = {}): void {
  writeFileSync(path, buildPytorchBin(tensors, opts));
}

/** The bytes of a legacy (torch < 1.6, `_use_new_zipfile_serialization=False`) checkpoint. */
export function buildLegacyPytorchBin(tensors: readonly PtTensor[], opts: PickleOptions = {}): Uint8Array {
  const keys = opts.keys ?? storageKeys(tensors);
  const parts: Uint8Array[] = [];
  const small = (fill: (w: PickleWriter) => void): void => {
    const w = new PickleWriter(2);
    w.proto();
    fill(w);
    w.stop();
    parts.push(w.bytes());
  };
  small((w) => w.int(0x1950a86a20f9469cfc6cn));
  small((w) => w.int(1001));
  small((w) => {
    w.emptyDict();
    w.put();
    w.mark();
    w.str('protocol_version');
    w.put();
    w.int(1001);
    w.str('little_endian');
    w.put();
    w.bool(true);
    w.str('type_sizes');
    w.put();
    w.emptyDict();
    w.put();
    w.mark();
    for (const [k, v] of [
      ['short', 2],
      ['int', 4],
      ['long', 4],
    ] as const) {
      w.str(k);
      w.put();
      w.int(v);
    }
    w.setitems();
    w.setitems();
  });
  parts.push(stateDictPickle(tensors, { ...opts, keys, legacy: true }));
  const sorted = [...keys.entries()].sort((a, b) => (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  small((w) => {
    w.emptyList();
    w.put();
    if (sorted.length > 1) w.mark();
    for (const [, key] of sorted) {
      w.str(key);
      w.put();
    }
    if (sorted.length > 1) w.appends();
    else if (sorted.length === 1) w.byte(0x61);
  });
  for (const [storage] of sorted) {
    const count = new Uint8Array(8);
    new DataView(count.buffer).setBigInt64(0, BigInt(storage.numel ?? storage.bytes.length / PT_ELEMENT_SIZE[storage.dtype]), true);
    parts.push(count, storage.bytes);
  }
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Element encoding for tests

export function f32Bytes(values: ArrayLike<number>): Uint8Array {
  return new Uint8Array(Float32Array.from(values).buffer);
}

export function i64Bytes(values: ArrayLike<number>): Uint8Array {
  return new Uint8Array(BigInt64Array.from(Array.from(values, (v) => BigInt(v))).buffer);
}

export function u16Bytes(bits: ArrayLike<number>): Uint8Array {
  return new Uint8Array(Uint16Array.from(bits).buffer);
}

// ---------------------------------------------------------------------------------------------------------
// Model folders

/**
 * Writes config.json plus zero-filled weights as `pytorch_model.bin`, or as `shards` files with a
 * `pytorch_model.bin.index.json` (HF's names and plain-dict shards), for the tensors the config's spec stores.
 */
export function writeTinyBinCheckpoint(
  dir: string,
  config: Record<string, unknown>,
  opts: { shards?: number } = {},
): { names: string[]; shapes: Record<string, number[]>; files: string[]; totalSize: number } {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  const stored = storedTensorsFor(config);
  const tensors: PtTensor[] = stored.map((t) => {
    const dtype = t.dtype as PtDtype;
    const count = t.shape.reduce((a, b) => a * b, 1);
    return ptTensor(t.name, dtype, t.shape, new Uint8Array(count * PT_ELEMENT_SIZE[dtype]));
  });
  const totalSize = tensors.reduce((n, t) => n + t.storage.bytes.length, 0);
  const shards = opts.shards ?? 1;
  const files: string[] = [];
  if (shards === 1) {
    writePytorchBin(join(dir, 'pytorch_model.bin'), tensors, { archiveName: 'pytorch_model' });
    files.push('pytorch_model.bin');
  } else {
    const per = Math.ceil(tensors.length / shards);
    const weightMap: Record<string, string> = {};
    for (let i = 0; i < shards; i++) {
      const file = `pytorch_model-${String(i + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.bin`;
      const part = tensors.slice(i * per, (i + 1) * per);
      writePytorchBin(join(dir, file), part, { archiveName: file.slice(0, -4), container: 'dict' });
      for (const t of part) weightMap[t.name] = file;
      files.push(file);
    }
    writeFileSync(join(dir, 'pytorch_model.bin.index.json'), JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2));
  }
  return { names: stored.map((t) => t.name), shapes: Object.fromEntries(stored.map((t) => [t.name, t.shape])), files, totalSize };
}

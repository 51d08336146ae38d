/**
 * A minimal, defensive ZIP reader: enough to find the entries of a `torch.save` archive and where each
 * stored entry's bytes lie, reading only the tail (End Of Central Directory, ZIP64 locator and record),
 * the central directory and one local header per entry. Nothing is decompressed: only STORED (method 0)
 * entries can be read, which is what torch.save writes. Every offset and size is checked against the file
 * size before anything is allocated, so a hostile archive costs at most the bytes of its directory.
 */
import { closeSync, fstatSync, openSync } from 'node:fs';
import { readBytes } from '../../util/read-fully.js';
import { FormatError } from '../../util/errors.js';
import { assertRegularFile } from '../../util/regular-file.js';

/** Random access to the bytes of a file (or of a buffer, for tests and fuzzing). */
export interface ByteSource {
  /** Shown in errors: the path of the file. */
  readonly name: string;
  readonly size: number;
  /** Up to `length` bytes at `position`; fewer only where the source ends first. */
  read(position: number, length: number): Uint8Array;
}

export interface ZipEntry {
  name: string;
  /** Compression method: 0 is STORED, 8 DEFLATE, ... */
  method: number;
  /** General purpose flags (bit 0: encrypted, bit 3: data descriptor, bit 11: UTF-8 name). */
  flags: number;
  compressedSize: number;
  uncompressedSize: number;
  localHeaderOffset: number;
  /** Absolute offset of the entry's data, past its local header's name and extra fields. */
  dataOffset: number;
}

export interface ZipDirectory {
  file: string;
  fileSize: number;
  /** In central directory order. */
  entries: ZipEntry[];
  byName: Map<string, ZipEntry>;
  /** Bytes read to list the archive (tail, ZIP64 record, central directory, local headers). */
  bytesRead: number;
  /** The file's last bytes as read to find the directory: readStoredEntry serves entries inside them from memory. */
  tail: { start: number; bytes: Uint8Array };
}

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const EOCD_SIZE = 22;
const LOCATOR_SIZE = 20;
const ZIP64_EOCD_SIZE = 56;
const CENTRAL_SIZE = 46;
const LOCAL_SIZE = 30;
const MAX_COMMENT = 0xffff;
/** A central directory larger than this is not a checkpoint's (a million tensors take about 60 MiB). */
export const MAX_CENTRAL_DIRECTORY = 256 * 1024 * 1024;

/** Wraps an open file descriptor: every read is bounded by the caller's length, itself checked first. */
export function fileByteSource(fd: number, name: string): ByteSource {
  const size = fstatSync(fd).size;
  return {
    name,
    size,
    read(position: number, length: number): Uint8Array {
      return readBytes(fd, Math.min(length, size - position), position);
    },
  };
}

export function bufferByteSource(bytes: Uint8Array, name: string): ByteSource {
  return {
    name,
    size: bytes.length,
    read(position: number, length: number): Uint8Array {
      const start = Math.min(Math.max(0, position), bytes.length);
      return bytes.subarray(start, Math.min(bytes.length, start + Math.max(0, length)));
    },
  };
}

/** Opens `path`, runs `fn` on it as a ByteSource, closes it. */
export function withFileSource<T>(path: string, fn: (src: ByteSource) => T): T {
  assertRegularFile(path);
  const fd = openSync(path, 'r');
  try {
    return fn(fileByteSource(fd, path));
  } finally {
    closeSync(fd);
  }
}

const u16 = (b: Uint8Array, at: number): number => b[at]! | (b[at + 1]! << 8);
const u32 = (b: Uint8Array, at: number): number => (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
/** A u64 as a number, or -1 past 2^53 (no file is that large, so the caller's size checks reject it). */
function u64(b: Uint8Array, at: number): number {
  const lo = u32(b, at);
  const hi = u32(b, at + 4);
  if (hi > 0x1fffff) return -1;
  return hi * 0x100000000 + lo;
}

/** True when the bytes start as a ZIP archive does (a local file header, or an empty archive's end records). */
export function looksLikeZip(head: Uint8Array): boolean {
  if (head.length < 4) return false;
  const sig = u32(head, 0);
  return sig === SIG_LOCAL || sig === SIG_EOCD || sig === SIG_ZIP64_EOCD;
}

function quoted(name: string): string {
  const q = JSON.stringify(name.slice(0, 121));
  return q.length > 122 ? `${q.slice(0, 120)}…"` : q;
}

interface Tail {
  entryCount: number;
  cdOffset: number;
  cdSize: number;
  /** Where the central directory must end: the ZIP64 record if there is one, else the EOCD. */
  cdLimit: number;
  bytesRead: number;
  /** The last bytes of the file, kept to serve later reads that fall inside them. */
  tailStart: number;
  tail: Uint8Array;
}

/** Bytes read first from the end: the end records of an archive without a comment, and often its directory. */
const FIRST_TAIL = 4096;

/** The EOCD's offset in `tail`: the last record, whose comment runs exactly to the end of the file. */
function findEocd(tail: Uint8Array): number {
  for (let p = tail.length - EOCD_SIZE; p >= 0; p--) {
    if (u32(tail, p) === SIG_EOCD && p + EOCD_SIZE + u16(tail, p + 20) === tail.length) return p;
  }
  return -1;
}

/**
 * Finds the EOCD (and the ZIP64 locator and record when present): in the last 4 KiB, else in the last
 * 64 KiB + 42 bytes that a maximal comment can push it back to.
 */
function readTail(src: ByteSource): Tail {
  const file = src.name;
  if (src.size < EOCD_SIZE) throw new FormatError(file, `not a zip archive: ${src.size} bytes is shorter than an end-of-central-directory record`);
  let tailLength = Math.min(src.size, FIRST_TAIL);
  let tailStart = src.size - tailLength;
  let tail = src.read(tailStart, tailLength);
  let bytesRead = tail.length;
  let at = tail.length === tailLength ? findEocd(tail) : -1;
  const fullLength = Math.min(src.size, EOCD_SIZE + MAX_COMMENT + LOCATOR_SIZE);
  if (at < 0 && fullLength > tailLength) {
    tailLength = fullLength;
    tailStart = src.size - tailLength;
    tail = src.read(tailStart, tailLength);
    bytesRead += tail.length;
    if (tail.length === tailLength) at = findEocd(tail);
  }
  if (tail.length !== tailLength) throw new FormatError(file, 'file ended while reading its last bytes');
  if (at < 0) throw new FormatError(file, 'not a zip archive: no end-of-central-directory record at its end');
  const eocdPos = tailStart + at;
  const fromTail = (position: number, length: number): Uint8Array | undefined =>
    position >= tailStart && position + length <= tailStart + tail.length ? tail.subarray(position - tailStart, position - tailStart + length) : undefined;
  const disk = u16(tail, at + 4);
  const cdDisk = u16(tail, at + 6);
  let onDisk = u16(tail, at + 8);
  let entryCount = u16(tail, at + 10);
  let cdSize = u32(tail, at + 12);
  let cdOffset = u32(tail, at + 16);
  let cdLimit = eocdPos;

  const hasLocator = at >= LOCATOR_SIZE && u32(tail, at - LOCATOR_SIZE) === SIG_ZIP64_LOCATOR;
  if (hasLocator) {
    const l = at - LOCATOR_SIZE;
    const recordDisk = u32(tail, l + 4);
    const recordPos = u64(tail, l + 8);
    const disks = u32(tail, l + 16);
    if (recordDisk !== 0 || disks > 1) throw new FormatError(file, 'multi-volume zip archives are not supported');
    if (recordPos < 0 || recordPos + ZIP64_EOCD_SIZE > eocdPos - LOCATOR_SIZE) {
      throw new FormatError(file, `ZIP64 end-of-central-directory offset ${recordPos} lies outside the file`);
    }
    const rec = fromTail(recordPos, ZIP64_EOCD_SIZE) ?? src.read(recordPos, ZIP64_EOCD_SIZE);
    if (!fromTail(recordPos, ZIP64_EOCD_SIZE)) bytesRead += rec.length;
    if (rec.length !== ZIP64_EOCD_SIZE || u32(rec, 0) !== SIG_ZIP64_EOCD) {
      throw new FormatError(file, `no ZIP64 end-of-central-directory record at offset ${recordPos}`);
    }
    if (u32(rec, 16) !== 0 || u32(rec, 20) !== 0) throw new FormatError(file, 'multi-volume zip archives are not supported');
    onDisk = u64(rec, 24);
    entryCount = u64(rec, 32);
    cdSize = u64(rec, 40);
    cdOffset = u64(rec, 48);
    cdLimit = recordPos;
  } else if (entryCount === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    throw new FormatError(file, 'zip archive needs a ZIP64 end-of-central-directory record but has no locator for one');
  } else if (disk !== 0 || cdDisk !== 0) {
    throw new FormatError(file, 'multi-volume zip archives are not supported');
  }
  if (onDisk !== entryCount) throw new FormatError(file, 'multi-volume zip archives are not supported');
  if (cdSize < 0 || cdOffset < 0 || cdOffset + cdSize > cdLimit) {
    throw new FormatError(file, `central directory (offset ${cdOffset}, ${cdSize} bytes) runs past its end record at ${cdLimit}`);
  }
  if (cdSize > MAX_CENTRAL_DIRECTORY) throw new FormatError(file, `central directory of ${cdSize} bytes is absurdly large (over ${MAX_CENTRAL_DIRECTORY})`);
  if (entryCount < 0 || entryCount * CENTRAL_SIZE > cdSize) {
    throw new FormatError(file, `zip archive claims ${entryCount} entries, more than its ${cdSize}-byte central directory can hold`);
  }
  return { entryCount, cdOffset, cdSize, cdLimit, bytesRead, tailStart, tail };
}

const utf8 = new TextDecoder('utf-8');

/** Sizes and offset from the ZIP64 extended information extra field, for the fields saturated at 0xffffffff. */
function zip64Fields(extra: Uint8Array, need: { usize: boolean; csize: boolean; offset: boolean }, file: string, name: string) {
  for (let p = 0; p + 4 <= extra.length;) {
    const id = u16(extra, p);
    const len = u16(extra, p + 2);
    const body = p + 4;
    if (body + len > extra.length) break;
    if (id === 0x0001) {
      let q = body;
      const take = (): number => {
        if (q + 8 > body + len) throw new FormatError(file, `entry ${quoted(name)}: ZIP64 extra field is too short`);
        const v = u64(extra, q);
        q += 8;
        return v;
      };
      const out = { usize: need.usize ? take() : undefined, csize: need.csize ? take() : undefined, offset: need.offset ? take() : undefined };
      return out;
    }
    p = body + len;
  }
  throw new FormatError(file, `entry ${quoted(name)}: sizes need a ZIP64 extra field, which is missing`);
}

/**
 * Lists a zip archive: the central directory's entries with their data offsets, each checked to lie inside
 * the file, before the central directory, and without overlapping another entry.
 */
export function readZipDirectory(src: ByteSource): ZipDirectory {
  const file = src.name;
  const tail = readTail(src);
  let bytesRead = tail.bytesRead;
  /** Reads through the tail already in memory when the range lies inside it. */
  const read = (position: number, length: number): Uint8Array => {
    if (position >= tail.tailStart && position + length <= tail.tailStart + tail.tail.length) {
      return tail.tail.subarray(position - tail.tailStart, position - tail.tailStart + length);
    }
    const out = src.read(position, length);
    bytesRead += out.length;
    return out;
  };
  const cd = read(tail.cdOffset, tail.cdSize);
  if (cd.length !== tail.cdSize) throw new FormatError(file, 'file ended inside the central directory');
  const entries: ZipEntry[] = [];
  const names: Uint8Array[] = [];
  const byName = new Map<string, ZipEntry>();
  let p = 0;
  for (let i = 0; i < tail.entryCount; i++) {
    if (p + CENTRAL_SIZE > cd.length || u32(cd, p) !== SIG_CENTRAL) {
      throw new FormatError(file, `central directory entry ${i} of ${tail.entryCount} is missing or malformed`);
    }
    const flags = u16(cd, p + 8);
    const method = u16(cd, p + 10);
    let csize = u32(cd, p + 20);
    let usize = u32(cd, p + 24);
    const nameLen = u16(cd, p + 28);
    const extraLen = u16(cd, p + 30);
    const commentLen = u16(cd, p + 32);
    const diskStart = u16(cd, p + 34);
    let offset = u32(cd, p + 42);
    const end = p + CENTRAL_SIZE + nameLen + extraLen + commentLen;
    if (end > cd.length) throw new FormatError(file, `central directory entry ${i} runs past the directory`);
    const nameBytes = cd.subarray(p + CENTRAL_SIZE, p + CENTRAL_SIZE + nameLen);
    const name = utf8.decode(nameBytes);
    if (usize === 0xffffffff || csize === 0xffffffff || offset === 0xffffffff) {
      const z = zip64Fields(
        cd.subarray(p + CENTRAL_SIZE + nameLen, p + CENTRAL_SIZE + nameLen + extraLen),
        { usize: usize === 0xffffffff, csize: csize === 0xffffffff, offset: offset === 0xffffffff },
        file,
        name,
      );
      usize = z.usize ?? usize;
      csize = z.csize ?? csize;
      offset = z.offset ?? offset;
    }
    if (diskStart !== 0 && diskStart !== 0xffff) throw new FormatError(file, 'multi-volume zip archives are not supported');
    if (byName.has(name)) throw new FormatError(file, `zip archive lists entry ${quoted(name)} twice`);
    if (offset < 0 || usize < 0 || csize < 0 || offset + LOCAL_SIZE + nameLen > tail.cdOffset) {
      throw new FormatError(file, `entry ${quoted(name)}: local header at ${offset} lies outside the archive's data`);
    }
    const entry: ZipEntry = { name, method, flags, compressedSize: csize, uncompressedSize: usize, localHeaderOffset: offset, dataOffset: -1 };
    entries.push(entry);
    byName.set(name, entry);
    names.push(nameBytes);
    p = end;
  }

  // Local headers are read once the whole directory is known to be sane.
  for (const [i, entry] of entries.entries()) {
    const nameBytes = names[i]!;
    const head = read(entry.localHeaderOffset, LOCAL_SIZE + nameBytes.length);
    if (head.length !== LOCAL_SIZE + nameBytes.length || u32(head, 0) !== SIG_LOCAL) {
      throw new FormatError(file, `entry ${quoted(entry.name)}: no local file header at offset ${entry.localHeaderOffset}`);
    }
    const localNameLen = u16(head, 26);
    const localExtraLen = u16(head, 28);
    if (localNameLen !== nameBytes.length || !nameBytes.every((b, k) => head[LOCAL_SIZE + k] === b)) {
      throw new FormatError(file, `entry ${quoted(entry.name)}: local header names a different file than the central directory`);
    }
    if (u16(head, 8) !== entry.method)
      throw new FormatError(file, `entry ${quoted(entry.name)}: local header and central directory disagree on the compression method`);
    entry.dataOffset = entry.localHeaderOffset + LOCAL_SIZE + localNameLen + localExtraLen;
    if (entry.dataOffset + entry.compressedSize > tail.cdOffset) {
      throw new FormatError(file, `entry ${quoted(entry.name)}: its ${entry.compressedSize} bytes at offset ${entry.dataOffset} run past the archive's data`);
    }
  }

  const sorted = [...entries].sort((a, b) => a.localHeaderOffset - b.localHeaderOffset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const next = sorted[i]!;
    if (next.localHeaderOffset < prev.dataOffset + prev.compressedSize) {
      throw new FormatError(file, `entries ${quoted(prev.name)} and ${quoted(next.name)} overlap`);
    }
  }
  return { file, fileSize: src.size, entries, byName, bytesRead, tail: { start: tail.tailStart, bytes: tail.tail } };
}

/** The absolute byte range of a STORED entry's data; any other entry is a FormatError naming it. */
export function storedRange(dir: ZipDirectory, entry: ZipEntry): [number, number] {
  if (entry.flags & 0x1) throw new FormatError(dir.file, `entry ${quoted(entry.name)} is encrypted`);
  if (entry.method !== 0) {
    throw new FormatError(
      dir.file,
      `entry ${quoted(entry.name)} is compressed (method ${entry.method}${entry.method === 8 ? ', deflate' : ''}): only stored entries are read`,
    );
  }
  if (entry.compressedSize !== entry.uncompressedSize) {
    throw new FormatError(dir.file, `entry ${quoted(entry.name)} is stored but its sizes differ (${entry.compressedSize} vs ${entry.uncompressedSize})`);
  }
  return [entry.dataOffset, entry.dataOffset + entry.compressedSize];
}

/**
 * Reads a STORED entry whole, refusing one over `maxBytes` before allocating. `read` says whether the bytes
 * came from the disk (false when the directory's tail already held them).
 */
export function readStoredEntry(src: ByteSource, dir: ZipDirectory, entry: ZipEntry, maxBytes: number): { bytes: Uint8Array; read: boolean } {
  const [start, end] = storedRange(dir, entry);
  if (end - start > maxBytes) throw new FormatError(dir.file, `entry ${quoted(entry.name)} is ${end - start} bytes, over the ${maxBytes}-byte limit for it`);
  const t = dir.tail;
  if (start >= t.start && end <= t.start + t.bytes.length) return { bytes: t.bytes.subarray(start - t.start, end - t.start), read: false };
  const bytes = src.read(start, end - start);
  if (bytes.length !== end - start) throw new FormatError(dir.file, `file ended inside entry ${quoted(entry.name)}`);
  return { bytes, read: true };
}

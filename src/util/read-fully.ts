import { readSync } from 'node:fs';

/**
 * Reads `length` bytes at file `position` into `into` (from `offset`), looping over short reads as
 * `readSync` may return fewer than asked. Returns the count, smaller only where the file ends first.
 */
export function readAt(fd: number, into: Uint8Array, length: number, position: number, offset = 0): number {
  let got = 0;
  while (got < length) {
    const n = readSync(fd, into, offset + got, length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

/** The bytes at `position`: `length` of them, or fewer where the file ends first. */
export function readBytes(fd: number, length: number, position: number): Uint8Array {
  const out = new Uint8Array(Math.max(0, length));
  const got = readAt(fd, out, out.length, position);
  return got === out.length ? out : out.subarray(0, got);
}

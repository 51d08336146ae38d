/** Byte-level mutations the parser fuzzers share; each fuzzer keeps its own arbitraries and weights. */
export type ByteMutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'set'; at: number; value: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; length: number }
  | { kind: 'u64'; at: number; value: bigint }
  | { kind: 'u32'; at: number; value: number }
  | { kind: 'u16'; at: number; value: number };

/** Applies one mutation at byte `at` (already reduced to the buffer), returning the (possibly new) buffer. */
export function applyMutation(bytes: Uint8Array, m: ByteMutation, at: number): Uint8Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (m.kind) {
    case 'flip':
      if (at < bytes.length) bytes[at] = bytes[at]! ^ (1 << m.bit);
      return bytes;
    case 'set':
      if (at < bytes.length) bytes[at] = m.value;
      return bytes;
    case 'truncate':
      return bytes.slice(0, at);
    case 'insert': {
      const next = new Uint8Array(bytes.length + m.bytes.length);
      next.set(bytes.subarray(0, at));
      next.set(m.bytes, at);
      next.set(bytes.subarray(at), at + m.bytes.length);
      return next;
    }
    case 'delete': {
      const tail = bytes.subarray(Math.min(bytes.length, at + m.length));
      const next = new Uint8Array(at + tail.length);
      next.set(bytes.subarray(0, at));
      next.set(tail, at);
      return next;
    }
    case 'u64':
      if (at + 8 <= bytes.length) dv.setBigUint64(at, m.value, true);
      return bytes;
    case 'u32':
      if (at + 4 <= bytes.length) dv.setUint32(at, m.value, true);
      return bytes;
    case 'u16':
      if (at + 2 <= bytes.length) dv.setUint16(at, m.value, true);
      return bytes;
  }
}

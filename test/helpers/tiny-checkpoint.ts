/**
 * What every tiny test checkpoint shares: the storage dtypes (round-to-nearest-even conversions and their byte
 * encodings), the per-tensor stream hash, and writing config.json + model.safetensors from the reader spec's
 * stored tensor list with deterministic values.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeSafetensors, type SafetensorsWriteTensor } from '../../src/reader/formats/safetensors-writer.js';
import { storedTensorsFor } from './tiny-models.js';

export type TinyStorageDtype = 'float32' | 'float16' | 'bfloat16';

// ---------------------------------------------------------------------------------------------------------
// Storage dtypes: round-to-nearest-even conversions, as torch's `.to(torch.float16 / torch.bfloat16)` does.

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE binary16 bits of the float32 nearest `v`, rounding half to even; overflow gives ±inf. */
export function float32ToFloat16Bits(v: number): number {
  f32[0] = v;
  const x = u32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (half & 1) === 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1) === 1)) half++; // a carry into the exponent is correct
  return sign | half;
}

export function float16BitsToFloat32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 0x1f) return m !== 0 ? NaN : sign * Infinity;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

/** bfloat16 bits of the float32 nearest `v`, rounding half to even. */
export function float32ToBfloat16Bits(v: number): number {
  f32[0] = v;
  const x = u32[0]!;
  if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) return ((x >>> 16) & 0x8000) | 0x7fc0;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bfloat16BitsToFloat32(b: number): number {
  u32[0] = (b & 0xffff) << 16;
  return f32[0]!;
}

/** The value a float64 becomes when stored as `dtype` (read back as a number). */
export function roundToDtype(v: number, dtype: TinyStorageDtype): number {
  switch (dtype) {
    case 'float32':
      return Math.fround(v);
    case 'float16':
      return float16BitsToFloat32(float32ToFloat16Bits(Math.fround(v)));
    case 'bfloat16':
      return bfloat16BitsToFloat32(float32ToBfloat16Bits(Math.fround(v)));
  }
}

/**
 * Little-endian bytes of values already representable in `dtype` (safetensors stores little-endian).
 * Float64 → float16 goes through float32 first, as torch does; for our values the two roundings agree.
 */
export function encodeTensor(values: Float32Array, dtype: TinyStorageDtype): Uint8Array {
  const width = dtype === 'float32' ? 4 : 2;
  const out = new Uint8Array(values.length * width);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (dtype === 'float32') view.setFloat32(i * 4, v, true);
    else view.setUint16(i * 2, dtype === 'float16' ? float32ToFloat16Bits(v) : float32ToBfloat16Bits(v), true);
  }
  return out;
}

export function decodeTensor(bytes: Uint8Array, dtype: TinyStorageDtype): Float32Array {
  const width = dtype === 'float32' ? 4 : 2;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(bytes.byteLength / width);
  for (let i = 0; i < out.length; i++) {
    if (dtype === 'float32') out[i] = view.getFloat32(i * 4, true);
    else {
      const bits = view.getUint16(i * 2, true);
      out[i] = dtype === 'float16' ? float16BitsToFloat32(bits) : bfloat16BitsToFloat32(bits);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Deterministic random weights.

/** FNV-1a of a string: separates the streams of differently named tensors. */
export function hashName(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** The stored tensors of a written checkpoint: values exactly as stored (widened to float32), shapes, file order. */
export interface SeededTensors {
  tensors: Record<string, Float32Array>;
  shapes: Record<string, number[]>;
  names: string[];
}

/**
 * Writes `dir/config.json` (configText, or the config as indented JSON) and `dir/model.safetensors` holding every
 * tensor the architecture spec stores for `config`, in its order: `draw(name, count)`'s float64 values rounded to
 * `dtype`. Returns the values as stored.
 */
export function writeSeededCheckpoint(
  dir: string,
  config: Record<string, unknown>,
  dtype: TinyStorageDtype,
  draw: (tensor: string, count: number) => ArrayLike<number>,
  configText = JSON.stringify(config, null, 2),
): SeededTensors {
  const stored = storedTensorsFor(config);
  const tensors: Record<string, Float32Array> = {};
  const shapes: Record<string, number[]> = {};
  const write: SafetensorsWriteTensor[] = [];
  for (const t of stored) {
    const count = t.shape.reduce((a, b) => a * b, 1);
    const raw = draw(t.name, count);
    const values = new Float32Array(count);
    for (let i = 0; i < count; i++) values[i] = roundToDtype(raw[i]!, dtype);
    tensors[t.name] = values;
    shapes[t.name] = [...t.shape];
    write.push({ name: t.name, dtype, shape: t.shape, data: encodeTensor(values, dtype) });
  }
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), configText);
  writeSafetensors(join(dir, 'model.safetensors'), write, { format: 'pt' });
  return { tensors, shapes, names: stored.map((t) => t.name) };
}

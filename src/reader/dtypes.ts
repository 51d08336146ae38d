/**
 * The one place that knows what a dtype costs. Names follow PyTorch (`float16`, `bfloat16`, ...);
 * GGUF block-quantized types use ggml's names in lower case (`q4_k`, `q8_0`, ...).
 * Sizes are exact bytes per block of `blockSize` elements, so a tensor's byte size is an integer
 * whenever its element count is a multiple of the block size.
 */
export interface DTypeInfo {
  readonly name: string;
  readonly blockSize: number;
  readonly blockBytes: number;
  readonly kind: 'float' | 'int' | 'bool' | 'quantized';
}

function d(name: string, blockBytes: number, kind: DTypeInfo['kind'], blockSize = 1): DTypeInfo {
  return { name, blockSize, blockBytes, kind };
}

const TABLE: readonly DTypeInfo[] = [
  d('float64', 8, 'float'),
  d('float32', 4, 'float'),
  d('float16', 2, 'float'),
  d('bfloat16', 2, 'float'),
  d('float8_e4m3fn', 1, 'float'),
  d('float8_e5m2', 1, 'float'),
  d('int64', 8, 'int'),
  d('int32', 4, 'int'),
  d('int16', 2, 'int'),
  d('int8', 1, 'int'),
  d('uint64', 8, 'int'),
  d('uint32', 4, 'int'),
  d('uint16', 2, 'int'),
  d('uint8', 1, 'int'),
  d('bool', 1, 'bool'),
  // ggml block formats (ggml.c type_traits): bytes per block of blockSize weights.
  d('q4_0', 18, 'quantized', 32),
  d('q4_1', 20, 'quantized', 32),
  d('q5_0', 22, 'quantized', 32),
  d('q5_1', 24, 'quantized', 32),
  d('q8_0', 34, 'quantized', 32),
  d('q8_1', 36, 'quantized', 32),
  d('q2_k', 84, 'quantized', 256),
  d('q3_k', 110, 'quantized', 256),
  d('q4_k', 144, 'quantized', 256),
  d('q5_k', 176, 'quantized', 256),
  d('q6_k', 210, 'quantized', 256),
  d('q8_k', 292, 'quantized', 256),
  d('iq2_xxs', 66, 'quantized', 256),
  d('iq2_xs', 74, 'quantized', 256),
  d('iq3_xxs', 98, 'quantized', 256),
  d('iq1_s', 50, 'quantized', 256),
  d('iq4_nl', 18, 'quantized', 32),
  d('iq3_s', 110, 'quantized', 256),
  d('iq2_s', 82, 'quantized', 256),
  d('iq4_xs', 136, 'quantized', 256),
  d('iq1_m', 56, 'quantized', 256),
  d('tq1_0', 54, 'quantized', 256),
  d('tq2_0', 66, 'quantized', 256),
  d('mxfp4', 17, 'quantized', 32),
];

const BY_NAME = new Map(TABLE.map((t) => [t.name, t]));

/** Aliases met in configs and headers: safetensors codes (F16, BF16, ...), `half`, `fp16`, `torch.float16`. */
const ALIASES: Record<string, string> = {
  f64: 'float64',
  double: 'float64',
  fp64: 'float64',
  f32: 'float32',
  float: 'float32',
  fp32: 'float32',
  f16: 'float16',
  half: 'float16',
  fp16: 'float16',
  bf16: 'bfloat16',
  f8_e4m3: 'float8_e4m3fn',
  f8_e4m3fn: 'float8_e4m3fn',
  float8_e4m3: 'float8_e4m3fn',
  fp8: 'float8_e4m3fn',
  f8_e5m2: 'float8_e5m2',
  i64: 'int64',
  long: 'int64',
  i32: 'int32',
  int: 'int32',
  i16: 'int16',
  short: 'int16',
  i8: 'int8',
  u64: 'uint64',
  u32: 'uint32',
  u16: 'uint16',
  u8: 'uint8',
};

/** Resolves a dtype name or alias; undefined when unknown. */
export function lookupDType(name: string): DTypeInfo | undefined {
  // Canonical names are by far the most common (every skeleton tensor): skip the normalising copies.
  const exact = BY_NAME.get(name);
  if (exact) return exact;
  let key = name.trim().toLowerCase();
  if (key.startsWith('torch.')) key = key.slice('torch.'.length);
  return BY_NAME.get(ALIASES[key] ?? key);
}

export function isKnownDType(name: string): boolean {
  return lookupDType(name) !== undefined;
}

/** Canonical name of a known dtype; throws on an unknown one (callers validate user input first). */
export function canonicalDType(name: string): string {
  const info = lookupDType(name);
  if (!info) throw new Error(`unknown dtype ${JSON.stringify(name)}`);
  return info.name;
}

export function dtypeInfo(name: string): DTypeInfo {
  const info = lookupDType(name);
  if (!info) throw new Error(`unknown dtype ${JSON.stringify(name)}`);
  return info;
}

/** Bytes of one element for non-block types; the average for block formats. */
export function bytesPerElement(name: string): number {
  const info = dtypeInfo(name);
  return info.blockBytes / info.blockSize;
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

/** Exact bytes of a tensor; fractional only for a block format whose element count is not a block multiple. */
export function tensorBytes(shape: readonly number[], dtype: string): number {
  const info = dtypeInfo(dtype);
  const n = numel(shape);
  return info.blockSize === 1 ? n * info.blockBytes : (n / info.blockSize) * info.blockBytes;
}

export function isFloatDType(name: string): boolean {
  return dtypeInfo(name).kind === 'float';
}

export const ALL_DTYPES: readonly string[] = TABLE.map((t) => t.name);

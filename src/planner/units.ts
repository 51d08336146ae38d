/**
 * The one place that knows what a byte unit is worth and how a size string reads.
 *
 * Two readers live here:
 * - `parseByteSize`: our own (default) reading. Decimal units are powers of 10, binary units powers of 2,
 *   units are case-insensitive, and a lower-case `b` after K/M/G/T is refused as ambiguous, because
 *   accelerate reads it as bits while most people mean bytes.
 * - `parseAccelerateSize`: a faithful copy of accelerate's `convert_file_size_to_int`, for `--compat accelerate`.
 */
import { InputError } from '../util/errors.js';

export const KB = 1_000;
export const MB = 1_000_000;
export const GB = 1_000_000_000;
export const TB = 1_000_000_000_000;
export const KiB = 1024;
export const MiB = 1024 ** 2;
export const GiB = 1024 ** 3;
export const TiB = 1024 ** 4;

/** Bytes per unit, keyed by the lower-cased unit. Exact integers, so BigInt arithmetic on them is exact. */
const UNIT_BYTES: ReadonlyMap<string, number> = new Map([
  ['b', 1],
  ['kb', KB],
  ['mb', MB],
  ['gb', GB],
  ['tb', TB],
  ['kib', KiB],
  ['mib', MiB],
  ['gib', GiB],
  ['tib', TiB],
]);

const UNIT_LIST = 'B, KB, MB, GB, TB, KiB, MiB, GiB, TiB';

/** Thousands separators without depending on the process locale. */
export function groupDigits(n: number): string {
  const [int = '', frac] = String(Math.abs(n)).split('.');
  const grouped = int.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return (n < 0 ? '-' : '') + grouped + (frac !== undefined ? `.${frac}` : '');
}

const SIZE_RE = /^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$/;

/**
 * Exact `floor(decimal × unit)` for a non-negative decimal string: BigInt, so "1.1GB" is 1,100,000,000 and not
 * whatever the nearest double of 1.1 times 10^9 happens to be.
 */
function decimalTimes(decimal: string, unit: number): bigint {
  const [intPart = '', fracPart = ''] = decimal.split('.');
  const scale = 10n ** BigInt(fracPart.length);
  const scaled = BigInt((intPart === '' ? '0' : intPart) + fracPart);
  return (scaled * BigInt(unit)) / scale;
}

/** Shortest readable spelling of a whole byte count in decimal units ("625MB"), for messages. */
function decimalSpelling(bytes: number): string {
  for (const [name, size] of [
    ['TB', TB],
    ['GB', GB],
    ['MB', MB],
    ['KB', KB],
  ] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${name}`;
  }
  return `${bytes}B`;
}

/**
 * Our reading of a byte size: an integer (bytes), or a decimal number with an optional unit among
 * B, KB, MB, GB, TB (powers of 10) and KiB, MiB, GiB, TiB (powers of 2), case-insensitive, spaces allowed.
 * A fractional byte count is rounded down (as accelerate does), so "1.1KiB" is 1126 bytes.
 * Refuses: negative or non-finite numbers, unknown units, results past 2^53, and — in this mode only — a
 * lower-case `b` after K/M/G/T ("5gb", "2400Mb"), which accelerate reads as bits.
 */
export function parseByteSize(value: string | number, where = 'size'): number {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new InputError(where, `${value} is not a byte count: use a non-negative whole number of bytes`);
    }
    return value;
  }
  const m = SIZE_RE.exec(value);
  if (!m) {
    throw new InputError(where, `'${value}' is not a size: write a non-negative number with an optional unit (${UNIT_LIST}), e.g. 5GiB`);
  }
  const num = m[1] ?? '';
  const unitText = m[2] ?? '';
  if (unitText === '') {
    if (num.includes('.')) throw new InputError(where, `'${value}' is not a whole number of bytes: add a unit (e.g. ${num}GB)`);
    return checkSafe(BigInt(num), value, where);
  }
  const unit = UNIT_BYTES.get(unitText.toLowerCase());
  if (unit === undefined) {
    throw new InputError(where, `'${value}' has an unknown unit '${unitText}': use one of ${UNIT_LIST}`);
  }
  if (/^[KMGTkmgt]b$/.test(unitText)) {
    // Accelerate's quirk: "5gb" = 5e9 bits = 625,000,000 bytes. We refuse to guess which one the user meant.
    const bytesReading = checkSafe(decimalTimes(num, unit), value, where);
    const bitsReading = Math.floor(Math.trunc(Number(num) * unit) / 8);
    throw new InputError(
      where,
      `'${value.trim()}' is ambiguous: accelerate reads a lower-case b as bits (${groupDigits(bitsReading)} bytes); ` +
        `write ${num}${unitText.toUpperCase()} for ${groupDigits(bytesReading)} bytes or ${decimalSpelling(bitsReading)} for bits`,
      'AMBIGUOUS_UNIT',
    );
  }
  return checkSafe(decimalTimes(num, unit), value, where);
}

function checkSafe(bytes: bigint, text: string, where: string): number {
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) throw new InputError(where, `'${text}' is too large (over 2^53 bytes)`);
  return Number(bytes);
}

const BINARY_UNITS: ReadonlyArray<readonly [string, number]> = [
  ['TiB', TiB],
  ['GiB', GiB],
  ['MiB', MiB],
  ['KiB', KiB],
];

/**
 * Human display: the largest binary unit the value reaches, with 2 decimals ("13.48 GiB"); below 1 KiB,
 * plain bytes ("512 B", or "0.125 B" for accelerate's fractional bool sizes).
 */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n)) return `${n} B`;
  const sign = n < 0 ? '-' : '';
  const abs = Math.abs(n);
  for (const [name, size] of BINARY_UNITS) {
    if (abs >= size) return `${sign}${(abs / size).toFixed(2)} ${name}`;
  }
  return `${sign}${Number.isInteger(abs) ? abs : Number(abs.toFixed(3))} B`;
}

// ---------------------------------------------------------------------------------------------------------------
// accelerate compat: convert_file_size_to_int
// ---------------------------------------------------------------------------------------------------------------

/** What accelerate's size conversion gives: bytes, or the Python exception it raises. */
export type AccelerateSizeOutcome = { ok: true; bytes: number } | { ok: false; pythonType: 'ValueError' | 'OverflowError' | 'AttributeError'; message: string };

/**
 * Python's `float(str)`: surrounding whitespace, a sign, digits with single underscores between them, an optional
 * fraction and exponent, or inf/infinity/nan in any case. Returns undefined where Python raises ValueError.
 * (JS `Number()` differs: it takes "", "0x10" and "Infinity" only in that case, and refuses "1_000".)
 */
export function pythonFloat(text: string): number | undefined {
  const s = text.replace(/^[\s\x1c-\x1f]+|[\s\x1c-\x1f]+$/g, '');
  const digits = String.raw`\d(?:_?\d)*`;
  const numberRe = new RegExp(String.raw`^[+-]?(?:${digits}(?:\.(?:${digits})?)?|\.${digits})(?:[eE][+-]?${digits})?$`);
  if (numberRe.test(s)) return Number(s.replace(/_/g, ''));
  const special = /^([+-]?)(inf|infinity|nan)$/i.exec(s);
  if (special) {
    const word = (special[2] ?? '').toLowerCase();
    if (word === 'nan') return NaN;
    return special[1] === '-' ? -Infinity : Infinity;
  }
  return undefined;
}

/** Python's `int(x)` on a float: truncation, with the exceptions Python raises for inf and nan. */
function pythonIntOfFloat(x: number): { ok: true; value: number } | { ok: false; type: 'ValueError' | 'OverflowError'; message: string } {
  if (Number.isNaN(x)) return { ok: false, type: 'ValueError', message: 'cannot convert float NaN to integer' };
  if (!Number.isFinite(x)) return { ok: false, type: 'OverflowError', message: 'cannot convert float infinity to integer' };
  return { ok: true, value: Math.trunc(x) };
}

/**
 * accelerate's `convert_file_size_to_int`, rule for rule (accelerate/utils/modeling.py):
 * - an int is returned as is (a negative one is refused);
 * - `…GIB/MIB/KIB` (any case) = float(number) × 2^30/2^20/2^10, truncated;
 * - `…GB/MB/KB` (any case) = float(number) × 10^9/10^6/10^3, truncated, then — QUIRK — floor-divided by 8 when
 *   the very last character is a lower-case `b` ("5gb", "5Gb" are bits; "5gB" is bytes);
 * - anything else ("5G", "5TB", "5B", "5000") stays -1 and is refused, as is any negative result.
 * The float parse is Python's, so "1.5GB", " 5 GB", "1_0GB" and "1e3MB" are accepted.
 */
export function accelerateSizeOutcome(size: number | string): AccelerateSizeOutcome {
  const errMsg = `\`size\` ${String(size)} is not in a valid format. Use an integer for bytes, or a string with an unit (like '5.0GB').`;
  let memSize = -1;
  if (typeof size === 'number') {
    // Python only takes the int branch for an int; a float has no .upper() and raises AttributeError.
    if (!Number.isInteger(size)) return { ok: false, pythonType: 'AttributeError', message: "'float' object has no attribute 'upper'" };
    memSize = size;
  } else {
    const upper = size.toUpperCase();
    const binary: ReadonlyArray<readonly [string, number]> = [
      ['GIB', 2 ** 30],
      ['MIB', 2 ** 20],
      ['KIB', 2 ** 10],
    ];
    const decimal: ReadonlyArray<readonly [string, number]> = [
      ['GB', 10 ** 9],
      ['MB', 10 ** 6],
      ['KB', 10 ** 3],
    ];
    const bin = binary.find(([suffix]) => upper.endsWith(suffix));
    const dec = bin ? undefined : decimal.find(([suffix]) => upper.endsWith(suffix));
    const match = bin ?? dec;
    if (match) {
      const f = pythonFloat(size.slice(0, -match[0].length));
      if (f === undefined) return { ok: false, pythonType: 'ValueError', message: errMsg };
      const asInt = pythonIntOfFloat(f * match[1]);
      if (!asInt.ok) {
        // Only ValueError is caught (and re-raised with accelerate's message); OverflowError escapes as is.
        return asInt.type === 'ValueError'
          ? { ok: false, pythonType: 'ValueError', message: errMsg }
          : { ok: false, pythonType: asInt.type, message: asInt.message };
      }
      memSize = dec && size.endsWith('b') ? Math.floor(asInt.value / 8) : asInt.value;
    }
  }
  if (memSize < 0) return { ok: false, pythonType: 'ValueError', message: errMsg };
  return { ok: true, bytes: memSize };
}

/**
 * accelerate's reading of a size (see `accelerateSizeOutcome`); throws InputError with accelerate's own message
 * where accelerate raises.
 */
export function parseAccelerateSize(value: number | string, where = 'max_memory'): number {
  const outcome = accelerateSizeOutcome(value);
  if (!outcome.ok) throw new InputError(where, `${outcome.pythonType}: ${outcome.message}`, 'ACCELERATE_SIZE');
  return outcome.bytes;
}

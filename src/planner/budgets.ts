/**
 * `--max-memory`: how much each device may hold. Parsing gives *specs* (what the user wrote, as data); resolving
 * turns them into bytes against a device inventory. Both are pure, so the CLI can parse before it probes devices.
 *
 * Accepted forms:
 *   0=5GiB,1=10GB,cpu=30GiB,disk=200GiB          (comma list)
 *   {"0": "5GiB", "1": 10000000000, "cpu": "30GiB"}  (JSON dict, like accelerate's max_memory)
 * Values: a size (units.ts), or our extensions
 *   40%          a share of the device's total memory (what torch.cuda.set_per_process_memory_fraction means)
 *   free-2GiB    the device's currently free memory minus 2 GiB ("free" alone: all of it)
 *   total-2GiB   the device's total memory minus 2 GiB ("total" alone: all of it)
 * Device keys: GPU indices (0, 1, ...), mps, cpu, disk.
 */
import { InputError } from '../util/errors.js';
import { formatBytes, parseAccelerateSize, parseByteSize } from './units.js';

export { parseAccelerateSize } from './units.js';

const WHERE = '--max-memory';

export type DeviceKey = number | 'mps' | 'cpu' | 'disk';

export type BudgetSpec =
  | { kind: 'bytes'; bytes: number }
  /** Share of the device total, in (0, 1]; written as a percentage in (0, 100]. */
  | { kind: 'fraction'; fraction: number }
  | { kind: 'free-minus'; bytes: number }
  | { kind: 'total-minus'; bytes: number };

/**
 * Device key ('0', '1', ..., 'mps', 'cpu', 'disk') → spec. GPU keys are decimal strings without leading zeros.
 * Integer-like keys come first in ascending order (JS object order), which is also accelerate's device order.
 */
export type BudgetSpecs = Record<string, BudgetSpec>;

export interface ParseMaxMemoryOptions {
  /**
   * 'accelerate': sizes read as accelerate reads them (a lower-case b is bits, "5G" and bare-number strings
   * refused). In the comma form a plain digit string stands for accelerate's integer (bytes), since that form
   * has no other way to write one. Default: our units (units.ts).
   */
  compat?: 'accelerate';
}

export interface DeviceInventory {
  gpus: { index: number; totalBytes: number; freeBytes: number }[];
  cpu?: { totalBytes: number; availableBytes: number };
}

/** Resolved budgets in bytes, keyed like BudgetSpecs and in accelerate's order (GPUs ascending, mps, cpu, disk). */
export type ResolvedBudgets = Record<string, number>;

/** '0' → 0, 'cpu' → 'cpu'; undefined for a key that names no device. */
export function parseDeviceKey(key: string | number): DeviceKey | undefined {
  if (typeof key === 'number') return Number.isSafeInteger(key) && key >= 0 ? key : undefined;
  const k = key.trim().toLowerCase();
  if (/^\d+$/.test(k)) {
    const n = Number(k);
    return Number.isSafeInteger(n) ? n : undefined;
  }
  return k === 'mps' || k === 'cpu' || k === 'disk' ? k : undefined;
}

function unknownKey(key: string): InputError {
  return new InputError(WHERE, `unknown device '${key}': use a GPU index (0, 1, ...), mps, cpu or disk`);
}

/** The (device, size) entries of a --max-memory value as written, in order. */
export function maxMemoryEntries(value: string | Record<string, unknown>): Array<[string, unknown, 'text' | 'json']> {
  const pairs: Array<[string, unknown, 'text' | 'json']> = [];
  if (typeof value === 'string') {
    const text = value.trim();
    if (text === '') throw new InputError(WHERE, 'is empty: write e.g. 0=20GiB,cpu=64GiB');
    if (text.startsWith('{') || text.startsWith('[')) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch (e) {
        throw new InputError(WHERE, `is not valid JSON: ${(e as Error).message}`);
      }
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
        throw new InputError(WHERE, 'JSON form must be an object of device → size');
      }
      for (const [k, v] of Object.entries(parsed)) pairs.push([k, v, 'json']);
    } else {
      for (const entry of text.split(',')) {
        const eq = entry.indexOf('=');
        if (entry.trim() === '') throw new InputError(WHERE, `empty entry in '${text}'`);
        if (eq < 0) throw new InputError(WHERE, `entry '${entry.trim()}' has no '=': write device=size, e.g. 0=20GiB`);
        const key = entry.slice(0, eq).trim();
        const val = entry.slice(eq + 1).trim();
        if (key === '') throw new InputError(WHERE, `entry '${entry.trim()}' names no device`);
        if (val === '') throw new InputError(WHERE, `entry '${entry.trim()}' gives no size`);
        pairs.push([key, val, 'text']);
      }
    }
  } else {
    for (const [k, v] of Object.entries(value)) pairs.push([k, v, 'json']);
  }
  if (pairs.length === 0) throw new InputError(WHERE, 'names no device');
  return pairs;
}

/** Each device's cap as the user typed it (`5GB`, `90%`, `free-2GiB`), keyed like parseMaxMemory's result. */
export function typedBudgets(value: string | Record<string, unknown>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, raw] of maxMemoryEntries(value)) {
    const device = parseDeviceKey(key);
    if (device !== undefined) out[String(device)] = typeof raw === 'string' ? raw.trim() : String(raw);
  }
  return out;
}

/** Parses `--max-memory` from its comma form, a JSON dict string, or an already-parsed dict. */
export function parseMaxMemory(value: string | Record<string, unknown>, options: ParseMaxMemoryOptions = {}): BudgetSpecs {
  const pairs = maxMemoryEntries(value);
  const specs: BudgetSpecs = {};
  for (const [rawKey, rawValue, form] of pairs) {
    const device = parseDeviceKey(rawKey);
    if (device === undefined) throw unknownKey(rawKey);
    const key = String(device);
    if (key in specs) throw new InputError(WHERE, `device ${key} is given twice`);
    specs[key] = parseSpec(key, rawValue, form, options);
  }
  return orderSpecs(specs);
}

/** GPU keys ascending (JS does that for integer keys), then mps, cpu, disk. */
function orderSpecs<T>(record: Record<string, T>): Record<string, T> {
  const out: Record<string, T> = {};
  const keys = Object.keys(record);
  for (const k of keys) if (/^\d+$/.test(k)) out[k] = record[k] as T;
  for (const k of ['mps', 'cpu', 'disk']) if (k in record) out[k] = record[k] as T;
  return out;
}

function parseSpec(key: string, raw: unknown, form: 'text' | 'json', options: ParseMaxMemoryOptions): BudgetSpec {
  const where = `${WHERE} ${key}`;
  if (typeof raw === 'number') {
    if (!Number.isSafeInteger(raw) || raw < 0) {
      throw new InputError(where, `${raw} is not a byte count: use a non-negative whole number of bytes or a size string`);
    }
    return { kind: 'bytes', bytes: raw };
  }
  if (typeof raw !== 'string') throw new InputError(where, `expected a size (number or string), got ${JSON.stringify(raw)}`);
  const text = raw.trim();
  if (text === '') throw new InputError(where, 'gives no size');

  const pct = /^(\d+(?:\.\d*)?|\.\d+)\s*%$/.exec(text);
  if (pct) {
    const percent = Number(pct[1]);
    if (!(percent > 0 && percent <= 100)) throw new InputError(where, `${text} is outside (0%, 100%]`);
    return { kind: 'fraction', fraction: percent / 100 };
  }
  if (/%\s*$/.test(text)) throw new InputError(where, `'${text}' is not a percentage: write e.g. 40%`);

  const rel = /^(free|total)\s*(?:-\s*(.*))?$/i.exec(text);
  if (rel) {
    const kind = (rel[1] ?? '').toLowerCase() === 'free' ? 'free-minus' : 'total-minus';
    const rest = rel[2];
    if (rest !== undefined && rest.trim() === '') throw new InputError(where, `'${text}' gives no size after '-'`);
    const bytes = rest === undefined ? 0 : readSize(rest.trim(), form, options, where);
    return { kind, bytes };
  }
  return { kind: 'bytes', bytes: readSize(text, form, options, where) };
}

function readSize(text: string, form: 'text' | 'json', options: ParseMaxMemoryOptions, where: string): number {
  if (options.compat === 'accelerate') {
    // The comma form cannot tell accelerate's int from its string, so digits there mean the int (bytes).
    if (form === 'text' && /^\d+$/.test(text)) return parseByteSize(text, where);
    return parseAccelerateSize(text, where);
  }
  // A bare number is bytes to accelerate but almost always meant GiB or GB here: make the unit explicit.
  if (form === 'text' && /^\d+(\.\d+)?$/.test(text) && Number(text) !== 0) {
    throw new InputError(
      where,
      `'${text}' has no unit: write ${text}GiB or ${text}GB (${text}B if you mean bytes; --compat accelerate reads a bare number as bytes)`,
    );
  }
  return parseByteSize(text, where);
}

/**
 * Turns specs into bytes on a given machine. GPU indices must exist in the inventory; relative specs (fraction,
 * free-, total-) need the device's numbers, so they are refused for disk, and cpu/mps (unified memory, as accelerate
 * counts it) need `inventory.cpu`. A result below zero is an error, not a silent 0.
 */
export function resolveBudgets(specs: BudgetSpecs, inventory: DeviceInventory): ResolvedBudgets {
  const out: ResolvedBudgets = {};
  const entries = Object.entries(specs);
  if (entries.length === 0) throw new InputError(WHERE, 'names no device');
  for (const [key, spec] of entries) {
    const device = parseDeviceKey(key);
    if (device === undefined || String(device) !== key) throw unknownKey(key);
    const where = `${WHERE} ${key}`;
    let facts: { total: number; free: number } | undefined;
    if (typeof device === 'number') {
      const gpu = inventory.gpus.find((g) => g.index === device);
      if (!gpu) {
        const have = inventory.gpus.map((g) => g.index).join(', ') || 'none';
        throw new InputError(where, `GPU ${device} is not on this machine (GPUs: ${have})`);
      }
      facts = { total: gpu.totalBytes, free: gpu.freeBytes };
    } else if ((device === 'cpu' || device === 'mps') && inventory.cpu) {
      facts = { total: inventory.cpu.totalBytes, free: inventory.cpu.availableBytes };
    }
    out[key] = resolveOne(spec, facts, device, where);
  }
  return orderSpecs(out);
}

function resolveOne(spec: BudgetSpec, facts: { total: number; free: number } | undefined, device: DeviceKey, where: string): number {
  if (spec.kind === 'bytes') {
    if (!Number.isSafeInteger(spec.bytes) || spec.bytes < 0) throw new InputError(where, `${spec.bytes} is not a byte count`);
    return spec.bytes;
  }
  if (!facts) {
    throw new InputError(where, `a ${spec.kind} budget needs the memory of ${device}, which is not known${device === 'disk' ? ' for disk' : ''}`);
  }
  let bytes: number;
  if (spec.kind === 'fraction') {
    if (!(spec.fraction > 0 && spec.fraction <= 1)) {
      throw new InputError(where, `${spec.fraction * 100}% is outside (0%, 100%]`);
    }
    bytes = fractionOf(facts.total, spec.fraction);
  } else {
    if (!Number.isSafeInteger(spec.bytes) || spec.bytes < 0) throw new InputError(where, `${spec.bytes} is not a byte count`);
    const base = spec.kind === 'free-minus' ? facts.free : facts.total;
    bytes = base - spec.bytes;
    if (bytes <= 0) {
      const what = spec.kind === 'free-minus' ? 'free' : 'total';
      throw new InputError(
        where,
        `${typeof device === 'number' ? `GPU ${device}` : device} has ${formatBytes(base)} ${what}; leaving ${formatBytes(spec.bytes)} of it leaves nothing for this process`,
      );
    }
  }
  return bytes;
}

/**
 * floor(total × fraction), where fraction came from a decimal percentage: 40% is 0.4, which binary cannot hold,
 * so a product within rounding noise of a whole number is taken as that number rather than one byte less.
 */
function fractionOf(total: number, fraction: number): number {
  const exact = total * fraction;
  const nearest = Math.round(exact);
  return Math.abs(exact - nearest) <= Math.abs(exact) * 4 * Number.EPSILON ? nearest : Math.floor(exact);
}

/**
 * accelerate's `get_max_memory(max_memory)` for a user-given dict: sizes converted, devices put in accelerate's
 * order (GPU ids ascending, then mps, cpu, disk), unknown keys refused.
 */
import { InputError } from '../../util/errors.js';
import { accelerateSizeOutcome } from '../units.js';
import { AcceleratePlannerError } from './errors.js';
import { type PyNum, pyFloat, pyInt } from './pynum.js';

/** A device accelerate plans for: GPU ids, then 'mps', 'cpu', 'disk'. */
export type AccelerateDevice = number | 'mps' | 'cpu' | 'disk';

/** A key as the user's dict holds it, before accelerate checks it. */
export type UserDeviceKey = number | string;

/** Device → budget, in accelerate's device order. */
export type Budgets = Map<AccelerateDevice, PyNum>;

/**
 * Oracle JSON keys are strings; the case runner hands accelerate ints for decimal keys ("0" → 0) and the
 * string otherwise.
 */
export function deviceOfKey(key: string): UserDeviceKey {
  return /^\d+$/.test(key) ? Number(key) : key;
}

/** Python's dict built from the JSON object: decimal keys as ints, values untouched. */
export function userMaxMemory(raw: Record<string, number | string>): Map<UserDeviceKey, number | string> {
  const out = new Map<UserDeviceKey, number | string>();
  for (const [k, v] of Object.entries(raw)) {
    if (typeof v !== 'number' && typeof v !== 'string') {
      throw new InputError(`accelerate input: max_memory ${k}`, `expected a number or a size string, got ${JSON.stringify(v)}`);
    }
    out.set(deviceOfKey(k), v);
  }
  return out;
}

/**
 * Strings go through `convert_file_size_to_int` (first bad one raises); numbers pass through untouched, negative
 * or fractional alike — accelerate only validates strings.
 */
export function convertSizes(user: Map<UserDeviceKey, number | string>): Map<UserDeviceKey, PyNum> {
  const out = new Map<UserDeviceKey, PyNum>();
  for (const [device, v] of user) {
    if (typeof v === 'number') {
      out.set(device, Number.isInteger(v) ? pyInt(v) : pyFloat(v));
      continue;
    }
    const outcome = accelerateSizeOutcome(v);
    if (!outcome.ok) throw new AcceleratePlannerError(outcome.pythonType, outcome.message, 'get_max_memory');
    out.set(device, pyInt(outcome.bytes));
  }
  return out;
}

/** Puts converted budgets in accelerate's device order and refuses unknown keys. */
export function orderBudgets(converted: Map<UserDeviceKey, PyNum>): Budgets {
  const gpus = [...converted.keys()].filter((k): k is number => typeof k === 'number').sort((a, b) => a - b);
  const named = (['mps', 'cpu', 'disk'] as const).filter((k) => converted.has(k));
  const order: AccelerateDevice[] = [...gpus, ...named];
  for (const k of converted.keys()) {
    if (!(order as UserDeviceKey[]).includes(k)) {
      throw new AcceleratePlannerError(
        'ValueError',
        `Device ${k} is not recognized, available devices are integers(for GPU/XPU), 'mps', 'cpu' and 'disk'`,
        'get_max_memory',
      );
    }
  }
  const out: Budgets = new Map();
  for (const k of order) out.set(k, converted.get(k) as PyNum);
  return out;
}

/** `get_max_memory(user_dict)`. (Its "Device N is not available" warnings describe the oracle's host, not the plan.) */
export function getMaxMemory(user: Map<UserDeviceKey, number | string>): Budgets {
  return orderBudgets(convertSizes(user));
}

/** Plain numbers keyed by device, in accelerate's order (integer keys sort first in JS objects too). */
export function budgetsToRecord(b: Budgets): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of b) out[String(k)] = v.value;
  return out;
}

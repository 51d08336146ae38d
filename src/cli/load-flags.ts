/** The flags `run` and `serve` share for loading a model, checked once and turned into LoadOptions. */
import type { LoadOptions } from '../engine/load.js';
import { InputError } from '../util/errors.js';
import { KV_DTYPES, parseQuantizeMode, type KvDtype } from '../planner/quantize.js';

export interface LoadFlags {
  devices?: string;
  backend?: string;
  maxMemory?: string;
  ctx?: string;
  ubatch?: string;
  kvDtype?: string;
  dtype?: string;
  quantize?: string;
  measure?: boolean;
  threads?: string;
  showPlan?: boolean;
}

/** An integer flag from min (to max, when given); undefined when not given. */
export function intFlag(value: string | undefined, flag: string, min: number, max?: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < min || (max !== undefined && n > max))
    throw new InputError(flag, `expected an integer ${max === undefined ? `≥ ${min}` : `from ${min} to ${max}`}, got ${JSON.stringify(value)}`);
  return n;
}

export function loadOptionsFrom(f: LoadFlags): Omit<LoadOptions, 'onProgress' | 'parallel'> {
  const kv = f.kvDtype;
  if (kv !== undefined && !(KV_DTYPES as readonly string[]).includes(kv))
    throw new InputError('--kv-dtype', `the engine keeps the KV cache in ${KV_DTYPES.join(', ')}, not ${kv}`);
  if (f.dtype !== undefined && !['float32', 'float16', 'bfloat16'].includes(f.dtype))
    throw new InputError('--dtype', `expected float32, float16 or bfloat16, got ${f.dtype}`);
  if (f.backend !== undefined && f.backend !== 'cuda' && f.backend !== 'vulkan')
    throw new InputError('--backend', `expected cuda or vulkan, got ${JSON.stringify(f.backend)}`);
  const quantize = f.quantize !== undefined ? parseQuantizeMode(f.quantize) : undefined;
  if (f.measure && quantize !== 'auto') throw new InputError('--measure', 'ranks the types --quantize auto chooses; add --quantize auto');
  const ctx = intFlag(f.ctx, '--ctx', 1);
  const ubatch = intFlag(f.ubatch, '--ubatch', 1);
  const threads = intFlag(f.threads, '--threads', 1);
  return {
    ...(f.devices !== undefined ? { devices: f.devices } : {}),
    ...(f.backend !== undefined ? { backend: f.backend as 'cuda' | 'vulkan' } : {}),
    ...(f.maxMemory !== undefined ? { maxMemory: f.maxMemory } : {}),
    ...(ctx !== undefined ? { ctx } : {}),
    ...(ubatch !== undefined ? { ubatch } : {}),
    ...(kv !== undefined ? { kvDtype: kv as KvDtype } : {}),
    ...(f.dtype !== undefined ? { dtype: f.dtype as 'float32' | 'float16' | 'bfloat16' } : {}),
    ...(quantize !== undefined ? { quantize } : {}),
    ...(f.measure ? { measure: true } : {}),
    ...(threads !== undefined ? { threads } : {}),
  };
}

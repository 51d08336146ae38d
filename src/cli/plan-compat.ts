import type { Skeleton } from '../reader/skeleton.js';
import { planAccelerate, type AccelerateMode } from '../planner/accelerate/index.js';
import type { Inventory } from '../planner/devices/inventory.js';
import { PLAN_FORMAT, PLAN_VERSION, type DevicePlan, type Plan } from '../planner/plan.js';
import { describeRanges } from '../planner/plan-builder.js';
import { InputError } from '../util/errors.js';

/** Flags only `--compat accelerate` takes, under the names the oracle cases' options map to. */
export interface CompatFlags {
  split?: string | boolean;
  specialDtypes?: string;
  keepInFp32?: string;
  fallbackAllocation?: boolean;
  offloadBuffers?: boolean;
  reservedUnused?: string;
  maxMemory?: string;
  strategy: string;
  dtype?: string;
}

/** `--max-memory` as accelerate receives it: the JSON dict verbatim, or `k=v` pairs (digits alone are ints). */
export function rawMaxMemory(value: string): Record<string, number | string> {
  const text = value.trim();
  if (text.startsWith('{')) {
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new InputError('--max-memory', `not valid JSON (${(e as Error).message})`);
    }
    if (!json || typeof json !== 'object' || Array.isArray(json)) throw new InputError('--max-memory', 'expected a JSON object of device → budget');
    for (const [k, v] of Object.entries(json)) {
      if (typeof v !== 'number' && typeof v !== 'string') throw new InputError('--max-memory', `budget of ${k} must be a number or a string`);
    }
    return json as Record<string, number | string>;
  }
  const out: Record<string, number | string> = {};
  for (const part of text.split(',')) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw new InputError('--max-memory', `expected DEVICE=SIZE, got ${JSON.stringify(part)}`);
    const v = part.slice(eq + 1).trim();
    out[part.slice(0, eq).trim()] = /^\d+$/.test(v) ? Number(v) : v;
  }
  return out;
}

function list(value: string | undefined): string[] | undefined {
  return value === undefined
    ? undefined
    : value
        .split(',')
        .map((x) => x.trim())
        .filter(Boolean);
}

function pairs(value: string | undefined, flag: string): Record<string, string> | undefined {
  if (value === undefined) return undefined;
  const out: Record<string, string> = {};
  for (const part of value.split(',')) {
    const eq = part.lastIndexOf('=');
    if (eq <= 0) throw new InputError(flag, `expected NAME=VALUE, got ${JSON.stringify(part)}`);
    out[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
  }
  return out;
}

/**
 * `--compat accelerate`: accelerate's planner exactly (weights only, quirks included). The default
 * strategy maps to transformers' device_map="auto". --offload-buffers goes with every strategy, as
 * load_checkpoint_and_dispatch passes it to infer_auto_device_map; sequential with
 * --fallback-allocation is a direct infer_auto_device_map call, as that option exists only there.
 */
export async function planAccelerateCompat(s: Skeleton, f: CompatFlags, inv: Inventory): Promise<Plan> {
  const strategy = f.strategy === 'fit' ? 'auto' : f.strategy;
  const raw = f.fallbackAllocation === true;
  if (raw && strategy !== 'sequential') {
    throw new InputError(
      '--strategy',
      '--fallback-allocation is an option of infer_auto_device_map alone (no accelerate entry point passes it): use it with --strategy sequential',
    );
  }
  let maxMemory: Record<string, number | string>;
  if (f.maxMemory !== undefined) maxMemory = rawMaxMemory(f.maxMemory);
  else {
    maxMemory = {};
    for (const g of inv.gpus) maxMemory[String(g.logicalIndex)] = g.freeBytes;
    maxMemory['cpu'] = inv.cpu.availableBytes;
  }
  const reserved = pairs(f.reservedUnused, '--reserved-unused');
  const unused: Record<string, number> = {};
  for (const [k, v] of Object.entries(reserved ?? {})) {
    if (!/^\d+$/.test(v)) throw new InputError('--reserved-unused', `expected bytes as an integer, got ${JSON.stringify(v)}`);
    unused[k] = Number(v);
  }
  const noSplit = typeof f.split === 'string' ? list(f.split) : s.no_split_module_classes;
  const mode: AccelerateMode = raw ? 'raw' : (strategy as AccelerateMode);
  const result = planAccelerate({
    root_class: s.root_class,
    modules: s.modules,
    tensors: s.tensors,
    tied: s.tied,
    no_split_module_classes: noSplit ?? null,
    max_memory: maxMemory,
    dtype: f.dtype ?? null,
    mode,
    offload_buffers: f.offloadBuffers === true,
    fallback_allocation: f.fallbackAllocation === true,
    special_dtypes: pairs(f.specialDtypes, '--special-dtypes') ?? null,
    keep_in_fp32_modules: list(f.keepInFp32) ?? null,
    unused_reserved: Object.keys(unused).length ? unused : null,
  });
  const entries = result.device_map.entries.map(([k, d]) => [k, String(d)] as [string, string]);
  const devices: DevicePlan[] = Object.entries(result.max_memory_used).map(([id, cap]) => {
    const modules = entries.filter(([, d]) => d === id).map(([k]) => k);
    const weights = result.device_totals[id] ?? 0;
    const kind = /^\d+$/.test(id) ? 'gpu' : id === 'disk' ? 'disk' : 'cpu';
    const gpu = inv.gpus.find((g) => String(g.logicalIndex) === id);
    const d: DevicePlan = {
      id,
      kind,
      cap,
      weights,
      kv: 0,
      workspace: 0,
      overhead: 0,
      used: weights,
      modules,
      ranges: describeRanges(modules, s),
      tiedDuplicates: [],
    };
    if (gpu) Object.assign(d, { name: gpu.name, physical: gpu.physicalIndex, uuid: gpu.uuid, totalBytes: gpu.totalBytes });
    return d;
  });
  const warnings = [
    'accelerate budgets weights only: no KV cache, activations, logits or CUDA context are counted (use the default fit strategy for that)',
    ...result.warnings.map((w) => w.message),
  ];
  const accelerate: NonNullable<Plan['accelerate']> = {
    module_sizes: result.module_sizes,
    max_memory_used: result.max_memory_used,
    info_logs: result.info_logs.map((l) => l.message),
  };
  if (result.balanced_max_memory) accelerate.balanced_max_memory = result.balanced_max_memory;
  return {
    format: PLAN_FORMAT,
    version: PLAN_VERSION,
    model: { root_class: s.root_class, family: s.family, source: s.source.path, ...(s.source.repoId ? { repo_id: s.source.repoId } : {}) },
    target: 'transformers',
    strategy: `accelerate ${mode}`,
    workload: { ctx: 0, batch: 1, ubatch: 0, kvDtype: 'float16' },
    devices,
    deviceMap: entries,
    handoffs: 0,
    warnings,
    accelerate,
  };
}

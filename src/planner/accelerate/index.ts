/**
 * `--compat accelerate`: plans exactly as Hugging Face accelerate 1.x does under transformers'
 * `device_map="auto" | "balanced" | "balanced_low_0" | "sequential"`, or as a direct `infer_auto_device_map` call
 * ("raw"). Quirks are kept on purpose and labelled QUIRK where they live; our own planner does better elsewhere.
 */
import { InputError } from '../../util/errors.js';
import { addUnusedReserved, getBalancedMemory } from './balance.js';
import { inferAutoDeviceMap } from './infer.js';
import { type AccelerateDevice, type Budgets, budgetsToRecord, convertSizes, getMaxMemory, userMaxMemory } from './max-memory.js';
import type { AccelerateInfoLog, AccelerateWarning } from './messages.js';
import { type AccelerateModel, type AccelerateModelInput, type AcceleratePlanInput, buildAccelerateModel } from './model.js';
import { type DtypeOptions, checkDtypeOptions, computeModuleSizes, effectiveSpecialDtypes } from './sizes.js';
import { findTiedParameters } from './ties.js';
import { maxLayer, initialQueue } from './queue.js';

export { AcceleratePlannerError, type AccelerateStage, type PythonErrorType } from './errors.js';
export type { AccelerateDevice } from './max-memory.js';
export type { AccelerateInfoLog, AccelerateWarning } from './messages.js';
export type { AccelerateMode, AccelerateModelInput, AcceleratePlanInput } from './model.js';

export interface AcceleratePlan {
  device_map: {
    /** In accelerate's order (an OrderedDict: cleaned prefix keys are re-added at the end). */
    entries: Array<[string, AccelerateDevice]>;
    dict: Record<string, AccelerateDevice>;
  };
  /** compute_module_sizes: '' is the total; tied aliases are absent. */
  module_sizes: Record<string, number>;
  /** What get_balanced_memory returned (balanced modes only). */
  balanced_max_memory?: Record<string, number>;
  /** The budgets infer_auto_device_map planned with. */
  max_memory_used: Record<string, number>;
  tied_parameters: string[][];
  /** The first reserve: largest layer of the initial queue. */
  initial_max_layer: { size: number; names: string[] };
  /** Sum of module sizes per device over the final map. */
  device_totals: Record<string, number>;
  /** Bytes charged per device during planning, reserves of closed devices included (0 left out). */
  memory_charged: Record<string, number>;
  warnings: AccelerateWarning[];
  info_logs: AccelerateInfoLog[];
  /** accelerate's verbose output, one line per entry (raw mode with verbose only). */
  trace?: string[];
}

const MODES = new Set(['auto', 'balanced', 'balanced_low_0', 'sequential', 'raw']);

/**
 * Runs one case the way the oracle ran it. Throws AcceleratePlannerError where accelerate raised, InputError for
 * inputs accelerate could never have been given (unknown mode, malformed model).
 */
export function planAccelerate(input: AcceleratePlanInput): AcceleratePlan {
  if (!MODES.has(input.mode)) throw new InputError('accelerate input: mode', `unknown mode '${String(input.mode)}'`);
  const model = buildAccelerateModel(input);
  const dtypeOpts = dtypeOptionsOf(model, input);
  const user = userMaxMemory(input.max_memory);

  let balanced: Budgets | undefined;
  let budgets: Budgets;
  if (input.mode === 'raw') {
    budgets = getMaxMemory(user);
  } else {
    // transformers' _get_device_map: balance (or just convert), add back unused reserved memory, clip to the user's.
    balanced = input.mode === 'sequential' ? undefined : getBalancedMemory(model, user, dtypeOpts, input.mode === 'balanced_low_0');
    const inferred = balanced ?? getMaxMemory(user);
    budgets = addUnusedReserved(inferred, convertSizes(user), unusedReservedOf(input));
  }

  const raw = input.mode === 'raw';
  const result = inferAutoDeviceMap(model, budgets, {
    ...dtypeOpts,
    // load_checkpoint_and_dispatch passes offload_buffers to infer_auto_device_map under every strategy.
    offloadBuffers: input.offload_buffers === true,
    fallbackAllocation: raw && input.fallback_allocation === true,
    verbose: raw && input.verbose === true,
  });

  const entries = [...result.deviceMap];
  const dict: Record<string, AccelerateDevice> = {};
  for (const [k, v] of entries) dict[k] = v;
  const deviceTotals: Record<string, number> = {};
  for (const [k, d] of entries) deviceTotals[String(d)] = (deviceTotals[String(d)] ?? 0) + result.sizes.get(k).value;

  return {
    device_map: { entries, dict },
    module_sizes: result.sizes.toRecord(),
    ...(balanced ? { balanced_max_memory: budgetsToRecord(balanced) } : {}),
    max_memory_used: budgetsToRecord(budgets),
    tied_parameters: result.tiedParameters,
    initial_max_layer: { size: result.initialMaxLayer.size.value, names: result.initialMaxLayer.names },
    device_totals: deviceTotals,
    memory_charged: budgetsToRecord(result.memoryUsed),
    warnings: result.warnings,
    info_logs: result.infoLogs,
    ...(result.trace.length > 0 ? { trace: result.trace } : {}),
  };
}

/** accelerate's `compute_module_sizes` for a case (with its dtype, special_dtypes and keep-in-fp32 rule). */
export function accelerateModuleSizes(input: AccelerateModelInput & Partial<AcceleratePlanInput>): Record<string, number> {
  const model = buildAccelerateModel(input);
  return computeModuleSizes(model, dtypeOptionsOf(model, input)).toRecord();
}

/** `find_tied_parameters` and the initial largest layer, which accelerate computes before it can raise. */
export function accelerateModelFacts(input: AccelerateModelInput & Partial<AcceleratePlanInput>): {
  tied_parameters: string[][];
  initial_max_layer: { size: number; names: string[] };
} {
  const model = buildAccelerateModel(input);
  const sizes = computeModuleSizes(model, dtypeOptionsOf(model, input));
  const first = maxLayer(initialQueue(model), sizes, model);
  return { tied_parameters: findTiedParameters(model), initial_max_layer: { size: first.size.value, names: first.names } };
}

function dtypeOptionsOf(model: AccelerateModel, input: Partial<AcceleratePlanInput>): DtypeOptions {
  const checked = checkDtypeOptions({ dtype: input.dtype ?? null, specialDtypes: input.special_dtypes ?? null });
  return {
    dtype: checked.dtype ?? null,
    specialDtypes: effectiveSpecialDtypes(model, checked.dtype, checked.specialDtypes, input.keep_in_fp32_modules),
  };
}

function unusedReservedOf(input: AcceleratePlanInput): Map<number, number> {
  const out = new Map<number, number>();
  for (const [k, v] of Object.entries(input.unused_reserved ?? {})) {
    if (!/^\d+$/.test(k) || !Number.isSafeInteger(v) || v < 0) {
      throw new InputError('accelerate input: unused_reserved', `expected GPU id → non-negative bytes, got ${k}: ${String(v)}`);
    }
    out.set(Number(k), v);
  }
  return out;
}

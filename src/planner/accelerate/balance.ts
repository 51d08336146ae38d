/**
 * Balance rule: accelerate's `get_balanced_memory` (device_map "auto"/"balanced"/"balanced_low_0"), and the
 * transformers wrapper step that adds back reserved-but-unused CUDA memory before planning.
 *
 * It does not place anything: it lowers every GPU budget but the last to about total / n plus a margin, so that the
 * sequential planner, which fills devices in order, spreads the model instead of filling GPU 0 first.
 */
import { AcceleratePlannerError, TORCH_DISK_DEVICE_MESSAGE } from './errors.js';
import { type AccelerateDevice, type Budgets, type UserDeviceKey, getMaxMemory } from './max-memory.js';
import { type AccelerateModel, classNameOf } from './model.js';
import { type PyNum, PY_ZERO, pyAdd, pyFloat, pyFloorDiv, pyInt, pyMax, pyMin, pySub, pySum, pyTrunc } from './pynum.js';
import { type DtypeOptions, type ModuleSizes, computeModuleSizes } from './sizes.js';

/**
 * `get_balanced_memory(model, max_memory, no_split_module_classes, dtype, special_dtypes, low_zero)`.
 * n = GPUs with a budget > 0 (n − 1 for low_zero); per GPU = total // n + int(1.25 × max(first no-split block,
 * mean leaf module)); every GPU but the last gets min(per GPU, its budget).
 */
export function getBalancedMemory(model: AccelerateModel, user: Map<UserDeviceKey, number | string>, opts: DtypeOptions, lowZeroAsked: boolean): Budgets {
  const maxMemory = getMaxMemory(user);
  checkTorchDevices(maxMemory);
  const numDevices = [...maxMemory].filter(([d, mem]) => typeof d === 'number' && mem.value > 0).length;
  if (numDevices === 0) return maxMemory;
  // With one GPU there is nothing to keep GPU 0 free for. (The 90% rule applies only when the user set no
  // max_memory, which compat inputs always do.)
  const lowZero = numDevices === 1 ? false : lowZeroAsked;

  const sizes = computeModuleSizes(model, opts);
  const total = sizes.get('');
  let perGpu = pyFloorDiv(total, pyInt(lowZero ? numDevices - 1 : numDevices));
  const margin = balanceMargin(model, sizes);
  perGpu = pyAdd(perGpu, margin);

  const gpuIds = [...maxMemory]
    .filter(([d, mem]) => typeof d === 'number' && mem.value > 0)
    .map(([d]) => d as number)
    .sort((a, b) => a - b);
  // The last GPU keeps its full budget in case the margin is not enough.
  for (const id of gpuIds.slice(0, -1)) {
    const cap = lowZero && id === 0 ? need(maxMemory, 0) : perGpu;
    maxMemory.set(id, pyMin(cap, need(maxMemory, id)));
  }
  if (lowZero) applyLowZero(maxMemory, total, numDevices);
  return maxMemory;
}

/**
 * `num_devices` is counted with `torch.device(d)` on every key. QUIRK: `torch.device('disk')` raises, so a
 * `disk` key fails every balanced mode although the planner itself accepts one.
 */
function checkTorchDevices(maxMemory: Budgets): void {
  if (maxMemory.has('disk')) throw new AcceleratePlannerError('RuntimeError', TORCH_DISK_DEVICE_MESSAGE, 'get_balanced_memory');
}

/**
 * `balanced_low_0`: GPU 0 gets what GPUs 1..n−1 cannot hold, usually 0. QUIRK: accelerate indexes GPUs 1..n−1 and 0
 * by number, so GPU ids that are not exactly 0..n−1 raise KeyError on the first missing id.
 */
function applyLowZero(maxMemory: Budgets, total: PyNum, numDevices: number): void {
  const others: PyNum[] = [];
  for (let i = 1; i < numDevices; i++) others.push(need(maxMemory, i));
  const minZero = pyMax(PY_ZERO, pySub(total, pySum(others)));
  maxMemory.set(0, pyMin(minZero, need(maxMemory, 0)));
}

/** `max_memory[key]`, raising KeyError as Python does. */
function need(maxMemory: Budgets, key: AccelerateDevice): PyNum {
  const v = maxMemory.get(key);
  if (v === undefined) throw new AcceleratePlannerError('KeyError', typeof key === 'number' ? String(key) : `'${key}'`, 'get_balanced_memory');
  return v;
}

/**
 * The margin added to total / n: int(1.25 × max(size of the first module met of each no-split class (the
 * largest of those), mean size of the leaf modules)). "First met" follows the size dict's insertion order, i.e. the
 * first tensor in traversal order; leaf modules are what is left without children once tensors are removed.
 */
function balanceMargin(model: AccelerateModel, sizes: ModuleSizes): PyNum {
  let block: PyNum = PY_ZERO;
  if (model.noSplit.size > 0) {
    const firstOfClass = new Map<string, PyNum>();
    for (const [name, size] of sizes.entries()) {
      if (name === '') continue;
      const cls = classNameOf(model, name);
      if (cls !== undefined && model.noSplit.has(cls) && !firstOfClass.has(cls)) firstOfClass.set(cls, size);
      if (firstOfClass.size === model.noSplit.size) break;
    }
    const found = [...firstOfClass.values()];
    if (found.length > 0) block = found.reduce((a, b) => pyMax(a, b));
  }

  const all = [...sizes.entries()];
  const tensorLeaves = new Set(moduleLeaves(all.map(([n]) => n)));
  const modulesOnly = all.filter(([n]) => !tensorLeaves.has(n));
  const finalModules = new Set(moduleLeaves(modulesOnly.map(([n]) => n)));
  const leafSizes = modulesOnly.filter(([n]) => finalModules.has(n)).map(([, s]) => s);
  const mean = pyTrunc(pyFloat(pySum(leafSizes).value / Math.max(leafSizes.length, 1)));
  return pyTrunc(pyFloat(1.25 * pyMax(block, mean).value));
}

/**
 * accelerate's `get_module_leaves`: names with no child among the names. QUIRK kept: children are counted only
 * for names with a dot, so top-level names never count as children of ''.
 */
function moduleLeaves(names: readonly string[]): string[] {
  const childCount = new Map<string, number>();
  for (const n of names) {
    if (n === '' || !n.includes('.')) continue;
    const parent = n.slice(0, n.lastIndexOf('.'));
    childCount.set(parent, (childCount.get(parent) ?? 0) + 1);
  }
  return names.filter((n) => (childCount.get(n) ?? 0) === 0 && n !== '');
}

/**
 * transformers' `_get_device_map` step after balancing: each GPU budget grows by the memory torch has reserved but
 * not allocated (`unused_reserved`), then every device is clipped back to what the user gave.
 */
export function addUnusedReserved(inferred: Budgets, userConverted: ReadonlyMap<UserDeviceKey, PyNum>, unusedReserved: ReadonlyMap<number, number>): Budgets {
  const out: Budgets = new Map(inferred);
  for (const [device, budget] of inferred) {
    let b = budget;
    if (typeof device === 'number') b = pyAdd(b, pyInt(unusedReserved.get(device) ?? 0));
    const userBudget = userConverted.get(device);
    if (userBudget !== undefined) b = pyMin(b, userBudget);
    out.set(device, b);
  }
  return out;
}

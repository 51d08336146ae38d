/**
 * accelerate's `infer_auto_device_map`: one pass over a queue of modules, filling devices in order and never going
 * back. Each rule it applies is a named function elsewhere in this folder:
 *   reserve  queue.ts  maxLayer          main devices keep room for the largest layer still queued
 *   tie      ties.ts   sizeWithTies      a module is charged for, and takes along, the queued holders of its partners
 *   split    queue.ts  splitPieces       a module that does not fit is replaced by its direct params and children
 *   fallback fallback.ts                 (opt-in) an empty device takes whatever fits
 *   clean    clean.ts                    same-device subtrees collapse into prefix keys
 */
import type { AccelerateDevice, Budgets } from './max-memory.js';
import { type AccelerateInfoLog, type AccelerateWarning, devicesLeftEmptyLog, offloadedBuffersWarning, pyListRepr } from './messages.js';
import type { AccelerateModel } from './model.js';
import { type PyNum, PY_ZERO, pyAdd, pyMax, pyStr, pySub } from './pynum.js';
import { type MaxLayer, type QueueItem, initialQueue, isUnsplittable, maxLayer, maxLayerOfModules, splitPieces } from './queue.js';
import { type DtypeOptions, type ModuleSizes, computeModuleSizes, moduleBufferSize } from './sizes.js';
import { findTiedParameters, sizeWithTies, tiesOutside } from './ties.js';
import { fallbackAllocate } from './fallback.js';
import { cleanDeviceMap } from './clean.js';

export interface InferOptions extends DtypeOptions {
  offloadBuffers?: boolean;
  fallbackAllocation?: boolean;
  /** Record what accelerate prints with verbose=True. */
  verbose?: boolean;
}

export interface InferResult {
  /** Cleaned map, in accelerate's (OrderedDict) order. */
  deviceMap: Map<string, AccelerateDevice>;
  sizes: ModuleSizes;
  tiedParameters: string[][];
  initialMaxLayer: MaxLayer;
  /** Bytes charged per device, the reserve included when the device was closed; devices with 0 left out. */
  memoryUsed: Map<AccelerateDevice, PyNum>;
  warnings: AccelerateWarning[];
  infoLogs: AccelerateInfoLog[];
  /** Printed lines (verbose only). */
  trace: string[];
}

/**
 * Main devices hold the reserve back: the first GPU and cpu — or only mps when there is one; cpu alone without GPUs.
 * QUIRK: other GPUs reserve nothing, and the first GPU keeps reserving even with a 0 budget.
 */
export function mainDevices(gpus: readonly AccelerateDevice[]): AccelerateDevice[] {
  if (gpus.includes('mps')) return ['mps'];
  const first = gpus[0];
  return first !== undefined ? [first, 'cpu'] : ['cpu'];
}

/** `infer_auto_device_map(model, max_memory, no_split_module_classes, dtype, special_dtypes, ...)`. */
export function inferAutoDeviceMap(model: AccelerateModel, maxMemory: Budgets, opts: InferOptions): InferResult {
  const devices: AccelerateDevice[] = [...maxMemory.keys()];
  if (!devices.includes('disk')) devices.push('disk');
  const gpus = devices.filter((d) => d !== 'cpu' && d !== 'disk');
  const main = mainDevices(gpus);

  const sizes = computeModuleSizes(model, opts);
  const tiedParameters = findTiedParameters(model);
  let queue: QueueItem[] = initialQueue(model);

  const deviceMap = new Map<string, AccelerateDevice>();
  let current = 0;
  const used = new Map<AccelerateDevice, PyNum>(devices.map((d) => [d, PY_ZERO]));
  const bufferSizes = new Map<AccelerateDevice, PyNum>();
  const minimumAssignment: Array<[AccelerateDevice, PyNum]> = [];
  const printed: string[] = [];
  const print = (s: string): void => {
    if (opts.verbose) printed.push(s);
  };

  const initialMaxLayer = maxLayer(queue, sizes, model);
  let reserveLayer: MaxLayer = { size: initialMaxLayer.size, names: [...initialMaxLayer.names] };

  while (queue.length > 0) {
    const item = queue.shift() as QueueItem;
    const name = item.name;
    print(`\nTreating module ${name}.`);
    // Reserve: recomputed only once every layer that realised the maximum has left the queue (through this pop).
    reserveLayer.names = reserveLayer.names.filter((n) => n !== name && !n.startsWith(`${name}.`));
    if (reserveLayer.names.length === 0) reserveLayer = maxLayerOfModules(queue, sizes, model);
    const moduleSize = sizes.get(name);

    const ties = tiesOutside(name, tiedParameters);
    if (ties.groups.length > 0) print(`  Found the relevant tied param groups ${pyListRepr(ties.groups)}`);
    if (ties.params.length > 0) print(`  So those parameters need to be taken into account ${pyListRepr(ties.params)}`);

    const device = devices[current] as AccelerateDevice;
    let maxSize: PyNum | null = device === 'disk' ? null : (maxMemory.get(device) as PyNum);
    let reserved: PyNum = PY_ZERO;
    if (maxSize !== null && main.includes(device)) {
      maxSize = pySub(maxSize, reserveLayer.size);
      reserved = reserveLayer.size;
    }
    const deviceUsed = used.get(device) as PyNum;
    const withTies = sizeWithTies(ties.params, moduleSize, sizes, queue, 'infer_auto_device_map');
    const tiedNames = withTies.tiedItems.map((q) => q.name);

    // Fits with its tie partners: place all of them here.
    if (maxSize === null || deviceUsed.value + withTies.size.value <= maxSize.value) {
      let line = `Putting ${name}`;
      line += tiedNames.length > 0 ? ` and ${pyListRepr(tiedNames)}` : ` (size=${pyStr(moduleSize)})`;
      if (maxSize !== null) line += ` (available=${pyStr(pySub(maxSize, deviceUsed))})`;
      print(`${line} on ${device}.`);
      used.set(device, pyAdd(deviceUsed, withTies.size));
      deviceMap.set(name, device);
      for (const tiedName of tiedNames) {
        const idx = queue.findIndex((q) => q.name === tiedName);
        if (idx >= 0) queue.splice(idx, 1);
        deviceMap.set(tiedName, device);
      }
      // Buffers of the module itself only (not of its tie partners, nor of bare tensors) are tallied per device.
      if (!opts.offloadBuffers && item.kind === 'module') {
        bufferSizes.set(device, pyAdd(bufferSizes.get(device) ?? PY_ZERO, moduleBufferSize(item.module, opts)));
      }
      continue;
    }

    // Fits alone but not with its partners: split the first splittable partner holder (alphabetical) and retry.
    if (ties.params.length > 0 && deviceUsed.value + moduleSize.value <= maxSize.value) {
      print(
        `Not enough space on ${device} to put ${name} and ${pyListRepr(tiedNames)} (space available ` +
          `${pyStr(pySub(maxSize, deviceUsed))}, needed size ${pyStr(withTies.size)}).`,
      );
      const split = splitTiedHolder(item, withTies.tiedItems, queue, model, print);
      if (split) {
        queue = split;
        reserveLayer = maxLayerOfModules(queue, sizes, model);
        continue;
      }
      print('None of the tied module can be split, going to the next device.');
    }

    // Does not fit: split it if it can be split, else move on.
    if (deviceUsed.value + moduleSize.value >= maxSize.value) {
      print(`Not enough space on ${device} to put ${name} (space available ${pyStr(pySub(maxSize, deviceUsed))}, ` + `module size ${pyStr(moduleSize)}).`);
      if (isUnsplittable(item, model) || item.kind !== 'module') {
        print('This module cannot be split, going to the next device.');
      } else {
        print(`Splitting ${name}.`);
        queue = [...splitPieces(item.module), ...queue];
        reserveLayer = maxLayerOfModules(queue, sizes, model);
        continue;
      }
    }

    // Opt-in fallback: an empty device takes the first queued entry that fits.
    if (deviceUsed.value === 0 && opts.fallbackAllocation && device !== 'disk') {
      const limit = pySub(pySub(maxMemory.get(device) as PyNum, pyMax(reserveLayer.size, withTies.size)), deviceUsed);
      const found = fallbackAllocate(queue, sizes, limit, model, tiedParameters);
      if (found) {
        queue = [found.item, item, ...found.remaining];
        continue;
      }
    }

    if (deviceUsed.value === 0) minimumAssignment.push([device, pyAdd(withTies.size, reserved)]);
    // Close the device: it keeps the reserve on top of what it holds. Never revisited.
    used.set(device, pyAdd(deviceUsed, reserved));
    current += 1;
    queue.unshift(item);
  }

  const memoryUsed = new Map([...used].filter(([, m]) => m.value > 0));
  cleanDeviceMap(deviceMap);

  const warnings: AccelerateWarning[] = [];
  const nonGpuBuffers = pyAdd(bufferSizes.get('cpu') ?? PY_ZERO, bufferSizes.get('disk') ?? PY_ZERO);
  if (nonGpuBuffers.value > 0 && !opts.offloadBuffers) {
    const fitsSomeGpu = [...maxMemory].some(
      ([d, budget]) => d !== 'cpu' && d !== 'disk' && budget.value >= nonGpuBuffers.value + (memoryUsed.get(d) ?? PY_ZERO).value,
    );
    if (gpus.length > 0 && !fitsSomeGpu) warnings.push(offloadedBuffersWarning(nonGpuBuffers));
  }
  const infoLogs = minimumAssignment.length > 0 ? [devicesLeftEmptyLog(minimumAssignment)] : [];

  return {
    deviceMap,
    sizes,
    tiedParameters,
    initialMaxLayer,
    memoryUsed,
    warnings,
    infoLogs,
    trace: printed.length > 0 ? printed.join('\n').split('\n') : [],
  };
}

/**
 * Tie rule, second half: the partners do not fit with the module, so split the first holder that can be split and
 * put the module back in front. Returns the new queue, or undefined when no holder can be split.
 */
function splitTiedHolder(
  item: QueueItem,
  tiedItems: readonly QueueItem[],
  queue: readonly QueueItem[],
  model: AccelerateModel,
  print: (s: string) => void,
): QueueItem[] | undefined {
  for (const holder of tiedItems) {
    if (isUnsplittable(holder, model) || holder.kind !== 'module') continue;
    print(`Splitting ${holder.name}.`);
    const idx = queue.findIndex((q) => q.name === holder.name);
    const pieces = splitPieces(holder.module);
    return [item, ...queue.slice(0, idx), ...pieces, ...queue.slice(idx + 1)];
  }
  return undefined;
}

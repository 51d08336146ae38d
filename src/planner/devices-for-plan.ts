import { InputError } from '../util/errors.js';
import { parseMaxMemory, typedBudgets, resolveBudgets } from './budgets.js';
import type { Inventory } from './devices/inventory.js';
import { TARGETS } from './memory-model.js';
import type { PlanDeviceSpec, Target } from './plan.js';
import { parseByteSize } from './units.js';

export interface DeviceOptions {
  /** `--max-memory`: which devices the plan may use and how much of each. */
  maxMemory?: string;
  /** `--devices virtual:N`: N independent CPU backends standing in for GPUs. */
  virtual?: number;
  /** `--offload-folder`: enables disk offload when --max-memory does not name disk. */
  offloadFolder?: string;
  /** `--overhead`: one size for every GPU, or `0=1GiB,1=512MiB`. */
  overhead?: string;
  /** `--gpu-weights 1,2`: relative shares for balancing accelerators. */
  gpuWeights?: string;
  target: Target;
  /**
   * For the engine's target: the overhead of a GPU run by a known ggml backend (`memory-model.ts`
   * engineBackendOverhead), used where --overhead does not say.
   */
  backendOverhead?: (backend: string) => number | undefined;
}

/**
 * The devices a plan may use, with their caps. Without --max-memory: every GPU up to its free memory,
 * CPU RAM up to what is available, and disk only with --offload-folder. With it: exactly the devices named.
 */
export function devicesForPlan(inv: Inventory, o: DeviceOptions): PlanDeviceSpec[] {
  const virtual = o.virtual ?? 0;
  const gpuInventory =
    virtual > 0
      ? Array.from({ length: virtual }, (_, i) => ({
          index: i,
          totalBytes: Math.floor(inv.cpu.availableBytes / virtual),
          freeBytes: Math.floor(inv.cpu.availableBytes / virtual),
        }))
      : inv.gpus.map((g) => ({ index: g.logicalIndex, totalBytes: g.totalBytes, freeBytes: g.freeBytes }));
  let caps: Record<string, number>;
  const typed = o.maxMemory === undefined ? {} : typedBudgets(o.maxMemory);
  if (o.maxMemory !== undefined) {
    const specs = parseMaxMemory(o.maxMemory);
    if ('mps' in specs) throw new InputError('--max-memory', 'mps is an Apple device; vramfit plans CUDA GPUs, virtual devices, cpu and disk');
    caps = resolveBudgets(specs, { gpus: gpuInventory, cpu: inv.cpu });
  } else {
    caps = {};
    for (const g of gpuInventory) caps[String(g.index)] = g.freeBytes;
    caps['cpu'] = inv.cpu.availableBytes;
  }
  if (o.offloadFolder !== undefined && caps['disk'] === undefined) caps['disk'] = inv.disk.freeBytes;

  const overheads = parseOverhead(o.overhead, virtual > 0 ? 0 : TARGETS[o.target].gpuOverhead);
  const weights = o.gpuWeights === undefined ? undefined : parseWeights(o.gpuWeights);
  const devices: PlanDeviceSpec[] = [];
  const accelerators = Object.keys(caps)
    .filter((k) => /^\d+$/.test(k))
    .sort((a, b) => Number(a) - Number(b));
  if (weights && weights.length !== accelerators.length) {
    throw new InputError('--gpu-weights', `gives ${weights.length} weight(s) for ${accelerators.length} GPU(s) (${accelerators.join(', ')})`);
  }
  accelerators.forEach((id, i) => {
    const gpu = inv.gpus.find((g) => String(g.logicalIndex) === id);
    const byBackend = o.overhead === undefined && virtual === 0 && gpu?.backend ? o.backendOverhead?.(gpu.backend) : undefined;
    const d: PlanDeviceSpec = {
      id,
      kind: virtual > 0 ? 'virtual' : 'gpu',
      cap: caps[id]!,
      overhead: overheads.get(id) ?? byBackend ?? overheads.get('*') ?? 0,
    };
    if (virtual === 0 && gpu) {
      d.name = gpu.name;
      d.physical = gpu.physicalIndex;
      d.uuid = gpu.uuid;
      d.totalBytes = gpu.totalBytes;
    }
    if (weights) d.weight = weights[i]!;
    devices.push(d);
  });
  if (caps['cpu'] !== undefined) devices.push({ id: 'cpu', kind: 'cpu', cap: caps['cpu'], overhead: 0 });
  if (caps['disk'] !== undefined) devices.push({ id: 'disk', kind: 'disk', cap: caps['disk'], overhead: 0 });
  for (const d of devices) if (typed[d.id] !== undefined) d.capTyped = typed[d.id];
  for (const key of overheads.keys()) {
    if (key !== '*' && !accelerators.includes(key)) throw new InputError('--overhead', `names GPU ${key}, which the plan does not use`);
  }
  return devices;
}

function parseOverhead(value: string | undefined, fallback: number): Map<string, number> {
  const out = new Map<string, number>([['*', fallback]]);
  if (value === undefined) return out;
  if (!value.includes('=')) {
    out.set('*', parseByteSize(value, '--overhead'));
    return out;
  }
  for (const part of value.split(',')) {
    const [key, size] = part.split('=').map((x) => x.trim());
    if (!key || !/^\d+$/.test(key) || size === undefined) throw new InputError('--overhead', `expected SIZE or GPU=SIZE,…, got ${JSON.stringify(part)}`);
    out.set(String(Number(key)), parseByteSize(size, '--overhead'));
  }
  return out;
}

function parseWeights(value: string): number[] {
  return value.split(',').map((w) => {
    const n = Number(w.trim());
    if (!Number.isFinite(n) || n <= 0) throw new InputError('--gpu-weights', `weights must be positive numbers, got ${JSON.stringify(w)}`);
    return n;
  });
}

/**
 * The devices one run opens and the cap of each, resolved exactly as `vramfit plan` resolves them:
 * GPU ids as `devices`/`plan` number them, relative budgets (`50%`, `free-1GiB`, `total`) against the
 * memory the device reports, `cpu=` against the host's RAM. Nothing is opened here.
 */
import { parseMaxMemory, resolveBudgets, typedBudgets, type DeviceInventory } from '../planner/budgets.js';
import { detectInventory } from '../planner/devices/inventory.js';
import type { GpuBackend } from '../planner/devices/gpu-match.js';
import { selectNumbered } from '../planner/devices/gpu-match.js';
import { readCpuMemory } from '../planner/devices/host.js';
import { parseDeviceSelection } from '../planner/devices/selection.js';
import type { PlanDeviceSpec } from '../planner/plan.js';
import { formatBytes } from '../planner/units.js';
import { InputError } from '../util/errors.js';
import { listEngineGpus, noGpuError, type EngineGpu } from './gpus.js';

export interface RunDevices {
  /** Plan specs in device order (GPUs or virtual devices, then cpu, then disk). */
  specs: PlanDeviceSpec[];
  /** The GPUs to open, by plan id; empty for virtual devices. */
  gpus: Map<string, EngineGpu>;
  kind: 'virtual' | 'gpu';
  notes: string[];
}

export interface RunDeviceOptions {
  devices?: string;
  maxMemory?: string;
  backend?: GpuBackend;
}

/**
 * `backendOverhead`: what each GPU backend holds on a device beyond vramfit's buffers for this model
 * (memory-model.ts: ggml's scratch buffers; for CUDA also the context), which the plan leaves room for.
 */
export async function resolveRunDevices(opts: RunDeviceOptions, backendOverhead: Record<GpuBackend, number>): Promise<RunDevices> {
  const selection = parseDeviceSelection(opts.devices);
  const host = (await readCpuMemory()).cpu;
  const specsIn = opts.maxMemory !== undefined ? parseMaxMemory(opts.maxMemory) : {};
  const named = Object.keys(specsIn);
  const notes: string[] = [];
  let ids: string[];
  const gpus = new Map<string, EngineGpu>();
  const inventory: DeviceInventory = { gpus: [], cpu: { totalBytes: host.totalBytes, availableBytes: host.availableBytes } };
  if (selection.kind === 'virtual') {
    ids = Array.from({ length: selection.count }, (_, i) => String(i));
    // A virtual device stands in for a GPU with host memory: relative caps are shares of the host's RAM.
    inventory.gpus = ids.map((id) => ({ index: Number(id), totalBytes: host.totalBytes, freeBytes: host.availableBytes }));
  } else {
    if (opts.backend !== undefined && opts.backend !== 'cuda' && opts.backend !== 'vulkan')
      throw new InputError('--backend', `expected cuda or vulkan, got ${JSON.stringify(opts.backend)}`);
    const smi = await detectInventory();
    const listing = listEngineGpus(smi.cards ?? [], opts.backend);
    notes.push(...listing.notes);
    if (listing.gpus.length === 0) throw noGpuError(listing, opts.backend);
    for (const gpu of selectNumbered(listing.gpus, selection.gpus)) gpus.set(String(gpu.id), gpu);
    ids = [...gpus.keys()];
    inventory.gpus = [...gpus.values()].map((g) => ({ index: g.id, totalBytes: g.totalBytes, freeBytes: g.freeBytes }));
  }
  for (const k of named) {
    if (k !== 'cpu' && k !== 'disk' && !ids.includes(k))
      throw new InputError('--max-memory', `names device ${k}, which --devices does not open (${ids.join(', ')})`);
  }
  const resolved = named.length > 0 ? resolveBudgets(specsIn, inventory) : {};
  const specs: PlanDeviceSpec[] = ids.map((id) => {
    const gpu = gpus.get(id);
    const cap = resolved[id];
    if (gpu && cap !== undefined && cap > gpu.totalBytes) {
      throw new InputError(
        `--max-memory ${id}`,
        `${formatBytes(cap)} (${cap} B) is more than GPU ${id} (${gpu.name}) has: ${formatBytes(gpu.totalBytes)} (${gpu.totalBytes} B)`,
      );
    }
    if (!gpu) return { id, kind: 'virtual', cap: cap ?? Number.MAX_SAFE_INTEGER, overhead: 0 };
    // An uncapped GPU may use what it has free now.
    return { id, kind: 'gpu', cap: cap ?? gpu.freeBytes, overhead: backendOverhead[gpu.backend], name: gpu.name, totalBytes: gpu.totalBytes };
  });
  const cpuJoins = resolved['cpu'] !== undefined || (selection.kind === 'gpu' && selection.cpu);
  if (cpuJoins) specs.push({ id: 'cpu', kind: 'cpu', cap: resolved['cpu'] ?? host.availableBytes, overhead: 0 });
  if (resolved['disk'] !== undefined) {
    if (!cpuJoins) throw new InputError('--max-memory', 'disk offload needs a cpu budget too: disk-offloaded blocks run on the CPU with their KV cache in RAM');
    specs.push({ id: 'disk', kind: 'disk', cap: resolved['disk'], overhead: 0 });
  }
  const typed = opts.maxMemory !== undefined ? typedBudgets(opts.maxMemory) : {};
  for (const d of specs) if (typed[d.id] !== undefined) d.capTyped = typed[d.id];
  // Uncapped devices share the work evenly; capped ones are balanced by how full they get.
  if (named.length === 0) for (const s of specs) s.weight = 1;
  return { specs, gpus, kind: selection.kind, notes };
}

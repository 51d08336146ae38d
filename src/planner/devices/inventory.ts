import { formatBytes } from '../units.js';
import { InputError } from '../../util/errors.js';
import { parseDeviceSpec, parseGpuMemoryList } from './cards.js';
import { readCpuMemory, readDiskSpace, type CpuMemory, type DiskSpace } from './host.js';
import { readNvidiaSmi, type GpuInfo, type GpuProcess, type NvidiaSmiRunner } from './nvidia-smi.js';
import { applyCudaVisibleDevices, selectGpus, type Visibility } from './visible.js';
import type { SmiCard } from './gpu-match.js';

/** Everything a plan may place modules on: the GPUs the process will see, CPU RAM, and disk. */

export interface LogicalGpu {
  /** cuda:<logicalIndex> in the process that runs the plan. */
  readonly logicalIndex: number;
  /** nvidia-smi's index (of the parent card for a MIG instance; the position for simulated GPUs). */
  readonly physicalIndex: number;
  readonly uuid: string;
  readonly name: string;
  readonly totalBytes: number;
  readonly usedBytes: number;
  readonly freeBytes: number;
  readonly processes: readonly GpuProcess[];
  /** The MIG profile (e.g. `1g.10gb`) when this is a MIG instance, else null. */
  readonly migProfile: string | null;
  /** The ggml backend that runs it (`cuda`, `vulkan`) and ggml's device name, where vramfit's engine sees it. */
  readonly backend?: string;
  readonly ggmlName?: string;
  readonly integrated?: boolean;
  /** Seen by ggml only (no nvidia-smi card): its physical index means nothing. */
  readonly ggmlOnly?: boolean;
}

export interface Inventory {
  readonly gpus: LogicalGpu[];
  readonly cpu: CpuMemory;
  readonly disk: DiskSpace;
  readonly source: 'nvidia-smi' | 'simulated' | 'none' | 'ggml';
  readonly notes: string[];
  /** nvidia-smi's cards by PCI bus id, hidden ones included, for matching ggml's GPUs (gpu-match.ts). */
  readonly cards?: SmiCard[];
  /** Each installed GPU package's state (`devices` shows the active backend); absent when none is installed. */
  readonly packages?: { backend: string; state: string; detail: string }[];
}

export interface DetectOptions {
  /** The --gpus flag; when given it replaces CUDA_VISIBLE_DEVICES. */
  readonly gpus?: string;
  /** Defaults to process.env; read for CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER. */
  readonly env?: NodeJS.ProcessEnv;
  /** Where offloaded weights go; its disk is measured. Defaults to the working directory. */
  readonly offloadFolder?: string;
  /** For tests: stands in for nvidia-smi. */
  readonly runNvidiaSmi?: NvidiaSmiRunner;
}

function toLogical(physical: readonly GpuInfo[], vis: Visibility): LogicalGpu[] {
  return vis.gpus.map((v) => {
    const card = physical.find((g) => g.index === v.physicalIndex)!;
    if (v.mig) {
      return {
        logicalIndex: v.logicalIndex,
        physicalIndex: v.physicalIndex,
        uuid: v.uuid,
        name: `${card.name} MIG ${v.mig.profile}`,
        totalBytes: v.mig.totalBytes,
        usedBytes: 0,
        freeBytes: v.mig.totalBytes,
        processes: [],
        migProfile: v.mig.profile,
      };
    }
    return {
      logicalIndex: v.logicalIndex,
      physicalIndex: v.physicalIndex,
      uuid: v.uuid,
      name: card.name,
      totalBytes: card.totalBytes,
      usedBytes: card.usedBytes,
      freeBytes: card.freeBytes,
      processes: card.processes,
      migProfile: null,
    };
  });
}

async function readDisk(folder: string | undefined, notes: string[]): Promise<DiskSpace> {
  const where = folder ?? process.cwd();
  try {
    return await readDiskSpace(where);
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    if (folder !== undefined) throw new InputError('--offload-folder', `cannot read free space: ${why}`);
    notes.push(`could not read free disk space of ${where} (${why}); counting it as 0`);
    return { path: where, freeBytes: 0 };
  }
}

/** True when CUDA's default (fastest-first) numbering may differ from nvidia-smi's (PCI bus order). */
function orderMayDiffer(physical: readonly GpuInfo[], env: NodeJS.ProcessEnv): boolean {
  const cvd = env.CUDA_VISIBLE_DEVICES;
  const byIndex = cvd === undefined || !(cvd.startsWith('GPU-') || cvd.startsWith('MIG-'));
  return byIndex && env.CUDA_DEVICE_ORDER !== 'PCI_BUS_ID' && new Set(physical.map((g) => g.name)).size > 1;
}

/** The real machine: nvidia-smi's GPUs as the plan's process will see them, CPU RAM and disk. */
export async function detectInventory(opts: DetectOptions = {}): Promise<Inventory> {
  const env = opts.env ?? process.env;
  const reading = await readNvidiaSmi(opts.runNvidiaSmi);
  const notes = [...reading.notes];
  const physical = reading.gpus;
  const source = reading.status === 'ok' ? 'nvidia-smi' : 'none';
  if (reading.status === 'missing') {
    notes.push('nvidia-smi was not found, so no GPUs are used (plan for cards with --device-spec)');
  }

  let vis: Visibility;
  if (opts.gpus !== undefined) {
    try {
      vis = selectGpus(physical, opts.gpus);
    } catch (e) {
      // Say why there is nothing to choose from.
      if (e instanceof InputError && reading.status !== 'ok') {
        const why = reading.status === 'missing' ? 'nvidia-smi was not found' : 'nvidia-smi failed';
        throw new InputError(e.where, `${e.reason} (${why})`);
      }
      throw e;
    }
    if (env.CUDA_VISIBLE_DEVICES !== undefined) {
      notes.push(`CUDA_VISIBLE_DEVICES=${env.CUDA_VISIBLE_DEVICES} is ignored because --gpus was given`);
    }
  } else {
    vis = applyCudaVisibleDevices(physical, env.CUDA_VISIBLE_DEVICES);
    if (orderMayDiffer(physical, env)) {
      notes.push(
        'this machine has different GPU models: CUDA numbers them fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, ' +
          "so cuda:N may not be nvidia-smi's GPU N; set CUDA_DEVICE_ORDER=PCI_BUS_ID when running the plan",
      );
    }
  }
  notes.push(...vis.notes);
  const gpus = toLogical(physical, vis);
  if (gpus.some((g) => g.migProfile)) {
    notes.push("a MIG instance's memory is estimated from its profile name (e.g. 10gb = 10^9 x 10 bytes); its usage is not reported");
  }

  const [cpu, disk] = await Promise.all([readCpuMemory(), readDisk(opts.offloadFolder, notes)]);
  notes.push(...cpu.notes);
  // A MIG instance shares its card's bus id; ggml's CUDA device for it is matched to the first.
  const cards: SmiCard[] = physical.map((card) => ({
    pciBusId: card.pciBusId,
    name: card.name,
    logicalIndex: gpus.find((g) => g.physicalIndex === card.index)?.logicalIndex ?? null,
  }));
  return { gpus, cpu: cpu.cpu, disk, source, notes, cards };
}

export interface SimulateOptions {
  /** --device-spec, e.g. `4xA100-80GB`. */
  readonly deviceSpec?: string;
  /** --gpu-memory, e.g. `24GiB,24GiB`: GPUs of these sizes. */
  readonly gpuMemory?: string;
  readonly offloadFolder?: string;
}

/**
 * GPUs the machine may not have (planning ahead): every simulated GPU is empty (free = total).
 * CPU RAM and disk are still this machine's.
 */
export async function simulatedInventory(opts: SimulateOptions): Promise<Inventory> {
  if (opts.deviceSpec !== undefined && opts.gpuMemory !== undefined) {
    throw new InputError('--gpu-memory', 'give either --device-spec or --gpu-memory, not both');
  }
  const notes: string[] = [];
  let cards: { name: string; totalBytes: number }[] = [];
  if (opts.deviceSpec !== undefined) {
    cards = parseDeviceSpec(opts.deviceSpec);
    notes.push("GPUs are simulated from --device-spec (empty cards); CPU RAM and disk are this machine's");
  } else if (opts.gpuMemory !== undefined) {
    cards = parseGpuMemoryList(opts.gpuMemory).map((totalBytes) => ({ name: `simulated ${formatBytes(totalBytes)}`, totalBytes }));
    notes.push("GPUs are simulated from --gpu-memory (empty cards); CPU RAM and disk are this machine's");
  } else {
    notes.push('no GPUs were given to simulate');
  }
  const gpus: LogicalGpu[] = cards.map((c, i) => ({
    logicalIndex: i,
    physicalIndex: i,
    uuid: `SIM-${i}`,
    name: c.name,
    totalBytes: c.totalBytes,
    usedBytes: 0,
    freeBytes: c.totalBytes,
    processes: [],
    migProfile: null,
  }));
  const [cpu, disk] = await Promise.all([readCpuMemory(), readDisk(opts.offloadFolder, notes)]);
  notes.push(...cpu.notes);
  return { gpus, cpu: cpu.cpu, disk, source: 'simulated', notes };
}

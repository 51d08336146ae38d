/**
 * The GPUs ggml can open in this process: the optional GPU packages loaded on demand, each device's
 * properties read, and the list numbered like nvidia-smi's cards (planner/devices/gpu-match.ts) so a
 * GPU id means the same card in `devices`, `plan` and `run`.
 */
import { numberGpus, type GgmlGpu, type GpuBackend, type NumberedGpu, type SmiCard } from '../planner/devices/gpu-match.js';
import { InputError } from '../util/errors.js';
import { DEV_TYPE, deviceProps, gpuInstallCommand, loadGgml, loadGpuBackends, type Device, type GpuPackageStatus } from './ggml/binding.js';

export interface EngineGpu extends NumberedGpu {
  handle: Device;
}

export interface GpuListing {
  gpus: EngineGpu[];
  packages: GpuPackageStatus[];
  notes: string[];
}

/** Every GPU ggml registered from the installed GPU packages, numbered against nvidia-smi's `cards`. */
export function listEngineGpus(cards: readonly SmiCard[] = [], backend?: GpuBackend): GpuListing {
  const g = loadGgml();
  const packages = loadGpuBackends(g);
  const found: (GgmlGpu & { handle: Device })[] = [];
  for (const p of packages) {
    if (p.state !== 'ready' || !p.reg) continue;
    const n = g.raw.ggml_backend_reg_dev_count(p.reg) as number;
    for (let i = 0; i < n; i++) {
      const handle = g.raw.ggml_backend_reg_dev_get(p.reg, i) as Device;
      const props = deviceProps(g, handle);
      if (props.type !== DEV_TYPE.GPU && props.type !== DEV_TYPE.IGPU) continue;
      found.push({
        handle,
        name: props.name,
        description: props.description,
        backend: p.backend,
        integrated: props.type === DEV_TYPE.IGPU,
        totalBytes: props.total,
        freeBytes: props.free,
        pciBusId: props.pciBusId,
      });
    }
  }
  const handles = new Map(found.map((f) => [f.name, f.handle]));
  const { gpus, notes } = numberGpus(found, cards, backend);
  return { gpus: gpus.map((x) => ({ ...x, handle: handles.get(x.name)! })), packages, notes };
}

/**
 * Why a GPU cannot be had, told apart as the user needs to act: no package installed (the command to
 * install one), installed but no usable device (what the driver lacks), or the chosen backend absent.
 */
export function noGpuError(listing: GpuListing, backend?: GpuBackend): InputError {
  const relevant = listing.packages.filter((p) => !backend || p.backend === backend);
  if (relevant.every((p) => p.state === 'absent')) {
    const how = backend ? gpuInstallCommand(backend) : `${gpuInstallCommand('cuda')} (NVIDIA, CUDA 13) or ${gpuInstallCommand('vulkan')}`;
    return new InputError('--devices', `no GPU package is installed: ${how}`);
  }
  const reasons = relevant.filter((p) => p.state !== 'absent' && p.state !== 'ready').map((p) => p.detail);
  return new InputError('--devices', `no usable GPU: ${reasons.join('; ') || 'the GPU packages registered no device'}`);
}

/**
 * The one inventory `devices`, `plan` and `run` share: nvidia-smi's GPUs (numbered as the process will
 * see them), joined with the GPUs ggml can open from the installed GPU packages, matched by PCI bus id
 * so one id names one card. GPUs only ggml sees (AMD, Intel, integrated, lavapipe) are added after
 * nvidia-smi's. Nothing native is loaded unless a GPU package is installed.
 */
import { detectInventory, type DetectOptions, type Inventory, type LogicalGpu } from '../planner/devices/inventory.js';
import type { GpuBackend } from '../planner/devices/gpu-match.js';
import { installedGpuPackages } from './ggml/packages.js';

export async function machineInventory(opts: DetectOptions & { backend?: GpuBackend } = {}): Promise<Inventory> {
  const smi = await detectInventory(opts);
  if (installedGpuPackages().length === 0) return smi;
  const { listEngineGpus } = await import('./gpus.js');
  const listing = listEngineGpus(smi.cards ?? [], opts.backend);
  const gpus: LogicalGpu[] = smi.gpus.map((g) => {
    const seen = listing.gpus.find((x) => x.id === g.logicalIndex && x.smiName !== undefined);
    return seen ? { ...g, backend: seen.backend, ggmlName: seen.name, integrated: seen.integrated } : g;
  });
  for (const x of listing.gpus) {
    if (x.smiName !== undefined) continue;
    gpus.push({
      logicalIndex: x.id,
      physicalIndex: x.id,
      uuid: '',
      name: x.description,
      totalBytes: x.totalBytes,
      usedBytes: x.totalBytes - x.freeBytes,
      freeBytes: x.freeBytes,
      processes: [],
      migProfile: null,
      backend: x.backend,
      ggmlName: x.name,
      integrated: x.integrated,
      ggmlOnly: true,
    });
  }
  const packages = listing.packages.map((p) => ({ backend: p.backend, state: p.state, detail: p.detail }));
  const onlyGgml = gpus.length > smi.gpus.length;
  const notes = [...smi.notes.filter((n) => !(onlyGgml && n.startsWith('nvidia-smi was not found'))), ...listing.notes];
  for (const p of listing.packages) if (p.state !== 'ready' && p.state !== 'absent') notes.push(p.detail);
  return { ...smi, gpus, notes, packages, source: smi.source === 'none' && gpus.length > 0 ? 'ggml' : smi.source };
}

/**
 * One numbering of GPUs for `devices`, `plan` and `run`. ggml registers GPUs per backend (CUDA, Vulkan)
 * in its own order; nvidia-smi (and so `plan`) numbers NVIDIA cards as the process will see them under
 * CUDA_VISIBLE_DEVICES. A ggml device matched to a card by PCI bus id takes that card's id; the others
 * (AMD, Intel, integrated GPUs, lavapipe) follow in ggml's order. A card seen by both CUDA and Vulkan is
 * offered once: CUDA by default, or the backend the user chose.
 */
import { InputError } from '../../util/errors.js';

export type GpuBackend = 'cuda' | 'vulkan';

/** A GPU as ggml registered it. */
export interface GgmlGpu {
  /** ggml's device name: CUDA0, Vulkan1, … */
  name: string;
  description: string;
  backend: GpuBackend;
  integrated: boolean;
  totalBytes: number;
  freeBytes: number;
  /** Lower-case PCI bus id where the backend exposes it. */
  pciBusId: string | null;
}

/** A card nvidia-smi reports, for matching; logicalIndex null when CUDA_VISIBLE_DEVICES hides it. */
export interface SmiCard {
  logicalIndex: number | null;
  pciBusId: string;
  name: string;
}

export interface NumberedGpu extends GgmlGpu {
  id: number;
  /** nvidia-smi's name where matched. */
  smiName?: string;
}

/** `00000000:1A:00.0` (nvidia-smi) and `0000:1a:00.0` (ggml) are the same bus id. */
export function samePciBus(a: string | null, b: string | null): boolean {
  const norm = (s: string | null): string | null => {
    const m = s === null ? null : /^([0-9a-f]+):([0-9a-f]+):([0-9a-f]+)\.([0-9a-f]+)$/i.exec(s.trim());
    return m
      ? m
          .slice(1)
          .map((x) => parseInt(x, 16))
          .join(':')
      : null;
  };
  const x = norm(a);
  return x !== null && x === norm(b);
}

/**
 * The GPUs a run may open, each once, with the id `plan` uses for the same card. `backend` keeps only
 * that backend's devices. Without a bus id on either side a Vulkan device cannot be told apart from a
 * CUDA one; it is then dropped when CUDA is present and it has the same name and total memory.
 */
export function numberGpus(ggml: readonly GgmlGpu[], smi: readonly SmiCard[], backend?: GpuBackend): { gpus: NumberedGpu[]; notes: string[] } {
  const notes: string[] = [];
  const cuda = ggml.filter((g) => g.backend === 'cuda');
  const seenByCuda = (v: GgmlGpu): boolean =>
    cuda.some((c) => (c.pciBusId && v.pciBusId ? samePciBus(c.pciBusId, v.pciBusId) : c.totalBytes === v.totalBytes && v.description.includes(c.description)));
  let chosen: GgmlGpu[];
  if (backend) chosen = ggml.filter((g) => g.backend === backend);
  else {
    chosen = ggml.filter((g) => g.backend === 'cuda' || !seenByCuda(g));
    const twice = ggml.length - chosen.length;
    if (twice > 0) notes.push(`${twice} GPU(s) seen by both CUDA and Vulkan are used through CUDA (--backend vulkan to choose Vulkan)`);
  }
  // Vulkan sees every card; one that CUDA_VISIBLE_DEVICES hides stays hidden.
  const hidden = chosen.filter((g) => smi.some((c) => c.logicalIndex === null && samePciBus(c.pciBusId, g.pciBusId)));
  if (hidden.length > 0) {
    notes.push(`${hidden.map((g) => g.name).join(', ')} hidden by CUDA_VISIBLE_DEVICES`);
    chosen = chosen.filter((g) => !hidden.includes(g));
  }
  const taken = new Set<number>();
  const matched = chosen.map((g) => {
    const card = g.pciBusId ? smi.find((c) => samePciBus(c.pciBusId, g.pciBusId)) : undefined;
    if (card?.logicalIndex != null) taken.add(card.logicalIndex);
    return { g, card };
  });
  let next = Math.max(-1, ...smi.map((c) => c.logicalIndex ?? -1)) + 1;
  const gpus: NumberedGpu[] = matched.map(({ g, card }) => {
    if (card?.logicalIndex != null) return { ...g, id: card.logicalIndex, smiName: card.name };
    while (taken.has(next)) next++;
    taken.add(next);
    return { ...g, id: next++ };
  });
  // A CUDA device nvidia-smi cannot place (no bus id) keeps ggml's order after the matched ones.
  gpus.sort((a, b) => a.id - b.id);
  return { gpus, notes };
}

/** The GPUs a selection names, or a clear error naming what exists. */
export function selectNumbered<T extends NumberedGpu>(gpus: readonly T[], wanted: 'all' | readonly number[]): T[] {
  if (wanted === 'all') return [...gpus];
  return wanted.map((id) => {
    const g = gpus.find((x) => x.id === id);
    if (!g) throw new InputError('--devices', `GPU ${id} does not exist (GPUs: ${gpus.map((x) => `${x.id} ${x.name}`).join(', ') || 'none'})`);
    return g;
  });
}

import { InputError } from '../../util/errors.js';
import type { MigInstance } from './nvidia-smi.js';

/**
 * Which GPUs a CUDA process sees, and under which numbers. A plan's `cuda:N` means the N-th GPU the
 * process sees, so the planner must apply CUDA_VISIBLE_DEVICES exactly as the driver does.
 *
 * The driver's rules are only partly documented; these follow PyTorch's `_parse_visible_devices` and
 * `_transform_uuid_to_ordinals` (torch/cuda/__init__.py), whose tests were checked against driver
 * 525.60.13:
 *  - unset: every GPU; empty: none.
 *  - The first entry decides the form: `GPU-...` (UUIDs), `MIG-...` (MIG instances), else indices.
 *  - Indices are read like C strtoul: leading spaces and a sign are allowed, and reading stops at the
 *    first non-digit, so `1gpu2` is 1. An entry with no digits, a negative one, or an index past the
 *    last GPU ends the list: CUDA ignores it and everything after it.
 *  - UUIDs may be abbreviated to a prefix that names exactly one GPU. In UUID form, an entry of the
 *    other form (or one with a leading space) ends the list, as does an unknown or ambiguous prefix.
 *  - A repeated entry, or two entries naming the same GPU, hides ALL GPUs (not just the repeat).
 *  - A CUDA process enumerates at most one MIG instance (MIG user guide, CUDA 11 and 12); a GPU in
 *    MIG mode is seen as its first MIG instance, not as the whole card.
 */

/** What visibility needs to know about a physical GPU (GpuInfo has all of it). */
export interface GpuIdentity {
  /** nvidia-smi's index; the array position is CUDA's ordinal (same in PCI bus order). */
  readonly index: number;
  readonly uuid: string;
  readonly mig?: readonly MigInstance[];
}

export interface VisibleGpu {
  /** The number the process uses: `cuda:<logicalIndex>`. */
  readonly logicalIndex: number;
  /** nvidia-smi's index of the card (of the parent card, for a MIG instance). */
  readonly physicalIndex: number;
  /** `GPU-...`, or `MIG-...` for a MIG instance. */
  readonly uuid: string;
  readonly mig: MigInstance | null;
}

export interface Visibility {
  readonly gpus: VisibleGpu[];
  readonly notes: string[];
}

interface Pick {
  readonly gpu: GpuIdentity;
  readonly mig: MigInstance | null;
}

const IGNORED = 'CUDA ignores it and everything after it';

/** C strtoul on a trimmed entry: the leading [+-]digits, or null when there are none. */
function strtoul(entry: string): number | null {
  const m = /^([+-]?)(\d+)/.exec(entry);
  if (!m) return null;
  const n = Number(m[2]);
  return m[1] === '-' && n !== 0 ? -n : n;
}

function describe(p: Pick): string {
  return p.mig ? `MIG ${p.mig.profile} ${p.mig.uuid} on GPU ${p.gpu.index}` : `GPU ${p.gpu.index}`;
}

function same(a: Pick, b: Pick): boolean {
  return a.gpu === b.gpu && a.mig?.uuid === b.mig?.uuid;
}

function allMig(physical: readonly GpuIdentity[]): Pick[] {
  return physical.flatMap((gpu) => (gpu.mig ?? []).map((mig) => ({ gpu, mig })));
}

/** Picks in order -> logical GPUs, applying CUDA's MIG rules (see the header). */
function finish(picks: readonly Pick[], notes: string[]): Visibility {
  const out: Pick[] = [];
  let migTaken: Pick | null = null;
  for (const p0 of picks) {
    let p = p0;
    const first = p.gpu.mig?.[0];
    if (!p.mig && first) {
      notes.push(`GPU ${p.gpu.index} is in MIG mode: CUDA sees its MIG instance ${first.profile} (${first.uuid}), not the whole card`);
      p = { gpu: p.gpu, mig: first };
    }
    if (p.mig) {
      if (migTaken) {
        notes.push(`${describe(p)} is left out: a CUDA process enumerates only one MIG instance (${describe(migTaken)} is used)`);
        continue;
      }
      migTaken = p;
    }
    out.push(p);
  }
  return {
    gpus: out.map((p, logicalIndex) => ({
      logicalIndex,
      physicalIndex: p.gpu.index,
      uuid: p.mig ? p.mig.uuid : p.gpu.uuid,
      mig: p.mig,
    })),
    notes,
  };
}

function hideAll(notes: string[], why: string): Visibility {
  notes.push(`${why}; CUDA then hides all GPUs`);
  return { gpus: [], notes };
}

/** Apply CUDA_VISIBLE_DEVICES (`value`, undefined when unset) to the physical GPUs. */
export function applyCudaVisibleDevices(physical: readonly GpuIdentity[], value: string | undefined): Visibility {
  const notes: string[] = [];
  if (value === undefined)
    return finish(
      physical.map((gpu) => ({ gpu, mig: null })),
      notes,
    );
  if (value === '') {
    notes.push('CUDA_VISIBLE_DEVICES is set but empty, so CUDA sees no GPUs');
    return { gpus: [], notes };
  }
  const entries = value.split(',');
  const form = value.startsWith('GPU-') ? 'GPU-' : value.startsWith('MIG-') ? 'MIG-' : null;
  return form ? byUuid(physical, entries, form, notes) : byOrdinal(physical, entries, notes);
}

function byOrdinal(physical: readonly GpuIdentity[], entries: readonly string[], notes: string[]): Visibility {
  // Parse everything first, then range-check: the driver empties the list on a repeat even when
  // an out-of-range index comes before it.
  const ordinals: { n: number; entry: string }[] = [];
  for (const entry of entries) {
    const n = strtoul(entry.trim());
    if (n !== null && ordinals.some((o) => o.n === n)) return hideAll(notes, `entry "${entry}" repeats GPU ${n}`);
    if (n === null || n < 0) {
      notes.push(`entry "${entry}" is not a GPU index; ${IGNORED}`);
      break;
    }
    if (!/^\+?\d+$/.test(entry.trim()) && entry.trim() !== '-0') {
      notes.push(`entry "${entry}" is read as ${n}: CUDA reads only its leading digits`);
    }
    ordinals.push({ n, entry });
  }
  const picks: Pick[] = [];
  for (const { n, entry } of ordinals) {
    const gpu = physical[n];
    if (!gpu) {
      notes.push(`entry "${entry}" does not name a GPU (${countText(physical.length)}); ${IGNORED}`);
      break;
    }
    picks.push({ gpu, mig: null });
  }
  return finish(picks, notes);
}

function byUuid(physical: readonly GpuIdentity[], entries: readonly string[], form: 'GPU-' | 'MIG-', notes: string[]): Visibility {
  const candidates: string[] = [];
  for (const entry of entries) {
    if (candidates.includes(entry)) return hideAll(notes, `entry "${entry}" is repeated`);
    if (!entry.startsWith(form)) {
      notes.push(`entry "${entry}" is not a ${form}UUID like the first one; ${IGNORED}`);
      break;
    }
    candidates.push(entry);
  }
  const pool: Pick[] = form === 'GPU-' ? physical.map((gpu) => ({ gpu, mig: null })) : allMig(physical);
  const picks: Pick[] = [];
  for (const c of candidates) {
    const matches = pool.filter((p) => (p.mig ? p.mig.uuid : p.gpu.uuid).startsWith(c));
    if (matches.length !== 1) {
      const what = matches.length === 0 ? 'does not name a GPU' : `matches ${matches.map(describe).join(' and ')}`;
      notes.push(`entry "${c}" ${what}; ${IGNORED}`);
      break;
    }
    const p = matches[0]!;
    if (picks.some((q) => same(p, q))) return hideAll(notes, `entry "${c}" names ${describe(p)} again`);
    picks.push(p);
  }
  return finish(picks, notes);
}

function countText(n: number): string {
  return n === 0 ? 'no GPUs were detected' : n === 1 ? 'the only GPU is 0' : `GPUs are 0-${n - 1}`;
}

function available(physical: readonly GpuIdentity[]): string {
  if (physical.length === 0) return 'no GPUs were detected';
  const list = physical.map((g) => {
    const mig = (g.mig ?? []).map((m) => m.uuid);
    return `${g.index} (${g.uuid}${mig.length ? `; MIG: ${mig.join(', ')}` : ''})`;
  });
  return `available: ${list.join(', ')}`;
}

/**
 * `--gpus`: like CUDA_VISIBLE_DEVICES (the chosen GPUs become cuda:0.. in the given order), but the
 * user asked explicitly, so anything CUDA would silently drop is an InputError naming --gpus.
 * Indices are nvidia-smi's; forms may be mixed.
 */
export function selectGpus(physical: readonly GpuIdentity[], flag: string): Visibility {
  const fail = (reason: string): never => {
    throw new InputError('--gpus', reason);
  };
  if (flag.trim() === '') fail('is empty; give GPU indices or UUIDs, e.g. --gpus 0,1');
  const picks: Pick[] = [];
  for (const raw of flag.split(',')) {
    const entry = raw.trim();
    let matches: Pick[];
    if (/^\d+$/.test(entry)) {
      matches = physical.filter((g) => g.index === Number(entry)).map((gpu) => ({ gpu, mig: null }));
    } else if (entry.startsWith('GPU-')) {
      matches = physical.filter((g) => g.uuid.startsWith(entry)).map((gpu) => ({ gpu, mig: null }));
    } else if (entry.startsWith('MIG-')) {
      matches = allMig(physical).filter((p) => p.mig!.uuid.startsWith(entry));
    } else {
      return fail(`"${entry}" is not a GPU index, GPU-<uuid> or MIG-<uuid>`);
    }
    if (matches.length === 0) fail(`"${entry}" does not name a GPU; ${available(physical)}`);
    if (matches.length > 1) fail(`"${entry}" matches ${matches.map(describe).join(' and ')}; give more of the UUID`);
    const p = matches[0]!;
    if (picks.some((q) => same(p, q))) fail(`"${entry}" names ${describe(p)} a second time`);
    if (!p.mig && p.gpu.mig?.length) {
      fail(`GPU ${p.gpu.index} is in MIG mode; choose one of its MIG instances: ${p.gpu.mig.map((m) => m.uuid).join(', ')}`);
    }
    picks.push(p);
  }
  const migs = picks.filter((p) => p.mig);
  if (migs.length > 1) fail('names several MIG instances, but a CUDA process can use only one');
  if (migs.length === 1 && picks.length > 1) {
    fail('mixes a MIG instance with other GPUs, which CUDA_VISIBLE_DEVICES cannot express');
  }
  const visibility = finish(picks, []);
  // The plan numbers GPUs cuda:0.., so the process that runs it must see exactly these, in this order.
  const env = migs.length
    ? `CUDA_VISIBLE_DEVICES=${migs[0]!.mig!.uuid}`
    : `CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=${picks.map((p) => p.gpu.index).join(',')}`;
  visibility.notes.push(`--gpus: run the model with ${env} so that cuda:0.. are these GPUs`);
  return visibility;
}

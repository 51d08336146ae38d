import { execFile } from 'node:child_process';

/**
 * Reading GPUs from nvidia-smi. Parsing is pure (text in, values out) so it can be tested with
 * canned outputs on machines without a GPU; the only side effect is `runNvidiaSmi`.
 */

export const GPU_QUERY_ARGS: readonly string[] = [
  '--query-gpu=index,uuid,name,memory.total,memory.used,memory.free,pci.bus_id',
  '--format=csv,noheader,nounits',
];
export const PROCESS_QUERY_ARGS: readonly string[] = ['--query-compute-apps=gpu_uuid,pid,process_name,used_memory', '--format=csv,noheader,nounits'];
export const LIST_ARGS: readonly string[] = ['-L'];

const MIB = 1024 * 1024;

export interface GpuProcess {
  readonly pid: number;
  readonly name: string;
  /** null where nvidia-smi reports `[N/A]` (common in containers and on Windows/WSL). */
  readonly usedBytes: number | null;
}

export interface MigInstance {
  readonly uuid: string;
  /** The profile as `nvidia-smi -L` prints it, e.g. `1g.10gb` or `1c.3g.40gb`. */
  readonly profile: string;
  /** The `Device N` number within its parent GPU. */
  readonly migIndex: number;
  readonly parentUuid: string;
  /**
   * Estimated from the profile's `<n>gb` as n * 10^9 bytes. nvidia-smi's queries do not report a MIG
   * instance's memory; the decimal reading is slightly below the real size (1g.10gb is ~9.5 GiB),
   * so plans made with it err on the safe side.
   */
  readonly totalBytes: number;
}

/** A physical GPU, as nvidia-smi numbers it (PCI bus order). */
export interface GpuInfo {
  readonly index: number;
  readonly uuid: string;
  readonly name: string;
  readonly totalBytes: number;
  readonly usedBytes: number;
  readonly freeBytes: number;
  readonly pciBusId: string;
  readonly processes: readonly GpuProcess[];
  /** MIG instances from `nvidia-smi -L`; empty when the GPU is not in MIG mode. */
  readonly mig: readonly MigInstance[];
}

export interface ProcessRow extends GpuProcess {
  readonly gpuUuid: string;
}

export interface ListedGpu {
  readonly index: number;
  readonly name: string;
  readonly uuid: string;
  readonly mig: readonly MigInstance[];
}

function lines(text: string): string[] {
  return text
    .split(/\r?\n/)
    .map((l) => l.trimEnd())
    .filter((l) => l.trim() !== '');
}

/** Split a CSV row whose one free-text field (`textAt`) may itself contain commas. */
function splitRow(line: string, fields: number, textAt: number): string[] | null {
  const parts = line.split(',').map((p) => p.trim());
  if (parts.length < fields) return null;
  const after = fields - textAt - 1;
  const text = parts.slice(textAt, parts.length - after).join(', ');
  return [...parts.slice(0, textAt), text, ...parts.slice(parts.length - after)];
}

/** nvidia-smi prints `[N/A]`, `[Not Supported]`, ... for values it cannot read. */
function mib(field: string): number | null {
  if (!/^\d+(\.\d+)?$/.test(field)) return null;
  return Math.round(Number(field) * MIB);
}

/** Output of GPU_QUERY_ARGS. Rows that cannot be read are skipped with a note, not thrown. */
export function parseGpuQuery(text: string): { gpus: GpuInfo[]; notes: string[] } {
  const gpus: GpuInfo[] = [];
  const notes: string[] = [];
  for (const line of lines(text)) {
    const row = splitRow(line, 7, 2);
    const index = row ? Number(row[0]) : NaN;
    if (!row || !Number.isInteger(index) || index < 0) {
      notes.push(`nvidia-smi: skipped a line it could not read: "${line.trim()}"`);
      continue;
    }
    const [, uuid = '', name = '', totalF = '', usedF = '', freeF = '', bus = ''] = row;
    const total = mib(totalF);
    if (total === null) {
      notes.push(`nvidia-smi: GPU ${index} (${name}) reports no memory total ("${totalF}"); it is left out`);
      continue;
    }
    const used = mib(usedF);
    const free = mib(freeF);
    // When only one of used/free is readable, the other follows from the total.
    const usedBytes = used ?? (free !== null ? Math.max(0, total - free) : 0);
    const freeBytes = free ?? Math.max(0, total - usedBytes);
    if (used === null && free === null) {
      notes.push(`nvidia-smi: GPU ${index} reports no memory usage; assuming it is all free`);
    }
    gpus.push({ index, uuid, name, totalBytes: total, usedBytes, freeBytes, pciBusId: bus, processes: [], mig: [] });
  }
  gpus.sort((a, b) => a.index - b.index);
  return { gpus, notes };
}

/** Output of PROCESS_QUERY_ARGS. */
export function parseProcessQuery(text: string): { processes: ProcessRow[]; notes: string[] } {
  const processes: ProcessRow[] = [];
  const notes: string[] = [];
  for (const line of lines(text)) {
    // Without running apps, some versions print a sentence instead of nothing.
    if (/^no running/i.test(line.trim())) continue;
    const row = splitRow(line, 4, 2);
    const pid = row ? Number(row[1]) : NaN;
    if (!row || !Number.isInteger(pid)) {
      notes.push(`nvidia-smi: skipped a process line it could not read: "${line.trim()}"`);
      continue;
    }
    processes.push({ gpuUuid: row[0]!, pid, name: row[2]!, usedBytes: mib(row[3]!) });
  }
  return { processes, notes };
}

const GPU_LINE = /^GPU\s+(\d+):\s*(.*?)\s*\(UUID:\s*([^)\s]+)\)\s*$/;
// Current drivers: `  MIG 1g.10gb     Device  0: (UUID: MIG-<uuid>)`;
// R450 era:        `  MIG 1g.5gb Device 0: (UUID: MIG-GPU-<uuid>/7/0)`.
const MIG_LINE = /^\s+MIG\s+(\S+)\s+Device\s+(\d+):\s*\(UUID:\s*([^)\s]+)\)\s*$/;

/** `<n>g.<m>gb` -> m * 10^9 (see MigInstance.totalBytes). The last such pair wins for `1c.3g.40gb`. */
export function migProfileBytes(profile: string): number | null {
  const all = [...profile.matchAll(/(\d+)g\.(\d+)gb/gi)];
  const last = all[all.length - 1];
  return last ? Number(last[2]) * 1e9 : null;
}

/** Output of `nvidia-smi -L`: GPUs with their MIG instances. Unknown lines are ignored. */
export function parseGpuList(text: string): ListedGpu[] {
  const out: { index: number; name: string; uuid: string; mig: MigInstance[] }[] = [];
  for (const line of lines(text)) {
    const g = GPU_LINE.exec(line);
    if (g) {
      out.push({ index: Number(g[1]), name: g[2]!, uuid: g[3]!, mig: [] });
      continue;
    }
    const m = MIG_LINE.exec(line);
    const parent = out[out.length - 1];
    if (m && parent) {
      const profile = m[1]!;
      parent.mig.push({
        uuid: m[3]!,
        profile,
        migIndex: Number(m[2]),
        parentUuid: parent.uuid,
        totalBytes: migProfileBytes(profile) ?? 0,
      });
    }
  }
  return out;
}

/** Attach processes (by GPU UUID) and MIG instances (by GPU UUID) to the queried GPUs. */
export function mergeNvidiaSmi(gpus: readonly GpuInfo[], processes: readonly ProcessRow[], listed: readonly ListedGpu[]): GpuInfo[] {
  return gpus.map((g) => ({
    ...g,
    processes: processes.filter((p) => p.gpuUuid === g.uuid).map(({ pid, name, usedBytes }) => ({ pid, name, usedBytes })),
    mig: listed.find((l) => l.uuid === g.uuid)?.mig ?? [],
  }));
}

/** Runs nvidia-smi with `args`: its stdout, or null when nvidia-smi is not installed. Throws otherwise. */
export type NvidiaSmiRunner = (args: readonly string[]) => Promise<string | null>;

/** The one place that spawns nvidia-smi. 5 s is generous: a healthy driver answers in well under a second. */
export const runNvidiaSmi: NvidiaSmiRunner = (args) =>
  new Promise((resolve, reject) => {
    execFile('nvidia-smi', [...args], { timeout: 5000, encoding: 'utf8', windowsHide: true }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return resolve(null);
      // nvidia-smi writes its reason (e.g. "couldn't communicate with the NVIDIA driver") to stdout.
      const said = `${stdout ?? ''}\n${stderr ?? ''}`.trim().split('\n')[0] ?? '';
      const why = err.killed ? 'timed out after 5 s' : said || err.message;
      reject(new Error(why));
    });
  });

export interface NvidiaSmiReading {
  /** `missing`: not installed; `failed`: it ran but could not list GPUs (no driver, timeout, ...). */
  readonly status: 'ok' | 'missing' | 'failed';
  readonly gpus: GpuInfo[];
  readonly notes: string[];
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * Queries GPUs, then processes and MIG instances. A failing nvidia-smi is reported in notes, not
 * thrown: the inventory still has CPU and disk, and the user can plan with a simulated device spec.
 */
export async function readNvidiaSmi(run: NvidiaSmiRunner = runNvidiaSmi): Promise<NvidiaSmiReading> {
  let gpuText: string | null;
  try {
    gpuText = await run(GPU_QUERY_ARGS);
  } catch (e) {
    return { status: 'failed', gpus: [], notes: [`nvidia-smi failed (${message(e)}); no GPUs are used`] };
  }
  if (gpuText === null) return { status: 'missing', gpus: [], notes: [] };
  const { gpus, notes } = parseGpuQuery(gpuText);
  if (gpus.length === 0) return { status: 'ok', gpus, notes };

  // Processes and MIG only enrich the picture; their failure must not lose the GPUs.
  const [procText, listText] = await Promise.all([
    run(PROCESS_QUERY_ARGS).catch((e: unknown) => {
      notes.push(`nvidia-smi could not list GPU processes (${message(e)})`);
      return null;
    }),
    run(LIST_ARGS).catch((e: unknown) => {
      notes.push(`nvidia-smi -L failed (${message(e)}); MIG instances are not known`);
      return null;
    }),
  ]);
  const procs = parseProcessQuery(procText ?? '');
  notes.push(...procs.notes);
  return { status: 'ok', gpus: mergeNvidiaSmi(gpus, procs.processes, parseGpuList(listText ?? '')), notes };
}

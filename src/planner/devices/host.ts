import { readFile, statfs } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

/** CPU RAM and disk the plan may offload to. */

export interface CpuMemory {
  readonly totalBytes: number;
  /** What can be allocated without swapping: MemAvailable (Linux), else os.freemem(). */
  readonly availableBytes: number;
}

export interface DiskSpace {
  /** The folder measured (the offload folder, or the nearest existing folder above it). */
  readonly path: string;
  /** Free bytes an unprivileged user may write (statfs bavail, not bfree). */
  readonly freeBytes: number;
}

/** MemAvailable from /proc/meminfo text, in bytes; null when absent (kernels before 3.14, non-Linux). */
export function parseMemAvailable(meminfo: string): number | null {
  const m = /^MemAvailable:\s+(\d+)\s*kB/m.exec(meminfo);
  return m ? Number(m[1]) * 1024 : null;
}

/**
 * A cgroup memory limit file (v2 `memory.max`, v1 `memory.limit_in_bytes`) -> bytes, or null when
 * unlimited. v2 writes `max`; v1 writes a huge page-rounded number (about 2^63) instead.
 */
export function parseCgroupLimit(text: string): number | null {
  const t = text.trim();
  if (!/^\d+$/.test(t)) return null;
  const n = Number(t);
  return n >= 2 ** 62 ? null : n;
}

async function readText(file: string): Promise<string | null> {
  try {
    return await readFile(file, 'utf8');
  } catch {
    return null;
  }
}

/**
 * The container's memory limit and usage, if any. In a container os.totalmem() is the host's RAM,
 * but going past the cgroup limit gets the process killed, so the limit is the real total.
 */
async function cgroupMemory(): Promise<{ limit: number; used: number } | null> {
  const pairs: [string, string][] = [
    ['/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory.current'],
    ['/sys/fs/cgroup/memory/memory.limit_in_bytes', '/sys/fs/cgroup/memory/memory.usage_in_bytes'],
  ];
  for (const [limitFile, usedFile] of pairs) {
    const limitText = await readText(limitFile);
    if (limitText === null) continue;
    const limit = parseCgroupLimit(limitText);
    if (limit === null) return null;
    const used = Number((await readText(usedFile))?.trim() ?? 0);
    return { limit, used: Number.isFinite(used) ? used : 0 };
  }
  return null;
}

export interface CpuReading {
  readonly cpu: CpuMemory;
  readonly notes: string[];
}

export async function readCpuMemory(): Promise<CpuReading> {
  const notes: string[] = [];
  let totalBytes = os.totalmem();
  const meminfo = await readText('/proc/meminfo');
  let availableBytes = (meminfo !== null ? parseMemAvailable(meminfo) : null) ?? os.freemem();
  const cg = await cgroupMemory();
  if (cg && cg.limit < totalBytes) {
    totalBytes = cg.limit;
    availableBytes = Math.min(availableBytes, Math.max(0, cg.limit - cg.used));
    notes.push("CPU RAM is limited by this container (cgroup), not the machine's total");
  }
  return { cpu: { totalBytes, availableBytes }, notes };
}

/** Free space where offloaded weights would be written. A folder not yet created is measured at its nearest existing parent. */
export async function readDiskSpace(folder: string): Promise<DiskSpace> {
  let dir = path.resolve(folder);
  for (;;) {
    try {
      const s = await statfs(dir);
      return { path: dir, freeBytes: s.bavail * s.bsize };
    } catch (e) {
      const parent = path.dirname(dir);
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || parent === dir) throw e;
      dir = parent;
    }
  }
}

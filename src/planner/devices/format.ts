import type { Inventory, LogicalGpu } from './inventory.js';
import type { GpuProcess } from './nvidia-smi.js';

/** Text for `vramfit devices`. Pure: the same inventory always renders the same text. */

const GIB = 1024 ** 3;

/** Bytes as GiB: two decimals below 100 GiB, one from there up (`79.65 GiB`, `140.4 GiB`). */
export function formatGiB(bytes: number): string {
  const g = bytes / GIB;
  return `${g.toFixed(g >= 100 ? 1 : 2)} GiB`;
}

function baseName(file: string): string {
  return file.split(/[\\/]/).pop() || file;
}

function formatProcesses(ps: readonly GpuProcess[]): string {
  if (ps.length === 0) return '-';
  const shown = ps.slice(0, 3).map((p) => {
    const used = p.usedBytes === null ? '' : ` ${formatGiB(p.usedBytes)}`;
    return `${p.pid} ${baseName(p.name)}${used}`;
  });
  if (ps.length > 3) shown.push(`+${ps.length - 3} more`);
  return shown.join(', ');
}

/** Columns padded to their widest cell; `right` columns are right-aligned (numbers). */
function table(rows: readonly string[][], right: ReadonlySet<number>): string[] {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) =>
    r
      .map((cell, c) => (right.has(c) ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!)))
      .join('  ')
      .trimEnd(),
  );
}

const SOURCE: Record<Inventory['source'], string> = {
  'nvidia-smi': 'from nvidia-smi',
  simulated: 'simulated',
  none: 'none detected',
  ggml: "from ggml's GPU backends",
};

const PACKAGE_STATE: Record<string, string> = {
  ready: 'active',
  absent: 'not installed',
  'no-device': 'installed, no usable device',
  failed: 'failed to load',
  mismatch: 'wrong release',
};

function gpuTable(gpus: readonly LogicalGpu[], simulated: boolean): string[] {
  // Simulated GPUs have no physical counterpart, so the remapping column would only repeat cuda.
  const header = simulated ? ['id', 'name', 'total', 'used', 'free', 'processes'] : ['id', 'nvidia-smi', 'name', 'total', 'used', 'free', 'processes'];
  const engine = (g: LogicalGpu): string => (g.backend ? ` [${g.ggmlName} via ${g.backend}${g.integrated ? ', integrated' : ''}]` : '');
  const rows = gpus.map((g) => {
    const cells = [
      String(g.logicalIndex),
      g.name + engine(g),
      formatGiB(g.totalBytes),
      formatGiB(g.usedBytes),
      formatGiB(g.freeBytes),
      formatProcesses(g.processes),
    ];
    if (!simulated) cells.splice(1, 0, g.ggmlOnly ? '-' : String(g.physicalIndex));
    return cells;
  });
  const first = simulated ? 2 : 3;
  return table([header, ...rows], new Set([first, first + 1, first + 2])).map((l) => `  ${l}`);
}

export function renderInventory(inv: Inventory): string {
  const out: string[] = [];
  if (inv.gpus.length === 0) {
    out.push(`GPUs: none (${SOURCE[inv.source]})`);
  } else {
    out.push(`GPUs (${SOURCE[inv.source]})`);
    out.push(...gpuTable(inv.gpus, inv.source === 'simulated'));
  }
  if (inv.packages) out.push(`GPU backends: ${inv.packages.map((p) => `${p.backend} ${PACKAGE_STATE[p.state] ?? p.state}`).join(', ')}`);
  out.push(`CPU RAM: ${formatGiB(inv.cpu.totalBytes)} total, ${formatGiB(inv.cpu.availableBytes)} available`);
  out.push(`Disk: ${formatGiB(inv.disk.freeBytes)} free at ${inv.disk.path}`);
  if (inv.notes.length > 0) {
    out.push('Notes:');
    out.push(...inv.notes.map((n) => `  - ${n}`));
  }
  return out.join('\n') + '\n';
}

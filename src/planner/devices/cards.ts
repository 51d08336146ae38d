import { InputError } from '../../util/errors.js';

/**
 * Known cards, for planning without the hardware (`--device-spec 4xA100-80GB`).
 *
 * Memory is the total the driver reports (nvidia-smi's memory.total, rocm-smi's VRAM total for AMD),
 * not the marketing size: an "80GB" H100 SXM reports 81559 MiB, a T4 15360 MiB. Some of these totals
 * move by a few MiB between driver versions and board variants; when it matters, plan on the real
 * machine. These are totals: CUDA context and driver reservations still come out of them.
 */
export interface Card {
  /** The canonical name used in specs and messages. */
  readonly name: string;
  readonly totalBytes: number;
  /** Other spellings, e.g. the name nvidia-smi prints. Matching ignores case, spaces and dashes. */
  readonly aliases: readonly string[];
}

const MIB = 1024 * 1024;

function card(name: string, mib: number, ...aliases: string[]): Card {
  return { name, totalBytes: mib * MIB, aliases };
}

export const KNOWN_CARDS: readonly Card[] = [
  // Data-centre NVIDIA
  card('B200', 183359, 'NVIDIA B200'),
  card('H200', 143771, 'H200-141GB', 'H200-SXM', 'NVIDIA H200'),
  card('H100-NVL', 95830, 'H100-94GB', 'NVIDIA H100 NVL'),
  card('H100-80GB', 81559, 'H100', 'H100-SXM', 'H100-PCIE', 'H100-80GB-HBM3', 'NVIDIA H100 80GB HBM3', 'NVIDIA H100 PCIe'),
  card('A100-80GB', 81920, 'A100-SXM4-80GB', 'A100-PCIE-80GB', 'A100-80GB-PCIE', 'NVIDIA A100 80GB PCIe'),
  card('A100-40GB', 40960, 'A100-SXM4-40GB', 'A100-PCIE-40GB', 'NVIDIA A100-PCIE-40GB'),
  card('L40S', 46068, 'NVIDIA L40S'),
  card('L40', 46068, 'NVIDIA L40'),
  card('A40', 46068, 'NVIDIA A40'),
  card('A10', 23028, 'NVIDIA A10'),
  card('A10G', 23028, 'NVIDIA A10G'),
  card('L4', 23034, 'NVIDIA L4'),
  card('T4', 15360, 'Tesla T4'),
  card('V100-32GB', 32510, 'V100-SXM2-32GB', 'V100-PCIE-32GB', 'Tesla V100-SXM2-32GB'),
  card('V100-16GB', 16160, 'V100-SXM2-16GB', 'V100-PCIE-16GB', 'Tesla V100-SXM2-16GB'),
  // Workstation NVIDIA
  card('RTX-6000-Ada', 49140, 'RTX6000Ada', 'NVIDIA RTX 6000 Ada Generation'),
  card('A6000', 49140, 'RTX-A6000', 'NVIDIA RTX A6000'),
  card('A5000', 24564, 'RTX-A5000', 'NVIDIA RTX A5000'),
  // Consumer NVIDIA
  card('RTX-5090', 32607, '5090', 'NVIDIA GeForce RTX 5090'),
  card('RTX-4090', 24564, '4090', 'NVIDIA GeForce RTX 4090'),
  card('RTX-4080', 16376, '4080', 'NVIDIA GeForce RTX 4080'),
  card('RTX-3090', 24576, '3090', 'NVIDIA GeForce RTX 3090'),
  card('RTX-3060', 12288, '3060', 'NVIDIA GeForce RTX 3060'),
  // AMD Instinct (rocm-smi totals). An MI250 is two GCDs that each appear as one 64 GiB device.
  card('MI300X', 196608, 'AMD Instinct MI300X'),
  card('MI250', 65536, 'MI250X', 'MI250-GCD', 'AMD Instinct MI250X'),
  card('MI210', 65536, 'AMD Instinct MI210'),
];

/** Lower case without spaces, dashes, underscores or dots, and without vendor words. */
function normalize(name: string): string {
  return name
    .toLowerCase()
    .replace(/\b(nvidia|geforce|tesla|amd|instinct)\b/g, '')
    .replace(/[\s\-_.]/g, '');
}

const INDEX = new Map<string, Card>();
for (const c of KNOWN_CARDS) {
  for (const n of [c.name, ...c.aliases]) INDEX.set(normalize(n), c);
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}

/** Up to three canonical names nearest to `name`: those containing it first, then by edit distance. */
export function closestCards(name: string): string[] {
  const key = normalize(name);
  const scored = KNOWN_CARDS.map((c) => {
    const keys = [c.name, ...c.aliases].map(normalize);
    const contains = key !== '' && keys.some((k) => k.includes(key) || key.includes(k));
    const dist = Math.min(...keys.map((k) => editDistance(key, k)));
    return { name: c.name, score: contains ? -1 : dist };
  });
  scored.sort((a, b) => a.score - b.score);
  const limit = Math.max(2, Math.floor(key.length / 2));
  return scored
    .filter((s) => s.score <= limit)
    .slice(0, 3)
    .map((s) => s.name);
}

/** A known card by any of its spellings, or an InputError (at `where`) naming the closest ones. */
export function findCard(name: string, where = '--device-spec'): Card {
  const found = INDEX.get(normalize(name));
  if (found) return found;
  const near = closestCards(name);
  const hint = near.length ? `closest known: ${near.join(', ')}` : `known cards: ${KNOWN_CARDS.map((c) => c.name).join(', ')}`;
  throw new InputError(where, `unknown card "${name.trim()}"; ${hint} (or give sizes with --gpu-memory)`);
}

/** One list entry `[N x] rest`; `x`, `×` and `*` all work, with or without spaces. */
function splitCount(entry: string, where: string): { count: number; rest: string } {
  const m = /^(\d+)\s*[x×*]\s*(.+)$/i.exec(entry);
  if (!m) return { count: 1, rest: entry };
  const count = Number(m[1]);
  if (!Number.isSafeInteger(count) || count < 1 || count > 1024) {
    throw new InputError(where, `"${entry}": the count must be between 1 and 1024`);
  }
  return { count, rest: m[2]!.trim() };
}

function entries(list: string, where: string): string[] {
  const parts = list.split(',').map((p) => p.trim());
  if (parts.every((p) => p === '')) throw new InputError(where, 'is empty');
  if (parts.some((p) => p === '')) throw new InputError(where, `"${list}" has an empty entry`);
  return parts;
}

/** `4xA100-80GB`, `2x RTX 4090, 1xA6000` -> one Card per GPU, in order. */
export function parseDeviceSpec(spec: string, where = '--device-spec'): Card[] {
  return entries(spec, where).flatMap((entry) => {
    const { count, rest } = splitCount(entry, where);
    const c = findCard(rest, where);
    return Array.from({ length: count }, () => c);
  });
}

/** `24GiB,24GiB` or `2x24GiB` -> bytes per GPU, in order. */
export function parseGpuMemoryList(list: string, where = '--gpu-memory'): number[] {
  return entries(list, where).flatMap((entry) => {
    const { count, rest } = splitCount(entry, where);
    const bytes = parseSize(rest);
    if (bytes === null) {
      throw new InputError(where, `"${rest}" is not a size; use e.g. 24GiB, 80GB, 20000MiB or a number of bytes`);
    }
    if (bytes <= 0) throw new InputError(where, `"${rest}" must be more than 0 bytes`);
    return Array.from({ length: count }, () => bytes);
  });
}

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
  tib: 1024 ** 4,
};

/**
 * Stand-in until src/planner/units.ts (parseByteSize) lands; switch over then. GB is 10^9 and GiB
 * 2^30 (as in accelerate's max_memory); a bare number is bytes and must be whole.
 */
function parseSize(text: string): number | null {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(text.trim());
  if (!m) return null;
  const unit = UNITS[m[2]!.toLowerCase()];
  if (unit === undefined) return null;
  if (unit === 1 && m[1]!.includes('.')) return null;
  const bytes = Math.floor(Number(m[1]) * unit);
  return Number.isSafeInteger(bytes) ? bytes : null;
}

import { ConfigReader } from '../config.js';
import { CATALOG } from './models.js';

export function catalogNames(): string[] {
  return Object.keys(CATALOG);
}

/** A catalog model's config, with the entry's overrides applied; undefined for an unknown name. */
export function catalogConfig(name: string): { cfg: ConfigReader; source: string } | undefined {
  const entry = CATALOG[name.toLowerCase()];
  if (!entry) return undefined;
  return { cfg: new ConfigReader({ ...entry.config, ...(entry.overrides ?? {}) }, `catalog:${name.toLowerCase()}`), source: entry.source };
}

/** Catalog names a misspelled one was probably meant as: within a few edits, closest first. */
export function catalogSuggestions(name: string, max = 3): string[] {
  const want = name.toLowerCase();
  const scored = catalogNames().map((n) => ({ n, d: editDistance(want, n) }));
  const limit = Math.max(2, Math.floor(want.length / 4));
  return scored
    .filter((x) => x.d <= limit)
    .sort((a, b) => a.d - b.d || a.n.localeCompare(b.n))
    .slice(0, max)
    .map((x) => x.n);
}

/** Levenshtein distance (insertions, deletions, substitutions), one row at a time. */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = row;
  }
  return prev[b.length]!;
}

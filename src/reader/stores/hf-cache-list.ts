import { readdirSync, readFileSync, statSync, type Stats } from 'node:fs';
import { join } from 'node:path';
import { hubCacheDir } from '../hf-cache.js';

export interface HfCacheEntry {
  /** `org/repo`, as `vramfit run` takes it. */
  name: string;
  /** The snapshot folder `refs/main` names, else the newest snapshot. */
  path: string;
  /** Bytes of the snapshot's files (their blobs, through the snapshot's symlinks). */
  size: number;
}

const COMMIT = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
// Snapshots hold a repo's own folders; deeper than this is a link loop, not a model.
const MAX_DEPTH = 16;

function statOrUndefined(path: string): Stats | undefined {
  try {
    return statSync(path);
  } catch {
    return undefined;
  }
}

function list(dir: string): string[] {
  try {
    return readdirSync(dir).sort();
  } catch {
    return [];
  }
}

/** Sum of file sizes under `dir`, following links as huggingface_hub's snapshot symlinks require; dangling links count 0. */
function folderSize(dir: string, depth = 0): number {
  if (depth > MAX_DEPTH) return 0;
  let total = 0;
  for (const name of list(dir)) {
    const s = statOrUndefined(join(dir, name));
    if (s?.isFile()) total += s.size;
    else if (s?.isDirectory()) total += folderSize(join(dir, name), depth + 1);
  }
  return total;
}

/** The snapshot `refs/main` points at when it exists, else the most recently written one. */
function pickSnapshot(repoDir: string): string | undefined {
  const snapshots = join(repoDir, 'snapshots');
  try {
    const commit = readFileSync(join(repoDir, 'refs', 'main'), 'utf8').trim();
    if (COMMIT.test(commit) && !commit.includes('..') && statOrUndefined(join(snapshots, commit))?.isDirectory()) return join(snapshots, commit);
  } catch {
    // No refs/main: a download by commit hash only.
  }
  const dirs = list(snapshots)
    .map((n) => ({ path: join(snapshots, n), s: statOrUndefined(join(snapshots, n)) }))
    .filter((d) => d.s?.isDirectory())
    .sort((a, b) => b.s!.mtimeMs - a.s!.mtimeMs);
  return dirs[0]?.path;
}

/** Every model repo in the local Hugging Face hub cache that has a snapshot; empty when there is no cache. */
export function listHfCacheModels(env: NodeJS.ProcessEnv = process.env): HfCacheEntry[] {
  const cache = hubCacheDir(env);
  const out: HfCacheEntry[] = [];
  for (const folder of list(cache)) {
    if (!folder.startsWith('models--')) continue;
    // huggingface_hub writes `/` as `--`, and repo names cannot hold `--`, so the mapping reverses.
    const name = folder.slice('models--'.length).replaceAll('--', '/');
    const path = pickSnapshot(join(cache, folder));
    if (path) out.push({ name, path, size: folderSize(path) });
  }
  return out;
}

import { existsSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../util/errors.js';

const REPO_ID = /^[A-Za-z0-9][\w.-]*\/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$/;

export function looksLikeRepoId(s: string): boolean {
  return REPO_ID.test(s) && !s.includes('..');
}

/** The hub cache folder, as huggingface_hub picks it: HF_HUB_CACHE, then HF_HOME/hub, then ~/.cache/huggingface/hub. */
export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env['HF_HUB_CACHE']) return env['HF_HUB_CACHE'];
  if (env['HUGGINGFACE_HUB_CACHE']) return env['HUGGINGFACE_HUB_CACHE'];
  const home = env['HF_HOME'] ?? join(env['XDG_CACHE_HOME'] ?? join(homedir(), '.cache'), 'huggingface');
  return join(home, 'hub');
}

/**
 * Resolves `org/name[@revision]` to its snapshot folder in the local cache: `refs/<revision>` (default
 * `main`) names the commit, `snapshots/<commit>` holds the files. Nothing is downloaded, ever.
 */
export function resolveRepoId(spec: string, env: NodeJS.ProcessEnv = process.env): string {
  const [repo, revision = 'main'] = spec.split('@') as [string, string?];
  const cache = hubCacheDir(env);
  const repoDir = join(cache, `models--${repo.replace('/', '--')}`);
  const hint = `vramfit never downloads: fetch it first (huggingface-cli download ${repo}) or pass a model directory`;
  if (!existsSync(repoDir)) {
    throw new InputError(spec, `not a file or folder, and not in the local Hugging Face cache (looked for ${repoDir}); ${hint}`, 'NOT_FOUND');
  }
  // A revision (a branch or tag name) and the commit a ref file holds are single path parts inside the
  // repo's cache folder: `..` or a slash there would resolve outside it.
  const safe = (part: string): boolean => /^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(part) && !part.includes('..');
  if (!safe(revision)) throw new InputError(spec, `revision ${JSON.stringify(revision)} is not a branch, tag or commit name`, 'BAD_INPUT');
  let commit = revision;
  const ref = join(repoDir, 'refs', revision);
  if (existsSync(ref)) {
    commit = readFileSync(ref, 'utf8').trim();
    if (!safe(commit))
      throw new InputError(ref, `holds ${JSON.stringify(commit.slice(0, 80))}, not a commit hash; refusing to follow it out of the cache`, 'BAD_INPUT');
  }
  const snapshot = join(repoDir, 'snapshots', commit);
  if (!existsSync(snapshot) || !statSync(snapshot).isDirectory()) {
    throw new InputError(spec, `revision ${revision} has no snapshot in the local cache (${snapshot} is missing); ${hint}`, 'NOT_FOUND');
  }
  return snapshot;
}

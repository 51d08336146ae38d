import { closeSync, fstatSync, openSync, readdirSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../../util/errors.js';
import { readBytes } from '../../util/read-fully.js';

/**
 * LM Studio's models folder, read as files: `<models dir>/<publisher>/<repo>/<file>.gguf`, with
 * multimodal projectors (`mmproj*.gguf`) beside the weights. `LMSTUDIO_MODELS` is vramfit's own
 * override (LM Studio has none); otherwise LM Studio's `downloadsFolder` setting, then its defaults.
 */

export interface LmStudioModel {
  /** `publisher/repo`, or `publisher/repo/file.gguf` where the folder holds more than one model. */
  name: string;
  /** Path of the GGUF file (the first part, for a split GGUF). */
  model: string;
  size: number;
}

export interface LmStudioListEntry extends LmStudioModel {
  /** Why vramfit cannot read it (a split GGUF). */
  error?: string;
}

const SPLIT = /-(\d{5})-of-(\d{5})\.gguf$/i;
const SETTINGS_LIMIT = 1024 * 1024;

function home(env: NodeJS.ProcessEnv): string {
  return env['HOME'] || homedir();
}

function isDir(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

function fileSize(path: string): number | undefined {
  try {
    const s = statSync(path);
    return s.isFile() ? s.size : undefined;
  } catch {
    return undefined;
  }
}

/** LM Studio's custom location (`downloadsFolder` in ~/.lmstudio/settings.json); a missing or odd file says nothing. */
function settingsFolder(env: NodeJS.ProcessEnv): string | undefined {
  const path = join(home(env), '.lmstudio', 'settings.json');
  try {
    const fd = openSync(path, 'r');
    try {
      const s = fstatSync(fd);
      if (!s.isFile() || s.size > SETTINGS_LIMIT) return undefined;
      const json: unknown = JSON.parse(Buffer.from(readBytes(fd, s.size, 0)).toString('utf8'));
      const folder = typeof json === 'object' && json !== null ? (json as Record<string, unknown>)['downloadsFolder'] : undefined;
      return typeof folder === 'string' && folder !== '' ? folder : undefined;
    } finally {
      closeSync(fd);
    }
  } catch {
    return undefined;
  }
}

/** Every folder LM Studio's models may be in, in the order they are tried. */
export function lmStudioModelsDirs(env: NodeJS.ProcessEnv = process.env): string[] {
  if (env['LMSTUDIO_MODELS']) return [env['LMSTUDIO_MODELS']];
  const custom = settingsFolder(env);
  const defaults = [join(home(env), '.lmstudio', 'models'), join(home(env), '.cache', 'lm-studio', 'models')];
  return custom ? [custom, ...defaults] : defaults;
}

/** The models folder in use: the first candidate that exists. */
export function lmStudioModelsDir(env: NodeJS.ProcessEnv = process.env): string | undefined {
  return lmStudioModelsDirs(env).find(isDir);
}

/** Where a lookup looked, for messages: the folder in use, or every candidate when none exists. */
export function lmStudioLookedIn(env: NodeJS.ProcessEnv = process.env): string {
  const dir = lmStudioModelsDir(env);
  return dir ?? `${lmStudioModelsDirs(env).join(', ')}, none of which exists`;
}

function visible(dir: string, keep: (path: string) => boolean): string[] {
  try {
    return readdirSync(dir)
      .filter((n) => !n.startsWith('.') && keep(join(dir, n)))
      .sort();
  } catch {
    return [];
  }
}

const isProjector = (file: string): boolean => file.toLowerCase().startsWith('mmproj');
const isGguf = (file: string): boolean => file.toLowerCase().endsWith('.gguf');

/** One loadable model in a repo folder: a single file, or the parts of one split GGUF. */
interface Candidate {
  file: string;
  parts: number;
  size: number;
}

/** The GGUF models in one repo folder, projectors left out and split parts grouped. */
function candidates(dir: string): Candidate[] {
  const groups = new Map<string, Candidate>();
  for (const file of visible(dir, (p) => fileSize(p) !== undefined)) {
    if (!isGguf(file) || isProjector(file)) continue;
    const split = SPLIT.exec(file);
    const key = split ? file.replace(SPLIT, '') : file;
    const size = fileSize(join(dir, file)) ?? 0;
    const group = groups.get(key);
    if (group) {
      group.size += size;
      // The first part (…-00001-of-…) is the one llama.cpp opens; name the group by it.
      if (file < group.file) group.file = file;
    } else {
      groups.set(key, { file, parts: split ? Number(split[2]) : 1, size });
    }
  }
  return [...groups.values()];
}

function splitReason(parts: number): string {
  return `split GGUF (${parts} parts): merge them with llama-gguf-split --merge`;
}

function loadable(dir: string, name: string, c: Candidate): LmStudioModel {
  const model = join(dir, c.file);
  if (c.parts > 1) throw new InputError(model, splitReason(c.parts), 'BAD_INPUT');
  return { name, model, size: c.size };
}

/** A part of a spec becomes a path component: nothing that could climb out of the models folder. */
function safePart(part: string): boolean {
  return part !== '' && !part.startsWith('.') && !part.includes('\\') && !part.includes('\0');
}

type Lookup = { found: LmStudioModel } | { missing: string };

function fromRepoDir(root: string, publisher: string, repo: string, spec: string): Lookup {
  const dir = join(root, publisher, repo);
  const found = candidates(dir);
  if (found.length === 0) return { missing: `${dir} holds no GGUF model (mmproj files are projectors, not models)` };
  if (found.length > 1) {
    throw new InputError(
      spec,
      `${publisher}/${repo} holds ${found.length} GGUF models (${found.map((c) => c.file).join(', ')}); name one as ${publisher}/${repo}/FILE.gguf`,
      'BAD_INPUT',
    );
  }
  return { found: loadable(dir, `${publisher}/${repo}`, found[0]!) };
}

function lookup(spec: string, env: NodeJS.ProcessEnv): Lookup {
  const root = lmStudioModelsDir(env);
  const notFound = { missing: `not found in LM Studio's models folder (looked in ${lmStudioLookedIn(env)}; set LMSTUDIO_MODELS if it is elsewhere)` };
  const parts = spec.split('/');
  if (!root || parts.length > 3 || !parts.every(safePart)) return notFound;
  if (parts.length === 3) {
    const [publisher, repo, file] = parts as [string, string, string];
    const dir = join(root, publisher, repo);
    const size = fileSize(join(dir, file));
    if (size === undefined || !isGguf(file)) return notFound;
    if (isProjector(file)) throw new InputError(join(dir, file), 'is a multimodal projector (mmproj), not the model', 'BAD_INPUT');
    const split = SPLIT.exec(file);
    return { found: loadable(dir, spec, { file, parts: split ? Number(split[2]) : 1, size }) };
  }
  if (parts.length === 2) {
    const [publisher, repo] = parts as [string, string];
    return isDir(join(root, publisher, repo)) ? fromRepoDir(root, publisher, repo, spec) : notFound;
  }
  const publishers = visible(root, (p) => isDir(join(p, spec)));
  if (publishers.length === 0) return notFound;
  if (publishers.length > 1) {
    throw new InputError(
      spec,
      `matches ${publishers.length} folders in LM Studio's models folder (${publishers.map((p) => `${p}/${spec}`).join(', ')}); name one as publisher/repo`,
      'BAD_INPUT',
    );
  }
  return fromRepoDir(root, publishers[0]!, spec, spec);
}

/**
 * Resolves `publisher/repo`, `publisher/repo/file.gguf` or a bare `repo` to one GGUF file.
 * Ambiguities and split GGUFs are errors that list what was found.
 */
export function resolveLmStudioModel(spec: string, env: NodeJS.ProcessEnv = process.env): LmStudioModel {
  const r = lookup(spec, env);
  if ('found' in r) return r.found;
  throw new InputError(spec, r.missing, 'NOT_FOUND');
}

/** Like resolveLmStudioModel, but undefined where LM Studio has no GGUF by that name (a name for another store). */
export function findLmStudioModel(spec: string, env: NodeJS.ProcessEnv = process.env): LmStudioModel | undefined {
  const r = lookup(spec, env);
  return 'found' in r ? r.found : undefined;
}

/** Every GGUF model in the models folder (projectors left out); a split GGUF is listed with its error. */
export function listLmStudioModels(env: NodeJS.ProcessEnv = process.env): LmStudioListEntry[] {
  const root = lmStudioModelsDir(env);
  if (!root) return [];
  const out: LmStudioListEntry[] = [];
  for (const publisher of visible(root, isDir))
    for (const repo of visible(join(root, publisher), isDir)) {
      const dir = join(root, publisher, repo);
      const found = candidates(dir);
      for (const c of found) {
        const entry: LmStudioListEntry = {
          name: found.length === 1 ? `${publisher}/${repo}` : `${publisher}/${repo}/${c.file}`,
          model: join(dir, c.file),
          size: c.size,
        };
        if (c.parts > 1) entry.error = splitReason(c.parts);
        out.push(entry);
      }
    }
  return out;
}

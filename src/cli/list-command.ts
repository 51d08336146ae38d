import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { formatBytes } from '../planner/units.js';
import { readGgufHeader } from '../reader/formats/gguf.js';
import { hubCacheDir } from '../reader/hf-cache.js';
import { listHfCacheModels } from '../reader/stores/hf-cache-list.js';
import { listLmStudioModels, lmStudioModelsDir, lmStudioModelsDirs } from '../reader/stores/lmstudio.js';
import { listOllamaModels, ollamaBlobPath, ollamaModelsDir, readOllamaManifest, verifyBlob, type OllamaLayer } from '../reader/stores/ollama.js';
import { readJsonObjectFile } from '../util/json-file.js';
import { VramfitError } from '../util/errors.js';
import type { Io } from './main.js';

type StoreKind = 'hf-cache' | 'ollama' | 'lmstudio';

export interface ListRow {
  source: StoreKind;
  /** As `vramfit run` takes it. */
  name: string;
  architecture: string;
  size: number | null;
  path: string;
  /** Why the entry cannot be used as it is. */
  error?: string;
  /** With --verify: `ok`, or what failed, for Ollama entries; null for the others (nothing to check them against). */
  verified?: string | null;
}

/** `general.architecture` of a GGUF; `?` for anything unreadable, since a listing must not stop at one bad file. */
function ggufArchitecture(path: string): string {
  try {
    const arch = readGgufHeader(path).metadata['general.architecture'];
    return typeof arch === 'string' && arch !== '' ? arch : '?';
  } catch {
    return '?';
  }
}

/** config.json's class (or model_type); a GGUF-only repo answers with its first GGUF's architecture. */
function folderArchitecture(dir: string): string {
  const config = join(dir, 'config.json');
  if (existsSync(config)) {
    try {
      const cfg = readJsonObjectFile(config);
      const archs = cfg['architectures'];
      if (Array.isArray(archs) && typeof archs[0] === 'string') return archs[0];
      if (typeof cfg['model_type'] === 'string') return cfg['model_type'];
    } catch {
      // Falls through to '?'.
    }
    return '?';
  }
  try {
    const gguf = readdirSync(dir)
      .sort()
      .find((f) => f.toLowerCase().endsWith('.gguf') && !f.toLowerCase().startsWith('mmproj'));
    return gguf ? ggufArchitecture(join(dir, gguf)) : '?';
  } catch {
    return '?';
  }
}

/** The manifest behind each Ollama row, kept off the row so --json shows only the listed fields. */
const manifestOf = new WeakMap<ListRow, string>();

function collectRows(env: NodeJS.ProcessEnv): ListRow[] {
  const rows: ListRow[] = [];
  for (const m of listHfCacheModels(env)) rows.push({ source: 'hf-cache', name: m.name, architecture: folderArchitecture(m.path), size: m.size, path: m.path });
  for (const m of listOllamaModels(env)) {
    const row: ListRow = {
      source: 'ollama',
      name: m.name,
      architecture: m.model ? ggufArchitecture(m.model) : '?',
      size: m.size ?? null,
      path: m.model ?? m.manifest,
    };
    if (m.error !== undefined) row.error = m.error;
    manifestOf.set(row, m.manifest);
    rows.push(row);
  }
  for (const m of listLmStudioModels(env)) {
    const row: ListRow = { source: 'lmstudio', name: `lmstudio:${m.name}`, architecture: ggufArchitecture(m.model), size: m.size, path: m.model };
    if (m.error !== undefined) row.error = m.error;
    rows.push(row);
  }
  return rows;
}

/** Progress on a terminal only: piped or captured stderr gets no carriage-return noise. */
function progressReporter(io: Io, total: number): { tick: (bytes: number) => void; done: () => void } {
  if (!process.stderr.isTTY || total === 0) return { tick: () => {}, done: () => {} };
  let hashed = 0;
  let shown = -1;
  return {
    tick: (bytes) => {
      hashed += bytes;
      const pct = Math.floor((100 * hashed) / total);
      if (pct !== shown) io.stderr(`\rverifying Ollama blobs: ${pct}% of ${formatBytes(total)}`);
      shown = pct;
    },
    done: () => io.stderr('\r\x1b[K'),
  };
}

/**
 * Hashes every blob of every Ollama entry against its digest, each distinct blob once (tags of one
 * model share their weights). Sets `verified` on each Ollama row; returns how many failed.
 */
async function verifyOllama(rows: ListRow[], env: NodeJS.ProcessEnv, io: Io): Promise<number> {
  const dir = ollamaModelsDir(env);
  const layersOf = new Map<ListRow, OllamaLayer[] | string>();
  const unique = new Map<string, OllamaLayer>();
  for (const row of rows) {
    if (row.source !== 'ollama') continue;
    try {
      const manifest = readOllamaManifest(manifestOf.get(row) ?? row.path);
      const layers = manifest.config ? [manifest.config, ...manifest.layers] : manifest.layers;
      layersOf.set(row, layers);
      for (const l of layers) unique.set(l.digest, l);
    } catch (e) {
      layersOf.set(row, `unreadable manifest (${e instanceof Error ? e.message : String(e)})`);
    }
  }
  const present = [...unique.values()].filter((l) => isFile(ollamaBlobPath(dir, l.digest)));
  const progress = progressReporter(
    io,
    present.reduce((sum, l) => sum + statSync(ollamaBlobPath(dir, l.digest)).size, 0),
  );
  const outcome = new Map<string, string>();
  for (const layer of unique.values()) {
    const blob = ollamaBlobPath(dir, layer.digest);
    const file = `sha256-${layer.digest.slice('sha256:'.length)}`;
    if (!isFile(blob)) {
      outcome.set(layer.digest, `missing (blob ${file})`);
      continue;
    }
    let last = 0;
    const r = await verifyBlob(blob, layer.digest, (done) => {
      progress.tick(done - last);
      last = done;
    });
    outcome.set(layer.digest, r.ok ? 'ok' : `MISMATCH (blob ${file} hashes to ${r.actual})`);
  }
  progress.done();
  let failed = 0;
  for (const row of rows) {
    if (row.source !== 'ollama') {
      row.verified = null;
      continue;
    }
    const layers = layersOf.get(row)!;
    const problems = typeof layers === 'string' ? [layers] : [...new Set(layers.map((l) => outcome.get(l.digest)!))].filter((o) => o !== 'ok');
    row.verified = problems.length === 0 ? 'ok' : problems.join('; ');
    if (problems.length > 0) failed++;
  }
  return failed;
}

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

function renderTable(table: string[][]): string {
  const widths = table[0]!.map((_, c) => Math.max(...table.map((r) => r[c]!.length)));
  return table
    .map((r) =>
      r
        .map((cell, c) => cell.padEnd(widths[c]!))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

function countText(n: number): string {
  return n === 1 ? '1 model' : `${n === 0 ? 'no' : n} models`;
}

/** One line per store saying where it looked, so an empty listing still tells the user where to put models. */
function footer(rows: ListRow[], env: NodeJS.ProcessEnv): string[] {
  const count = (s: StoreKind): string => countText(rows.filter((r) => r.source === s).length);
  const at = (dir: string): string => (existsSync(dir) ? dir : `${dir} (not there)`);
  const lm = lmStudioModelsDir(env);
  return [
    `hf-cache: ${count('hf-cache')} in ${at(hubCacheDir(env))} (set HF_HUB_CACHE or HF_HOME to look elsewhere)`,
    `ollama: ${count('ollama')} in ${at(ollamaModelsDir(env))} (set OLLAMA_MODELS to look elsewhere)`,
    `lmstudio: ${count('lmstudio')} in ${lm ?? `${lmStudioModelsDirs(env).join(', ')} (none there)`} (set LMSTUDIO_MODELS to look elsewhere)`,
  ];
}

function render(rows: ListRow[], verify: boolean, env: NodeJS.ProcessEnv): string {
  const header = ['source', 'name', 'architecture', 'size', 'path', ...(verify ? ['verified'] : [])];
  const body = rows.map((r) => [r.source, r.name, r.architecture, r.size === null ? '?' : formatBytes(r.size), r.path, ...(verify ? [r.verified ?? ''] : [])]);
  const lines = [renderTable([header, ...body])];
  for (const r of rows) if (r.error !== undefined) lines.push(`error: ${r.source} ${r.name}: ${r.error}`);
  lines.push('', ...footer(rows, env));
  return `${lines.join('\n')}\n`;
}

export async function runList(opts: { verify?: boolean; json?: boolean }, io: Io, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const rows = collectRows(env);
  const failed = opts.verify ? await verifyOllama(rows, env, io) : 0;
  io.stdout(opts.json ? `${JSON.stringify(rows, null, 2)}\n` : render(rows, opts.verify === true, env));
  if (failed > 0) {
    const total = rows.filter((r) => r.source === 'ollama').length;
    throw new VramfitError('VERIFY_FAILED', `${failed} of ${total} Ollama models failed verification (see the verified column)`, 1);
  }
}

export function addListCommand(program: Command, io: Io): void {
  program
    .command('list')
    .description(
      "List the models already on this machine: the Hugging Face cache, Ollama's store and LM Studio's models folder (nothing is downloaded), named as run, plan and inspect take them.",
    )
    .option('--verify', "hash every blob of Ollama's models against its digest (reads every byte); exit 1 if any differs or is missing")
    .option('--json', 'print the list as JSON')
    .addHelpText(
      'after',
      `
Where it looks: HF_HUB_CACHE (or HF_HOME/hub, ~/.cache/huggingface/hub); OLLAMA_MODELS (or ~/.ollama/models);
LMSTUDIO_MODELS (vramfit's own override), else LM Studio's downloadsFolder setting, ~/.lmstudio/models or
~/.cache/lm-studio/models.`,
    )
    .action(async (opts: { verify?: boolean; json?: boolean }) => runList(opts, io));
}

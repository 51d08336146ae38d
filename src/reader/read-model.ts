import { existsSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { InputError } from '../util/errors.js';
import { buildSkeleton } from './build-skeleton.js';
import { catalogConfig, catalogNames, catalogSuggestions } from './catalog/index.js';
import type { ConfigReader } from './config.js';
import { hubCacheDir, looksLikeRepoId, resolveRepoId } from './hf-cache.js';
import { readWeightIndex, shardPath, type WeightIndex } from './index-file.js';
import { readConfigFile } from './read-config.js';
import type { StoredTensor } from './reconcile.js';
import { readPytorchBinHeader, type PytorchBinTensor } from './formats/pytorch-bin.js';
import { readSafetensorsHeader } from './formats/safetensors.js';
import { readSkeletonJson } from './skeleton-json.js';
import type { Skeleton, SkeletonSource, SkeletonStore, TensorLocation } from './skeleton.js';
import { readGgufModel } from './gguf-model.js';
import { findLmStudioModel, lmStudioLookedIn, resolveLmStudioModel, type LmStudioModel } from './stores/lmstudio.js';
import { ollamaManifestPath, ollamaModelsDir, ollamaNotFound, resolveOllamaModel, tryParseOllamaName, type OllamaModel } from './stores/ollama.js';

export interface ReadModelOptions {
  env?: NodeJS.ProcessEnv;
}

/**
 * Reads any supported MODEL argument into a skeleton, touching headers only:
 * a model folder, a `.safetensors` / `.gguf` / `config.json` / skeleton JSON file, a built-in catalog name
 * (`llama-2-7b`), a model in Ollama's store (`llama3.2`, `ollama:qwen2.5:7b`) or LM Studio's folder
 * (`publisher/repo`, `lmstudio:repo`), or a repo id in the local HF cache.
 */
export async function readModel(model: string, opts: ReadModelOptions = {}): Promise<Skeleton> {
  const env = opts.env ?? process.env;
  const path = resolve(model);
  if (!existsSync(path)) return readNamedModel(model, env);
  if (statSync(path).isDirectory()) return readModelFolder(path, model);
  const name = basename(path);
  if (name.endsWith('.safetensors')) return readSingleSafetensors(path, model);
  if (name.endsWith('.gguf')) return readGgufModel(path, model);
  if (name.endsWith('.bin') || name.endsWith('.pt') || name.endsWith('.pth')) return readSingleBin(path, model);
  if (name.endsWith('.index.json')) return readModelFolder(dirname(path), model);
  if (name === 'config.json')
    return fromConfig(readConfigFile(path), { kind: 'config', path: model, shapes: 'synthesized', files: [path], bytesRead: statSync(path).size }, []);
  if (name.endsWith('.json')) return readSkeletonJson(path);
  throw new InputError(model, 'not a model: expected a folder, .safetensors, .bin, .gguf, config.json or a skeleton .json', 'BAD_INPUT');
}

const OLLAMA_PREFIX = 'ollama:';
const LMSTUDIO_PREFIX = 'lmstudio:';

/**
 * A MODEL that is no path: `ollama:`/`lmstudio:` names go to that store alone; otherwise the catalog,
 * then Ollama's store, LM Studio's folder and the Hugging Face cache, in that order.
 */
async function readNamedModel(model: string, env: NodeJS.ProcessEnv): Promise<Skeleton> {
  if (model.startsWith(OLLAMA_PREFIX)) return readOllamaModel(resolveOllamaModel(model.slice(OLLAMA_PREFIX.length), env), model);
  if (model.startsWith(LMSTUDIO_PREFIX)) return readLmStudioModel(resolveLmStudioModel(model.slice(LMSTUDIO_PREFIX.length), env), model);
  const entry = catalogConfig(model);
  if (entry) {
    return fromConfig(
      entry.cfg,
      { kind: 'config', path: `catalog:${model.toLowerCase()}`, repoId: entry.source, shapes: 'synthesized', files: [], bytesRead: 0 },
      [],
    );
  }
  const ollamaName = tryParseOllamaName(model);
  const manifest = ollamaName && ollamaManifestPath(ollamaModelsDir(env), ollamaName);
  if (manifest && existsSync(manifest)) return readOllamaModel(resolveOllamaModel(model, env), model);
  // Only Ollama names carry a `:tag`, so no other store can hold this one.
  if (manifest && model.includes(':')) throw ollamaNotFound(model, manifest);
  const lm = findLmStudioModel(model, env);
  if (lm) return readLmStudioModel(lm, model);
  const elsewhere = (): string =>
    `${manifest ? `not in Ollama's store (looked for ${manifest})` : 'not an Ollama model name'}, and not in LM Studio's models folder (looked in ${lmStudioLookedIn(env)})`;
  if (looksLikeRepoId(model)) {
    let snapshot: string;
    try {
      snapshot = resolveRepoId(model, env);
    } catch (e) {
      if (e instanceof InputError && e.code === 'NOT_FOUND') throw new InputError(e.where, `${e.reason}; also ${elsewhere()}`, e.code);
      throw e;
    }
    const skeleton = await readModelFolder(snapshot, model);
    skeleton.source.repoId = model;
    return skeleton;
  }
  const near = catalogSuggestions(model);
  const hint = near.length > 0 ? `did you mean ${near.join(', ')}? ` : '';
  throw new InputError(
    model,
    `no such file or folder, and not a catalog model (${hint}vramfit catalog lists all ${catalogNames().length}); ${elsewhere()}; the Hugging Face cache (${hubCacheDir(env)}) is searched for org/name repo ids only`,
    'NOT_FOUND',
  );
}

/** The engine loads `files[0]`, the blob itself; the manifest's prompt layers ride along for whoever formats prompts. */
function readOllamaModel(m: OllamaModel, shown: string): Skeleton {
  const skeleton = readGgufModel(m.model, shown);
  const store: SkeletonStore = { kind: 'ollama', name: m.name, manifest: m.manifest };
  if (m.template !== undefined) store.template = m.template;
  if (m.system !== undefined) store.system = m.system;
  if (m.params !== undefined) store.params = m.params;
  skeleton.source.store = store;
  return skeleton;
}

function readLmStudioModel(m: LmStudioModel, shown: string): Skeleton {
  const skeleton = readGgufModel(m.model, shown);
  skeleton.source.store = { kind: 'lmstudio', name: m.name };
  return skeleton;
}

async function readModelFolder(dir: string, shown: string): Promise<Skeleton> {
  const configPath = join(dir, 'config.json');
  const cfg = existsSync(configPath) ? readConfigFile(configPath) : undefined;
  const configBytes = cfg ? statSync(configPath).size : 0;
  const stIndex = join(dir, 'model.safetensors.index.json');
  const binIndex = join(dir, 'pytorch_model.bin.index.json');
  const single = join(dir, 'model.safetensors');
  const singleBin = join(dir, 'pytorch_model.bin');

  if (existsSync(stIndex)) return fromIndex(dir, shown, readWeightIndex(stIndex), cfg, configBytes, 'safetensors');
  if (existsSync(single)) {
    const header = await readSafetensorsHeader(single);
    const source: SkeletonSource = {
      kind: 'safetensors',
      path: shown,
      shapes: 'headers',
      files: cfg ? [single, configPath] : [single],
      bytesRead: header.bytesRead + configBytes,
    };
    return buildSkeleton(cfg, source, storedFromHeader(header.tensors, 'model.safetensors'));
  }
  if (existsSync(binIndex)) return fromIndex(dir, shown, readWeightIndex(binIndex), cfg, configBytes, 'bin');
  if (existsSync(singleBin)) {
    const header = readPytorchBinHeader(singleBin);
    const source: SkeletonSource = {
      kind: 'bin',
      path: shown,
      shapes: 'headers',
      files: cfg ? [singleBin, configPath] : [singleBin],
      bytesRead: header.bytesRead + configBytes,
    };
    return buildSkeleton(cfg, source, storedFromHeader(header.tensors, 'pytorch_model.bin'), binWarnings(header.tensors, 'pytorch_model.bin'));
  }
  if (cfg) return fromConfig(cfg, { kind: 'config', path: shown, shapes: 'synthesized', files: [configPath], bytesRead: configBytes }, []);
  throw new InputError(shown, 'no config.json, model.safetensors, pytorch_model.bin or weight index in this folder', 'BAD_INPUT');
}

async function fromIndex(
  dir: string,
  shown: string,
  index: WeightIndex,
  cfg: ConfigReader | undefined,
  configBytes: number,
  format: 'safetensors' | 'bin',
): Promise<Skeleton> {
  const present = index.shards.filter((s) => existsSync(shardPath(dir, s)));
  const source: SkeletonSource = {
    kind: format === 'safetensors' ? 'safetensors-index' : 'bin-index',
    path: shown,
    shapes: 'synthesized',
    files: cfg ? [index.file, join(dir, 'config.json')] : [index.file],
    bytesRead: index.bytesRead + configBytes,
  };
  if (index.totalSize !== undefined) source.indexTotalSize = index.totalSize;
  if (present.length > 0 && present.length < index.shards.length) {
    const missing = index.shards.find((s) => !present.includes(s))!;
    throw new InputError(
      index.file,
      `shard ${missing} is listed in weight_map but missing from ${dir} (${index.shards.length - present.length} of ${index.shards.length} missing)`,
      'MISSING_SHARD',
    );
  }
  if (present.length === index.shards.length) {
    const stored: StoredTensor[] = [];
    const warnings: string[] = [];
    for (const shard of index.shards) {
      const file = shardPath(dir, shard);
      const header = format === 'safetensors' ? readSafetensorsHeader(file) : readPytorchBinHeader(file);
      if (format === 'bin') warnings.push(...binWarnings(header.tensors, shard));
      source.bytesRead += header.bytesRead;
      source.files.push(file);
      for (const t of header.tensors) {
        const expected = index.weightMap.get(t.name);
        if (expected !== shard) {
          throw new InputError(
            file,
            expected === undefined ? `holds ${t.name}, which the index does not list` : `holds ${t.name}, which the index puts in ${expected}`,
            'BAD_FORMAT',
          );
        }
      }
      stored.push(...storedFromHeader(header.tensors, shard));
    }
    const found = new Set(stored.map((s) => s.name));
    const lost = [...index.weightMap.keys()].find((n) => !found.has(n));
    if (lost) throw new InputError(index.file, `${lost} is listed in weight_map but not in ${index.weightMap.get(lost)}`, 'BAD_FORMAT');
    source.shapes = 'headers';
    return buildSkeleton(cfg, source, stored, warnings);
  }
  return buildSkeleton(
    cfg,
    source,
    [...index.weightMap.keys()].map((name) => ({ name })),
  );
}

async function readSingleSafetensors(path: string, shown: string): Promise<Skeleton> {
  const header = await readSafetensorsHeader(path);
  const configPath = join(dirname(path), 'config.json');
  const cfg = existsSync(configPath) ? readConfigFile(configPath) : undefined;
  const source: SkeletonSource = {
    kind: 'safetensors',
    path: shown,
    shapes: 'headers',
    files: cfg ? [path, configPath] : [path],
    bytesRead: header.bytesRead + (cfg ? statSync(configPath).size : 0),
  };
  return buildSkeleton(cfg, source, storedFromHeader(header.tensors, basename(path)));
}

async function readSingleBin(path: string, shown: string): Promise<Skeleton> {
  const header = readPytorchBinHeader(path);
  const configPath = join(dirname(path), 'config.json');
  const cfg = existsSync(configPath) ? readConfigFile(configPath) : undefined;
  const source: SkeletonSource = {
    kind: 'bin',
    path: shown,
    shapes: 'headers',
    files: cfg ? [path, configPath] : [path],
    bytesRead: header.bytesRead + (cfg ? statSync(configPath).size : 0),
  };
  return buildSkeleton(cfg, source, storedFromHeader(header.tensors, basename(path)), binWarnings(header.tensors, basename(path)));
}

/** A tensor with no byte range keeps the reason, so whoever needs its data can say why it cannot. */
function storedFromHeader(
  tensors: readonly { name: string; dtype: string; shape: number[]; range?: [number, number]; noRange?: string }[],
  file: string,
): StoredTensor[] {
  return tensors.map((t) => {
    const location: TensorLocation = t.range ? { file, range: t.range } : { file };
    if (!t.range && t.noRange) location.noRange = t.noRange;
    return { name: t.name, shape: t.shape, dtype: t.dtype, location };
  });
}

/** One warning per .bin file whose tensors include views the engine cannot load as byte ranges. */
function binWarnings(tensors: readonly Pick<PytorchBinTensor, 'name' | 'range' | 'noRange'>[], file: string): string[] {
  const views = tensors.filter((t) => !t.range);
  if (views.length === 0) return [];
  const first = views[0]!;
  const more = views.length > 1 ? ` and ${views.length - 1} more` : '';
  return [
    `${file}: ${first.name}${more} ${views.length > 1 ? 'are' : 'is'} ${first.noRange ?? 'without a byte range'}; sizes are exact but the engine cannot load ${views.length > 1 ? 'them' : 'it'}`,
  ];
}

function fromConfig(cfg: ConfigReader, source: SkeletonSource, warnings: string[]): Skeleton {
  return buildSkeleton(cfg, source, undefined, warnings);
}

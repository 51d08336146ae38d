import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readdirSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { FormatError, InputError, isVramfitError } from '../../util/errors.js';
import { readBytes } from '../../util/read-fully.js';
import { assertRegularFile } from '../../util/regular-file.js';

/**
 * Ollama's local store, read as files: `manifests/<host>/<namespace>/<model>/<tag>` holds a Docker v2
 * style manifest whose layers name content-addressed blobs in `blobs/sha256-<hex>`. The model layer is
 * a plain GGUF file without the extension. Nothing here talks to Ollama or a registry.
 */

export const OLLAMA_DEFAULT_HOST = 'registry.ollama.ai';
export const OLLAMA_DEFAULT_NAMESPACE = 'library';
export const OLLAMA_DEFAULT_TAG = 'latest';

const MEDIA_PREFIX = 'application/vnd.ollama.image.';
export const OLLAMA_MEDIA = {
  model: `${MEDIA_PREFIX}model`,
  template: `${MEDIA_PREFIX}template`,
  system: `${MEDIA_PREFIX}system`,
  params: `${MEDIA_PREFIX}params`,
  license: `${MEDIA_PREFIX}license`,
  adapter: `${MEDIA_PREFIX}adapter`,
  projector: `${MEDIA_PREFIX}projector`,
  messages: `${MEDIA_PREFIX}messages`,
} as const;

/** Template, system prompt and params are a few KiB; a bigger one is not what the manifest claims it is. */
export const SMALL_LAYER_LIMIT = 1024 * 1024;
/** A manifest lists a handful of layers; anything near this size is not one. */
const MANIFEST_LIMIT = 1024 * 1024;
/** Fixed read size for hashing, so memory stays flat whatever the blob's size. */
const HASH_CHUNK = 4 * 1024 * 1024;

const DIGEST = /^sha256:([0-9a-f]{64})$/;
const PART = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;
// A registry host may carry a port (localhost:5000), the only place a colon is allowed before the tag.
const HOST = /^[A-Za-z0-9_][A-Za-z0-9._-]*(:\d{1,5})?$/;

export interface OllamaName {
  host: string;
  namespace: string;
  model: string;
  tag: string;
}

export interface OllamaLayer {
  mediaType: string;
  digest: string;
  size: number;
}

export interface OllamaManifest {
  path: string;
  config?: OllamaLayer;
  layers: OllamaLayer[];
}

export interface OllamaModel {
  /** Canonical name as Ollama shows it: `llama3.2:latest`, `user/model:q4`, `hf.co/org/repo:tag`. */
  name: string;
  /** Path of the manifest file. */
  manifest: string;
  /** Blob path of the GGUF weights. */
  model: string;
  modelDigest: string;
  /** Size of the model layer, in bytes. */
  size: number;
  template?: string;
  system?: string;
  params?: Record<string, unknown>;
  adapters: number;
  projector: boolean;
}

export interface OllamaListEntry {
  name: string;
  manifest: string;
  model?: string;
  size?: number;
  /** Why this manifest could not be resolved; the entry is listed anyway. */
  error?: string;
}

/** OLLAMA_MODELS, as Ollama reads it, else `~/.ollama/models` (HOME first, so tests can redirect it). */
export function ollamaModelsDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env['OLLAMA_MODELS']) return env['OLLAMA_MODELS'];
  return join(env['HOME'] || homedir(), '.ollama', 'models');
}

function badName(spec: string, why: string): InputError {
  return new InputError(spec, `not an Ollama model name: ${why}`, 'BAD_INPUT');
}

/** Checks one name part; every part becomes a path component, so `..` and separators never get through. */
function checkPart(spec: string, what: string, part: string, pattern: RegExp): string {
  if (part === '') throw badName(spec, `empty ${what}`);
  if (part.includes('..') || !pattern.test(part) || part.length > 256)
    throw badName(spec, `${what} ${JSON.stringify(part)} may hold only letters, digits, '.', '_' and '-' (no '..')`);
  return part;
}

/**
 * Splits `[host/][namespace/]model[:tag]` as Ollama does: three slash-separated parts name a host,
 * two a namespace; the tag follows the last colon of the last part.
 */
export function parseOllamaName(spec: string): OllamaName {
  const parts = spec.split('/');
  if (parts.length > 3) throw badName(spec, `expected [host/][namespace/]model[:tag], got ${parts.length} slash-separated parts`);
  const last = parts.pop()!;
  const colon = last.indexOf(':');
  const model = colon < 0 ? last : last.slice(0, colon);
  const tag = colon < 0 ? OLLAMA_DEFAULT_TAG : last.slice(colon + 1);
  const namespace = parts.length > 0 ? parts[parts.length - 1]! : OLLAMA_DEFAULT_NAMESPACE;
  const host = parts.length === 2 ? parts[0]! : OLLAMA_DEFAULT_HOST;
  return {
    host: checkPart(spec, 'host', host, HOST),
    namespace: checkPart(spec, 'namespace', namespace, PART),
    model: checkPart(spec, 'model', model, PART),
    tag: checkPart(spec, 'tag', tag, PART),
  };
}

/** parseOllamaName, or undefined for a spec that cannot be an Ollama name. */
export function tryParseOllamaName(spec: string): OllamaName | undefined {
  try {
    return parseOllamaName(spec);
  } catch {
    return undefined;
  }
}

/** The short form Ollama prints: default host and `library/` left out, the tag always kept. */
export function ollamaDisplayName(n: OllamaName): string {
  if (n.host !== OLLAMA_DEFAULT_HOST) return `${n.host}/${n.namespace}/${n.model}:${n.tag}`;
  if (n.namespace !== OLLAMA_DEFAULT_NAMESPACE) return `${n.namespace}/${n.model}:${n.tag}`;
  return `${n.model}:${n.tag}`;
}

export function ollamaManifestPath(dir: string, n: OllamaName): string {
  return join(dir, 'manifests', n.host, n.namespace, n.model, n.tag);
}

/** `sha256:<hex>` → `<dir>/blobs/sha256-<hex>`; the digest must have been checked with DIGEST. */
export function ollamaBlobPath(dir: string, digest: string): string {
  return join(dir, 'blobs', digest.replace(':', '-'));
}

/** A layer's media type without Ollama's common prefix: `model`, `template`, … */
export function layerKind(mediaType: string): string {
  return mediaType.startsWith(MEDIA_PREFIX) ? mediaType.slice(MEDIA_PREFIX.length) : mediaType;
}

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/** Reads a whole small file, refusing it (naming `what`) past `limit` bytes instead of loading it. */
function readSmallFile(path: string, limit: number, what: string): Buffer {
  assertRegularFile(path);
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    if (size > limit) throw new FormatError(path, `${what} is ${size} bytes; refusing to read more than ${limit}`);
    return Buffer.from(readBytes(fd, size, 0));
  } finally {
    closeSync(fd);
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseLayer(path: string, v: unknown, label: string): OllamaLayer {
  if (!isObject(v)) throw new FormatError(path, `${label} is not an object`);
  const { mediaType, digest, size } = v;
  if (typeof mediaType !== 'string') throw new FormatError(path, `${label} has no mediaType string`);
  const what = `${label} (${layerKind(mediaType)})`;
  if (typeof digest !== 'string' || !DIGEST.test(digest))
    throw new FormatError(path, `${what} has digest ${JSON.stringify(digest)?.slice(0, 90)}, expected sha256:<64 lowercase hex digits>`);
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0)
    throw new FormatError(path, `${what} has size ${JSON.stringify(size)?.slice(0, 40)}, expected a byte count`);
  return { mediaType, digest, size };
}

/** Reads and checks a manifest's shape; blobs are not touched. */
export function readOllamaManifest(path: string): OllamaManifest {
  const text = readSmallFile(path, MANIFEST_LIMIT, 'the manifest').toString('utf8');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new FormatError(path, `is not a JSON manifest (${(e as Error).message.split('\n')[0]})`);
  }
  if (!isObject(json)) throw new FormatError(path, 'is not a manifest: expected a JSON object with a layers array');
  if (!Array.isArray(json['layers'])) throw new FormatError(path, 'is not a manifest: no layers array');
  const layers = json['layers'].map((l, i) => parseLayer(path, l, `layer ${i}`));
  const manifest: OllamaManifest = { path, layers };
  if (json['config'] !== undefined) manifest.config = parseLayer(path, json['config'], 'config');
  return manifest;
}

/** The blob of one layer, checked to exist with the size the manifest gives. */
function layerBlob(dir: string, manifest: string, layer: OllamaLayer, label: string): string {
  const blob = ollamaBlobPath(dir, layer.digest);
  let size: number;
  try {
    const s = statSync(blob);
    if (!s.isFile()) throw new InputError(blob, `is not a file (the ${label} layer of ${manifest})`, 'NOT_A_FILE');
    size = s.size;
  } catch (e) {
    if (isVramfitError(e)) throw e;
    throw new InputError(blob, `missing: the ${label} layer of ${manifest} (${layer.digest}) is not in the blob store`, 'NOT_FOUND');
  }
  if (size !== layer.size) throw new FormatError(blob, `is ${size} bytes but ${manifest} gives its ${label} layer ${layer.size}`);
  return blob;
}

function readSmallLayer(dir: string, manifest: string, layer: OllamaLayer, label: string): string {
  const blob = ollamaBlobPath(dir, layer.digest);
  if (layer.size > SMALL_LAYER_LIMIT)
    throw new FormatError(blob, `the ${label} layer of ${manifest} is ${layer.size} bytes; refusing to read more than ${SMALL_LAYER_LIMIT}`);
  return readSmallFile(layerBlob(dir, manifest, layer, label), SMALL_LAYER_LIMIT, `the ${label} layer`).toString('utf8');
}

/** Resolves a manifest to its GGUF blob and the small layers that shape how the model is prompted. */
export function ollamaModelFromManifest(dir: string, name: string, manifestPath: string): OllamaModel {
  const manifest = readOllamaManifest(manifestPath);
  const models = manifest.layers.filter((l) => l.mediaType === OLLAMA_MEDIA.model);
  if (models.length === 0) throw new FormatError(manifestPath, `has no model layer (${OLLAMA_MEDIA.model})`);
  if (models.length > 1) throw new FormatError(manifestPath, `has ${models.length} model layers (${OLLAMA_MEDIA.model}); expected one`);
  const layer = models[0]!;
  const out: OllamaModel = {
    name,
    manifest: manifestPath,
    model: layerBlob(dir, manifestPath, layer, 'model'),
    modelDigest: layer.digest,
    size: layer.size,
    adapters: manifest.layers.filter((l) => l.mediaType === OLLAMA_MEDIA.adapter).length,
    projector: manifest.layers.some((l) => l.mediaType === OLLAMA_MEDIA.projector),
  };
  // Ollama lets a later layer of a kind override an earlier one (a derived model's own template).
  const lastOf = (mediaType: string): OllamaLayer | undefined => manifest.layers.filter((l) => l.mediaType === mediaType).pop();
  const template = lastOf(OLLAMA_MEDIA.template);
  if (template) out.template = readSmallLayer(dir, manifestPath, template, 'template');
  const system = lastOf(OLLAMA_MEDIA.system);
  if (system) out.system = readSmallLayer(dir, manifestPath, system, 'system');
  const params = lastOf(OLLAMA_MEDIA.params);
  if (params) out.params = parseParams(ollamaBlobPath(dir, params.digest), readSmallLayer(dir, manifestPath, params, 'params'));
  return out;
}

function parseParams(blob: string, text: string): Record<string, unknown> {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new FormatError(blob, `the params layer is not JSON (${(e as Error).message.split('\n')[0]})`);
  }
  if (!isObject(json)) throw new FormatError(blob, 'the params layer is not a JSON object');
  return json;
}

/** The not-found error, saying where the manifest was looked for. */
export function ollamaNotFound(spec: string, manifest: string): InputError {
  return new InputError(spec, `not found in Ollama's store (looked for ${manifest}; set OLLAMA_MODELS if your store is elsewhere)`, 'NOT_FOUND');
}

/** Resolves `[host/][namespace/]model[:tag]` in the local store; never pulls. */
export function resolveOllamaModel(spec: string, env: NodeJS.ProcessEnv = process.env): OllamaModel {
  const name = parseOllamaName(spec);
  const dir = ollamaModelsDir(env);
  const manifest = ollamaManifestPath(dir, name);
  if (!isFile(manifest)) throw ollamaNotFound(spec, manifest);
  return ollamaModelFromManifest(dir, ollamaDisplayName(name), manifest);
}

/** Visible entries of a folder, split by kind; a folder that cannot be read has none. */
function entries(dir: string): { dirs: string[]; files: string[] } {
  const out = { dirs: [] as string[], files: [] as string[] };
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const name of names.sort()) {
    if (name.startsWith('.')) continue;
    try {
      const s = statSync(join(dir, name));
      if (s.isDirectory()) out.dirs.push(name);
      else if (s.isFile()) out.files.push(name);
    } catch {
      // A dangling link lists nothing.
    }
  }
  return out;
}

/** Every manifest in the store, each resolved or carrying the reason it could not be; never throws. */
export function listOllamaModels(env: NodeJS.ProcessEnv = process.env): OllamaListEntry[] {
  const dir = ollamaModelsDir(env);
  const root = join(dir, 'manifests');
  const out: OllamaListEntry[] = [];
  for (const host of entries(root).dirs)
    for (const namespace of entries(join(root, host)).dirs)
      for (const model of entries(join(root, host, namespace)).dirs)
        for (const tag of entries(join(root, host, namespace, model)).files) {
          const manifest = join(root, host, namespace, model, tag);
          const name = ollamaDisplayName({ host, namespace, model, tag });
          try {
            const m = ollamaModelFromManifest(dir, name, manifest);
            out.push({ name, manifest, model: m.model, size: m.size });
          } catch (e) {
            out.push({ name, manifest, error: e instanceof Error ? e.message : String(e) });
          }
        }
  return out;
}

/**
 * Hashes a blob in fixed-size chunks (a 40 GB model never sits in memory) and compares it with its
 * `sha256:<hex>` digest. `actual` is in the same `sha256:<hex>` form.
 */
export async function verifyBlob(path: string, digest: string, onProgress?: (bytesDone: number) => void): Promise<{ ok: boolean; actual: string }> {
  assertRegularFile(path);
  const hash = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(HASH_CHUNK);
    let position = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, position);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      position += bytesRead;
      onProgress?.(position);
    }
  } finally {
    await fh.close();
  }
  const actual = `sha256:${hash.digest('hex')}`;
  return { ok: actual === digest, actual };
}

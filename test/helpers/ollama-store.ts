/** A fake Ollama store in a folder, laid out as Ollama writes one: content-addressed blobs and manifests naming them. */
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const MEDIA = 'application/vnd.ollama.image.';

export interface OllamaLayerSpec {
  mediaType: string;
  digest: string;
  size: number;
}

/** Stores bytes under their own sha256, as Ollama does, and returns the manifest layer naming them. */
export function addOllamaBlob(store: string, kind: string, bytes: Uint8Array | string): OllamaLayerSpec {
  const data = typeof bytes === 'string' ? Buffer.from(bytes) : bytes;
  const hex = createHash('sha256').update(data).digest('hex');
  mkdirSync(join(store, 'blobs'), { recursive: true });
  writeFileSync(join(store, 'blobs', `sha256-${hex}`), data);
  return { mediaType: `${MEDIA}${kind}`, digest: `sha256:${hex}`, size: data.length };
}

export interface OllamaModelSpec {
  /** The GGUF bytes of the model layer. */
  gguf: Uint8Array;
  template?: string;
  system?: string;
  /** The params layer: an object is written as JSON, a string as is. */
  params?: Record<string, unknown> | string;
}

/**
 * Writes `registry.ollama.ai/library/<model>/<tag>` with a model layer and the given template, system and params
 * layers. Returns the manifest's path.
 */
export function writeOllamaModel(store: string, name: string, spec: OllamaModelSpec): string {
  const [model, tag = 'latest'] = name.split(':') as [string, string | undefined];
  const layers = [addOllamaBlob(store, 'model', spec.gguf)];
  if (spec.template !== undefined) layers.push(addOllamaBlob(store, 'template', spec.template));
  if (spec.system !== undefined) layers.push(addOllamaBlob(store, 'system', spec.system));
  if (spec.params !== undefined) layers.push(addOllamaBlob(store, 'params', typeof spec.params === 'string' ? spec.params : JSON.stringify(spec.params)));
  const config = addOllamaBlob(store, 'config', '{"model_format":"gguf","model_family":"llama"}');
  const dir = join(store, 'manifests', 'registry.ollama.ai', 'library', model);
  mkdirSync(dir, { recursive: true });
  const path = join(dir, tag);
  writeFileSync(
    path,
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.docker.distribution.manifest.v2+json',
      config: { ...config, mediaType: 'application/vnd.docker.container.image.v1+json' },
      layers,
    }),
  );
  return path;
}

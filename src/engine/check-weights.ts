/**
 * What the engine checks in TypeScript before ggml sees a weight: ggml asserts (and aborts the whole
 * process) on a type it cannot multiply, and reads whatever a byte range says. Every tensor the
 * architecture loads must be floating (or a GGUF block format as a matrix), its byte range must be
 * exactly its size and inside its file, and a skeleton JSON may only point at files in its own folder.
 */
import { realpathSync, statSync } from 'node:fs';
import { dirname, isAbsolute, join, relative, sep } from 'node:path';
import { lookupDType, tensorBytes } from '../reader/dtypes.js';
import { ggmlTypeId } from '../reader/formats/gguf.js';
import type { Skeleton, SkeletonTensor } from '../reader/skeleton.js';
import { FormatError, InputError } from '../util/errors.js';
import type { ArchTensor } from './architectures/types.js';
import { isLoadableFloat } from './weights.js';

/** The folder a skeleton JSON's files must lie in, or undefined for a checkpoint read from its headers. */
export function trustedRoot(s: Skeleton): string | undefined {
  return s.source.skeletonFile ? realpathSync(dirname(s.source.skeletonFile)) : undefined;
}

/**
 * The file a weight or config path names: relative ones under `modelDir`; under a skeleton JSON,
 * only files inside its folder (after resolving links).
 */
export function dataFile(file: string, modelDir: string, root: string | undefined): string {
  const path = isAbsolute(file) ? file : join(modelDir, file);
  if (root === undefined) return path;
  let real: string;
  try {
    real = realpathSync(path);
  } catch {
    throw new InputError(path, 'does not exist (named by the skeleton JSON)', 'NOT_FOUND');
  }
  const rel = relative(root, real);
  if (rel === '' || rel.startsWith('..') || isAbsolute(rel) || rel.split(sep).includes('..')) {
    throw new InputError(path, `is outside the skeleton JSON's folder (${root}): run reads only the files that folder holds`);
  }
  return real;
}

/** Refuses a tensor ggml could not load as the role it plays: integers, booleans, float8, a 1-D block format. */
export function checkWeightDtype(t: SkeletonTensor, file: string): void {
  const info = lookupDType(t.dtype);
  if (isLoadableFloat(t.dtype)) return;
  if (info?.kind === 'quantized' && t.shape.length >= 2 && ggmlTypeId(t.dtype) !== undefined) return;
  const what = info?.kind === 'int' || info?.kind === 'bool' ? `${t.dtype} (not floating)` : t.dtype;
  throw new InputError(
    file,
    `${t.name} is stored as ${what}: the engine loads float32, float16, bfloat16 or float64 weights, or GGUF block formats for matrices`,
    'UNSUPPORTED_DTYPE',
  );
}

/** Refuses a byte range that is not exactly the tensor's size or that runs past its file. */
export function checkWeightRange(t: SkeletonTensor, file: string, fileSizes: Map<string, number>): void {
  const range = t.location?.range;
  if (!range) return;
  const [start, end] = range;
  const need = tensorBytes(t.shape, t.dtype);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end - start !== need) {
    throw new FormatError(file, `${t.name} spans bytes ${start}–${end} (${end - start}), but ${t.dtype} ${JSON.stringify(t.shape)} takes ${need}`);
  }
  let size = fileSizes.get(file);
  if (size === undefined) {
    const st = statSync(file);
    if (!st.isFile()) throw new InputError(file, `is not a regular file (it holds ${t.name})`);
    size = st.size;
    fileSizes.set(file, size);
  }
  if (end > size) throw new FormatError(file, `${t.name} ends at byte ${end}, past the file's ${size} bytes`);
}

/** Every checkpoint tensor the architecture loads, by the name the checkpoint stores it under. */
export function loadedSourceNames(
  t: { embed: ArchTensor[]; norm: ArchTensor[]; head: ArchTensor[]; layer(i: number): ArchTensor[] },
  layers: number,
  alias: (name: string) => string,
): string[] {
  const all = [...t.embed, ...t.norm, ...t.head];
  for (let i = 0; i < layers; i++) all.push(...t.layer(i));
  return [...new Set(all.flatMap((x) => (x.stack ?? [x.name]).map(alias)))];
}

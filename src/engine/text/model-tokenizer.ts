/**
 * Which tokenizer a model runs with: the tokenizer files beside its weights when there are any (a Hugging Face
 * folder, or a GGUF someone put tokenizer.json next to), otherwise the one a GGUF carries in its metadata.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { SkeletonSource } from '../../reader/skeleton.js';
import { readGgufHeader } from '../../reader/formats/gguf.js';
import { isChatglmTokenizerDir } from './chatglm-tokenizer.js';
import { hasGgufTokenizer, loadGgufTokenizer } from './gguf-tokenizer.js';
import { loadTokenizer, type TextTokenizer } from './tokenizer.js';

export interface TokenizerSource {
  /** The folder tokenizer files would be in. */
  modelDir: string;
  /** The GGUF file the weights come from, when they do. */
  ggufFile?: string;
}

/** Where a model's tokenizer is looked for: beside its config.json (else its first file), and in its GGUF. */
export function tokenizerSourceOf(source: SkeletonSource): TokenizerSource | undefined {
  const files = source.files;
  if (source.kind === 'gguf' && source.skeletonFile === undefined && files[0] !== undefined) return { modelDir: dirname(files[0]), ggufFile: files[0] };
  const f = files.find((x) => x.endsWith('config.json')) ?? files[0];
  return f === undefined ? undefined : { modelDir: dirname(f) };
}

/** Whether `dir` holds tokenizer files vramfit reads (tokenizer.json, or ChatGLM's tokenizer.model). */
export function hasTokenizerFiles(dir: string): boolean {
  return existsSync(join(dir, 'tokenizer.json')) || isChatglmTokenizerDir(dir);
}

/** Whether a tokenizer can be had for this model without the user passing ids. */
export function hasModelTokenizer(src: TokenizerSource): boolean {
  if (hasTokenizerFiles(src.modelDir)) return true;
  return src.ggufFile !== undefined && hasGgufTokenizer(readGgufHeader(src.ggufFile).metadata);
}

/** The model's tokenizer: files beside the weights win over a GGUF's metadata. */
export function loadModelTokenizer(src: TokenizerSource): TextTokenizer {
  if (src.ggufFile !== undefined && !hasTokenizerFiles(src.modelDir)) return loadGgufTokenizer(src.ggufFile);
  return loadTokenizer(src.modelDir);
}

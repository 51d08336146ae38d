/**
 * A Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json) as GGUF metadata, the way llama.cpp's
 * convert_hf_to_gguf.py writes it (`vramfit quantize`; tests give GGUFs real vocabularies with it):
 *
 *  - byte-fallback BPE (Llama 2, Mistral): `tokenizer.ggml.model = "llama"`, pieces with types (byte, unknown,
 *    control for special added tokens, user-defined for the other added ones) and scores. Real Llama 2 GGUFs carry
 *    tokenizer.model's scores; a tokenizer.json has no scores but its merges are ranked in that score order, so
 *    a piece's score here is minus the rank of the first merge that makes it (the ordering is all BPE uses).
 *  - byte-level BPE (Llama 3, Qwen, GPT-2): `tokenizer.ggml.model = "gpt2"`, tokens, merges, types, and the
 *    pre-tokenizer name llama.cpp gives the tokenizer.json's split regex (its converter finds it by hashing).
 *
 * Plus BOS/EOS/padding ids, add_bos/add_eos and the chat template from tokenizer_config.json.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { gv, type GgufWriteValue } from '../../reader/formats/gguf-writer.js';
import { readJsonObjectFile } from '../../util/json-file.js';
import { InputError } from '../../util/errors.js';
import { GGUF_TOKEN_TYPE, KNOWN_PRE_TOKENIZERS, preTokenizerNameOf } from './gguf-tokenizer.js';

type Json = Record<string, unknown>;

interface AddedToken {
  id: number;
  content: string;
  special: boolean;
}

function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as Json).content === 'string') return (v as Json).content as string;
  return undefined;
}

export interface VocabOptions {
  /** tokenizer.ggml.pre for byte-level vocabularies; default: named from tokenizer.json's pre-tokenizer. */
  pre?: string;
  /** The model's vocabulary size: the token list is padded to it (`[PADn]`, unused), as llama.cpp's converter does. */
  vocabSize?: number;
}

/** The tokenizer files of `dir` as GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`). */
export function ggufVocabMetadata(dir: string, options: VocabOptions = {}): Record<string, GgufWriteValue> {
  const file = join(dir, 'tokenizer.json');
  const tj = readJsonObjectFile(file) as Json;
  if (typeof tj.model !== 'object' || tj.model === null) throw new InputError(file, 'has no "model" object');
  const cfgPath = join(dir, 'tokenizer_config.json');
  const cfg = existsSync(cfgPath) ? (readJsonObjectFile(cfgPath) as Json) : {};
  const model = tj.model as Json;
  const vocab = model.vocab as Record<string, number>;
  const added = (tj.added_tokens as AddedToken[]) ?? [];
  const rawMerges = (model.merges as (string | [string, string])[]) ?? [];
  const merges = rawMerges.map((m) => (typeof m === 'string' ? m : m.join(' ')));
  const used = [...Object.values(vocab), ...added.map((a) => a.id)].reduce((a, b) => Math.max(a, b), -1) + 1;
  if (options.vocabSize !== undefined && used > options.vocabSize)
    throw new InputError(file, `has token ids up to ${used - 1}, past the model's vocabulary of ${options.vocabSize}`);
  const size = Math.max(used, options.vocabSize ?? 0);
  const tokens: string[] = new Array<string>(size);
  const types: number[] = new Array<number>(size).fill(GGUF_TOKEN_TYPE.normal);
  for (const [t, id] of Object.entries(vocab)) tokens[id] = t;
  for (const a of added) {
    tokens[a.id] = a.content;
    types[a.id] = a.special ? GGUF_TOKEN_TYPE.control : GGUF_TOKEN_TYPE.userDefined;
  }
  for (let i = 0; i < size; i++) {
    if (tokens[i] === undefined) {
      tokens[i] = `[PAD${i}]`;
      types[i] = GGUF_TOKEN_TYPE.unused;
    }
  }
  const idOf = (key: string): number | undefined => {
    const t = tokenContent(cfg[key]);
    return t === undefined ? undefined : tokens.indexOf(t) >= 0 ? tokens.indexOf(t) : undefined;
  };
  const meta: Record<string, GgufWriteValue> = {};
  const spm = model.byte_fallback === true;
  if (spm) {
    const rank = new Map<string, number>();
    merges.forEach((m, i) => {
      const piece = m.replace(' ', '');
      if (!rank.has(piece)) rank.set(piece, i);
    });
    const scores = tokens.map((t) => -(rank.get(t) ?? 0));
    tokens.forEach((t, id) => {
      if (/^<0x[0-9A-F]{2}>$/.test(t)) types[id] = GGUF_TOKEN_TYPE.byte;
    });
    const unk = tokenContent(model.unk_token) ?? '<unk>';
    if (tokens.includes(unk)) types[tokens.indexOf(unk)] = GGUF_TOKEN_TYPE.unknown;
    meta['tokenizer.ggml.model'] = 'llama';
    meta['tokenizer.ggml.tokens'] = gv.array('string', tokens);
    meta['tokenizer.ggml.scores'] = gv.array(
      'f32',
      scores.map((s) => gv.f32(s)),
    );
    meta['tokenizer.ggml.token_type'] = gv.array(
      'i32',
      types.map((t) => gv.i32(t)),
    );
    meta['tokenizer.ggml.unknown_token_id'] = gv.u32(tokens.indexOf(unk));
  } else {
    if (model.type !== 'BPE')
      throw new InputError(
        file,
        `is a ${String(model.type)} tokenizer; GGUF export writes BPE vocabularies (SentencePiece-style with byte fallback, or byte-level)`,
      );
    const pre = options.pre ?? preTokenizerNameOf(tj.pre_tokenizer, tj.normalizer);
    if (pre === undefined)
      throw new InputError(
        file,
        `its pre-tokenizer is none llama.cpp names (${KNOWN_PRE_TOKENIZERS.slice(0, 6).join(', ')}, …): the GGUF would tokenize differently`,
      );
    meta['tokenizer.ggml.model'] = 'gpt2';
    meta['tokenizer.ggml.pre'] = pre;
    meta['tokenizer.ggml.tokens'] = gv.array('string', tokens);
    meta['tokenizer.ggml.token_type'] = gv.array(
      'i32',
      types.map((t) => gv.i32(t)),
    );
    meta['tokenizer.ggml.merges'] = gv.array('string', merges);
  }
  const bos = idOf('bos_token');
  const eos = idOf('eos_token');
  const pad = idOf('pad_token');
  if (bos !== undefined) meta['tokenizer.ggml.bos_token_id'] = gv.u32(bos);
  if (eos !== undefined) meta['tokenizer.ggml.eos_token_id'] = gv.u32(eos);
  if (pad !== undefined) meta['tokenizer.ggml.padding_token_id'] = gv.u32(pad);
  if (typeof cfg.add_bos_token === 'boolean') meta['tokenizer.ggml.add_bos_token'] = cfg.add_bos_token;
  if (typeof cfg.add_eos_token === 'boolean') meta['tokenizer.ggml.add_eos_token'] = cfg.add_eos_token;
  if (typeof cfg.chat_template === 'string') meta['tokenizer.chat_template'] = cfg.chat_template;
  return meta;
}

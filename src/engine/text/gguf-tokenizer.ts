/**
 * The tokenizer a GGUF file carries in its metadata (`tokenizer.ggml.*`, written by llama.cpp's converter), so a
 * lone `model.gguf` runs without tokenizer files beside it. Two vocabulary kinds, as llama.cpp names them:
 *
 *  - `llama` (SentencePiece BPE: Llama 1/2, Mistral v0.1-v0.3, Mixtral, ChatGLM2/3): pieces, scores and token
 *    types become a SentencePiece model for ./sentencepiece.ts, whose encoder is sentencepiece's own algorithm
 *    (merge the adjacent pair whose merged piece scores highest), the one llama.cpp's SPM tokenizer follows too.
 *  - `gpt2` (byte-level BPE: Llama 3, Qwen2/2.5/3, GPT-2, Mistral Nemo's tekken, ...): tokens and merges become a
 *    tokenizer.json for @huggingface/tokenizers, with the pre-tokenizer `tokenizer.ggml.pre` names, written as the
 *    models' own tokenizer.json files write it.
 *
 * As llama.cpp does: control, user-defined and unknown tokens typed in the text are matched first (longest first)
 * and become their ids; BOS/EOS are added per `tokenizer.ggml.add_bos_token` / `add_eos_token`, with llama.cpp's
 * defaults where a key is absent; generation ends at EOS, EOT, EOM and the end-of-turn tokens llama.cpp recognises
 * by their text. The chat template is `tokenizer.chat_template`, rendered like a tokenizer_config.json one.
 */
import { dirname } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { FormatError, InputError } from '../../util/errors.js';
import { readGgufHeader, type GgufValue } from '../../reader/formats/gguf.js';
import { decodeBytesLikeSentencepiece, SentencePieceBpe, type PieceType, type SentencePieceModelProto } from './sentencepiece.js';
import {
  compileChatTemplate,
  StreamDecoder,
  type ChatMessage,
  type ChatTemplate,
  type ChatTemplateOptions,
  type DecodeOptions,
  type EncodeOptions,
  type TextTokenizer,
} from './tokenizer.js';

/** llama.cpp's `llama_token_type` values as GGUF stores them in `tokenizer.ggml.token_type`. */
export const GGUF_TOKEN_TYPE = { undefined: 0, normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;

export interface GgufVocab {
  file: string;
  model: 'llama' | 'gpt2';
  /** `tokenizer.ggml.pre`; undefined when absent (old files). */
  pre?: string;
  tokens: string[];
  scores?: number[];
  types?: number[];
  merges?: string[];
  bosId?: number;
  eosId?: number;
  eotId?: number;
  eomId?: number;
  unkId?: number;
  padId?: number;
  addBos?: boolean;
  addEos?: boolean;
  addSpacePrefix?: boolean;
  chatTemplate?: string;
}

type Meta = Record<string, GgufValue>;

/** Whether a GGUF's metadata holds a tokenizer vramfit can build. */
export function hasGgufTokenizer(metadata: Meta): boolean {
  return typeof metadata['tokenizer.ggml.model'] === 'string' && Array.isArray(metadata['tokenizer.ggml.tokens']);
}

/** Reads and type-checks the `tokenizer.*` keys; a key of the wrong type is a FormatError naming it. */
export function readGgufVocab(metadata: Meta, file: string): GgufVocab {
  const bad = (key: string, expected: string): never => {
    throw new FormatError(file, `GGUF key ${key} is not ${expected}`);
  };
  const model = metadata['tokenizer.ggml.model'];
  if (model === undefined)
    throw new InputError(file, 'has no tokenizer in its metadata (no tokenizer.ggml.model): pass --input-ids or add tokenizer files beside it', 'NOT_FOUND');
  if (typeof model !== 'string') bad('tokenizer.ggml.model', 'a string');
  if (model !== 'llama' && model !== 'gpt2') {
    throw new InputError(
      file,
      `tokenizer.ggml.model is ${JSON.stringify(model)}; vramfit reads "llama" (SentencePiece) and "gpt2" (byte-level BPE) vocabularies: add the model's tokenizer.json beside the file`,
      'UNSUPPORTED_TOKENIZER',
    );
  }
  const strings = (key: string, required: boolean): string[] | undefined => {
    const v = metadata[key];
    if (v === undefined) return required ? bad(key, 'present') : undefined;
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) return bad(key, 'an array of strings');
    return v as string[];
  };
  const numbers = (key: string, length: number): number[] | undefined => {
    const v = metadata[key];
    if (v === undefined) return undefined;
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'number')) return bad(key, 'an array of numbers');
    if (v.length < length) throw new FormatError(file, `GGUF key ${key} has ${v.length} entries for ${length} tokens`);
    return v as number[];
  };
  const tokens = strings('tokenizer.ggml.tokens', true)!;
  if (tokens.length === 0) throw new FormatError(file, 'GGUF key tokenizer.ggml.tokens is empty');
  const id = (key: string): number | undefined => {
    const v = metadata[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isInteger(v)) return bad(key, 'an integer');
    // llama.cpp ignores an out-of-range id (keeping its default); a file naming one is broken.
    if (v < 0 || v >= tokens.length) throw new FormatError(file, `GGUF key ${key} is ${v}, outside the ${tokens.length}-token vocabulary`);
    return v;
  };
  const flag = (key: string): boolean | undefined => {
    const v = metadata[key];
    if (v === undefined) return undefined;
    return typeof v === 'boolean' ? v : bad(key, 'a boolean');
  };
  const text = (key: string): string | undefined => {
    const v = metadata[key];
    if (v === undefined) return undefined;
    return typeof v === 'string' ? v : bad(key, 'a string');
  };
  const vocab: GgufVocab = { file, model, tokens };
  const set = <K extends keyof GgufVocab>(key: K, value: GgufVocab[K] | undefined): void => {
    if (value !== undefined) vocab[key] = value;
  };
  set('pre', text('tokenizer.ggml.pre'));
  set('scores', numbers('tokenizer.ggml.scores', tokens.length));
  set('types', numbers('tokenizer.ggml.token_type', tokens.length));
  set('merges', strings('tokenizer.ggml.merges', false));
  set('bosId', id('tokenizer.ggml.bos_token_id'));
  set('eosId', id('tokenizer.ggml.eos_token_id'));
  set('eotId', id('tokenizer.ggml.eot_token_id'));
  set('eomId', id('tokenizer.ggml.eom_token_id'));
  set('unkId', id('tokenizer.ggml.unknown_token_id'));
  set('padId', id('tokenizer.ggml.padding_token_id'));
  set('addBos', flag('tokenizer.ggml.add_bos_token'));
  set('addEos', flag('tokenizer.ggml.add_eos_token'));
  set('addSpacePrefix', flag('tokenizer.ggml.add_space_prefix'));
  set('chatTemplate', text('tokenizer.chat_template'));
  if (model === 'gpt2' && !vocab.merges) throw new FormatError(file, 'a "gpt2" vocabulary without tokenizer.ggml.merges');
  return vocab;
}

/** Loads the tokenizer of a GGUF file from its metadata (the header only). */
export function loadGgufTokenizer(file: string): TextTokenizer {
  return ggufTokenizer(readGgufVocab(readGgufHeader(file).metadata, file));
}

// ---------------------------------------------------------------------------------------------------------------
// Pre-tokenizers of byte-level BPE vocabularies, by `tokenizer.ggml.pre`

/** The regexes as the models' tokenizer.json files spell them (the library runs them as JS unicode regexes). */
const GPT2_WORDS = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const LLAMA3_WORDS = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_WORDS = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const TEKKEN_WORDS =
  '[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+';

interface PreTokenizer {
  /** Regexes applied one after another, each splitting the pieces of the last (matches isolated). */
  splits: string[];
  /** Unicode NFC first, as Qwen2's tokenizer.json does. */
  nfc?: boolean;
  /** A whole word found in the vocabulary is one token, merges or not (Llama 3, tekken). */
  ignoreMerges?: boolean;
  /** llama.cpp's default for add_bos_token when the file does not say. */
  addBos?: boolean;
}

const PRE_TOKENIZERS: Record<string, PreTokenizer> = {};
const define = (names: string[], p: PreTokenizer): void => {
  for (const n of names) PRE_TOKENIZERS[n] = p;
};
define(['llama3', 'llama-v3', 'llama-bpe', 'falcon3', 'pixtral', 'smaug-bpe', 'dbrx'], { splits: [LLAMA3_WORDS], ignoreMerges: true, addBos: true });
define(['qwen2', 'deepseek-r1-qwen', 'megrez', 'stablelm2'], { splits: [QWEN2_WORDS], nfc: true });
define(['gpt-2', 'phi-2', 'mpt', 'olmo', 'jais', 'exaone4'], { splits: [GPT2_WORDS] });
define(['starcoder', 'refact', 'smollm', 'codeshell', 'exaone', 'minerva-7b'], { splits: ['\\p{N}', GPT2_WORDS] });
define(['tekken'], { splits: [TEKKEN_WORDS], ignoreMerges: true, addBos: true });
define(['chatglm-bpe', 'glm4'], { splits: [LLAMA3_WORDS] });

export const KNOWN_PRE_TOKENIZERS = Object.keys(PRE_TOKENIZERS);

/** The name llama.cpp gives each pre-tokenizer when writing one (the first of each group above). */
const WRITTEN_NAMES = ['llama-bpe', 'qwen2', 'gpt-2', 'starcoder', 'tekken'];

/**
 * The `tokenizer.ggml.pre` name of a tokenizer.json's pre-tokenizer (and normalizer): its Split regexes followed by
 * a ByteLevel step, or a ByteLevel step with GPT-2's own regex; undefined when llama.cpp has no name for it.
 */
export function preTokenizerNameOf(preTokenizer: unknown, normalizer: unknown): string | undefined {
  const steps = (p: unknown): Record<string, unknown>[] => {
    if (!p || typeof p !== 'object') return [];
    const o = p as Record<string, unknown>;
    return o['type'] === 'Sequence' && Array.isArray(o['pretokenizers']) ? (o['pretokenizers'] as Record<string, unknown>[]) : [o];
  };
  const splits: string[] = [];
  for (const step of steps(preTokenizer)) {
    if (step['type'] === 'Split') {
      const regex = (step['pattern'] as Record<string, unknown> | undefined)?.['Regex'];
      if (typeof regex !== 'string' || step['behavior'] !== 'Isolated' || step['invert'] === true) return undefined;
      splits.push(regex);
    } else if (step['type'] === 'Digits' && step['individual_digits'] === true) splits.push('\\p{N}');
    else if (step['type'] === 'ByteLevel') {
      if (step['use_regex'] === true) splits.push(GPT2_WORDS);
    } else return undefined;
  }
  const nfc = (normalizer as Record<string, unknown> | null)?.['type'] === 'NFC';
  return WRITTEN_NAMES.find((name) => {
    const p = PRE_TOKENIZERS[name]!;
    return p.splits.length === splits.length && p.splits.every((r, i) => r === splits[i]) && (p.nfc ?? false) === nfc;
  });
}

// ---------------------------------------------------------------------------------------------------------------
// The tokenizer

/** Token texts llama.cpp takes as the end of a turn, besides the ids the metadata names. */
const END_OF_TURN_TEXTS = new Set(['<|eot_id|>', '<|im_end|>', '<|end|>', '<end_of_turn>', '<|endoftext|>', '<|eom_id|>', '<EOT>', '<|end_of_text|>']);

export function ggufTokenizer(vocab: GgufVocab): TextTokenizer {
  const { file, tokens } = vocab;
  const typeOf = (id: number): number => vocab.types?.[id] ?? GGUF_TOKEN_TYPE.normal;
  const isType = (id: number, ...t: number[]): boolean => t.includes(typeOf(id));
  // What llama.cpp's special-token partition matches in text, longest first (its cache_special_tokens).
  const specialIds = tokens
    .map((_, id) => id)
    .filter((id) => tokens[id] !== '' && isType(id, GGUF_TOKEN_TYPE.control, GGUF_TOKEN_TYPE.userDefined, GGUF_TOKEN_TYPE.unknown))
    .sort((a, b) => tokens[b]!.length - tokens[a]!.length || a - b);
  const core = vocab.model === 'llama' ? spmCore(vocab, typeOf) : bpeCore(vocab, specialIds, typeOf);

  const defaults = vocab.model === 'llama' ? { bos: 1, eos: 2, addBos: true } : { bos: undefined, eos: undefined, addBos: core.addBosDefault };
  const bosId = vocab.bosId ?? (defaults.bos !== undefined && defaults.bos < tokens.length ? defaults.bos : undefined);
  const eosId = vocab.eosId ?? (defaults.eos !== undefined && defaults.eos < tokens.length ? defaults.eos : undefined);
  const addBos = vocab.addBos ?? defaults.addBos;
  const addEos = vocab.addEos ?? false;
  if (addBos && bosId === undefined) throw new FormatError(file, 'tokenizer.ggml.add_bos_token is true, but tokenizer.ggml.bos_token_id is not set');
  if (addEos && eosId === undefined) throw new FormatError(file, 'tokenizer.ggml.add_eos_token is true, but tokenizer.ggml.eos_token_id is not set');

  const eog = new Set<number>();
  for (const id of [eosId, vocab.eotId, vocab.eomId]) if (id !== undefined) eog.add(id);
  tokens.forEach((t, id) => {
    if (END_OF_TURN_TEXTS.has(t)) eog.add(id);
  });

  const encode = (text: string, options: EncodeOptions = {}): number[] => {
    const ids: number[] = [];
    const special = options.addSpecialTokens ?? true;
    if (special && addBos) ids.push(bosId!);
    for (const part of partition(text, specialIds, tokens)) {
      if (typeof part === 'number') ids.push(part);
      else ids.push(...core.encodeText(part));
    }
    if (special && addEos) ids.push(eosId!);
    return ids;
  };
  const decode = (ids: readonly number[], options: DecodeOptions = {}): string => {
    // Ids past the vocabulary (an embedding padded beyond it) decode to nothing, as in the tokenizer.json path.
    const known = ids.filter((id) => Number.isInteger(id) && id >= 0 && id < tokens.length);
    return core.decode(options.skipSpecialTokens ? known.filter((id) => !isType(id, GGUF_TOKEN_TYPE.control, GGUF_TOKEN_TYPE.unknown)) : known);
  };

  const bosToken = bosId === undefined ? null : tokens[bosId]!;
  const eosToken = eosId === undefined ? null : tokens[eosId]!;
  const where = `${file}: tokenizer.chat_template`;
  let chat: ChatTemplate | undefined;
  const chatTemplate = (): ChatTemplate => {
    if (vocab.chatTemplate === undefined) {
      throw new InputError(file, 'has no chat template (tokenizer.chat_template is absent): pass a prompt without chat formatting', 'NOT_FOUND');
    }
    chat ??= compileChatTemplate(vocab.chatTemplate, where, {
      bos_token: bosToken,
      eos_token: eosToken,
      unk_token: vocab.unkId === undefined ? null : tokens[vocab.unkId]!,
      pad_token: vocab.padId === undefined ? null : tokens[vocab.padId]!,
    });
    return chat;
  };
  const tokenIds = new Map<string, number>();
  tokens.forEach((t, id) => {
    if (!tokenIds.has(t)) tokenIds.set(t, id);
  });

  return {
    modelDir: dirname(file),
    eosTokenIds: [...eog].sort((a, b) => a - b),
    bosTokenId: bosId ?? null,
    bosToken,
    eosToken,
    encode,
    decode,
    createStreamDecoder: (options: DecodeOptions = {}) => new StreamDecoder((ids) => decode(ids, options)),
    applyChatTemplate: (messages: readonly ChatMessage[], options: ChatTemplateOptions = {}) => chatTemplate().render(messages, options),
    // As transformers' apply_chat_template(tokenize=True): the template writes bos_token itself.
    encodeChat: (messages, options = {}) => encode(chatTemplate().render(messages, options), { addSpecialTokens: false }),
    tokenToId: (token) => tokenIds.get(token),
    idToToken: (id) => tokens[id],
  };
}

/**
 * llama.cpp's tokenizer_st_partition: each special token, longest first, splits every text fragment it occurs
 * in; the text left between them is tokenized as text.
 */
function partition(text: string, specialIds: readonly number[], tokens: readonly string[]): (string | number)[] {
  let parts: (string | number)[] = text === '' ? [] : [text];
  for (const id of specialIds) {
    const token = tokens[id]!;
    if (!parts.some((p) => typeof p === 'string' && p.includes(token))) continue;
    const next: (string | number)[] = [];
    for (const p of parts) {
      if (typeof p !== 'string') {
        next.push(p);
        continue;
      }
      const pieces = p.split(token);
      pieces.forEach((piece, i) => {
        if (i > 0) next.push(id);
        if (piece !== '') next.push(piece);
      });
    }
    parts = next;
  }
  return parts;
}

interface Core {
  encodeText(text: string): number[];
  /** Text of ids, specials included as their text (the caller has dropped those it skips). */
  decode(ids: readonly number[]): string;
  addBosDefault: boolean;
}

const SPACE_SYMBOL = '\u2581';

const PIECE_TYPES: Record<number, PieceType> = {
  [GGUF_TOKEN_TYPE.unknown]: 'unknown',
  [GGUF_TOKEN_TYPE.control]: 'control',
  [GGUF_TOKEN_TYPE.userDefined]: 'user_defined',
  [GGUF_TOKEN_TYPE.unused]: 'unused',
  [GGUF_TOKEN_TYPE.byte]: 'byte',
};

/** A `llama` vocabulary as the SentencePiece BPE model it was converted from. */
function spmCore(vocab: GgufVocab, typeOf: (id: number) => number): Core {
  const { file, tokens } = vocab;
  const pieces = tokens.map((piece, id) => ({ piece, score: vocab.scores?.[id] ?? 0, type: PIECE_TYPES[typeOf(id)] ?? 'normal' }));
  // llama.cpp's SPM default: id 0 is <unk> when no token is typed unknown.
  if (!pieces.some((p) => p.type === 'unknown')) pieces[vocab.unkId ?? 0]!.type = 'unknown';
  const proto: SentencePieceModelProto = {
    pieces,
    trainerSpec: {
      modelType: 'bpe',
      byteFallback: pieces.some((p) => p.type === 'byte'),
      treatWhitespaceAsSuffix: false,
      unkPiece: tokens[pieces.findIndex((p) => p.type === 'unknown')]!,
      bosPiece: tokens[vocab.bosId ?? 1] ?? '<s>',
      eosPiece: tokens[vocab.eosId ?? 2] ?? '</s>',
      padPiece: vocab.padId === undefined ? '<pad>' : tokens[vocab.padId]!,
      unkSurface: ' \u2047 ',
    },
    normalizerSpec: {
      name: 'identity',
      precompiledCharsmapBytes: 0,
      addDummyPrefix: vocab.addSpacePrefix ?? true,
      // llama.cpp's SPM path keeps every space, whatever tokenizer.ggml.remove_extra_whitespaces says.
      removeExtraWhitespaces: false,
      escapeWhitespaces: true,
    },
  };
  const sp = new SentencePieceBpe(proto, file);
  const addPrefix = proto.normalizerSpec.addDummyPrefix;
  return {
    addBosDefault: true,
    encodeText: (text) => sp.encode(text),
    decode(ids) {
      // As the tokenizer.json Llama decoder: ▁ → space, byte pieces joined into UTF-8, specials as their text,
      // then one leading space (the dummy prefix) dropped from the whole text.
      let text = '';
      let bytes: number[] = [];
      for (const id of ids) {
        const p = pieces[id]!;
        if (p.type === 'byte') {
          bytes.push(parseInt(p.piece.slice(3, 5), 16));
          continue;
        }
        if (bytes.length > 0) {
          text += decodeBytesLikeSentencepiece(bytes);
          bytes = [];
        }
        text += p.type === 'normal' || p.type === 'unused' ? p.piece.replaceAll(SPACE_SYMBOL, ' ') : p.piece;
      }
      if (bytes.length > 0) text += decodeBytesLikeSentencepiece(bytes);
      return addPrefix && text.startsWith(' ') ? text.slice(1) : text;
    },
  };
}

/** A `gpt2` vocabulary as the tokenizer.json its model shipped, for @huggingface/tokenizers. */
function bpeCore(vocab: GgufVocab, specialIds: readonly number[], typeOf: (id: number) => number): Core {
  const { file, tokens } = vocab;
  const pre = vocab.pre ?? 'default';
  const p = PRE_TOKENIZERS[pre];
  if (!p) {
    throw new InputError(
      file,
      `tokenizer.ggml.pre is ${JSON.stringify(pre)}, a pre-tokenizer vramfit does not know (it knows ${KNOWN_PRE_TOKENIZERS.join(', ')}): add the model's tokenizer.json beside the file`,
      'UNSUPPORTED_TOKENIZER',
    );
  }
  // No prototype: tokens such as "toString" or "__proto__" are plain keys here.
  const model = Object.create(null) as Record<string, number>;
  tokens.forEach((t, id) => {
    const seen = model[t];
    if (seen !== undefined)
      throw new FormatError(file, `token ${JSON.stringify(t).slice(0, 60)} appears twice in tokenizer.ggml.tokens (ids ${seen} and ${id})`);
    model[t] = id;
  });
  // llama.cpp splits a merge at its first space after the first character.
  const merges = vocab.merges!.map((m, i) => {
    const at = m.indexOf(' ', 1);
    if (at < 0) throw new FormatError(file, `tokenizer.ggml.merges[${i}] ${JSON.stringify(m).slice(0, 60)} is not two tokens`);
    return [m.slice(0, at), m.slice(at + 1)];
  });
  const splits = p.splits.map((regex) => ({ type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false }));
  const json = {
    version: '1.0',
    added_tokens: specialIds.map((id) => ({
      id,
      content: tokens[id],
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: typeOf(id) !== GGUF_TOKEN_TYPE.userDefined,
    })),
    normalizer: p.nfc ? { type: 'NFC' } : null,
    pre_tokenizer: { type: 'Sequence', pretokenizers: [...splits, { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false }] },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: p.ignoreMerges ?? false,
      vocab: model,
      merges,
    },
  };
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(json, { clean_up_tokenization_spaces: false });
  } catch (e) {
    throw new FormatError(file, `cannot build the tokenizer from its metadata (${(e as Error).message})`);
  }
  return {
    addBosDefault: p.addBos ?? false,
    // Specials were split out already; what is left is text, and text never turns into a special here.
    encodeText: (text) => tok.encode(text, { add_special_tokens: false }).ids,
    decode: (ids) => (ids.length === 0 ? '' : tok.decode([...ids], { skip_special_tokens: false })),
  };
}

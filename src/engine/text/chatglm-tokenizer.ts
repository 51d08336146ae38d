/**
 * ChatGLM2-6B / ChatGLM3-6B's tokenizer and prompt format, from the files THUDM ships instead of a tokenizer.json:
 * `tokenizer.model` (a SentencePiece BPE model, read by ./sentencepiece.ts) and the remote code's conventions
 * (`tokenization_chatglm.py`, `modeling_chatglm.py`), restated here:
 *
 *  - ids: the SentencePiece pieces (0 … n-1; ChatGLM2/3: n = 64789), then special tokens appended in this order:
 *    [MASK] [gMASK] [sMASK] sop eop, and for ChatGLM3 also <|system|> <|user|> <|assistant|> <|observation|>
 *    (ChatGLM3-6B: [gMASK] = 64790, sop = 64792, <|user|> = 64795, <|assistant|> = 64796, <|observation|> = 64797).
 *    Text never encodes to a special token (the remote code hands text to SentencePiece alone), except ChatGLM3's
 *    role tokens when tokenizer_config.json sets encode_special_tokens.
 *  - encode with special tokens: [gMASK] sop, then the text's pieces (build_inputs_with_special_tokens).
 *  - ChatGLM2 prompt (build_prompt): "[Round 1]\n\n问：{query}\n\n答：", earlier turns as
 *    "[Round i]\n\n问：{query}\n\n答：{response}\n\n", the whole string encoded with the prefix.
 *  - ChatGLM3 prompt (build_chat_input): [gMASK] sop, then per message <|role|> + sp("{metadata}\n") + sp(content),
 *    then <|assistant|>; each piece of text is encoded on its own, so each gets SentencePiece's dummy "▁" prefix.
 *  - end of generation: the SentencePiece </s> (2); ChatGLM3's chat() also stops at <|user|> and <|observation|>.
 *
 * Which of the two: ChatGLM3 when its role tokens show up anywhere (tokenizer_config.json's chat template or
 * special tokens, tokenization_chatglm.py, generation_config.json's eos ids) or a config names chatglm3;
 * ChatGLM2 otherwise. Both ship the same tokenizer.model, so the model file cannot tell.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { InputError } from '../../util/errors.js';
import { readJsonObjectFile } from '../../util/json-file.js';
import { loadSentencePieceBpe, type SentencePieceBpe } from './sentencepiece.js';
// A cycle (tokenizer.ts dispatches here), harmless: StreamDecoder is only used inside functions.
import { StreamDecoder, type ChatMessage, type ChatTemplateOptions, type DecodeOptions, type EncodeOptions, type TextTokenizer } from './tokenizer.js';

type Json = Record<string, unknown>;

export type ChatglmVersion = 'chatglm2' | 'chatglm3';

export const CHATGLM_SPECIAL_TOKENS = ['[MASK]', '[gMASK]', '[sMASK]', 'sop', 'eop'] as const;
export const CHATGLM3_ROLE_TOKENS = ['<|system|>', '<|user|>', '<|assistant|>', '<|observation|>'] as const;
const CHATGLM3_ROLES = ['system', 'user', 'assistant', 'observation'];

function readJson(path: string): Json | undefined {
  return existsSync(path) ? readJsonObjectFile(path) : undefined;
}

/**
 * Whether `modelDir` holds a ChatGLM2/3 tokenizer that loadTokenizer should read through this module: no
 * tokenizer.json, a tokenizer.model, and tokenizer_config.json naming ChatGLMTokenizer (or, with no tokenizer
 * class named, config.json's model_type chatglm). GLM-4 (ChatGLM4Tokenizer, a tiktoken file) and ChatGLM-6B
 * (ice_text.model) do not qualify.
 */
export function isChatglmTokenizerDir(modelDir: string): boolean {
  if (existsSync(join(modelDir, 'tokenizer.json')) || !existsSync(join(modelDir, 'tokenizer.model'))) return false;
  const tokenizerClass = readJson(join(modelDir, 'tokenizer_config.json'))?.tokenizer_class;
  if (tokenizerClass !== undefined) return tokenizerClass === 'ChatGLMTokenizer';
  return readJson(join(modelDir, 'config.json'))?.model_type === 'chatglm';
}

function idList(v: unknown): number[] {
  const list = Array.isArray(v) ? v : [v];
  return list.filter((x): x is number => Number.isInteger(x) && (x as number) >= 0);
}

function detectVersion(modelDir: string, tokenizerConfig: Json, modelConfig: Json, generationEos: number[], pieceCount: number): ChatglmVersion {
  const mentionsRoles = (s: string): boolean => CHATGLM3_ROLE_TOKENS.some((t) => s.includes(t));
  if (mentionsRoles(JSON.stringify(tokenizerConfig))) return 'chatglm3';
  const code = join(modelDir, 'tokenization_chatglm.py');
  if (existsSync(code) && mentionsRoles(readFileSync(code, 'utf8'))) return 'chatglm3';
  // ChatGLM3's generation_config.json lists <|user|> and <|observation|> among its eos ids.
  const userId = pieceCount + CHATGLM_SPECIAL_TOKENS.length + 1;
  if (generationEos.includes(userId)) return 'chatglm3';
  for (const cfg of [tokenizerConfig, modelConfig]) {
    for (const key of ['name_or_path', '_name_or_path']) {
      const name = cfg[key];
      if (typeof name === 'string' && /chatglm3/i.test(name)) return 'chatglm3';
    }
  }
  return 'chatglm2';
}

export interface ChatglmTokenizer extends TextTokenizer {
  readonly version: ChatglmVersion;
  /** The SentencePiece model under the special tokens. */
  readonly sentencePiece: SentencePieceBpe;
}

/** Loads a ChatGLM2/3 tokenizer folder (tokenizer.model + tokenizer_config.json). InputError / FormatError on failure. */
export function loadChatglmTokenizer(modelDir: string): ChatglmTokenizer {
  const sp = loadSentencePieceBpe(join(modelDir, 'tokenizer.model'));
  const tokenizerConfig = readJson(join(modelDir, 'tokenizer_config.json')) ?? {};
  const modelConfig = readJson(join(modelDir, 'config.json')) ?? {};
  const generationEos = idList(readJson(join(modelDir, 'generation_config.json'))?.eos_token_id);
  const version = detectVersion(modelDir, tokenizerConfig, modelConfig, generationEos, sp.size);

  const specials = version === 'chatglm3' ? [...CHATGLM_SPECIAL_TOKENS, ...CHATGLM3_ROLE_TOKENS] : [...CHATGLM_SPECIAL_TOKENS];
  const specialIds = new Map<string, number>(specials.map((t, i) => [t, sp.size + i]));
  const specialTokens = new Map<number, string>(specials.map((t, i) => [sp.size + i, t]));
  const vocabSize = sp.size + specials.length;
  const special = (token: string): number => specialIds.get(token)!;
  const prefix = [special('[gMASK]'), special('sop')];
  const encodeRoleTokens = version === 'chatglm3' && tokenizerConfig.encode_special_tokens === true;

  const encodeText = (text: string): number[] => {
    if (!encodeRoleTokens) return sp.encode(text);
    // encode_special_tokens: role tokens in the text become their ids, the text between them is encoded piece by piece.
    const ids: number[] = [];
    let last = 0;
    for (const m of text.matchAll(/<\|(?:system|user|assistant|observation)\|>/g)) {
      if (m.index! > last) ids.push(...sp.encode(text.slice(last, m.index)));
      ids.push(special(m[0]));
      last = m.index! + m[0].length;
    }
    if (last < text.length) ids.push(...sp.encode(text.slice(last)));
    return ids;
  };

  const encode = (text: string, options: EncodeOptions = {}): number[] =>
    (options.addSpecialTokens ?? true) ? [...prefix, ...encodeText(text)] : encodeText(text);

  const decode = (ids: readonly number[], options: DecodeOptions = {}): string => {
    // Ids past the vocabulary (the embedding is padded to 65024 rows) decode to nothing.
    const known = ids.filter((id) => Number.isInteger(id) && id >= 0 && id < vocabSize);
    if (options.skipSpecialTokens) {
      // transformers' skip_special_tokens drops <unk>/<pad> (id 0) and </s>; the appended tokens go too.
      return sp.decode(known.filter((id) => !specialTokens.has(id) && !sp.isControl(id) && id !== sp.unkId));
    }
    // As SPTokenizer.decode: special tokens as their text, each run of pieces between them decoded on its own.
    let text = '';
    let run: number[] = [];
    for (const id of known) {
      const token = specialTokens.get(id);
      if (token === undefined) {
        run.push(id);
        continue;
      }
      text += sp.decode(run) + token;
      run = [];
    }
    return text + sp.decode(run);
  };

  const where = `${modelDir} (${version === 'chatglm3' ? 'ChatGLM3' : 'ChatGLM2'} prompt format)`;
  // build_single_message hands text to SentencePiece directly, so role tokens in a message stay text even with
  // encode_special_tokens.
  const chat = version === 'chatglm3' ? chatglm3Chat(where, (text) => sp.encode(text), special, prefix) : chatglm2Chat(where, encode);
  const eosTokenIds = [
    ...new Set([...(sp.eosId >= 0 ? [sp.eosId] : []), ...(version === 'chatglm3' ? [special('<|user|>'), special('<|observation|>')] : []), ...generationEos]),
  ];

  return {
    modelDir,
    version,
    sentencePiece: sp,
    eosTokenIds,
    // ChatGLM has no BOS: prompts start with [gMASK] sop, and SentencePiece's <s> is never used.
    bosTokenId: null,
    bosToken: null,
    eosToken: sp.eosId >= 0 ? sp.idToPiece(sp.eosId)! : null,
    encode,
    decode,
    createStreamDecoder: (options: DecodeOptions = {}) => new StreamDecoder((ids) => decode(ids, options)),
    applyChatTemplate: (messages, options = {}) => chat.render(messages, options),
    encodeChat: (messages, options = {}) => chat.encode(messages, options),
    tokenToId: (token) => specialIds.get(token) ?? sp.lookup(token),
    idToToken: (id) => specialTokens.get(id) ?? sp.idToPiece(id),
  };
}

interface ChatFormat {
  /** A readable rendering; for ChatGLM3 its special tokens are written as text, which encode() does not turn back into them. */
  render(messages: readonly ChatMessage[], options: ChatTemplateOptions): string;
  /** The ids the remote code's chat() feeds the model. */
  encode(messages: readonly ChatMessage[], options: ChatTemplateOptions): number[];
}

/**
 * ChatGLM2's build_prompt: user/assistant turns alternating, starting with the user; no system role. The last user
 * message is the query; "答：" after it is the generation prompt. render() gives the very string the remote code
 * builds, so encode(render(...)) (with the [gMASK] sop prefix) equals encodeChat.
 */
function chatglm2Chat(where: string, encode: (text: string, options?: EncodeOptions) => number[]): ChatFormat {
  const render = (messages: readonly ChatMessage[], options: ChatTemplateOptions): string => {
    let prompt = '';
    messages.forEach((m, i) => {
      const expected = i % 2 === 0 ? 'user' : 'assistant';
      if (m.role !== expected) {
        throw new InputError(
          where,
          `message ${i + 1} has role "${m.role}"; ChatGLM2's format alternates user and assistant turns, starting with the user, and has no system role`,
        );
      }
      const round = Math.floor(i / 2) + 1;
      if (m.role === 'user') {
        prompt += `[Round ${round}]\n\n问：${m.content}`;
        if (i + 1 < messages.length || options.addGenerationPrompt) prompt += '\n\n答：';
      } else prompt += `${m.content}\n\n`;
    });
    return prompt;
  };
  return { render, encode: (messages, options) => encode(render(messages, options)) };
}

/** ChatGLM3's build_chat_input, message by message; render() writes what THUDM's chat template writes. */
function chatglm3Chat(where: string, encodePieces: (text: string) => number[], special: (token: string) => number, prefix: number[]): ChatFormat {
  const check = (messages: readonly ChatMessage[]): void => {
    messages.forEach((m, i) => {
      if (!CHATGLM3_ROLES.includes(m.role)) throw new InputError(where, `message ${i + 1} has role "${m.role}"; ChatGLM3 knows ${CHATGLM3_ROLES.join(', ')}`);
    });
  };
  return {
    render(messages, options) {
      check(messages);
      return `[gMASK]sop${messages.map((m) => `<|${m.role}|>\n ${m.content}`).join('')}${options.addGenerationPrompt ? '<|assistant|>' : ''}`;
    },
    encode(messages, options) {
      check(messages);
      const ids = [...prefix];
      // build_single_message with empty metadata: <|role|>, then "\n" and the content, each encoded on its own.
      for (const m of messages) ids.push(special(`<|${m.role}|>`), ...encodePieces('\n'), ...encodePieces(m.content));
      if (options.addGenerationPrompt) ids.push(special('<|assistant|>'));
      return ids;
    },
  };
}

/**
 * The text side of generation: a Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json,
 * generation_config.json, config.json) turned into encode/decode, streaming decode, EOS/BOS ids and
 * the model's chat template. Pure TypeScript: @huggingface/tokenizers and @huggingface/jinja do the work,
 * this module adds file handling, transformers' defaults and typed errors.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Environment, Interpreter, Template } from '@huggingface/jinja';
import { checkTokenizerJson } from './tokenizer-json.js';
import { Tokenizer } from '@huggingface/tokenizers';
import { InputError } from '../../util/errors.js';
import { readJsonObjectFile } from '../../util/json-file.js';
import { isChatglmTokenizerDir, loadChatglmTokenizer } from './chatglm-tokenizer.js';
import { assertRegularFile } from '../../util/regular-file.js';

export interface ChatMessage {
  role: string;
  content: string;
}

export interface EncodeOptions {
  /** Let the tokenizer's post-processor add BOS/EOS as tokenizer.json says. Default true, as in transformers. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens (BOS, EOS, chat markers, ...). Default false, as in transformers. */
  skipSpecialTokens?: boolean;
}

export interface ChatTemplateOptions {
  /** Append the assistant-turn header so the model answers next. Default false, as in transformers. */
  addGenerationPrompt?: boolean;
}

export interface TextTokenizer {
  readonly modelDir: string;
  /** Ids that end generation; empty when the folder names none (then only a token limit stops). */
  readonly eosTokenIds: number[];
  readonly bosTokenId: number | null;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  encode(text: string, options?: EncodeOptions): number[];
  decode(ids: readonly number[], options?: DecodeOptions): string;
  createStreamDecoder(options?: DecodeOptions): StreamDecoder;
  /** The rendered prompt; encode it with addSpecialTokens: false (or use encodeChat), since it holds bos_token itself. */
  applyChatTemplate(messages: readonly ChatMessage[], options?: ChatTemplateOptions): string;
  /** Renders the chat template and encodes it the way transformers' apply_chat_template(tokenize=True) does. */
  encodeChat(messages: readonly ChatMessage[], options?: ChatTemplateOptions): number[];
  tokenToId(token: string): number | undefined;
  idToToken(id: number): string | undefined;
}

type Json = Record<string, unknown>;

/** Loads the tokenizer of a Hugging Face model folder. Throws InputError when the files are missing or malformed. */
export function loadTokenizer(modelDir: string): TextTokenizer {
  // ChatGLM2/3 ship a SentencePiece tokenizer.model and remote code instead of a tokenizer.json.
  if (isChatglmTokenizerDir(modelDir)) return loadChatglmTokenizer(modelDir);
  const tokenizerPath = join(modelDir, 'tokenizer.json');
  const configPath = join(modelDir, 'tokenizer_config.json');
  const tokenizerJson = readJsonObject(tokenizerPath);
  if (!tokenizerJson) {
    throw new InputError(modelDir, 'no tokenizer.json: pass --input-ids or add the tokenizer files', 'NOT_FOUND');
  }
  // GPT-2-era folders ship without tokenizer_config.json; encode/decode still work, only the chat template needs it.
  const tokenizerConfig = readJsonObject(configPath);
  const specialTokensMap = readJsonObject(join(modelDir, 'special_tokens_map.json')) ?? {};
  const generationConfig = readJsonObject(join(modelDir, 'generation_config.json')) ?? {};
  const modelConfig = readJsonObject(join(modelDir, 'config.json')) ?? {};

  const cfg: Json = tokenizerConfig ?? {};
  const tokenField = (key: string): string | null | undefined =>
    key in cfg ? tokenContent(cfg[key]) : key in specialTokensMap ? tokenContent(specialTokensMap[key]) : undefined;

  const libConfig = libraryConfig(cfg, tokenField);
  checkTokenizerJson(tokenizerJson, tokenizerPath);
  let tok: Tokenizer;
  try {
    // added_tokens is optional in the format but the library iterates it unguarded.
    tok = new Tokenizer({ added_tokens: [], ...tokenizerJson }, libConfig);
  } catch (e) {
    throw new InputError(tokenizerPath, `cannot build the tokenizer (${(e as Error).message})`, 'BAD_CONFIG');
  }

  const idOf = (token: string | null | undefined): number | null => {
    if (token === null || token === undefined) return null;
    return tok.token_to_id(token) ?? null;
  };

  const eosTokenIds = resolveEosIds(generationConfig, tokenField('eos_token'), modelConfig, idOf);
  const bosTokenId = resolveBosId(tokenField('bos_token'), generationConfig, modelConfig, idOf);
  const bosToken = tokenField('bos_token') ?? (bosTokenId === null ? null : (tok.id_to_token(bosTokenId) ?? null));
  const eosToken = tokenField('eos_token') ?? (eosTokenIds[0] === undefined ? null : (tok.id_to_token(eosTokenIds[0]) ?? null));

  const decode = (ids: readonly number[], options: DecodeOptions = {}): string => {
    // Models pad their embedding past the tokenizer's vocabulary (Qwen: 151936 rows, ~151670 tokens), so a sampled
    // id can name no token; like transformers, such ids decode to nothing instead of breaking the decoder chain.
    const known = ids.filter((id) => tok.id_to_token(id) !== undefined);
    // The library rejects an empty list; an empty generation is ordinary for us.
    if (known.length === 0) return '';
    return tok.decode(known, { skip_special_tokens: options.skipSpecialTokens ?? false });
  };
  const encode = (text: string, options: EncodeOptions = {}): number[] => tok.encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).ids;

  const cleanUp = libConfig.clean_up_tokenization_spaces === true;
  let chat: ChatTemplate | undefined;
  const chatTemplate = (): ChatTemplate => {
    chat ??= loadChatTemplate(modelDir, tokenizerConfig, {
      bos_token: bosToken,
      eos_token: eosToken,
      unk_token: tokenField('unk_token') ?? null,
      pad_token: tokenField('pad_token') ?? null,
    });
    return chat;
  };

  return {
    modelDir,
    eosTokenIds,
    bosTokenId,
    bosToken,
    eosToken,
    encode,
    decode,
    createStreamDecoder: (options: DecodeOptions = {}) => new StreamDecoder((ids) => decode(ids, options), { cleanUpTokenizationSpaces: cleanUp }),
    applyChatTemplate: (messages, options = {}) => chatTemplate().render(messages, options),
    // transformers tokenizes a rendered chat with add_special_tokens=False: templates write bos_token themselves,
    // and adding it again would give the model a doubled BOS it never saw in training.
    encodeChat: (messages, options = {}) => encode(chatTemplate().render(messages, options), { addSpecialTokens: false }),
    tokenToId: (token) => tok.token_to_id(token),
    idToToken: (id) => tok.id_to_token(id),
  };
}

/** Reads a JSON object file; undefined when the file does not exist. */
function readJsonObject(path: string): Json | undefined {
  return existsSync(path) ? (readJsonObjectFile(path) as Json) : undefined;
}

/** Special tokens are written as strings or, by older transformers, as AddedToken dicts `{content: ...}`. */
function tokenContent(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as Json).content === 'string') return (v as Json).content as string;
  return null;
}

/**
 * The config object the library reads: special tokens flattened to strings (it compares them as strings) and
 * clean_up_tokenization_spaces defaulting to false when unset, as transformers does since 4.45
 * (the library would default to true).
 */
function libraryConfig(cfg: Json, tokenField: (key: string) => string | null | undefined): Json & { clean_up_tokenization_spaces: boolean } {
  const out: Json = { ...cfg };
  for (const key of ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token', 'mask_token']) {
    const v = tokenField(key);
    if (v === undefined || v === null) delete out[key];
    else out[key] = v;
  }
  if (Array.isArray(cfg.additional_special_tokens)) {
    out.additional_special_tokens = cfg.additional_special_tokens.map(tokenContent).filter((t): t is string => t !== null);
  }
  delete out.chat_template;
  return { ...out, clean_up_tokenization_spaces: cfg.clean_up_tokenization_spaces === true };
}

function idList(v: unknown): number[] {
  const list = Array.isArray(v) ? v : [v];
  return list.filter((x): x is number => Number.isInteger(x) && (x as number) >= 0);
}

/** generation_config.json first (what transformers' generate() uses), then the tokenizer's eos_token, then config.json. */
function resolveEosIds(
  generationConfig: Json,
  eosToken: string | null | undefined,
  modelConfig: Json,
  idOf: (t: string | null | undefined) => number | null,
): number[] {
  const fromGeneration = idList(generationConfig.eos_token_id);
  if (fromGeneration.length > 0) return [...new Set(fromGeneration)];
  const fromTokenizer = idOf(eosToken);
  if (fromTokenizer !== null) return [fromTokenizer];
  const textConfig = modelConfig.text_config && typeof modelConfig.text_config === 'object' ? (modelConfig.text_config as Json) : {};
  return [...new Set([...idList(modelConfig.eos_token_id), ...idList(textConfig.eos_token_id)])];
}

/**
 * The tokenizer's own bos_token wins, even when it says null (Qwen: no BOS, though generation_config names one);
 * the model configs only fill in when the tokenizer files do not mention it.
 */
function resolveBosId(
  bosToken: string | null | undefined,
  generationConfig: Json,
  modelConfig: Json,
  idOf: (t: string | null | undefined) => number | null,
): number | null {
  if (bosToken !== undefined) return idOf(bosToken);
  return idList(generationConfig.bos_token_id)[0] ?? idList(modelConfig.bos_token_id)[0] ?? null;
}

// ---------------------------------------------------------------------------------------------------------------
// Chat template

export interface ChatTemplate {
  render(messages: readonly ChatMessage[], options: ChatTemplateOptions): string;
}

/** Thrown by the template's raise_exception(); told apart from interpreter failures, which are template bugs. */
class TemplateRaised extends Error {}

function loadChatTemplate(modelDir: string, tokenizerConfig: Json | undefined, specialTokens: Record<string, string | null>): ChatTemplate {
  const { source, where } = findChatTemplate(modelDir, tokenizerConfig);
  return compileChatTemplate(source, where, specialTokens);
}

/**
 * A Jinja chat template compiled for rendering with transformers' variables; `where` names its origin in errors
 * (a file, or a GGUF file's `tokenizer.chat_template` key).
 */
export function compileChatTemplate(source: string, where: string, specialTokens: Record<string, string | null>): ChatTemplate {
  let template: Template;
  try {
    template = new Template(source);
  } catch (e) {
    throw new InputError(where, `chat template syntax error: ${(e as Error).message}`, 'BAD_CONFIG');
  }
  const tokens: Json = {};
  for (const [k, v] of Object.entries(specialTokens)) if (v !== null) tokens[k] = v;
  return {
    render(messages, options) {
      try {
        return renderTemplate(template, {
          // transformers passes None for absent tools/documents; templates test `tools is not none`.
          tools: null,
          documents: null,
          ...tokens,
          messages: messages.map((m) => ({ role: m.role, content: m.content })),
          add_generation_prompt: options.addGenerationPrompt ?? false,
        });
      } catch (e) {
        if (e instanceof TemplateRaised) throw new InputError(where, `the chat template rejected the messages: ${e.message}`);
        if (e instanceof TemplateOverBudget) throw new InputError(where, `the chat template was stopped: ${e.message}`, 'BAD_CONFIG');
        if (e instanceof RangeError) throw new InputError(where, `the chat template was stopped: ${e.message}`, 'BAD_CONFIG');
        throw new InputError(where, `cannot render the chat template (${(e as Error).message})`, 'BAD_CONFIG');
      }
    },
  };
}

/**
 * Template.render() declares its own raise_exception, which throws a plain Error indistinguishable from an
 * interpreter failure, and refuses a second declaration; so the globals are declared here instead, with
 * `range` and `strftime_now` as jinja 0.5.11 defines them (strftime with English names, as Python's C locale).
 */
function renderTemplate(template: Template, items: Json): string {
  const env = new Environment();
  const globals: Json = {
    true: true,
    false: false,
    none: null,
    True: true,
    False: false,
    None: null,
    raise_exception: (message: unknown) => {
      throw new TemplateRaised(String(message));
    },
    range: pythonRange,
    strftime_now: (format: string) => strftime(new Date(), String(format)),
  };
  for (const [key, value] of Object.entries({ ...globals, ...items })) env.set(key, value);
  const result = new BudgetedInterpreter(env).run(template.parsed);
  return String(result.value);
}

/**
 * A chat template is code from the model's folder: one that loops 10⁹ times or builds a gigantic
 * string would hang or kill the process. Rendering a real conversation takes thousands of steps and
 * kilobytes; these budgets are far above that and far below harm.
 */
export const TEMPLATE_BUDGET = { steps: 1_000_000, chars: 32 * 1024 * 1024, rangeLength: 1_000_000 };

class TemplateOverBudget extends Error {}

/** The part of jinja's Interpreter used here (its .d.ts re-exports do not resolve under NodeNext). */
interface JinjaInterpreter {
  run(program: unknown): { value: unknown };
  evaluate(statement: unknown, environment: Environment): { value: unknown };
  /** Runs a body: called once per loop iteration even when the body is empty. */
  evaluateBlock(statements: unknown[], environment: Environment): { value: unknown };
}
const InterpreterBase = Interpreter as unknown as new (env: Environment) => JinjaInterpreter;

/** The jinja interpreter, counting every node it evaluates and every character of string it produces. */
class BudgetedInterpreter extends InterpreterBase {
  private steps = 0;
  private chars = 0;

  private step(): void {
    if (++this.steps > TEMPLATE_BUDGET.steps)
      throw new TemplateOverBudget(`it ran more than ${TEMPLATE_BUDGET.steps.toLocaleString('en-US')} steps (a conversation takes thousands)`);
  }

  override evaluateBlock(statements: unknown[], environment: Environment): { value: unknown } {
    this.step();
    return super.evaluateBlock(statements, environment);
  }

  override evaluate(statement: unknown, environment: Environment): { value: unknown } {
    this.step();
    const value = super.evaluate(statement, environment);
    if (typeof value.value === 'string') {
      this.chars += value.value.length;
      if (this.chars > TEMPLATE_BUDGET.chars) throw new TemplateOverBudget(`it built more than ${TEMPLATE_BUDGET.chars / 1024 / 1024} MiB of text`);
    }
    return value;
  }
}

function pythonRange(start: number, stop?: number, step = 1): number[] {
  if (stop === undefined || stop === null) [start, stop] = [0, start];
  if (step === 0) throw new Error('range() step must not be zero');
  const length = Math.max(0, Math.ceil((stop - start) / step));
  if (!(length <= TEMPLATE_BUDGET.rangeLength)) throw new TemplateOverBudget(`range() of ${length} items`);
  const out: number[] = [];
  for (let i = start; step > 0 ? i < stop : i > stop; i += step) out.push(i);
  return out;
}

const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];
const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];

/** The strftime codes chat templates use (Llama 3.x: "%d %b %Y"). */
function strftime(date: Date, format: string): string {
  const pad = (n: number) => String(n).padStart(2, '0');
  return format.replace(/%[YymdbBaAHMS%]/g, (code) => {
    switch (code) {
      case '%Y':
        return String(date.getFullYear());
      case '%y':
        return pad(date.getFullYear() % 100);
      case '%m':
        return pad(date.getMonth() + 1);
      case '%d':
        return pad(date.getDate());
      case '%b':
        return MONTHS[date.getMonth()]!.slice(0, 3);
      case '%B':
        return MONTHS[date.getMonth()]!;
      case '%a':
        return DAYS[date.getDay()]!.slice(0, 3);
      case '%A':
        return DAYS[date.getDay()]!;
      case '%H':
        return pad(date.getHours());
      case '%M':
        return pad(date.getMinutes());
      case '%S':
        return pad(date.getSeconds());
      default:
        return '%';
    }
  });
}

/**
 * tokenizer_config.json's chat_template (a string, or a list of {name, template} of which "default" is the chat one);
 * newer transformers save it instead as chat_template.jinja, and processors as chat_template.json.
 */
function findChatTemplate(modelDir: string, tokenizerConfig: Json | undefined): { source: string; where: string } {
  const configPath = join(modelDir, 'tokenizer_config.json');
  const where = `${configPath}: chat_template`;
  const raw = tokenizerConfig?.chat_template;
  if (typeof raw === 'string') return { source: raw, where };
  if (Array.isArray(raw)) {
    const names: string[] = [];
    for (const entry of raw) {
      if (!entry || typeof entry !== 'object') continue;
      const { name, template } = entry as Json;
      if (typeof name === 'string') names.push(name);
      if (name === 'default' && typeof template === 'string') return { source: template, where };
    }
    throw new InputError(where, `lists templates (${names.join(', ') || 'none named'}) but none named "default"`, 'BAD_CONFIG');
  }
  if (raw !== undefined && raw !== null) throw new InputError(where, 'expected a string or a list of {name, template}', 'BAD_CONFIG');

  const jinjaPath = join(modelDir, 'chat_template.jinja');
  if (existsSync(jinjaPath)) {
    assertRegularFile(jinjaPath);
    try {
      return { source: readFileSync(jinjaPath, 'utf8'), where: jinjaPath };
    } catch (e) {
      throw new InputError(jinjaPath, `cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, 'NOT_FOUND');
    }
  }
  const jsonPath = join(modelDir, 'chat_template.json');
  const fromJson = readJsonObject(jsonPath)?.chat_template;
  if (typeof fromJson === 'string') return { source: fromJson, where: `${jsonPath}: chat_template` };

  if (!tokenizerConfig) {
    throw new InputError(modelDir, 'no tokenizer_config.json (it holds the chat template): add it or pass a prompt without chat formatting', 'NOT_FOUND');
  }
  throw new InputError(where, 'missing: this model has no chat template; pass a prompt without chat formatting', 'NOT_FOUND');
}

// ---------------------------------------------------------------------------------------------------------------
// Streaming decode

/** What transformers' clean_up_tokenization removes a space before (the text after that space). */
const CLEANUP_TAILS = ['.', '?', '!', ',', "' ", "n't", "'m", "'s", "'ve", "'re"];

/**
 * Turns ids arriving one at a time into text pieces whose concatenation equals decoding all ids at once.
 *
 * Decoding single tokens is wrong in two ways: a character split over byte tokens (byte-level BPE, SentencePiece
 * byte fallback) decodes to U+FFFD until its last byte arrives, and SentencePiece decoders strip a leading space
 * from the first token they see. So each step decodes a short window of ids that starts with already-emitted
 * context tokens and emits only what the window adds beyond that context, and only once it is stable: a trailing
 * U+FFFD may still become a character, and (with clean_up_tokenization_spaces) a trailing " " or " n" may still
 * lose its space to the next token. The window moves forward whenever everything decoded so far has been emitted,
 * which keeps each step's decode to a few tokens (the approach of text-generation-inference's decode_token).
 */
export class StreamDecoder {
  private readonly decodeIds: (ids: readonly number[]) => string;
  private readonly cleanUp: boolean;
  private ids: number[] = [];
  /** ids[0..contextEnd) are context: already emitted, decoded only so the window decodes like the whole text. */
  private contextEnd = 0;
  /** How many chars of decode(ids) have been emitted. */
  private emitted = 0;

  constructor(decode: (ids: readonly number[]) => string, options: { cleanUpTokenizationSpaces?: boolean } = {}) {
    this.decodeIds = decode;
    this.cleanUp = options.cleanUpTokenizationSpaces ?? false;
  }

  /** Adds one id; returns the text that became final (often '', e.g. mid-character). */
  push(id: number): string {
    this.ids.push(id);
    const text = this.decodeIds(this.ids);
    const stableEnd = text.length - this.unstableSuffixLength(text);
    let piece = '';
    if (stableEnd > this.emitted) {
      piece = text.slice(this.emitted, stableEnd);
      this.emitted = stableEnd;
    }
    // >= : if cleanup removed an already-emitted space, that text is gone for good; move on rather than stall.
    if (this.emitted >= text.length) this.advance();
    return piece;
  }

  /** Emits whatever is held back; at the end of a stream a truncated character is U+FFFD, as a full decode gives. */
  flush(): string {
    const text = this.ids.length > 0 ? this.decodeIds(this.ids) : '';
    const piece = text.length > this.emitted ? text.slice(this.emitted) : '';
    this.ids = [];
    this.contextEnd = 0;
    this.emitted = 0;
    return piece;
  }

  /** Drops the old context: the tokens since the last advance become the context for the next window. */
  private advance(): void {
    const context = this.ids.slice(this.contextEnd);
    const contextText = context.length > 0 ? this.decodeIds(context) : '';
    // Tokens that decode to nothing (skipped specials, control pieces) cannot anchor a window: the next token would
    // be the window's first visible one and lose the leading space SentencePiece decoders strip there. Keep the old
    // context until the new one shows text (up to a bound, so a long run of such tokens cannot make steps quadratic).
    if (contextText === '' && context.length > 0 && context.length < 64) return;
    this.ids = context;
    this.contextEnd = context.length;
    this.emitted = contextText.length;
  }

  private unstableSuffixLength(text: string): number {
    let n = 0;
    while (n < text.length && text.charCodeAt(text.length - 1 - n) === 0xfffd) n++;
    // A held-back replacement character means the next char is non-ASCII, so no cleanup rule can fire before it.
    if (n > 0 || !this.cleanUp) return n;
    for (let start = Math.max(0, text.length - 4); start < text.length; start++) {
      if (text[start] !== ' ') continue;
      const tail = text.slice(start + 1);
      if (CLEANUP_TAILS.some((t) => t.length > tail.length && t.startsWith(tail))) return text.length - start;
    }
    return 0;
  }
}

/**
 * How a model's chats become token ids, and which generation defaults come with the model.
 *
 * A model resolved from Ollama's store carries, besides the GGUF, a Go template, a default system prompt and a
 * params layer (stop strings, temperature, num_ctx, …). Ollama formats every chat with that template, not with the
 * GGUF's own Jinja `tokenizer.chat_template`, and its llama.cpp runner tokenizes the rendered text with special
 * tokens parsed as specials and BOS added by the vocabulary's add_bos rule. Everything else goes through the
 * tokenizer's own chat template (tokenizer.encodeChat), as transformers' apply_chat_template does.
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { SkeletonStore } from '../../reader/skeleton.js';
import { readModel } from '../../reader/read-model.js';
import { InputError, isVramfitError } from '../../util/errors.js';
import { parseGoTemplate, renderOllamaChat, type GoTemplate } from './go-template.js';
import type { ChatMessage, ChatTemplateOptions, TextTokenizer } from './tokenizer.js';

/** What a model's store says generation should default to; only the keys it sets, checked. */
export interface GenerationDefaults {
  /** Stop strings, added to the user's or request's own. */
  stop?: string[];
  /** 0 means greedy, as Ollama reads it. */
  temperature?: number;
  /** ≥ 1 (Ollama's top_k 0, "off", is left out). */
  topK?: number;
  /** 0 < p ≤ 1. */
  topP?: number;
  /** The context length to load with when the user gives none. */
  numCtx?: number;
  /** ≥ 0 (Ollama's -1, "random", is left out). */
  seed?: number;
  /** Tokens to generate at most; 'unlimited' for Ollama's -1/-2 (until the context is full). */
  numPredict?: number | 'unlimited';
}

/** Params keys Ollama knows whose effect vramfit does not implement (repeat_penalty, min_p, mirostat, …). */
export interface StoreDefaults {
  defaults: GenerationDefaults;
  /** The params keys that are not applied, in their order in the layer. */
  ignored: string[];
}

const PARAM_KEYS = new Set(['stop', 'temperature', 'top_k', 'top_p', 'num_ctx', 'seed', 'num_predict']);

/**
 * The store's params layer, checked: wrong types are an InputError naming the manifest and the key. Keys vramfit does
 * not apply are listed in `ignored`. No store, or an LM Studio one, gives no defaults.
 */
export function storeDefaults(store: SkeletonStore | undefined): StoreDefaults {
  const params = store?.kind === 'ollama' ? store.params : undefined;
  if (!params) return { defaults: {}, ignored: [] };
  const file = store?.manifest ?? store?.name ?? 'the Ollama model';
  const bad = (key: string, expected: string): InputError =>
    new InputError(`${file}: params ${key}`, `expected ${expected}, got ${JSON.stringify(params[key])}`, 'BAD_CONFIG');
  const number = (key: string): number | undefined => {
    const v = params[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw bad(key, 'a number');
    return v;
  };
  const integer = (key: string): number | undefined => {
    const v = number(key);
    if (v !== undefined && !Number.isSafeInteger(v)) throw bad(key, 'an integer');
    return v;
  };
  const d: GenerationDefaults = {};
  const stop = params['stop'];
  if (stop !== undefined && stop !== null) {
    if (!Array.isArray(stop) || stop.some((s) => typeof s !== 'string' || s.length === 0)) throw bad('stop', 'a list of non-empty strings');
    if (stop.length > 0) d.stop = [...new Set(stop as string[])];
  }
  const temperature = number('temperature');
  if (temperature !== undefined) {
    if (temperature < 0) throw bad('temperature', 'a number ≥ 0');
    d.temperature = temperature;
  }
  const topK = integer('top_k');
  if (topK !== undefined) {
    if (topK < 0) throw bad('top_k', 'an integer ≥ 0');
    if (topK > 0) d.topK = topK;
  }
  const topP = number('top_p');
  if (topP !== undefined) {
    if (!(topP > 0 && topP <= 1)) throw bad('top_p', 'a number with 0 < p ≤ 1');
    d.topP = topP;
  }
  const numCtx = integer('num_ctx');
  if (numCtx !== undefined) {
    if (numCtx < 1) throw bad('num_ctx', 'an integer ≥ 1');
    d.numCtx = numCtx;
  }
  const seed = integer('seed');
  if (seed !== undefined && seed >= 0) d.seed = seed;
  const numPredict = integer('num_predict');
  if (numPredict !== undefined) d.numPredict = numPredict > 0 ? numPredict : 'unlimited';
  return { defaults: d, ignored: Object.keys(params).filter((k) => !PARAM_KEYS.has(k)) };
}

/** The defaults in words, as `stop ["<|user|>"], temperature 0.7`, for logs and reports; '' when there are none. */
export function describeDefaults(s: StoreDefaults): string {
  const d = s.defaults;
  const parts: string[] = [];
  if (d.stop) parts.push(`stop ${JSON.stringify(d.stop)}`);
  if (d.temperature !== undefined) parts.push(`temperature ${d.temperature}`);
  if (d.topK !== undefined) parts.push(`top_k ${d.topK}`);
  if (d.topP !== undefined) parts.push(`top_p ${d.topP}`);
  if (d.seed !== undefined) parts.push(`seed ${d.seed}`);
  if (d.numPredict !== undefined) parts.push(`num_predict ${d.numPredict === 'unlimited' ? 'unlimited' : d.numPredict}`);
  if (d.numCtx !== undefined) parts.push(`num_ctx ${d.numCtx}`);
  if (s.ignored.length > 0) parts.push(`not applied: ${s.ignored.join(', ')}`);
  return parts.join(', ');
}

/** Stop strings of the user (or request) first, then the model's, each once. */
export function mergeStops(given: readonly string[], defaults: GenerationDefaults): string[] {
  return [...new Set([...given, ...(defaults.stop ?? [])])];
}

/** What a model name says before it is loaded: its store (if any), the store's defaults, and the context to load with. */
export interface ModelDefaults extends StoreDefaults {
  store?: SkeletonStore;
  /**
   * The store's num_ctx as the default context (used only when the user gives none), cut to the model's trained
   * context as Ollama cuts it; undefined when the store sets none.
   */
  ctx?: number;
  /** Why ctx differs from num_ctx, when it does. */
  notes: string[];
}

/**
 * Reads the model's header (not its weights) to learn its store and the store's defaults, so that a context from
 * num_ctx is known before the plan is made. A path that exists is never a store model and is not read here.
 */
export async function readModelDefaults(model: string): Promise<ModelDefaults> {
  if (existsSync(resolve(model))) return { defaults: {}, ignored: [], notes: [] };
  const skeleton = await readModel(model);
  const store = skeleton.source.store;
  const s = storeDefaults(store);
  const out: ModelDefaults = { ...s, notes: [] };
  if (store) out.store = store;
  const numCtx = s.defaults.numCtx;
  if (numCtx !== undefined) {
    const trained = skeleton.attention?.maxPositionEmbeddings;
    if (trained !== undefined && trained > 0 && numCtx > trained) {
      out.ctx = trained;
      out.notes.push(`the model's num_ctx ${numCtx} is more than the ${trained} tokens it was trained for; using ${trained}, as Ollama does`);
    } else out.ctx = numCtx;
  }
  return out;
}

export interface ChatFormat {
  /** The chat's prompt ids, ready for generation. */
  encodeChat(messages: readonly ChatMessage[], options?: ChatTemplateOptions): number[];
  /** The rendered prompt text (before tokenization). */
  render(messages: readonly ChatMessage[], options?: ChatTemplateOptions): string;
  /** 'ollama': the store's Go template; 'jinja': the tokenizer's own chat template; 'none': neither can be used. */
  readonly kind: 'ollama' | 'jinja' | 'none';
  /** Which template is used and why, in one line. */
  readonly description: string;
  /** Warnings to show once (a store template that cannot be used, so the tokenizer's is). */
  readonly warnings: string[];
}

/**
 * The chat format of a model: the Ollama store's Go template when there is one that parses (rendered with the
 * manifest's system prompt as the default system message), else the tokenizer's own Jinja chat template.
 * A store template that does not parse falls back to the tokenizer's template with a warning; when the tokenizer
 * has none either, encodeChat throws an InputError naming the manifest (so a server still serves completions).
 */
export function createChatFormat(tokenizer: TextTokenizer, store?: SkeletonStore): ChatFormat {
  const jinja = (description: string, warnings: string[] = []): ChatFormat => ({
    kind: 'jinja',
    description,
    warnings,
    render: (messages, options = {}) => tokenizer.applyChatTemplate(messages, options),
    encodeChat: (messages, options = {}) => tokenizer.encodeChat(messages, options),
  });
  if (store?.kind !== 'ollama' || store.template === undefined) return jinja("the tokenizer's chat template");

  const manifest = store.manifest ?? store.name;
  const where = `${manifest}: template`;
  let template: GoTemplate;
  try {
    template = parseGoTemplate(store.template, where);
  } catch (e) {
    if (!(e instanceof InputError)) throw e;
    const reason = e.reason;
    const fallback = jinjaProblem(tokenizer);
    if (fallback === undefined) {
      return jinja(`the tokenizer's chat template (the Ollama template of ${manifest} cannot be used: ${reason})`, [
        `${where}: ${reason}; using the tokenizer's own chat template instead`,
      ]);
    }
    const error = new InputError(where, `${reason}; and the model has no chat template of its own to use instead (${fallback})`, 'BAD_CONFIG');
    return {
      kind: 'none',
      description: `none usable (the Ollama template of ${manifest} cannot be used: ${reason})`,
      warnings: [],
      render: () => {
        throw error;
      },
      encodeChat: () => {
        throw error;
      },
    };
  }

  const render = (messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string =>
    renderOllamaChat(
      template,
      messages,
      { addGenerationPrompt: options.addGenerationPrompt ?? false, ...(store.system !== undefined ? { defaultSystem: store.system } : {}) },
      where,
    );
  const bos = tokenizer.bosTokenId;
  const addsBos = bos !== null && addsBosToken(tokenizer, bos);
  return {
    kind: 'ollama',
    description: `the Ollama template of ${manifest}${store.system ? ', with its system prompt' : ''}`,
    warnings: [],
    render,
    encodeChat(messages, options = {}) {
      // As Ollama's llama.cpp runner: special-token text is parsed as specials (encode does), BOS by the vocabulary's
      // add_bos rule. Unlike llama.cpp, which then warns about two BOS, a BOS the template wrote itself is not doubled.
      const ids = tokenizer.encode(render(messages, options), { addSpecialTokens: false });
      return addsBos && ids[0] !== bos ? [bos, ...ids] : ids;
    },
  };
}

/** Whether encode() with special tokens puts BOS in front (the vocabulary's add_bos rule, or a post-processor's). */
function addsBosToken(tokenizer: TextTokenizer, bos: number): boolean {
  const probe = 'a';
  return tokenizer.encode(probe, { addSpecialTokens: true })[0] === bos && tokenizer.encode(probe, { addSpecialTokens: false })[0] !== bos;
}

/** undefined when the tokenizer's own chat template renders a one-message chat; else why not. */
function jinjaProblem(tokenizer: TextTokenizer): string | undefined {
  try {
    tokenizer.applyChatTemplate([{ role: 'user', content: 'x' }], { addGenerationPrompt: true });
    return undefined;
  } catch (e) {
    if (e instanceof InputError) return e.reason;
    if (isVramfitError(e)) return e.message;
    throw e;
  }
}

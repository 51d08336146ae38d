/**
 * Request bodies of the OpenAI and Ollama APIs, checked and turned into one shape: what to generate
 * and how. Every refusal names the parameter (OpenAI's `param`) and says why.
 */
import type { ChatMessage } from '../engine/text/tokenizer.js';
import type { SamplerOptions } from '../engine/text/sampling.js';
import { mergeStops, type GenerationDefaults } from '../engine/text/chat-format.js';
import { badParam, HttpError } from './http-util.js';

export interface GenerationParams {
  /** Tokens to generate at most; undefined: until the slot's context is full. */
  maxTokens?: number;
  sampling: SamplerOptions;
  stop: string[];
  stream: boolean;
  /** OpenAI stream_options.include_usage: a last chunk with usage. */
  includeUsage: boolean;
}

export type Prompt = { kind: 'chat'; messages: ChatMessage[] } | { kind: 'text'; text: string } | { kind: 'ids'; ids: number[] };

type Body = Record<string, unknown>;

const MAX_STOP = 16;

function optNumber(body: Body, key: string, min: number, max: number, integer = false): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw badParam(key, `expected a number, got ${JSON.stringify(v)}`);
  if (integer && !Number.isSafeInteger(v)) throw badParam(key, `expected an integer, got ${v}`);
  if (v < min || v > max) throw badParam(key, `must be from ${min} to ${max}, got ${v}`);
  return v;
}

function optBool(body: Body, key: string): boolean | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw badParam(key, `expected true or false, got ${JSON.stringify(v)}`);
  return v;
}

function stopOf(body: Body, key: string): string[] {
  const v = body[key];
  if (v === undefined || v === null) return [];
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || list.some((s) => typeof s !== 'string' || s.length === 0)) throw badParam(key, 'expected a non-empty string or an array of them');
  if (list.length > MAX_STOP) throw badParam(key, `at most ${MAX_STOP} stop strings`);
  return list as string[];
}

/**
 * Sampling as transformers does it; temperature 0 is greedy, as OpenAI-compatible servers read it. Each value the
 * request leaves out comes from the model's defaults (an Ollama model's params) when they set it.
 */
function sampling(
  temperature: number | undefined,
  topP: number | undefined,
  topK: number | undefined,
  seed: number | undefined,
  defaults: { temperature: number },
  model: GenerationDefaults,
): SamplerOptions {
  const t = temperature ?? model.temperature ?? defaults.temperature;
  topP ??= model.topP;
  topK ??= model.topK;
  seed ??= model.seed;
  if (t === 0) return { greedy: true };
  const s: SamplerOptions = { temperature: t };
  if (topP !== undefined && topP < 1) s.topP = topP;
  if (topK !== undefined && topK > 0) s.topK = topK;
  if (seed !== undefined) s.seed = seed;
  return s;
}

/** Fields OpenAI defines that change the result and that this server does not implement: refused unless at their default. */
const UNSUPPORTED: [string, (v: unknown) => boolean][] = [
  ['frequency_penalty', (v) => v === 0],
  ['presence_penalty', (v) => v === 0],
  ['logprobs', (v) => v === false],
  ['top_logprobs', (v) => v === 0],
  ['logit_bias', (v) => typeof v === 'object' && v !== null && Object.keys(v).length === 0],
  ['tools', (v) => Array.isArray(v) && v.length === 0],
  ['functions', (v) => Array.isArray(v) && v.length === 0],
  ['echo', (v) => v === false],
  ['suffix', (v) => v === ''],
  ['best_of', (v) => v === 1],
  ['response_format', (v) => typeof v === 'object' && v !== null && (v as Body)['type'] === 'text'],
];

function refuseUnsupported(body: Body): void {
  for (const [key, isDefault] of UNSUPPORTED) {
    const v = body[key];
    if (v !== undefined && v !== null && !isDefault(v))
      throw new HttpError(400, `${key} is not supported by this server`, 'invalid_request_error', key, 'unsupported_parameter');
  }
  const n = body['n'];
  if (n !== undefined && n !== null && n !== 1)
    throw new HttpError(400, `n: only 1 choice per request is supported, got ${JSON.stringify(n)}`, 'invalid_request_error', 'n', 'unsupported_parameter');
}

export function requireModel(body: Body): string {
  const m = body['model'];
  if (typeof m !== 'string' || m.length === 0) throw badParam('model', 'required: the name from GET /v1/models');
  return m;
}

/** The model's num_predict where the request gives no limit (-1/-2, 'unlimited': none). */
function defaultMaxTokens(model: GenerationDefaults): number | undefined {
  return typeof model.numPredict === 'number' ? model.numPredict : undefined;
}

function openAiParams(body: Body, model: GenerationDefaults): GenerationParams {
  refuseUnsupported(body);
  const maxTokens =
    optNumber(body, 'max_completion_tokens', 1, Number.MAX_SAFE_INTEGER, true) ??
    optNumber(body, 'max_tokens', 1, Number.MAX_SAFE_INTEGER, true) ??
    defaultMaxTokens(model);
  const stream = optBool(body, 'stream') ?? false;
  const options = body['stream_options'];
  if (options !== undefined && options !== null && (typeof options !== 'object' || Array.isArray(options)))
    throw badParam('stream_options', 'expected an object');
  const includeUsage = options ? optBool(options as Body, 'include_usage') : undefined;
  if (includeUsage !== undefined && !stream) throw badParam('stream_options', 'only allowed with stream: true');
  const p: GenerationParams = {
    sampling: sampling(
      optNumber(body, 'temperature', 0, 2),
      optNumber(body, 'top_p', 0, 1),
      undefined,
      optNumber(body, 'seed', 0, Number.MAX_SAFE_INTEGER, true),
      { temperature: 1 },
      model,
    ),
    stop: mergeStops(stopOf(body, 'stop'), model),
    stream,
    includeUsage: includeUsage ?? false,
  };
  if (p.sampling.topP === 0) throw badParam('top_p', 'must be above 0');
  if (maxTokens !== undefined) p.maxTokens = maxTokens;
  return p;
}

function messagesOf(v: unknown, param: string): ChatMessage[] {
  if (!Array.isArray(v) || v.length === 0) throw badParam(param, 'expected a non-empty array of messages');
  return v.map((m, i) => {
    if (typeof m !== 'object' || m === null) throw badParam(`${param}[${i}]`, 'expected an object with role and content');
    const { role, content } = m as Body;
    if (typeof role !== 'string' || !['system', 'developer', 'user', 'assistant', 'tool'].includes(role))
      throw badParam(`${param}[${i}].role`, `expected system, user, assistant or tool, got ${JSON.stringify(role)}`);
    return { role: role === 'developer' ? 'system' : role, content: contentText(content, `${param}[${i}].content`) };
  });
}

/** A message's content: a string, or OpenAI's array of parts of which only text parts are accepted. */
function contentText(v: unknown, param: string): string {
  if (typeof v === 'string') return v;
  if (v === null || v === undefined) return '';
  if (Array.isArray(v)) {
    return v
      .map((part, j) => {
        const p = part as Body;
        if (typeof p !== 'object' || p === null || p['type'] !== 'text' || typeof p['text'] !== 'string')
          throw badParam(`${param}[${j}]`, 'only text parts ({"type": "text", "text": ...}) are supported');
        return p['text'];
      })
      .join('');
  }
  throw badParam(param, 'expected a string or an array of text parts');
}

/** `defaults`: the served model's own generation defaults (an Ollama model's params), under the request's values. */
export function chatRequest(body: Body, defaults: GenerationDefaults = {}): { model: string; prompt: Prompt; params: GenerationParams } {
  return {
    model: requireModel(body),
    prompt: { kind: 'chat', messages: messagesOf(body['messages'], 'messages') },
    params: openAiParams(body, defaults),
  };
}

export function completionRequest(body: Body, defaults: GenerationDefaults = {}): { model: string; prompt: Prompt; params: GenerationParams } {
  const model = requireModel(body);
  const p = body['prompt'];
  let prompt: Prompt;
  if (typeof p === 'string') prompt = { kind: 'text', text: p };
  else if (Array.isArray(p) && p.length === 1 && typeof p[0] === 'string') prompt = { kind: 'text', text: p[0] };
  else if (Array.isArray(p) && p.length > 0 && p.every((x) => Number.isSafeInteger(x) && (x as number) >= 0)) prompt = { kind: 'ids', ids: p as number[] };
  else throw badParam('prompt', 'expected a string, an array of one string, or an array of token ids');
  return { model, prompt, params: openAiParams(body, defaults) };
}

/**
 * Ollama's `options` and top-level fields; what they leave out comes from the model's params, then Ollama's documented
 * defaults (temperature 0.8, top_p 0.9, top_k 40).
 */
function ollamaParams(body: Body, model: GenerationDefaults): GenerationParams {
  const o = body['options'] ?? {};
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw badParam('options', 'expected an object');
  const opts = o as Body;
  const numPredict = optNumber(opts, 'num_predict', -2, Number.MAX_SAFE_INTEGER, true);
  if (numPredict === 0) throw badParam('num_predict', 'must be positive, or -1 for no limit');
  const p: GenerationParams = {
    sampling: sampling(
      optNumber(opts, 'temperature', 0, 2),
      optNumber(opts, 'top_p', 0, 1) ?? model.topP ?? 0.9,
      optNumber(opts, 'top_k', 0, 1_000_000, true) ?? model.topK ?? 40,
      optNumber(opts, 'seed', 0, Number.MAX_SAFE_INTEGER, true),
      { temperature: 0.8 },
      model,
    ),
    stop: mergeStops(stopOf(opts, 'stop'), model),
    stream: optBool(body, 'stream') ?? true,
    includeUsage: false,
  };
  if (p.sampling.topP === 0) throw badParam('top_p', 'must be above 0');
  const limit = numPredict ?? defaultMaxTokens(model);
  if (limit !== undefined && limit > 0) p.maxTokens = limit;
  return p;
}

export function ollamaChatRequest(body: Body, defaults: GenerationDefaults = {}): { model: string; prompt: Prompt; params: GenerationParams } {
  return {
    model: requireModel(body),
    prompt: { kind: 'chat', messages: messagesOf(body['messages'], 'messages') },
    params: ollamaParams(body, defaults),
  };
}

/** /api/generate: the prompt goes through the chat template as a user turn (with `system` before it) unless `raw`. */
export function ollamaGenerateRequest(body: Body, defaults: GenerationDefaults = {}): { model: string; prompt: Prompt; params: GenerationParams } {
  const model = requireModel(body);
  const text = body['prompt'];
  if (typeof text !== 'string' || text.length === 0) throw badParam('prompt', 'expected a non-empty string');
  const system = body['system'];
  if (system !== undefined && typeof system !== 'string') throw badParam('system', 'expected a string');
  const raw = optBool(body, 'raw') ?? false;
  const prompt: Prompt = raw
    ? { kind: 'text', text }
    : { kind: 'chat', messages: [...(system ? [{ role: 'system', content: system }] : []), { role: 'user', content: text }] };
  return { model, prompt, params: ollamaParams(body, defaults) };
}

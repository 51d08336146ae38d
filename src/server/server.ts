/**
 * `vramfit serve`: an HTTP server speaking the OpenAI and Ollama APIs over one model loaded as
 * planned for N slots. The engine runs in a worker thread (engine-host.ts); this thread parses
 * requests, renders chat templates, tokenizes, streams text, and keeps /health and /metrics answering
 * while a step computes.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { basename } from 'node:path';
import type { FinishReason } from '../engine/batcher.js';
import type { LoadOptions } from '../engine/load.js';
import type { TextTokenizer } from '../engine/text/tokenizer.js';
import { loadModelTokenizer } from '../engine/text/model-tokenizer.js';
import { createChatFormat, describeDefaults, readModelDefaults, type ChatFormat, type ModelDefaults } from '../engine/text/chat-format.js';
import { StopChecker } from '../engine/text/stop.js';
import { InputError, isVramfitError } from '../util/errors.js';
import { EngineHost, QueueFullError } from './engine-host.js';
import { HttpError, openAiError, readJsonObject, sendJson } from './http-util.js';
import { ServerMetrics } from './metrics.js';
import { chatRequest, completionRequest, ollamaChatRequest, ollamaGenerateRequest, type GenerationParams, type Prompt } from './params.js';
import type { EngineStats, ModelInfo } from './protocol.js';

export interface ServeOptions {
  model: string;
  load: Omit<LoadOptions, 'onProgress'>;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  apiKey?: string;
  /** The name clients use (GET /v1/models); default: the model's file or folder name. */
  name?: string;
  /** Requests waiting for a slot at most; past it, 429 with Retry-After. */
  maxQueue?: number;
  /** Largest request body accepted, bytes. */
  maxBody?: number;
  /** A client must send its headers within this many ms (slow-header clients are cut off with 408). */
  headersTimeoutMs?: number;
  /** Whole request bodies must arrive within this many ms. */
  requestTimeoutMs?: number;
  /** On close, in-flight sequences may finish for this long before they are cancelled. */
  shutdownGraceMs?: number;
  log?: (line: string) => void;
}

export interface RunningServer {
  url: string;
  port: number;
  /** Resolves when the model is loaded (rejects with the load error, after the server has closed). */
  ready: Promise<ModelInfo>;
  metrics: ServerMetrics;
  /** Stops accepting, lets in-flight sequences finish within the grace period, cancels the rest, frees every device buffer. */
  close(): Promise<EngineStats>;
}

type Dialect = 'openai' | 'ollama';

interface Served {
  host: EngineHost;
  tokenizer: TextTokenizer | undefined;
  /** How chats become ids: an Ollama model's template, else the tokenizer's chat template. */
  chat: ChatFormat | undefined;
  /** The model's store and its generation defaults (an Ollama model's params). */
  defaults: ModelDefaults;
  info: ModelInfo | undefined;
  names: Set<string>;
  name: string;
  startedAt: number;
  loadMs: number;
}

export async function startServer(o: ServeOptions): Promise<RunningServer> {
  const log = o.log ?? (() => {});
  const maxBody = o.maxBody ?? 8 * 1024 * 1024;
  const metrics = new ServerMetrics();
  const name = o.name ?? (basename(o.model).replace(/\.(gguf|safetensors|bin|json)$/i, '') || 'model');
  const t0 = performance.now();
  // An Ollama model's params are read (and checked) before loading: its num_ctx is the context unless --ctx says.
  const defaults = await readModelDefaults(o.model);
  const load = o.load.ctx === undefined && defaults.ctx !== undefined ? { ...o.load, ctx: defaults.ctx } : o.load;
  if (load !== o.load) for (const note of defaults.notes) log(`note: ${note}`);
  const served: Served = {
    host: new EngineHost({ model: o.model, load }, o.maxQueue ?? 64),
    tokenizer: undefined,
    chat: undefined,
    defaults,
    info: undefined,
    names: new Set([name, `${name}:latest`, o.model]),
    name,
    startedAt: Date.now(),
    loadMs: 0,
  };
  let closing = false;
  const apiKey = o.apiKey ? Buffer.from(o.apiKey) : undefined;

  const server: Server = createServer(
    {
      headersTimeout: o.headersTimeoutMs ?? 10_000,
      requestTimeout: o.requestTimeoutMs ?? 60_000,
      // How often Node checks those timeouts (its default, 30 s, would let a slow client hold a socket that long).
      connectionsCheckingInterval: Math.max(100, Math.min(1000, Math.floor((o.headersTimeoutMs ?? 10_000) / 4))),
    },
    (req, res) => {
      const route = (req.url ?? '/').split('?')[0]!;
      res.on('finish', () => metrics.countRequest(route, res.statusCode));
      handle(req, res, route).catch((e: unknown) => {
        const err = asHttpError(e);
        if (err.status >= 500) log(`error: ${route}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
        if (!res.headersSent) sendError(res, err, route.startsWith('/api/') ? 'ollama' : 'openai');
        else res.end();
      });
    },
  );

  const authorized = (req: IncomingMessage): boolean => {
    if (!apiKey) return true;
    const h = req.headers['authorization'];
    const given = typeof h === 'string' && h.startsWith('Bearer ') ? Buffer.from(h.slice(7)) : Buffer.alloc(0);
    return given.length === apiKey.length && timingSafeEqual(given, apiKey);
  };

  async function handle(req: IncomingMessage, res: ServerResponse, route: string): Promise<void> {
    const method = req.method ?? 'GET';
    if (route === '/health' && method === 'GET') return health(res);
    if (!authorized(req))
      throw new HttpError(401, 'missing or wrong API key (send Authorization: Bearer KEY)', 'invalid_request_error', null, 'invalid_api_key');
    const routes: Record<string, [string, () => Promise<void> | void]> = {
      '/metrics': ['GET', () => sendMetrics(res)],
      '/v1/models': [
        'GET',
        () =>
          sendJson(res, 200, {
            object: 'list',
            data: [{ id: served.name, object: 'model', created: Math.floor(served.startedAt / 1000), owned_by: 'vramfit' }],
          }),
      ],
      '/v1/chat/completions': ['POST', () => generateRoute(req, res, 'openai', 'chat')],
      '/v1/completions': ['POST', () => generateRoute(req, res, 'openai', 'completion')],
      '/api/chat': ['POST', () => generateRoute(req, res, 'ollama', 'chat')],
      '/api/generate': ['POST', () => generateRoute(req, res, 'ollama', 'generate')],
      '/api/tags': ['GET', () => sendJson(res, 200, { models: served.info ? [ollamaModel(served)] : [] })],
      '/api/ps': ['GET', () => sendJson(res, 200, { models: served.info ? [{ ...ollamaModel(served), ...ollamaPs(served) }] : [] })],
      '/api/version': ['GET', () => sendJson(res, 200, { version: '0.1.0-vramfit' })],
    };
    const r = routes[route];
    if (!r) throw new HttpError(404, `no route ${method} ${route}`, 'invalid_request_error', null, 'unknown_route');
    if (r[0] !== method)
      throw new HttpError(405, `${route} takes ${r[0]}, not ${method}`, 'invalid_request_error', null, 'method_not_allowed', { allow: r[0] });
    await r[1]();
  }

  function health(res: ServerResponse): void {
    const info = served.info;
    if (closing) return sendJson(res, 503, { status: 'shutting down' });
    if (!info) return sendJson(res, 503, { status: 'loading' });
    const busy = served.host.busySlots;
    sendJson(res, 200, {
      status: 'ok',
      model: served.name,
      slots: { total: info.slots, busy, free: info.slots - busy },
      queue: served.host.queueDepth,
      ctx: info.ctx,
    });
  }

  function sendMetrics(res: ServerResponse): void {
    const text = metrics.render({
      queueDepth: served.host.queueDepth,
      busySlots: served.host.busySlots,
      slots: served.info?.slots ?? 0,
      stats: served.host.stats,
    });
    res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
    res.end(text);
  }

  async function generateRoute(req: IncomingMessage, res: ServerResponse, dialect: Dialect, kind: 'chat' | 'completion' | 'generate'): Promise<void> {
    const arrived = performance.now();
    if (closing) throw new HttpError(503, 'the server is shutting down', 'server_error', null, 'shutting_down', { 'retry-after': '5' });
    const info = served.info;
    const tokenizer = served.tokenizer;
    if (!info || !tokenizer) throw new HttpError(503, 'the model is still loading', 'server_error', null, 'loading', { 'retry-after': '2' });
    const body = await readJsonObject(req, maxBody);
    const d = served.defaults.defaults;
    const parsed =
      dialect === 'openai'
        ? kind === 'chat'
          ? chatRequest(body, d)
          : completionRequest(body, d)
        : kind === 'chat'
          ? ollamaChatRequest(body, d)
          : ollamaGenerateRequest(body, d);
    if (!served.names.has(parsed.model))
      throw new HttpError(
        404,
        `model ${JSON.stringify(parsed.model)} is not served here; this server serves ${JSON.stringify(served.name)}`,
        'invalid_request_error',
        'model',
        'model_not_found',
      );
    const promptIds = encodePrompt(tokenizer, parsed.prompt, info);
    if (promptIds.length >= info.ctx)
      throw new HttpError(
        400,
        `the prompt is ${promptIds.length} tokens; a slot holds ${info.ctx} (prompt and completion together), so at most ${info.ctx - 1} prompt tokens fit`,
        'invalid_request_error',
        kind === 'chat' ? 'messages' : 'prompt',
        'context_length_exceeded',
      );
    await stream(res, dialect, kind, parsed.model, promptIds, parsed.params, arrived);
  }

  /** Generates for one request and writes it in the dialect's shape, streamed or whole. */
  function stream(
    res: ServerResponse,
    dialect: Dialect,
    kind: string,
    model: string,
    promptIds: number[],
    p: GenerationParams,
    arrived: number,
  ): Promise<void> {
    const tokenizer = served.tokenizer!;
    const info = served.info!;
    const decoder = tokenizer.createStreamDecoder({ skipSpecialTokens: true });
    const stop = new StopChecker({ eosTokenIds: tokenizer.eosTokenIds, stopStrings: p.stop });
    const id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomBytes(12).toString('hex')}`;
    const created = Math.floor(Date.now() / 1000);
    let text = '';
    let completionTokens = 0;
    let lastTokenAt = 0;
    let firstTokenAt = 0;
    let ended = false;
    let seq = -1;
    const out = dialect === 'openai' ? openAiWriter(res, kind, id, created, model, p) : ollamaWriter(res, kind, model, p);

    return new Promise<void>((resolve) => {
      const finish = (reason: 'stop' | 'length'): void => {
        if (ended) return;
        ended = true;
        const tail = stop.stopReason ? '' : stop.pushText(decoder.flush()).text + stop.finish();
        if (tail) {
          text += tail;
          out.delta(tail);
        }
        metrics.completionTokens += completionTokens;
        const now = performance.now();
        out.finish(text, reason, {
          promptTokens: promptIds.length,
          completionTokens,
          totalMs: now - arrived,
          promptMs: (firstTokenAt || now) - arrived,
          evalMs: firstTokenAt ? now - firstTokenAt : 0,
          loadMs: served.loadMs,
        });
        resolve();
      };
      const fail = (message: string, status: number): void => {
        if (ended) return;
        ended = true;
        out.fail(new HttpError(status, message, status === 503 ? 'server_error' : 'internal_error', null, status === 503 ? 'shutting_down' : 'engine_error'));
        resolve();
      };
      try {
        seq = served.host.submit(
          { promptIds, maxTokens: p.maxTokens ?? info.ctx, sampling: p.sampling, eosTokenIds: tokenizer.eosTokenIds },
          {
            started: () => out.start(),
            token: (token) => {
              if (ended) return;
              const now = performance.now();
              if (completionTokens === 0) {
                firstTokenAt = now;
                metrics.timeToFirstToken.observe((now - arrived) / 1000);
                metrics.promptTokens += promptIds.length;
              } else metrics.interTokenLatency.observe((now - lastTokenAt) / 1000);
              lastTokenAt = now;
              completionTokens++;
              const step = stop.push(token, decoder.push(token));
              if (step.text) {
                text += step.text;
                out.delta(step.text);
              }
              if (step.stop) {
                if (step.stop.kind !== 'eos') served.host.cancel(seq);
                finish('stop');
              }
            },
            done: (reason: FinishReason) => finish(reason === 'eos' ? 'stop' : 'length'),
            error: (message) => fail(message, closing ? 503 : 500),
          },
        );
      } catch (e) {
        if (e instanceof QueueFullError)
          throw new HttpError(429, e.message, 'rate_limit_error', null, 'queue_full', { 'retry-after': String(e.retryAfterSeconds) });
        throw e;
      }
      // A client that goes away cancels its sequence: the slot is free for the next request at once.
      res.on('close', () => {
        if (!ended) {
          ended = true;
          metrics.cancelled++;
          served.host.cancel(seq);
          resolve();
        }
      });
    });
  }

  function encodePrompt(tokenizer: TextTokenizer, prompt: Prompt, info: ModelInfo): number[] {
    let ids: number[];
    try {
      if (prompt.kind === 'ids') ids = prompt.ids;
      else if (prompt.kind === 'text') ids = tokenizer.encode(prompt.text);
      else ids = (served.chat ?? createChatFormat(tokenizer)).encodeChat(prompt.messages, { addGenerationPrompt: true });
    } catch (e) {
      if (e instanceof InputError)
        throw new HttpError(400, e.reason, 'invalid_request_error', prompt.kind === 'chat' ? 'messages' : 'prompt', 'invalid_prompt');
      throw e;
    }
    if (ids.length === 0) throw new HttpError(400, 'the prompt encodes to no tokens', 'invalid_request_error', 'prompt', 'empty_prompt');
    const bad = ids.find((x) => x >= info.vocab);
    if (bad !== undefined)
      throw new HttpError(400, `token id ${bad} is outside the vocabulary (0..${info.vocab - 1})`, 'invalid_request_error', 'prompt', 'invalid_token');
    return ids;
  }

  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) =>
        reject(
          new InputError('--port', e.code === 'EADDRINUSE' ? `${o.port} is in use` : e.code === 'EACCES' ? `not allowed to listen on ${o.port}` : e.message),
        ),
      );
      server.listen(o.port ?? 8080, o.host ?? '127.0.0.1', resolve);
    });
  } catch (e) {
    served.host.ready.catch(() => {});
    await served.host.shutdown();
    throw e;
  }
  const port = (server.address() as AddressInfo).port;
  const host = o.host ?? '127.0.0.1';
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;

  let closed: Promise<EngineStats> | undefined;
  const close = (): Promise<EngineStats> =>
    (closed ??= (async () => {
      closing = true;
      server.close();
      served.host.stopAccepting();
      const deadline = Date.now() + (o.shutdownGraceMs ?? 10_000);
      while (served.host.busySlots > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      const stats = await served.host.shutdown();
      // Streams were ended by their listeners; idle keep-alive sockets go now.
      server.closeAllConnections();
      return stats;
    })());

  const ready = served.host.ready.then(
    (info) => {
      served.loadMs = performance.now() - t0;
      try {
        served.tokenizer = loadModelTokenizer(info);
      } catch (e) {
        void close();
        throw isVramfitError(e) ? new InputError(o.model, `serve needs the model's tokenizer: ${e.message}`) : e;
      }
      served.chat = createChatFormat(served.tokenizer, defaults.store);
      for (const w of served.chat.warnings) log(`warning: ${w}`);
      if (defaults.store?.kind === 'ollama') {
        log(`chat template: ${served.chat.description}`);
        const params = describeDefaults(defaults);
        if (params) log(`model params (under each request's own): ${params}`);
      }
      served.info = info;
      return info;
    },
    async (e: unknown) => {
      closing = true;
      server.close();
      server.closeAllConnections();
      throw e;
    },
  );
  // The caller awaits `ready`; an unawaited rejection must not crash the process first.
  ready.catch(() => {});
  return { url, port, ready, metrics, close };
}

function asHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  if (isVramfitError(e) && e.exitCode === 2) return new HttpError(400, e.message, 'invalid_request_error');
  return new HttpError(500, 'internal error', 'internal_error');
}

function sendError(res: ServerResponse, e: HttpError, dialect: Dialect): void {
  sendJson(res, e.status, dialect === 'openai' ? openAiError(e) : { error: e.message }, e.headers);
}

interface Usage {
  promptTokens: number;
  completionTokens: number;
  totalMs: number;
  promptMs: number;
  evalMs: number;
  loadMs: number;
}

/** How a request's output is written: opened when its sequence starts, then deltas, then an end. */
interface Writer {
  start(): void;
  delta(text: string): void;
  finish(text: string, reason: 'stop' | 'length', usage: Usage): void;
  fail(e: HttpError): void;
}

function openAiWriter(res: ServerResponse, kind: string, id: string, created: number, model: string, p: GenerationParams): Writer {
  const chat = kind === 'chat';
  const object = chat ? 'chat.completion.chunk' : 'text_completion';
  const sse = (data: unknown): boolean => res.write(`data: ${JSON.stringify(data)}\n\n`);
  const chunk = (delta: string | null, finish: string | null): Record<string, unknown> => ({
    id,
    object,
    created,
    model,
    choices: [
      chat
        ? { index: 0, delta: delta === null ? {} : { content: delta }, logprobs: null, finish_reason: finish }
        : { index: 0, text: delta ?? '', logprobs: null, finish_reason: finish },
    ],
  });
  const usageOf = (u: Usage): Record<string, number> => ({
    prompt_tokens: u.promptTokens,
    completion_tokens: u.completionTokens,
    total_tokens: u.promptTokens + u.completionTokens,
  });
  return {
    start() {
      if (!p.stream) return;
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
      if (chat) sse({ id, object, created, model, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }] });
    },
    delta(text) {
      if (p.stream) sse(chunk(text, null));
    },
    finish(text, reason, u) {
      if (!p.stream) {
        const choice = chat
          ? { index: 0, message: { role: 'assistant', content: text }, logprobs: null, finish_reason: reason }
          : { index: 0, text, logprobs: null, finish_reason: reason };
        sendJson(res, 200, { id, object: chat ? 'chat.completion' : 'text_completion', created, model, choices: [choice], usage: usageOf(u) });
        return;
      }
      sse(chunk(null, reason));
      if (p.includeUsage) sse({ id, object, created, model, choices: [], usage: usageOf(u) });
      res.end('data: [DONE]\n\n');
    },
    fail(e) {
      if (!res.headersSent) return sendJson(res, e.status, openAiError(e), e.status === 503 ? { 'retry-after': '5' } : {});
      sse(openAiError(e));
      res.end('data: [DONE]\n\n');
    },
  };
}

function ollamaWriter(res: ServerResponse, kind: string, model: string, p: GenerationParams): Writer {
  const chat = kind === 'chat';
  const line = (o: unknown): boolean => res.write(`${JSON.stringify(o)}\n`);
  const piece = (text: string): Record<string, unknown> => (chat ? { message: { role: 'assistant', content: text } } : { response: text });
  const ns = (ms: number): number => Math.round(ms * 1e6);
  return {
    start() {
      if (p.stream) res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    },
    delta(text) {
      if (p.stream) line({ model, created_at: new Date().toISOString(), ...piece(text), done: false });
    },
    finish(text, reason, u) {
      const final = {
        model,
        created_at: new Date().toISOString(),
        ...piece(p.stream ? '' : text),
        done: true,
        done_reason: reason,
        total_duration: ns(u.totalMs),
        load_duration: ns(u.loadMs),
        prompt_eval_count: u.promptTokens,
        prompt_eval_duration: ns(u.promptMs),
        eval_count: u.completionTokens,
        eval_duration: ns(u.evalMs),
      };
      if (p.stream) res.end(`${JSON.stringify(final)}\n`);
      else sendJson(res, 200, final);
    },
    fail(e) {
      if (!res.headersSent) return sendJson(res, e.status, { error: e.message });
      res.end(`${JSON.stringify({ error: e.message })}\n`);
    },
  };
}

/** The model as Ollama's /api/tags lists one. */
function ollamaModel(s: Served): Record<string, unknown> {
  const info = s.info!;
  return {
    name: `${s.name}:latest`,
    model: `${s.name}:latest`,
    modified_at: new Date(s.startedAt).toISOString(),
    size: info.weightBytes,
    digest: '',
    details: {
      parent_model: '',
      format: info.format === 'gguf' ? 'gguf' : info.format,
      family: info.family,
      families: [info.family],
      parameter_size: `${(info.parameters / 1e9).toFixed(info.parameters < 1e9 ? 3 : 1)}B`,
      quantization_level: info.dtype.toUpperCase(),
    },
  };
}

/** /api/ps's extra fields: memory in total and on GPUs, and vramfit's per-device figures. */
function ollamaPs(s: Served): Record<string, unknown> {
  const stats = s.host.stats;
  const devices = stats?.devices ?? [];
  const gpu = devices.filter((d) => !d.name.startsWith('CPU')).reduce((sum, d) => sum + d.used, 0);
  return {
    size: devices.reduce((sum, d) => sum + d.used, 0),
    size_vram: gpu,
    expires_at: '9999-12-31T23:59:59Z',
    context_length: s.info!.ctx,
    devices: devices.map((d) => ({ id: d.id, name: d.name, cap: d.cap, used: d.used, peak: d.peak })),
  };
}

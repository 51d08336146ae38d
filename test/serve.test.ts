/**
 * `vramfit serve` against real clients on real sockets (127.0.0.1): the official `openai` package,
 * plain fetch for the Ollama API and the operational routes, raw sockets for slow clients.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import OpenAI, { APIError } from 'openai';
import { main } from '../src/cli/main.js';
import { loadModel } from '../src/engine/load.js';
import { startServer, type RunningServer } from '../src/server/server.js';
import { fixturesDir } from './helpers/paths.js';
import { writeTinyChatglmCheckpoint } from './helpers/tiny-chatglm.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { writeServedModel } from './helpers/tiny-served-model.js';

const root = tempDir('vramfit-serve-');
const dir = join(root, 'tiny');
writeServedModel(dir);
const KEY = 'test-key-123';
const LOAD = { devices: 'virtual:2', ctx: 128, ubatch: 16, threads: 1 } as const;

/** Caps that force the model across both virtual devices: the smallest share (from 60 % up) of one device's need that two devices can hold. */
async function splitCaps(parallel: number): Promise<string> {
  const probe = await loadModel(dir, { ...LOAD, devices: 'virtual:1', parallel });
  const need = probe.plan.devices.find((d) => d.id === '0')!.used;
  probe.dispose();
  for (const share of [0.6, 0.7, 0.8, 0.9]) {
    const cap = Math.ceil(need * share);
    const caps = `0=${cap}B,1=${cap}B`;
    const fits = await loadModel(dir, { ...LOAD, parallel, maxMemory: caps }).then(
      (m) => (m.dispose(), true),
      () => false,
    );
    if (fits) return caps;
  }
  throw new Error('no split fits');
}

/** `vramfit run --json` in-process: the reference a server response must equal. */
async function runText(args: string[]): Promise<{ text: string; ids: number[] }> {
  let out = '';
  const code = await main(['run', dir, '--json', '--devices', 'virtual:2', '--ctx', '128', '--threads', '1', ...args], {
    stdout: (s) => (out += s),
    stderr: () => {},
  });
  assert.equal(code, 0);
  const j = JSON.parse(out) as { text: string; generated_ids: number[] };
  return { text: j.text, ids: j.generated_ids };
}

function metricValues(text: string, name: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const [key, value] = [line.slice(0, line.lastIndexOf(' ')), Number(line.slice(line.lastIndexOf(' ') + 1))];
    out.set(key.slice(name.length) || '', value);
  }
  return out;
}

const PROMPTS = ['hello world', 'hello', 'world hello hello', 'é 世 🙂', 'the quick brown fox', 'hell', 'wor ld', 'hello world hello world hello'];

let server: RunningServer;
let client: OpenAI;
let caps: string;

before(async () => {
  caps = await splitCaps(4);
  server = await startServer({
    model: dir,
    load: { ...LOAD, parallel: 4, maxMemory: caps },
    port: 0,
    apiKey: KEY,
    name: 'tiny',
    maxQueue: 64,
    maxBody: 64 * 1024,
    headersTimeoutMs: 400,
  });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 });
  await server.ready;
});

after(async () => {
  await server?.close();
  cleanup(root);
});

describe('serve: the OpenAI API through the openai client', () => {
  it('lists the model', async () => {
    const models = await client.models.list();
    assert.deepEqual(
      models.data.map((m) => m.id),
      ['tiny'],
    );
  });

  it('a greedy chat completion equals `vramfit run --chat --greedy`, whole and streamed, with usage', async () => {
    const ref = await runText(['--prompt', 'hello world', '--chat', '--greedy', '--max-new-tokens', '12']);
    const r = await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'hello world' }], max_tokens: 12, temperature: 0 });
    assert.equal(r.object, 'chat.completion');
    assert.equal(r.choices[0]!.message.content, ref.text);
    assert.equal(r.choices[0]!.finish_reason, 'length');
    assert.equal(r.usage!.completion_tokens, 12);
    assert.equal(r.usage!.total_tokens, r.usage!.prompt_tokens + 12);

    const stream = await client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'hello world' }],
      max_completion_tokens: 12,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined;
    let chunks = 0;
    for await (const c of stream) {
      chunks++;
      text += c.choices[0]?.delta?.content ?? '';
      finish = c.choices[0]?.finish_reason ?? finish;
      if (c.usage) usage = c.usage;
    }
    assert.ok(chunks > 3, 'streamed in pieces');
    assert.equal(text, ref.text);
    assert.equal(finish, 'length');
    assert.deepEqual(usage, r.usage);
  });

  it('seeded sampling equals `vramfit run` with the same temperature, top_p and seed', async () => {
    const ref = await runText(['--prompt', 'hello', '--chat', '--temperature', '0.9', '--top-p', '0.95', '--seed', '7', '--max-new-tokens', '10']);
    const r = await client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'hello' }],
      max_tokens: 10,
      temperature: 0.9,
      top_p: 0.95,
      seed: 7,
    });
    assert.equal(r.choices[0]!.message.content, ref.text);
  });

  it('completions: text prompt, whole and streamed, equal `vramfit run --prompt`', async () => {
    const ref = await runText(['--prompt', 'hello world', '--greedy', '--max-new-tokens', '9']);
    const r = await client.completions.create({ model: 'tiny', prompt: 'hello world', max_tokens: 9, temperature: 0 });
    assert.equal(r.object, 'text_completion');
    assert.equal(r.choices[0]!.text, ref.text);
    const stream = await client.completions.create({ model: 'tiny', prompt: 'hello world', max_tokens: 9, temperature: 0, stream: true });
    let text = '';
    for await (const c of stream) text += c.choices[0]?.text ?? '';
    assert.equal(text, ref.text);
  });

  it('a stop string ends the text before it, with finish_reason stop', async () => {
    const whole = (await client.completions.create({ model: 'tiny', prompt: 'hello', max_tokens: 16, temperature: 0 })).choices[0]!.text;
    const chars = [...whole];
    assert.ok(chars.length >= 6, 'enough text to cut');
    const stop = chars.slice(3, 5).join('');
    const r = await client.completions.create({ model: 'tiny', prompt: 'hello', max_tokens: 16, temperature: 0, stop: [stop] });
    assert.equal(r.choices[0]!.text, whole.slice(0, whole.indexOf(stop)));
    assert.equal(r.choices[0]!.finish_reason, 'stop');
  });
});

describe('serve: ChatGLM3 (SentencePiece tokenizer.model, its own chat format)', () => {
  it('a chat completion equals `vramfit run --chat` on the same model', async () => {
    const glm = join(root, 'chatglm3');
    writeTinyChatglmCheckpoint(glm, 'chatglm3-32k', { paddedVocabSize: 576 });
    copyFileSync(join(fixturesDir, 'sentencepiece', 'tiny-bpe.model'), join(glm, 'tokenizer.model'));
    writeFileSync(join(glm, 'tokenizer_config.json'), JSON.stringify({ name_or_path: 'THUDM/chatglm3-6b', tokenizer_class: 'ChatGLMTokenizer' }));
    let out = '';
    const code = await main(['run', glm, '--chat', '--prompt', '你好', '--greedy', '--max-new-tokens', '10', '--json', '--threads', '1'], {
      stdout: (x) => (out += x),
      stderr: () => {},
    });
    assert.equal(code, 0);
    const s = await startServer({ model: glm, load: { devices: 'virtual:2', threads: 1, parallel: 2 }, port: 0, name: 'glm' });
    try {
      await s.ready;
      const c = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'none', maxRetries: 0 });
      const r = await c.chat.completions.create({ model: 'glm', messages: [{ role: 'user', content: '你好' }], max_tokens: 10, temperature: 0 });
      assert.equal(r.choices[0]!.message.content, (JSON.parse(out) as { text: string }).text);
      assert.equal(r.usage!.prompt_tokens, (JSON.parse(out) as { prompt_ids: number[] }).prompt_ids.length);
    } finally {
      await s.close();
    }
  });
});

describe('serve: continuous batching', () => {
  it('8 clients at once (4 slots, the rest queued) get their single-stream greedy results; every device stays under its cap', async () => {
    const ask = (content: string, stream: boolean): Promise<string> =>
      stream
        ? (async () => {
            let t = '';
            const s = await client.chat.completions.create({
              model: 'tiny',
              messages: [{ role: 'user', content }],
              max_tokens: 20,
              temperature: 0,
              stream: true,
            });
            for await (const c of s) t += c.choices[0]?.delta?.content ?? '';
            return t;
          })()
        : client.chat.completions
            .create({ model: 'tiny', messages: [{ role: 'user', content }], max_tokens: 20, temperature: 0 })
            .then((r) => r.choices[0]!.message.content ?? '');
    const single: string[] = [];
    for (const p of PROMPTS) single.push(await ask(p, false));

    let polling = true;
    let polls = 0;
    let sawBusy = 0;
    const watch = (async () => {
      while (polling) {
        const text = await (await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${KEY}` } })).text();
        const cap = metricValues(text, 'vramfit_device_cap_bytes');
        const used = metricValues(text, 'vramfit_device_used_bytes');
        const peak = metricValues(text, 'vramfit_device_peak_bytes');
        assert.equal(cap.size, 2, 'both devices are capped');
        for (const [k, c] of cap) {
          assert.ok(used.get(k)! <= c, `${k}: ${used.get(k)} in use ≤ cap ${c}`);
          assert.ok(peak.get(k)! <= c, `${k}: peak ${peak.get(k)} ≤ cap ${c}`);
          assert.ok(used.get(k)! > 0, `${k} holds part of the model`);
        }
        sawBusy = Math.max(sawBusy, metricValues(text, 'vramfit_slots_busy').get('')!);
        polls++;
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    const together = await Promise.all(PROMPTS.map((p, i) => ask(p, i % 2 === 0)));
    polling = false;
    await watch;
    assert.deepEqual(together, single);
    assert.ok(polls > 0);
    assert.ok(sawBusy > 1, `sequences ran together (${sawBusy} slots busy at once)`);
  });

  it('a soak of 200 requests, 16 at a time, random lengths and random disconnects: nothing lost, nothing leaked', async (t) => {
    const metrics = async (): Promise<string> => (await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${KEY}` } })).text();
    const idle = await metrics();
    let seed = 12345;
    const rand = (): number => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    const words = ['hello', 'world', 'é', '世', 'fox', 'the', '🙂', 'hell'];
    let next = 0;
    const outcome = { completed: 0, aborted: 0, failed: [] as string[] };
    const rssBefore = process.memoryUsage().rss;
    const worker = async (): Promise<void> => {
      while (next < 200) {
        next++;
        const prompt = Array.from({ length: 1 + Math.floor(rand() * 12) }, () => words[Math.floor(rand() * words.length)]).join(' ');
        const maxTokens = 1 + Math.floor(rand() * 24);
        const abort = rand() < 0.25 ? new AbortController() : undefined;
        if (abort) setTimeout(() => abort.abort(), Math.floor(rand() * 20));
        try {
          const s = await client.chat.completions.create(
            { model: 'tiny', messages: [{ role: 'user', content: prompt }], max_tokens: maxTokens, temperature: 0.8, seed: next, stream: true },
            abort ? { signal: abort.signal } : {},
          );
          let finish: string | null = null;
          for await (const c of s) finish = c.choices[0]?.finish_reason ?? finish;
          assert.ok(finish === 'length' || finish === 'stop', `finished (${finish})`);
          outcome.completed++;
        } catch (e) {
          if (abort?.signal.aborted) outcome.aborted++;
          else outcome.failed.push(String(e));
        }
      }
    };
    await Promise.all(Array.from({ length: 16 }, worker));
    assert.deepEqual(outcome.failed, []);
    assert.equal(outcome.completed + outcome.aborted, 200);
    assert.ok(outcome.aborted > 10, `some clients went away (${outcome.aborted})`);
    // Cancellations reach the worker between steps: wait until every slot is back.
    let health: { slots: { total: number; busy: number; free: number }; queue: number } | undefined;
    for (let i = 0; i < 200; i++) {
      health = (await (await fetch(`${server.url}/health`)).json()) as typeof health;
      if (health!.slots.busy === 0 && health!.queue === 0) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.deepEqual(health!.slots, { total: 4, busy: 0, free: 4 });
    const done = await metrics();
    for (const name of ['vramfit_native_buffers', 'vramfit_device_used_bytes'])
      assert.deepEqual(metricValues(done, name), metricValues(idle, name), `${name} back to its idle value`);
    assert.ok(metricValues(done, 'vramfit_cached_graphs').get('')! <= 2 * 8, 'graphs kept stay bounded');
    assert.ok(metricValues(done, 'vramfit_cancelled_total').get('')! > 0, 'disconnects cancelled their sequences');
    const grown = process.memoryUsage().rss - rssBefore;
    t.diagnostic(
      `soak: ${outcome.completed} completed, ${outcome.aborted} disconnected, ${metricValues(done, 'vramfit_cancelled_total').get('')} cancelled in the engine; RSS ${(grown / 2 ** 20).toFixed(1)} MiB more`,
    );
    assert.ok(grown < 256 * 1024 * 1024, `RSS grew ${grown} bytes over the soak`);
    // Still serving.
    const r = await client.completions.create({ model: 'tiny', prompt: 'hello', max_tokens: 3, temperature: 0 });
    assert.equal(r.usage!.completion_tokens, 3);
  });
});

describe('serve: the Ollama API', () => {
  const post = (path: string, body: unknown): Promise<Response> =>
    fetch(`${server.url}${path}`, { method: 'POST', headers: { authorization: `Bearer ${KEY}` }, body: JSON.stringify(body) });

  it('/api/chat streams NDJSON ending in done: true with counts; stream: false gives one object; text equals the OpenAI route', async () => {
    const ref = (await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'hello' }], max_tokens: 8, temperature: 0 }))
      .choices[0]!.message.content;
    const res = await post('/api/chat', { model: 'tiny', messages: [{ role: 'user', content: 'hello' }], options: { num_predict: 8, temperature: 0 } });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type')!, /ndjson/);
    const lines = (await res.text())
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { message: { content: string }; done: boolean; eval_count?: number; prompt_eval_count?: number; done_reason?: string });
    assert.equal(lines.at(-1)!.done, true);
    assert.ok(lines.slice(0, -1).every((l) => !l.done));
    assert.equal(lines.map((l) => l.message.content).join(''), ref);
    assert.equal(lines.at(-1)!.eval_count, 8);
    assert.equal(lines.at(-1)!.done_reason, 'length');
    assert.ok(lines.at(-1)!.prompt_eval_count! > 0);
    const whole = (await (
      await post('/api/chat', {
        model: 'tiny:latest',
        messages: [{ role: 'user', content: 'hello' }],
        stream: false,
        options: { num_predict: 8, temperature: 0 },
      })
    ).json()) as {
      message: { content: string };
      done: boolean;
    };
    assert.equal(whole.done, true);
    assert.equal(whole.message.content, ref);
  });

  it('/api/generate renders the prompt through the chat template (raw: true does not)', async () => {
    const chat = (await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'hello' }], max_tokens: 6, temperature: 0 }))
      .choices[0]!.message.content;
    const raw = (await client.completions.create({ model: 'tiny', prompt: 'hello', max_tokens: 6, temperature: 0 })).choices[0]!.text;
    const gen = (await (
      await post('/api/generate', { model: 'tiny', prompt: 'hello', stream: false, options: { num_predict: 6, temperature: 0 } })
    ).json()) as { response: string };
    assert.equal(gen.response, chat);
    const rawGen = (await (
      await post('/api/generate', { model: 'tiny', prompt: 'hello', raw: true, stream: false, options: { num_predict: 6, temperature: 0 } })
    ).json()) as {
      response: string;
    };
    assert.equal(rawGen.response, raw);
  });

  it('/api/tags and /api/ps describe the model; ps gives per-device memory', async () => {
    const auth = { headers: { authorization: `Bearer ${KEY}` } };
    const tags = (await (await fetch(`${server.url}/api/tags`, auth)).json()) as { models: { name: string; details: { family: string } }[] };
    assert.equal(tags.models[0]!.name, 'tiny:latest');
    assert.equal(tags.models[0]!.details.family, 'llama');
    const ps = (await (await fetch(`${server.url}/api/ps`, auth)).json()) as {
      models: { size: number; devices: { id: string; cap: number; used: number }[] }[];
    };
    const devices = ps.models[0]!.devices;
    assert.deepEqual(
      devices.map((d) => d.id),
      ['0', '1'],
    );
    for (const d of devices) assert.ok(d.used > 0 && d.used <= d.cap);
    assert.equal(ps.models[0]!.size, devices[0]!.used + devices[1]!.used);
  });
});

describe('serve: bad input gets its status and a message', () => {
  const raw = (path: string, init: RequestInit & { key?: string | null } = {}): Promise<Response> => {
    const headers: Record<string, string> = { 'content-type': 'application/json', ...(init.headers as Record<string, string>) };
    if (init.key !== null) headers['authorization'] = `Bearer ${init.key ?? KEY}`;
    return fetch(`${server.url}${path}`, { ...init, headers });
  };
  const expectError = async (res: Response, status: number, pattern: RegExp, param?: string): Promise<void> => {
    assert.equal(res.status, status);
    const body = (await res.json()) as { error: { message: string; type: string; param: string | null; code: string | null } };
    assert.match(body.error.message, pattern);
    assert.equal(typeof body.error.type, 'string');
    if (param !== undefined) assert.equal(body.error.param, param);
  };
  const chat = (body: Record<string, unknown>): RequestInit => ({
    method: 'POST',
    body: JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], ...body }),
  });

  it('malformed JSON, a non-object body, wrong types, n > 1, negative max_tokens: 400 naming the parameter', async () => {
    await expectError(await raw('/v1/chat/completions', { method: 'POST', body: '{"model": "tiny", ' }), 400, /not valid JSON/);
    await expectError(await raw('/v1/chat/completions', { method: 'POST', body: '[1, 2]' }), 400, /JSON object/);
    await expectError(await raw('/v1/chat/completions', chat({ messages: 'hi' })), 400, /non-empty array/, 'messages');
    await expectError(await raw('/v1/chat/completions', chat({ messages: [{ role: 'wizard', content: 'x' }] })), 400, /role/, 'messages[0].role');
    await expectError(await raw('/v1/chat/completions', chat({ temperature: 'hot' })), 400, /expected a number/, 'temperature');
    await expectError(await raw('/v1/chat/completions', chat({ temperature: 3 })), 400, /from 0 to 2/, 'temperature');
    await expectError(await raw('/v1/chat/completions', chat({ max_tokens: -5 })), 400, /from 1/, 'max_tokens');
    await expectError(await raw('/v1/chat/completions', chat({ max_tokens: 2.5 })), 400, /integer/, 'max_tokens');
    await expectError(await raw('/v1/chat/completions', chat({ n: 2 })), 400, /only 1 choice/, 'n');
    await expectError(await raw('/v1/chat/completions', chat({ stop: [''] })), 400, /non-empty string/, 'stop');
    await expectError(await raw('/v1/chat/completions', chat({ logprobs: true })), 400, /not supported/, 'logprobs');
    await expectError(await raw('/v1/completions', { method: 'POST', body: JSON.stringify({ model: 'tiny', prompt: 7 }) }), 400, /prompt/, 'prompt');
    await expectError(
      await raw('/v1/completions', { method: 'POST', body: JSON.stringify({ model: 'tiny', prompt: [999999] }) }),
      400,
      /outside the vocabulary/,
    );
  });

  it('the openai client surfaces a bad parameter as a 400 APIError', async () => {
    await assert.rejects(
      client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'x' }], n: 3 }),
      (e: unknown) => e instanceof APIError && e.status === 400 && /only 1 choice/.test(e.message),
    );
  });

  it('a prompt beyond the slot context: 400 context_length_exceeded before any work', async () => {
    const long = 'hello '.repeat(200);
    const res = await raw('/v1/chat/completions', chat({ messages: [{ role: 'user', content: long }] }));
    assert.equal(res.status, 400);
    const body = (await res.json()) as { error: { code: string; message: string } };
    assert.equal(body.error.code, 'context_length_exceeded');
    assert.match(body.error.message, /a slot holds 128/);
  });

  it('unknown model: 404; unknown route: 404; wrong method: 405', async () => {
    await expectError(await raw('/v1/chat/completions', chat({ model: 'gpt-4o' })), 404, /not served here/, 'model');
    await expectError(await raw('/v1/nothing'), 404, /no route/);
    await expectError(await raw('/v1/models', { method: 'POST', body: '{}' }), 405, /takes GET/);
  });

  it('missing or wrong API key: 401; /health needs none', async () => {
    await expectError(await raw('/v1/models', { key: null }), 401, /API key/);
    await expectError(await raw('/v1/models', { key: 'wrong' }), 401, /API key/);
    await expectError(await raw('/v1/chat/completions', { ...chat({}), key: 'test-key-12' }), 401, /API key/);
    assert.equal((await raw('/health', { key: null })).status, 200);
  });

  it('a body over the limit: 413', async () => {
    await expectError(
      await raw('/v1/chat/completions', chat({ messages: [{ role: 'user', content: 'x'.repeat(100 * 1024) }] })),
      413,
      /over the 65536-byte limit/,
    );
  });

  it('a client that never finishes its headers is cut off with 408', async () => {
    const t0 = Date.now();
    const reply = await new Promise<string>((resolve, reject) => {
      const socket = connect(server.port, '127.0.0.1', () =>
        socket.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'),
      );
      let got = '';
      socket.on('data', (d) => (got += String(d)));
      socket.on('close', () => resolve(got));
      socket.on('error', reject);
      setTimeout(() => reject(new Error('the slow client was never cut off')), 5000).unref();
    });
    assert.match(reply, /^HTTP\/1\.1 408/);
    assert.ok(Date.now() - t0 < 4000);
  });
});

describe('serve: admission, cancellation, loading and shutdown', () => {
  it('one slot and a queue of one: the third concurrent request gets 429 with Retry-After; a client that disconnects frees its slot at once', async () => {
    const s = await startServer({
      model: dir,
      load: { devices: 'virtual:1', ctx: 512, ubatch: 16, threads: 1, parallel: 1 },
      port: 0,
      name: 'tiny',
      maxQueue: 1,
    });
    try {
      await s.ready;
      const c = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'none', maxRetries: 0 });
      const abort = new AbortController();
      const long = await c.completions.create({ model: 'tiny', prompt: 'hello', max_tokens: 500, temperature: 0, stream: true }, { signal: abort.signal });
      const it = long[Symbol.asyncIterator]();
      await it.next();
      const queued = c.completions.create({ model: 'tiny', prompt: 'hello', max_tokens: 2, temperature: 0 });
      await new Promise((r) => setTimeout(r, 50));
      const third = await fetch(`${s.url}/v1/completions`, { method: 'POST', body: JSON.stringify({ model: 'tiny', prompt: 'hi', max_tokens: 2 }) });
      assert.equal(third.status, 429);
      assert.equal(third.headers.get('retry-after'), '1');
      assert.equal(((await third.json()) as { error: { code: string } }).error.code, 'queue_full');
      abort.abort();
      await it.next().catch(() => {});
      const r = await queued;
      assert.equal(r.usage!.completion_tokens, 2, 'the queued request ran once the slot was freed');
      const m = await (await fetch(`${s.url}/metrics`)).text();
      assert.equal(metricValues(m, 'vramfit_cancelled_total').get(''), 1);
      assert.equal(metricValues(m, 'vramfit_slots_busy').get(''), 0);
    } finally {
      const stats = await s.close();
      assert.equal(stats.native.buffers, 0, 'every device buffer freed');
    }
  });

  it('closing with no grace left cancels a running stream with a final error event and [DONE], and frees every buffer', async () => {
    const s = await startServer({ model: dir, load: { devices: 'virtual:1', ctx: 512, ubatch: 16, threads: 1 }, port: 0, name: 'tiny', shutdownGraceMs: 0 });
    await s.ready;
    const res = await fetch(`${s.url}/v1/chat/completions`, {
      method: 'POST',
      body: JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content: 'hello' }], max_tokens: 500, temperature: 0, stream: true }),
    });
    const reader = res.body!.getReader();
    let body = new TextDecoder().decode((await reader.read()).value);
    const closing = s.close();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      body += new TextDecoder().decode(value);
    }
    const stats = await closing;
    assert.match(body, /data: \{"error":\{"message":"the server is shutting down"[^\n]*\n\ndata: \[DONE\]\n\n$/);
    assert.equal(stats.native.buffers, 0);
    assert.equal((await fetch(`${s.url}/health`).catch(() => undefined))?.status, undefined, 'no longer listening');
  });

  it('/health answers 503 while the model loads and 200 once ready', async () => {
    const s = await startServer({ model: dir, load: { ...LOAD, parallel: 2 }, port: 0, name: 'tiny' });
    try {
      const first = await fetch(`${s.url}/health`);
      assert.equal(first.status, 503);
      assert.deepEqual(await first.json(), { status: 'loading' });
      const chat = await fetch(`${s.url}/v1/models`);
      assert.equal(chat.status, 200, 'other routes answer while loading');
      await s.ready;
      const ok = (await (await fetch(`${s.url}/health`)).json()) as { status: string; slots: { total: number } };
      assert.equal(ok.status, 'ok');
      assert.equal(ok.slots.total, 2);
    } finally {
      await s.close();
    }
  });

  it('--parallel auto takes the most slots whose KV cache and workspace fit the caps', async () => {
    const capped = { ...LOAD, devices: 'virtual:1', maxMemory: '0=2MiB' };
    const m = await loadModel(dir, { ...capped, parallel: 'auto' });
    const n = m.slots;
    m.dispose();
    assert.ok(n > 1 && n < 64, `${n} slots`);
    await assert.rejects(loadModel(dir, { ...capped, parallel: n + 1 }), /does not fit|short/);
  });

  it('a model that cannot load (no tokenizer) or a port in use: a clear error, nothing left running', async () => {
    const bare = join(root, 'bare');
    (await import('./helpers/tiny-llama-family.js')).writeTinyFamilyCheckpoint(bare, 'llama3', { seed: 1 });
    const s = await startServer({ model: bare, load: { ...LOAD }, port: 0 });
    await assert.rejects(s.ready, /serve needs the model's tokenizer/);
    await s.close();
    await assert.rejects(startServer({ model: dir, load: { ...LOAD }, port: server.port }), /--port: \d+ is in use/);
  });

  it('bad serve flags: exit 2 with one line naming the flag, before anything loads', async () => {
    const cases: [string[], RegExp][] = [
      [['--port', '70000'], /^vramfit: --port: expected an integer from 0 to 65535, got "70000"\n$/],
      [['--parallel', '0'], /^vramfit: --parallel: expected an integer from 1 to 256/],
      [['--parallel', 'many'], /^vramfit: --parallel: /],
      [['--host', 'example.com'], /^vramfit: --host: expected an IP address or localhost/],
      [['--kv-dtype', 'q5_k'], /^vramfit: --kv-dtype: the engine keeps the KV cache in float32, float16, q8_0, q4_0, not q5_k/],
      [['--api-key', ''], /^vramfit: --api-key: an empty key would let anyone in/],
      [['--queue', '-1'], /^vramfit: --queue: /],
    ];
    for (const [args, pattern] of cases) {
      let err = '';
      const code = await main(['serve', dir, ...args], { stdout: () => {}, stderr: (s) => (err += s) });
      assert.equal(code, 2, args.join(' '));
      assert.match(err, pattern);
      assert.equal(err.trim().split('\n').length, 1, 'one line');
    }
  });

  it('SIGTERM while streaming: the stream ends with a final event, the process frees every buffer and exits 0', async () => {
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        '--input-type=module',
        '-e',
        `import { main } from './src/cli/main.ts'; process.exitCode = await main(${JSON.stringify(['serve', dir, '--port', '0', '--devices', 'virtual:2', '--ctx', '512', '--threads', '1', '--name', 'tiny'])});`,
      ],
      { cwd: new URL('..', import.meta.url), stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += String(d)));
    const url = await new Promise<string>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => {
        out += String(d);
        const m = /serving .* at (http:\/\/\S+) /.exec(out);
        if (m) resolve(m[1]!);
      });
      child.on('close', () => reject(new Error(`serve exited early: ${err}`)));
    });
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      body: JSON.stringify({ model: 'tiny', prompt: 'hello', max_tokens: 500, temperature: 0, stream: true }),
    });
    const reader = res.body!.getReader();
    let body = String.fromCharCode(...(await reader.read()).value!);
    child.kill('SIGTERM');
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      body += new TextDecoder().decode(value);
    }
    const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
    assert.equal(code, 0, err);
    assert.match(body, /data: \[DONE\]\n\n$/, 'the stream ended properly');
    assert.match(body, /"finish_reason":"length"|shutting down/);
    assert.match(err, /native buffers left: 0/);
  });
});

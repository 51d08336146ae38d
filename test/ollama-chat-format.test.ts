/**
 * A model run from Ollama's store is formatted and sampled as Ollama would: its Go template (with the manifest's
 * system prompt), its stop strings and its params, with flags and request fields overriding them. Fake stores in
 * temp folders, a tiny GGUF with a real byte-level BPE vocabulary and a ChatML Jinja template in its metadata.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { samplingFrom } from '../src/cli/run-action.js';
import { createChatFormat, readModelDefaults, storeDefaults } from '../src/engine/text/chat-format.js';
import { loadGgufTokenizer } from '../src/engine/text/gguf-tokenizer.js';
import type { TextTokenizer } from '../src/engine/text/tokenizer.js';
import { chatRequest, ollamaChatRequest } from '../src/server/params.js';
import { startServer } from '../src/server/server.js';
import { InputError } from '../src/util/errors.js';
import type { GgufWriteValue } from '../src/reader/formats/gguf-writer.js';
import { ggufVocabMetadata } from './helpers/gguf-vocab.js';
import { writeOllamaModel } from './helpers/ollama-store.js';
import { writeTinyGguf } from './helpers/tiny-gguf.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { writeServedModel } from './helpers/tiny-served-model.js';
import { cli } from './helpers/run-cli.js';

const root = tempDir('vramfit-ollama-chat-');
const store = join(root, 'ollama');
const savedEnv = process.env.OLLAMA_MODELS;
after(() => {
  if (savedEnv === undefined) delete process.env.OLLAMA_MODELS;
  else process.env.OLLAMA_MODELS = savedEnv;
  cleanup(root);
});

/** Round by round, with specials (<|im_start|>, <|im_end|>) the tokenizer must read as single tokens. */
const SIMPLE =
  '{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n{{ .Response }}';
/** Once over the whole conversation. */
const MESSAGES =
  '{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}' +
  '{{- range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}{{ end }}<|im_start|>assistant\n';
const SYSTEM = 'You are terse.';

let gguf: Buffer;
let noJinjaGguf: Buffer;
let tok: TextTokenizer;
const manifests: Record<string, string> = {};

before(() => {
  process.env.OLLAMA_MODELS = store;
  const ck = writeServedModel(join(root, 'served'));
  const meta: Record<string, GgufWriteValue> = { ...ggufVocabMetadata(ck.dir, { pre: 'gpt-2' }), 'tokenizer.ggml.add_bos_token': true };
  const path = writeTinyGguf(ck, 'float32', meta, 'tok.gguf');
  gguf = readFileSync(path);
  tok = loadGgufTokenizer(path);
  const { ['tokenizer.chat_template']: _jinja, ...withoutJinja } = meta;
  noJinjaGguf = readFileSync(writeTinyGguf(ck, 'float32', withoutJinja, 'nojinja.gguf'));
  const add = (name: string, spec: Omit<Parameters<typeof writeOllamaModel>[2], 'gguf'> & { gguf?: Buffer }): void => {
    manifests[name] = writeOllamaModel(store, name, { gguf, ...spec });
  };
  add('simple', { template: SIMPLE, system: SYSTEM });
  add('msgs', { template: MESSAGES, system: SYSTEM });
  add('writes-bos', { template: '<s>{{ .Prompt }}' });
  add('broken', { template: '{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}' });
  add('unsupported', { template: '{{ template "x" }}{{ .Prompt }}' });
  add('broken-nojinja', { gguf: noJinjaGguf, template: '{{ .Prompt ' });
  add('bad-temperature', { template: SIMPLE, params: { temperature: 'hot' } });
  add('bad-stop', { template: SIMPLE, params: { stop: '<|im_end|>' } });
  add('sampler', { template: SIMPLE, params: { temperature: 0.7, top_k: 5, top_p: 0.9, seed: 3, num_predict: 3, repeat_penalty: 1.1 } });
  add('small-ctx', { template: SIMPLE, params: { num_ctx: 16 } });
  add('huge-ctx', { template: SIMPLE, params: { num_ctx: 1_000_000 } });
});

const RUN = ['--devices', 'virtual:1', '--threads', '1'];
const id = (token: string): number => tok.tokenToId(token)!;
/** BOS (the vocabulary adds it) and the text with its specials as single tokens. */
const expectedIds = (text: string): number[] => tok.encode(text, { addSpecialTokens: true });

interface RunJson {
  prompt_ids: number[];
  generated_ids: number[];
  text: string;
  stop: string;
  chat_template?: string;
}

describe('chat prompts of an Ollama model use its Go template', () => {
  it('a round-by-round template, with the manifest system prompt in front: the ids of the hand-rendered text, one BOS', async () => {
    const expected = `<|im_start|>system\n${SYSTEM}<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n`;
    const r = await cli(['tokenize', 'simple', '--chat', '--text', 'hello world', '--json']);
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out) as { ids: number[]; chat_template: string };
    assert.deepEqual(j.ids, expectedIds(expected));
    assert.equal(j.ids[0], tok.bosTokenId);
    assert.notEqual(j.ids[1], tok.bosTokenId);
    assert.equal(j.ids[1], id('<|im_start|>'));
    assert.equal(j.ids.filter((x) => x === id('<|im_end|>')).length, 2);
    assert.match(j.chat_template, /Ollama template/);
    assert.ok(j.chat_template.includes(manifests['simple']!), j.chat_template);
    // Not the GGUF's own (ChatML Jinja) template, which has no system prompt.
    assert.notDeepEqual(j.ids, tok.encodeChat([{ role: 'user', content: 'hello world' }], { addGenerationPrompt: true }));
  });

  it('vramfit run --chat feeds the same ids', async () => {
    const r = await cli(['run', 'simple', '--chat', '--prompt', 'hello world', '--max-new-tokens', '1', '--json', ...RUN]);
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out) as RunJson;
    assert.deepEqual(j.prompt_ids, expectedIds(`<|im_start|>system\n${SYSTEM}<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n`));
    assert.match(j.chat_template!, /Ollama template .*system prompt/);
  });

  it('a .Messages template renders the whole conversation; a request system message replaces the default', async () => {
    const { store: s } = await readModelDefaults('msgs');
    const format = createChatFormat(tok, s);
    assert.equal(format.kind, 'ollama');
    const chat = [
      { role: 'user', content: 'hi' },
      { role: 'assistant', content: 'hello' },
      { role: 'user', content: 'world' },
    ];
    const expected =
      `<|im_start|>system\n${SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n` +
      '<|im_start|>user\nworld<|im_end|>\n<|im_start|>assistant\n';
    assert.equal(format.render(chat, { addGenerationPrompt: true }), expected);
    assert.deepEqual(format.encodeChat(chat, { addGenerationPrompt: true }), expectedIds(expected));
    const own = [{ role: 'system', content: 'Be kind.' }, ...chat];
    assert.deepEqual(format.encodeChat(own, { addGenerationPrompt: true }), expectedIds(expected.replace(SYSTEM, 'Be kind.')));
  });

  it('a template that writes BOS itself does not get a second one', async () => {
    const { store: s } = await readModelDefaults('writes-bos');
    const ids = createChatFormat(tok, s).encodeChat([{ role: 'user', content: 'hello' }], { addGenerationPrompt: true });
    assert.deepEqual(ids, expectedIds('hello'));
    assert.equal(ids.filter((x) => x === tok.bosTokenId).length, 1);
  });

  for (const name of ['broken', 'unsupported']) {
    it(`a template that does not parse (${name}) falls back to the GGUF's own chat template, with a one-line warning naming why`, async () => {
      const r = await cli(['tokenize', name, '--chat', '--text', 'hello', '--json']);
      assert.equal(r.code, 0, r.err);
      const j = JSON.parse(r.out) as { ids: number[]; chat_template: string };
      assert.deepEqual(j.ids, tok.encodeChat([{ role: 'user', content: 'hello' }], { addGenerationPrompt: true }));
      const warnings = r.err.trim().split('\n');
      assert.equal(warnings.length, 1, r.err);
      assert.match(warnings[0]!, /^warning: /);
      assert.ok(warnings[0]!.includes(manifests[name]!), warnings[0]);
      assert.match(warnings[0]!, name === 'broken' ? /syntax error/ : /not supported/);
      assert.match(j.chat_template, /tokenizer's chat template/);
    });
  }

  it('a template that does not parse, with no chat template in the GGUF either: exit 2, one line naming the manifest', async () => {
    const r = await cli(['tokenize', 'broken-nojinja', '--chat', '--text', 'hello']);
    assert.equal(r.code, 2, r.out);
    const lines = r.err.trim().split('\n');
    assert.equal(lines.length, 1, r.err);
    assert.ok(lines[0]!.includes(manifests['broken-nojinja']!), lines[0]);
    assert.match(lines[0]!, /syntax error.*no chat template of its own/);
    const run = await cli(['run', 'broken-nojinja', '--chat', '--prompt', 'hello', '--max-new-tokens', '1', ...RUN]);
    assert.equal(run.code, 2);
    assert.ok(run.err.includes(manifests['broken-nojinja']!), run.err);
    // Without --chat the template is not needed.
    assert.equal((await cli(['tokenize', 'broken-nojinja', '--text', 'hello'])).code, 0);
  });
});

describe("an Ollama model's params", () => {
  it('are checked: a wrong type is exit 2 with one line naming the manifest and the key', async () => {
    for (const [name, key] of [
      ['bad-temperature', 'temperature'],
      ['bad-stop', 'stop'],
    ] as const) {
      const r = await cli(['run', name, '--prompt', 'hello', '--max-new-tokens', '1', ...RUN]);
      assert.equal(r.code, 2, r.out);
      const lines = r.err.trim().split('\n');
      assert.equal(lines.length, 1, r.err);
      assert.ok(lines[0]!.includes(`${manifests[name]!}: params ${key}`), lines[0]);
    }
    assert.throws(
      () => storeDefaults({ kind: 'ollama', name: 'x', manifest: '/m', params: { top_k: 2.5, num_ctx: 4 } }),
      (e: unknown) => e instanceof InputError && e.where === '/m: params top_k' && !e.message.includes('\n'),
    );
    await assert.rejects(
      startServer({ model: 'bad-temperature', load: { devices: 'virtual:1', threads: 1 }, port: 0 }),
      (e: unknown) => e instanceof InputError && e.message.includes(`${manifests['bad-temperature']!}: params temperature`),
    );
  });

  it('keep only the keys they set, with Ollama meanings for -1 and 0; keys vramfit does not apply are listed', () => {
    const s = (params: Record<string, unknown>) => storeDefaults({ kind: 'ollama', name: 'x', manifest: '/m', params });
    assert.deepEqual(s({ stop: ['a', 'a', 'b'], num_ctx: 8192 }), { defaults: { stop: ['a', 'b'], numCtx: 8192 }, ignored: [] });
    assert.deepEqual(s({ seed: -1, top_k: 0, num_predict: -1, min_p: 0.05 }), { defaults: { numPredict: 'unlimited' }, ignored: ['min_p'] });
    assert.deepEqual(storeDefaults(undefined), { defaults: {}, ignored: [] });
    assert.deepEqual(storeDefaults({ kind: 'lmstudio', name: 'x' }), { defaults: {}, ignored: [] });
  });

  it('sampling: the params fill in what the flags leave out; a flag wins; --greedy wins over all', async () => {
    const { defaults: d, ignored } = await readModelDefaults('sampler');
    assert.deepEqual(ignored, ['repeat_penalty']);
    assert.deepEqual(samplingFrom({}, d), { seed: 3, temperature: 0.7, topK: 5, topP: 0.9 });
    assert.deepEqual(samplingFrom({ temperature: '0.5', seed: '9' }, d), { seed: 9, temperature: 0.5, topK: 5, topP: 0.9 });
    assert.deepEqual(samplingFrom({ topK: '2' }, d), { seed: 3, temperature: 0.7, topK: 2, topP: 0.9 });
    assert.deepEqual(samplingFrom({ greedy: true }, d), { seed: 3, greedy: true });
    // Ollama's temperature 0 is greedy, unless the user asks to sample.
    assert.deepEqual(samplingFrom({}, { temperature: 0, topK: 40 }), { greedy: true });
    assert.deepEqual(samplingFrom({ topP: '0.5' }, { temperature: 0 }), { topP: 0.5 });
    // No params: greedy, as before.
    assert.deepEqual(samplingFrom({}, {}), { greedy: true });
  });

  it('num_predict is the default --max-new-tokens; the flag overrides it', async () => {
    const byParams = await cli(['run', 'sampler', '--prompt', 'hello', '--json', ...RUN]);
    assert.equal(byParams.code, 0, byParams.err);
    const a = JSON.parse(byParams.out) as RunJson & { model_defaults: string };
    assert.ok(a.generated_ids.length === 3 || a.stop === 'eos', byParams.out);
    assert.match(a.model_defaults, /temperature 0\.7.*not applied: repeat_penalty/);
    const byFlag = await cli(['run', 'sampler', '--prompt', 'hello', '--json', '--max-new-tokens', '1', ...RUN]);
    assert.equal((JSON.parse(byFlag.out) as RunJson).generated_ids.length, 1);
  });

  it('num_ctx is the context when --ctx is not given, cut to the trained context as Ollama does', async () => {
    const small = await cli(['run', 'small-ctx', '--prompt', 'hello', '--json', '--max-new-tokens', '40', '--greedy', ...RUN]);
    assert.equal(small.code, 0, small.err);
    const j = JSON.parse(small.out) as RunJson;
    if (j.stop !== 'eos') {
      assert.equal(j.stop, 'context-full');
      // The cache holds 16 tokens; the last one generated is sampled from it and never stored.
      assert.equal(j.prompt_ids.length + j.generated_ids.length, 16 + 1);
    }
    const wide = await cli(['run', 'small-ctx', '--prompt', 'hello', '--json', '--max-new-tokens', '20', '--greedy', '--ctx', '64', ...RUN]);
    const w = JSON.parse(wide.out) as RunJson;
    assert.ok(w.stop === 'max-new-tokens' || w.stop === 'eos', w.stop);
    const huge = await readModelDefaults('huge-ctx');
    assert.equal(huge.ctx, 512);
    assert.match(huge.notes.join(), /num_ctx 1000000 .* 512 tokens/);
    assert.equal((await readModelDefaults('small-ctx')).ctx, 16);
    assert.equal((await readModelDefaults(join(root, 'served'))).ctx, undefined);
  });

  it('stop strings end vramfit run, added to --stop', async () => {
    const free = await cli(['run', 'simple', '--chat', '--prompt', 'hello', '--json', '--max-new-tokens', '12', ...RUN]);
    assert.equal(free.code, 0, free.err);
    const text = (JSON.parse(free.out) as RunJson).text;
    // A stop string from the middle of the greedy text: the first character that is not at its start.
    const at = [...text].findIndex((c, i) => i > 0 && c.trim() !== '' && c !== '\ufffd' && !text.slice(0, i).includes(c));
    assert.ok(at > 0, `greedy text ${JSON.stringify(text)} has a character to stop at`);
    const stop = [...text][at]!;
    const prefix = text.slice(0, text.indexOf(stop));
    writeOllamaModel(store, 'stopper', { gguf, template: SIMPLE, system: SYSTEM, params: { stop: [stop] } });
    assert.deepEqual((await readModelDefaults('stopper')).defaults.stop, [stop]);
    const stopped = await cli(['run', 'stopper', '--chat', '--prompt', 'hello', '--json', '--max-new-tokens', '12', ...RUN]);
    const s = JSON.parse(stopped.out) as RunJson;
    assert.equal(s.stop, 'stop-string');
    assert.equal(s.text, prefix);
    // The user's --stop still applies beside the model's.
    const both = await cli(['run', 'stopper', '--chat', '--prompt', 'hello', '--json', '--max-new-tokens', '12', '--stop', [...text][0]!, ...RUN]);
    const b = JSON.parse(both.out) as RunJson;
    assert.equal(b.stop, 'stop-string');
    assert.equal(b.text, '');
  });

  it('in the server, request fields win and the model fills in; stop lists are merged', () => {
    const d = { stop: ['<|im_end|>'], temperature: 0.3, topK: 7, topP: 0.8, seed: 5, numPredict: 9 };
    const body = { model: 'm', messages: [{ role: 'user', content: 'x' }] };
    const o = ollamaChatRequest(body, d).params;
    assert.deepEqual(o.sampling, { temperature: 0.3, topK: 7, topP: 0.8, seed: 5 });
    assert.deepEqual(o.stop, ['<|im_end|>']);
    assert.equal(o.maxTokens, 9);
    const given = ollamaChatRequest({ ...body, options: { temperature: 1.2, top_k: 2, stop: ['x'], num_predict: -1 } }, d).params;
    assert.deepEqual(given.sampling, { temperature: 1.2, topK: 2, topP: 0.8, seed: 5 });
    assert.deepEqual(given.stop, ['x', '<|im_end|>']);
    assert.equal(given.maxTokens, undefined);
    const a = chatRequest({ ...body, max_tokens: 4 }, d).params;
    assert.deepEqual(a.sampling, { temperature: 0.3, topK: 7, topP: 0.8, seed: 5 });
    assert.equal(a.maxTokens, 4);
    assert.deepEqual(chatRequest({ ...body, temperature: 0 }, d).params.sampling, { greedy: true });
    // Without model defaults, as before: Ollama's and OpenAI's own.
    assert.deepEqual(ollamaChatRequest(body).params.sampling, { temperature: 0.8, topK: 40, topP: 0.9 });
    assert.deepEqual(chatRequest(body).params.sampling, { temperature: 1 });
  });
});

describe('vramfit serve with an Ollama model', () => {
  it('/api/chat, /api/generate and /v1/chat/completions render with its template; num_ctx is the context', async () => {
    writeOllamaModel(store, 'served-ollama', { gguf, template: SIMPLE, system: SYSTEM, params: { num_ctx: 96, stop: ['<|im_end|>'] } });
    const logs: string[] = [];
    const server = await startServer({ model: 'served-ollama', load: { devices: 'virtual:1', threads: 1 }, port: 0, log: (l) => logs.push(l) });
    try {
      await server.ready;
      const expected = expectedIds(`<|im_start|>system\n${SYSTEM}<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n`).length;
      const post = async (route: string, body: unknown): Promise<Record<string, unknown>> => {
        const res = await fetch(`${server.url}${route}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
        assert.equal(res.status, 200, await res.clone().text());
        return (await res.json()) as Record<string, unknown>;
      };
      const messages = [{ role: 'user', content: 'hello world' }];
      const ollama = await post('/api/chat', { model: 'served-ollama', messages, stream: false, options: { num_predict: 1 } });
      assert.equal(ollama['prompt_eval_count'], expected);
      const generate = await post('/api/generate', { model: 'served-ollama', prompt: 'hello world', stream: false, options: { num_predict: 1 } });
      assert.equal(generate['prompt_eval_count'], expected);
      const openai = await post('/v1/chat/completions', { model: 'served-ollama', messages, max_tokens: 1 });
      assert.equal((openai['usage'] as { prompt_tokens: number }).prompt_tokens, expected);
      const ownSystem = await post('/api/chat', {
        model: 'served-ollama',
        messages: [{ role: 'system', content: 'Be kind.' }, ...messages],
        stream: false,
        options: { num_predict: 1 },
      });
      assert.equal(
        ownSystem['prompt_eval_count'],
        expectedIds('<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n').length,
      );
      const health = (await (await fetch(`${server.url}/health`)).json()) as { ctx: number };
      assert.equal(health.ctx, 96);
      assert.ok(
        logs.some((l) => l.startsWith('chat template: the Ollama template of')),
        logs.join('\n'),
      );
      assert.ok(
        logs.some((l) => l.includes('stop ["<|im_end|>"]')),
        logs.join('\n'),
      );
    } finally {
      await server.close();
    }
  });
});

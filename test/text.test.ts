import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import {
  applyTemperature,
  argmax,
  createRng,
  createSampler,
  sampleCategorical,
  samplingDistribution,
  softmax,
  topKFilter,
  topPFilter,
} from '../src/engine/text/sampling.js';
import { StopChecker } from '../src/engine/text/stop.js';
import { loadTokenizer, StreamDecoder, type TextTokenizer } from '../src/engine/text/tokenizer.js';
import { InputError } from '../src/util/errors.js';
import { realModelsDir } from './helpers/paths.js';
import { B2U, bytesSym, byteFallbackTokenizerJson, sym, TOKENIZER_CONFIG, tokenizerJson } from './helpers/tiny-tokenizer.js';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Writes a model folder; a file given as null is left out. */
function modelDir(files: Record<string, unknown> = {}): string {
  const dir = mkdtempSync(join(tmpdir(), 'vramfit-text-'));
  dirs.push(dir);
  const all: Record<string, unknown> = {
    'tokenizer.json': tokenizerJson(),
    'tokenizer_config.json': TOKENIZER_CONFIG,
    ...files,
  };
  for (const [name, content] of Object.entries(all)) {
    if (content === null) continue;
    writeFileSync(join(dir, name), typeof content === 'string' ? content : JSON.stringify(content));
  }
  return dir;
}

/** Asserts an InputError whose `where` and reason match. */
function throwsInput(fn: () => unknown, where: RegExp, reason?: RegExp, code?: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof InputError, `expected InputError, got ${String(e)}`);
    assert.match(e.where, where);
    if (reason) assert.match(e.reason, reason);
    if (code) assert.equal(e.code, code);
    return true;
  });
}

function streamAll(tok: TextTokenizer, ids: readonly number[], skipSpecialTokens = false): string[] {
  const dec = tok.createStreamDecoder({ skipSpecialTokens });
  const pieces = ids.map((id) => dec.push(id));
  pieces.push(dec.flush());
  return pieces;
}

const SAMPLE = 'héllo 世界 🙂';

/** Text across all UTF-8 lengths (fast-check's own 'binary' unit costs seconds of set-up). */
const anyText = (maxLength: number) =>
  fc.string({
    unit: fc
      .oneof(
        fc.integer({ min: 0x09, max: 0x7e }),
        fc.integer({ min: 0x80, max: 0x7ff }),
        fc.integer({ min: 0x800, max: 0xd7ff }),
        fc.integer({ min: 0xe000, max: 0xffff }),
        fc.integer({ min: 0x10000, max: 0x10ffff }),
      )
      .map((cp) => String.fromCodePoint(cp)),
    maxLength,
  });

// ---------------------------------------------------------------------------------------------------------------

describe('tokenizer: encode/decode', () => {
  const tok = loadTokenizer(modelDir());
  const bos = tok.tokenToId('<s>')!;

  it('round-trips text, with and without the BOS the post-processor adds', () => {
    for (const text of [SAMPLE, 'hello world', '', '  spaces\tand\nnewlines  ', 'hello<s>world']) {
      const plain = tok.encode(text, { addSpecialTokens: false });
      assert.equal(tok.decode(plain), text);
      const withBos = tok.encode(text);
      assert.deepEqual(withBos, [bos, ...plain]);
      assert.equal(tok.decode(withBos, { skipSpecialTokens: true }), text.replace('<s>', ''));
    }
  });

  it('uses the merges', () => {
    const tokens = tok.encode('hello world', { addSpecialTokens: false }).map((id) => tok.idToToken(id));
    assert.deepEqual(tokens, ['hello', sym(' world')]);
    const mid = tok.encode('世', { addSpecialTokens: false }).map((id) => tok.idToToken(id));
    assert.deepEqual(mid, [bytesSym(0xe4, 0xb8), bytesSym(0x96)]);
  });

  it('keeps special tokens whole and can skip them when decoding', () => {
    const ids = tok.encode('<|im_start|>user\nhello<|im_end|>', { addSpecialTokens: false });
    assert.equal(ids[0], tok.tokenToId('<|im_start|>'));
    assert.equal(ids.at(-1), tok.tokenToId('<|im_end|>'));
    assert.equal(tok.decode(ids, { skipSpecialTokens: true }), 'user\nhello');
    assert.equal(tok.decode([]), '');
    // Ids past the vocabulary (padded embedding rows) decode to nothing.
    assert.equal(tok.decode([...tok.encode('hi', { addSpecialTokens: false }), 99_999]), 'hi');
  });

  it('reads eos/bos from the tokenizer config', () => {
    assert.deepEqual(tok.eosTokenIds, [tok.tokenToId('</s>')]);
    assert.equal(tok.bosTokenId, bos);
    assert.equal(tok.bosToken, '<s>');
    assert.equal(tok.eosToken, '</s>');
  });
});

describe('tokenizer: eos and bos ids', () => {
  const ids = loadTokenizer(modelDir());
  const eos = ids.tokenToId('</s>')!;
  const imEnd = ids.tokenToId('<|im_end|>')!;

  it('prefers generation_config.json, a number or a list', () => {
    assert.deepEqual(loadTokenizer(modelDir({ 'generation_config.json': { eos_token_id: [imEnd, eos, imEnd] } })).eosTokenIds, [imEnd, eos]);
    assert.deepEqual(loadTokenizer(modelDir({ 'generation_config.json': { eos_token_id: imEnd } })).eosTokenIds, [imEnd]);
  });

  it('falls back to the tokenizer eos_token (AddedToken dict form too), then config.json', () => {
    const dictForm = { ...TOKENIZER_CONFIG, eos_token: { __type: 'AddedToken', content: '<|im_end|>' }, bos_token: { content: '<s>' } };
    const t = loadTokenizer(modelDir({ 'tokenizer_config.json': dictForm, 'config.json': { eos_token_id: 7 } }));
    assert.deepEqual(t.eosTokenIds, [imEnd]);
    assert.equal(t.bosTokenId, ids.tokenToId('<s>'));
    const { eos_token: _e, bos_token: _b, ...noSpecials } = TOKENIZER_CONFIG;
    const fromModel = loadTokenizer(modelDir({ 'tokenizer_config.json': noSpecials, 'config.json': { eos_token_id: [5, 6], bos_token_id: 4 } }));
    assert.deepEqual(fromModel.eosTokenIds, [5, 6]);
    assert.equal(fromModel.bosTokenId, 4);
    assert.equal(fromModel.eosToken, ids.idToToken(5));
    assert.deepEqual(loadTokenizer(modelDir({ 'tokenizer_config.json': noSpecials })).eosTokenIds, []);
  });

  it('takes an explicit null bos_token over the model configs (Qwen has no BOS)', () => {
    const t = loadTokenizer(modelDir({ 'tokenizer_config.json': { ...TOKENIZER_CONFIG, bos_token: null }, 'generation_config.json': { bos_token_id: 3 } }));
    assert.equal(t.bosTokenId, null);
    assert.equal(t.bosToken, null);
  });
});

describe('tokenizer: stream decoder', () => {
  const tok = loadTokenizer(modelDir());

  it('emits multi-byte characters only once complete, never U+FFFD', () => {
    const ids = tok.encode(SAMPLE, { addSpecialTokens: false });
    const pieces = streamAll(tok, ids);
    assert.equal(pieces.join(''), SAMPLE);
    for (const p of pieces) assert.ok(!p.includes('\uFFFD'), `piece ${JSON.stringify(p)} has U+FFFD`);
    // 世 is [E4 B8][96]: nothing after its first token, the whole character after the second.
    const tokens = ids.map((id) => tok.idToToken(id));
    const first = tokens.indexOf(bytesSym(0xe4, 0xb8));
    assert.equal(pieces[first], '');
    assert.equal(pieces[first + 1], '世');
    // 🙂 is [F0 9F][99][82]: held for two tokens, out on the third; the flush has nothing left.
    const emoji = tokens.indexOf(bytesSym(0xf0, 0x9f));
    assert.deepEqual(pieces.slice(emoji, emoji + 4), ['', '', '🙂', '']);
  });

  it('emits ASCII at once', () => {
    const ids = tok.encode('hello world', { addSpecialTokens: false });
    assert.deepEqual(streamAll(tok, ids), ['hello', ' world', '']);
  });

  it('skips special tokens when asked', () => {
    const ids = tok.encode('<|im_start|>héllo<|im_end|>', { addSpecialTokens: true });
    assert.equal(streamAll(tok, ids, true).join(''), 'héllo');
    assert.equal(streamAll(tok, ids).join(''), '<s><|im_start|>héllo<|im_end|>');
  });

  it('concatenates to the full decode for any text (property)', () => {
    fc.assert(
      fc.property(anyText(40), (text) => {
        const ids = tok.encode(text, { addSpecialTokens: false });
        const pieces = streamAll(tok, ids);
        assert.equal(pieces.join(''), tok.decode(ids));
        if (!text.includes('\uFFFD')) for (const p of pieces) assert.ok(!p.includes('\uFFFD'));
      }),
      { numRuns: 300 },
    );
  });

  it('concatenates to the full decode for arbitrary byte tokens, invalid UTF-8 included (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 30 }), (bytes) => {
        const ids = bytes.map((b) => tok.tokenToId(B2U[b]!)!);
        assert.equal(streamAll(tok, ids).join(''), tok.decode(ids));
      }),
      { numRuns: 300 },
    );
  });

  it('handles SentencePiece byte fallback and its stripped leading space', () => {
    const sp = loadTokenizer(modelDir({ 'tokenizer.json': byteFallbackTokenizerJson() }));
    const ids = sp.encode(SAMPLE, { addSpecialTokens: false });
    assert.equal(sp.decode(ids), SAMPLE);
    const tokens = ids.map((id) => sp.idToToken(id));
    assert.ok(tokens.includes('<0xE4>') && tokens.includes('é'), tokens.join(' '));
    const pieces = streamAll(sp, ids);
    assert.equal(pieces.join(''), SAMPLE);
    for (const p of pieces) assert.ok(!p.includes('\uFFFD'), `piece ${JSON.stringify(p)} has U+FFFD`);
    // 🙂 is four byte tokens: three silent steps, then the character.
    assert.deepEqual(pieces.slice(-5), ['', '', '', '🙂', '']);
    assert.equal(streamAll(sp, sp.encode('hello world')).join(''), '<s> hello world');
    assert.equal(streamAll(sp, sp.encode('hello world'), true).join(''), 'hello world');
    fc.assert(
      fc.property(anyText(30), (text) => {
        const tids = sp.encode(text, { addSpecialTokens: false });
        const ps = streamAll(sp, tids);
        assert.equal(ps.join(''), sp.decode(tids));
        if (!text.includes('\uFFFD')) for (const p of ps) assert.ok(!p.includes('\uFFFD'));
      }),
      { numRuns: 200 },
    );
  });

  it('keeps the leading space of a token that follows one decoding to nothing (SentencePiece)', () => {
    const sp = loadTokenizer(modelDir({ 'tokenizer.json': byteFallbackTokenizerJson() }));
    const [w, bos, he] = ['▁w', '<s>', '▁he'].map((t) => sp.tokenToId(t)!);
    for (const ids of [
      [w!, bos!, he!],
      [w!, bos!, bos!, he!, bos!, w!],
    ]) {
      const full = sp.decode(ids, { skipSpecialTokens: true });
      assert.equal(streamAll(sp, ids, true).join(''), full, `ids ${ids.join(',')}`);
    }
    assert.equal(streamAll(sp, [w!, bos!, he!], true).join(''), 'w he');
  });

  it('holds back a space that clean_up_tokenization_spaces may still remove', () => {
    const vocab = ['Hello', ' ', '.', ' world', ' do', ' n', "'t", '!'];
    const clean = (s: string) => s.replace(/ \./g, '.').replace(/ !/g, '!').replace(/ n't/g, "n't");
    const decode = (ids: readonly number[]) => clean(ids.map((i) => vocab[i]).join(''));
    const run = (ids: number[]) => {
      const dec = new StreamDecoder(decode, { cleanUpTokenizationSpaces: true });
      const pieces = ids.map((id) => dec.push(id));
      return [...pieces, dec.flush()];
    };
    assert.deepEqual(run([0, 1, 2, 3]), ['Hello', '', '.', ' world', '']);
    assert.deepEqual(run([0, 4, 5, 6, 1, 7]), ['Hello', ' do', '', "n't", '', '!', '']);
    assert.deepEqual(run([0, 1]), ['Hello', '', ' ']);
  });

  it('keeps context so a decoder that strips the first leading space (SentencePiece) keeps inner spaces', () => {
    const vocab = [' Hello', ' world', ' again'];
    const decode = (ids: readonly number[]) =>
      ids
        .map((i) => vocab[i])
        .join('')
        .replace(/^ /, '');
    const dec = new StreamDecoder(decode);
    assert.deepEqual(
      [0, 1, 2].map((id) => dec.push(id)),
      ['Hello', ' world', ' again'],
    );
  });
});

describe('tokenizer: chat template', () => {
  const tok = loadTokenizer(modelDir());
  const messages = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'héllo' },
  ];
  const body = '<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhéllo<|im_end|>\n';

  it('renders with and without the generation prompt', () => {
    assert.equal(tok.applyChatTemplate(messages), body);
    assert.equal(tok.applyChatTemplate(messages, { addGenerationPrompt: true }), `${body}<|im_start|>assistant\n`);
  });

  it('encodes the rendered chat without a second BOS, as transformers does', () => {
    const ids = tok.encodeChat(messages, { addGenerationPrompt: true });
    const bos = tok.tokenToId('<s>');
    assert.equal(ids[0], bos);
    assert.equal(ids.filter((id) => id === bos).length, 1);
    assert.equal(ids.filter((id) => id === tok.tokenToId('<|im_start|>')).length, 3);
    assert.equal(tok.decode(ids), `${body}<|im_start|>assistant\n`);
  });

  it('turns raise_exception into an InputError naming tokenizer_config.json', () => {
    throwsInput(
      () => tok.applyChatTemplate([{ role: 'tool', content: 'x' }]),
      /tokenizer_config\.json: chat_template$/,
      /rejected the messages: Unknown role: tool/,
    );
  });

  it('reports a template syntax error as an InputError naming tokenizer_config.json', () => {
    const broken = loadTokenizer(modelDir({ 'tokenizer_config.json': { ...TOKENIZER_CONFIG, chat_template: '{% for m in messages %}{{ m.content }' } }));
    throwsInput(() => broken.applyChatTemplate(messages), /tokenizer_config\.json/, /syntax error/, 'BAD_CONFIG');
    // Plain encode/decode do not need the template.
    assert.equal(broken.decode(broken.encode('hi', { addSpecialTokens: false })), 'hi');
  });

  it('picks "default" from a list of named templates', () => {
    const list = [
      { name: 'tool_use', template: 'TOOLS' },
      { name: 'default', template: '{{ messages[0].content }}|{{ add_generation_prompt }}' },
    ];
    const t = loadTokenizer(modelDir({ 'tokenizer_config.json': { ...TOKENIZER_CONFIG, chat_template: list } }));
    assert.equal(t.applyChatTemplate(messages, { addGenerationPrompt: true }), 'Be brief.|true');
    const noDefault = loadTokenizer(modelDir({ 'tokenizer_config.json': { ...TOKENIZER_CONFIG, chat_template: [list[0]] } }));
    throwsInput(() => noDefault.applyChatTemplate(messages), /tokenizer_config\.json: chat_template/, /none named "default"/);
  });

  it('provides range() and strftime_now() as transformers does', () => {
    const t = loadTokenizer(
      modelDir({ 'tokenizer_config.json': { ...TOKENIZER_CONFIG, chat_template: "{% for i in range(1, 4) %}{{ i }}{% endfor %} {{ strftime_now('%Y') }}" } }),
    );
    assert.equal(t.applyChatTemplate(messages), `123 ${new Date().getFullYear()}`);
  });

  it('stops a template that loops too long or builds too much text, naming the template file', () => {
    for (const [what, template, reason] of [
      ['a huge range', '{% for i in range(1000000000) %}x{% endfor %}', /range\(\) of 1000000000 items/],
      ['nested loops', '{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}', /more than 1,000,000 steps/],
      [
        'a doubling string',
        "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
        /MiB of text|Invalid string length/,
      ],
    ] as const) {
      const t = loadTokenizer(modelDir({ 'tokenizer_config.json': { ...TOKENIZER_CONFIG, chat_template: template } }));
      assert.throws(
        () => t.applyChatTemplate(messages),
        (e: unknown) =>
          e instanceof InputError && /tokenizer_config\.json/.test(e.where) && /the chat template was stopped/.test(e.reason) && reason.test(e.reason),
        what,
      );
    }
    // a real conversation stays far inside the budgets
    const many = Array.from({ length: 200 }, (_, i) => ({ role: i % 2 ? 'assistant' : 'user', content: `message ${i} `.repeat(50) }));
    assert.ok(loadTokenizer(modelDir()).applyChatTemplate(many as never).length > 100_000);
  });

  it('falls back to chat_template.jinja', () => {
    const { chat_template: _c, ...noTemplate } = TOKENIZER_CONFIG;
    const t = loadTokenizer(modelDir({ 'tokenizer_config.json': noTemplate, 'chat_template.jinja': '[{{ messages[1].content }}]' }));
    assert.equal(t.applyChatTemplate(messages), '[héllo]');
    const none = loadTokenizer(modelDir({ 'tokenizer_config.json': noTemplate }));
    throwsInput(() => none.applyChatTemplate(messages), /tokenizer_config\.json: chat_template/, /no chat template/, 'NOT_FOUND');
  });
});

describe('tokenizer: missing and malformed files', () => {
  it('names the folder and the missing tokenizer.json', () => {
    const dir = modelDir({ 'tokenizer.json': null });
    throwsInput(
      () => loadTokenizer(dir),
      new RegExp(`^${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`),
      /no tokenizer\.json: pass --input-ids or add the tokenizer files/,
      'NOT_FOUND',
    );
    throwsInput(() => loadTokenizer(join(dir, 'nowhere')), /nowhere$/, /no tokenizer\.json/);
  });

  it('works without tokenizer_config.json until a chat template is needed', () => {
    const tok = loadTokenizer(modelDir({ 'tokenizer_config.json': null }));
    assert.equal(tok.decode(tok.encode(SAMPLE, { addSpecialTokens: false })), SAMPLE);
    throwsInput(() => tok.applyChatTemplate([{ role: 'user', content: 'x' }]), /vramfit-text-/, /no tokenizer_config\.json/, 'NOT_FOUND');
  });

  it('names a file that is not JSON', () => {
    throwsInput(() => loadTokenizer(modelDir({ 'tokenizer_config.json': '{ nope' })), /tokenizer_config\.json$/, /not valid JSON/, 'BAD_CONFIG');
    throwsInput(() => loadTokenizer(modelDir({ 'generation_config.json': '[1]' })), /generation_config\.json$/, /JSON object/);
  });

  it('names tokenizer.json and the key when the model type, vocabulary, merges or added tokens are malformed', () => {
    const good = tokenizerJson() as { model: Record<string, unknown> };
    const cases: [string, Record<string, unknown>, RegExp][] = [
      ['an unknown model type', { ...good, model: { type: 'NoSuchModel' } }, /model\.type: "NoSuchModel" is not one of BPE/],
      ['a vocabulary that is a string', { ...good, model: { ...good.model, vocab: 'abc' } }, /model\.vocab: must be an object of token → id/],
      ['an id that is not a number', { ...good, model: { ...good.model, vocab: { a: 'x' } } }, /token "a" has id "x"/],
      ['two tokens with one id', { ...good, model: { ...good.model, vocab: { a: 0, b: 0 } } }, /id 0 is given to more than one token/],
      ['a merge of unknown tokens', { ...good, model: { ...good.model, merges: ['zz qq'] } }, /model\.merges\[0\]: "zz" is not in the vocabulary/],
      ['added tokens that are not a list', { ...good, added_tokens: 'x' }, /added_tokens: must be a list/],
    ];
    for (const [what, json, reason] of cases) {
      throwsInput(() => loadTokenizer(modelDir({ 'tokenizer.json': json })), /tokenizer\.json$/, reason, 'BAD_CONFIG');
      void what;
    }
  });
});

describe('tokenizer: real chat templates render', () => {
  const withTemplates = existsSync(realModelsDir)
    ? readdirSync(realModelsDir).filter((d) => {
        const p = join(realModelsDir, d, 'tokenizer_config.json');
        return existsSync(p) && typeof (JSON.parse(readFileSync(p, 'utf8')) as { chat_template?: unknown }).chat_template === 'string';
      })
    : [];

  it('found fixture templates', { skip: withTemplates.length === 0 && 'no real-model fixtures' }, () => {
    assert.ok(withTemplates.length >= 5);
  });

  for (const name of withTemplates) {
    it(name, () => {
      const config = readFileSync(join(realModelsDir, name, 'tokenizer_config.json'), 'utf8');
      const tok = loadTokenizer(modelDir({ 'tokenizer_config.json': config }));
      const out = tok.applyChatTemplate(
        [
          { role: 'user', content: 'What is 2+2?' },
          { role: 'assistant', content: 'Four.' },
          { role: 'user', content: 'And 3+3?' },
        ],
        { addGenerationPrompt: true },
      );
      assert.ok(out.includes('What is 2+2?') && out.includes('Four.') && out.includes('And 3+3?'), out);
      assert.ok(out.indexOf('And 3+3?') > out.indexOf('Four.'));
    });
  }

  it('Mistral v0.3 rejects non-alternating roles through raise_exception', { skip: !withTemplates.includes('mistralai__Mistral-7B-Instruct-v0.3') }, () => {
    const config = readFileSync(join(realModelsDir, 'mistralai__Mistral-7B-Instruct-v0.3', 'tokenizer_config.json'), 'utf8');
    const tok = loadTokenizer(modelDir({ 'tokenizer_config.json': config }));
    throwsInput(
      () =>
        tok.applyChatTemplate([
          { role: 'user', content: 'a' },
          { role: 'user', content: 'b' },
        ]),
      /tokenizer_config\.json: chat_template/,
      /alternate/,
    );
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe('sampling', () => {
  const logits = Float32Array.from([1.0, 3.0, 2.5, -1.0, 3.0, 0.0]);
  const distinct = Float32Array.from([0.3, 2.2, -0.5, 1.7, 0.9, 2.0, -3.0, 1.1]);

  it('greedy takes the lowest index on ties and ignores NaN', () => {
    assert.equal(argmax(logits), 1);
    assert.equal(argmax(Float32Array.from([NaN, 2, 2])), 1);
    assert.equal(argmax(Float32Array.from([-Infinity, -Infinity])), 0);
    assert.equal(createSampler({ greedy: true, temperature: 0 })(logits), 1);
  });

  it('top-k keeps the k largest and any ties with the k-th', () => {
    assert.deepEqual(
      [...topKFilter(distinct, 3)].map((v) => v > -Infinity),
      [false, true, false, true, false, true, false, false],
    );
    assert.deepEqual(
      [...topKFilter(logits, 1)].map((v) => v > -Infinity),
      [false, true, false, false, true, false],
    );
    assert.deepEqual(topKFilter(distinct, 100), distinct);
    const big = Float32Array.from({ length: 1000 }, (_, i) => Math.sin(i) * 10);
    const kept = topKFilter(big, 300).filter((v) => v > -Infinity).length;
    assert.equal(kept, 300);
  });

  it('top-k agrees with a sort, ties, NaN and -Infinity included (property)', () => {
    const value = fc.oneof(fc.integer({ min: -5, max: 5 }), fc.constant(NaN), fc.constant(-Infinity));
    fc.assert(
      // Rows past 256 take the quickselect path, shorter k the heap path.
      fc.property(fc.array(value, { minLength: 1, maxLength: 700 }), fc.double({ min: 0, max: 1, noNaN: true }), (values, f) => {
        const row = Float32Array.from(values);
        const k = 1 + Math.min(row.length - 1, Math.floor(f * row.length));
        const threshold = Array.from(row, (v) => (Number.isNaN(v) ? -Infinity : v)).sort((a, b) => b - a)[k - 1]!;
        const got = topKFilter(row, k);
        for (let i = 0; i < row.length; i++) assert.ok(Object.is(got[i], row[i]! >= threshold ? row[i] : -Infinity));
      }),
      { numRuns: 300 },
    );
  });

  it('top-p keeps the smallest set reaching p, at least one token', () => {
    const l = Float32Array.from([Math.log(0.5), Math.log(0.3), Math.log(0.15), Math.log(0.05)]);
    const kept = (p: number) => [...topPFilter(l, p)].map((v) => v > -Infinity);
    assert.deepEqual(kept(0.5), [true, false, false, false]);
    assert.deepEqual(kept(0.51), [true, true, false, false]);
    assert.deepEqual(kept(0.8), [true, true, false, false]);
    assert.deepEqual(kept(0.81), [true, true, true, false]);
    assert.deepEqual(kept(1e-9), [true, false, false, false]);
    assert.deepEqual(kept(1), [true, true, true, true]);
  });

  it('top-p agrees with a full sort on a flat 50k vocabulary', () => {
    const rng = createRng(7);
    const l = Float32Array.from({ length: 50_000 }, () => rng.nextFloat() * 4);
    const probs = softmax(l);
    const order = [...probs.keys()].sort((a, b) => probs[b]! - probs[a]! || a - b);
    for (const p of [0.1, 0.9, 0.999]) {
      let above = 0;
      const expected = new Set<number>();
      for (const i of order) {
        if (expected.size > 0 && above >= p) break;
        expected.add(i);
        above += probs[i]!;
      }
      const got = topPFilter(l, p);
      for (let i = 0; i < l.length; i++) assert.equal(got[i]! > -Infinity, expected.has(i), `p=${p} token ${i}`);
    }
  });

  it("samples from softmax(top-p(top-k(logits / T))), the warpers composed in transformers' order", () => {
    const rng = createRng(11);
    for (let trial = 0; trial < 20; trial++) {
      const row = Float32Array.from({ length: 2000 }, () => (rng.nextFloat() - 0.5) * 16);
      // Repeated values make ties at the top-k and top-p cuts.
      for (let i = 0; i < 200; i++) row[i * 7] = row[3]!;
      const opts = { temperature: 0.3 + trial * 0.1, topK: 1 + trial * 37, topP: 0.05 + trial * 0.045 };
      const composed = softmax(topPFilter(topKFilter(applyTemperature(row, opts.temperature), opts.topK), opts.topP));
      const direct = samplingDistribution(row, opts);
      for (let i = 0; i < row.length; i++) assert.ok(Math.abs(composed[i]! - direct[i]!) < 1e-12, `trial ${trial} token ${i}`);
    }
  });

  it('top-k=1 and a tiny top-p are greedy', () => {
    fc.assert(
      fc.property(fc.array(fc.float({ min: -20, max: 20, noNaN: true }), { minLength: 1, maxLength: 64 }), fc.nat(), (values, seed) => {
        const row = Float32Array.from(values);
        // A unique maximum, by enough that its probability is distinguishable from the runner-up's.
        const sorted = [...row].sort((a, b) => b - a);
        fc.pre(sorted.length === 1 || sorted[0]! - sorted[1]! > 1e-3);
        const greedy = argmax(row);
        assert.equal(createSampler({ topK: 1, seed })(row), greedy);
        assert.equal(createSampler({ topP: 1e-9, seed })(row), greedy);
        assert.equal(createSampler({ temperature: 0.7, topK: 1, topP: 0.3, seed })(row), greedy);
      }),
      { numRuns: 200 },
    );
  });

  it('samples in proportion to softmax(logits / temperature)', () => {
    for (const temperature of [1, 0.5, 2]) {
      const sample = createSampler({ temperature, seed: 1234 });
      const expected = softmax(applyTemperature(distinct, temperature));
      const n = 40_000;
      const counts = new Array<number>(distinct.length).fill(0);
      for (let i = 0; i < n; i++) counts[sample(distinct)]!++;
      for (let i = 0; i < distinct.length; i++) {
        const q = expected[i]!;
        const sigma = Math.sqrt((q * (1 - q)) / n);
        assert.ok(Math.abs(counts[i]! / n - q) <= 5 * sigma + 1e-4, `T=${temperature} token ${i}: ${counts[i]! / n} vs ${q}`);
      }
    }
  });

  it('applies temperature before top-p, as transformers does', () => {
    const l = Float32Array.from([Math.log(0.6), Math.log(0.4)]);
    // At T=1 p=0.5 keeps only token 0; at T=100 the two are nearly equal and token 1 is needed to pass 0.5... but
    // token 0 alone is still ≥ 0.5, so both orders agree there; p=0.55 tells them apart.
    const sampledAt = (temperature: number) => {
      const s = createSampler({ temperature, topP: 0.55, seed: 3 });
      return new Set(Array.from({ length: 200 }, () => s(l)));
    };
    assert.deepEqual(sampledAt(1), new Set([0]));
    assert.deepEqual(sampledAt(100), new Set([0, 1]));
  });

  it('reproduces a run from its seed', () => {
    const draw = (seed: number) => {
      const s = createSampler({ temperature: 1.3, topK: 5, topP: 0.95, seed });
      return Array.from({ length: 200 }, () => s(distinct));
    };
    assert.deepEqual(draw(42), draw(42));
    assert.notDeepEqual(draw(42), draw(43));
    const a = createRng(2 ** 40 + 5);
    const b = createRng(5);
    assert.notEqual(a.nextUint32(), b.nextUint32());
  });

  it('rng floats are uniform in [0, 1)', () => {
    const rng = createRng(99);
    const bins = new Array<number>(10).fill(0);
    for (let i = 0; i < 100_000; i++) {
      const u = rng.nextFloat();
      assert.ok(u >= 0 && u < 1);
      bins[Math.floor(u * 10)]!++;
    }
    for (const c of bins) assert.ok(Math.abs(c - 10_000) < 500, String(bins));
  });

  it('sampleCategorical follows the cumulative distribution and skips empty tokens', () => {
    const probs = Float64Array.from([0, 0.25, 0, 0.75]);
    assert.equal(sampleCategorical(probs, 0), 1);
    assert.equal(sampleCategorical(probs, 0.2499), 1);
    assert.equal(sampleCategorical(probs, 0.25), 3);
    assert.equal(sampleCategorical(probs, 0.999999), 3);
  });

  it('falls back to greedy when no logit is finite, and gives an infinite logit all the mass', () => {
    assert.equal(createSampler({ seed: 1 })(Float32Array.from([-Infinity, NaN, -Infinity])), 0);
    assert.deepEqual([...samplingDistribution(Float32Array.from([0, Infinity, 1]))], [0, 1, 0]);
    assert.equal(createSampler({ seed: 1, topP: 0.5 })(Float32Array.from([0, Infinity, 1])), 1);
  });

  it('validates options, naming the flag', () => {
    throwsInput(() => createSampler({ temperature: 0 }), /^--temperature$/, /greedy/);
    throwsInput(() => createSampler({ temperature: -1, greedy: true }), /^--temperature$/);
    throwsInput(() => createSampler({ temperature: NaN }), /^--temperature$/);
    throwsInput(() => createSampler({ topK: 0 }), /^--top-k$/);
    throwsInput(() => createSampler({ topK: 2.5 }), /^--top-k$/);
    throwsInput(() => createSampler({ topP: 0 }), /^--top-p$/);
    throwsInput(() => createSampler({ topP: 1.01 }), /^--top-p$/);
    throwsInput(() => createSampler({ seed: -1 }), /^--seed$/);
    createSampler({ temperature: 0.01, topK: 1, topP: 1, seed: 0 });
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe('stop conditions', () => {
  /** Feeds text pieces as tokens 100, 101, ...; returns what was emitted and why it stopped. */
  function run(stop: StopChecker, pieces: string[]): { emitted: string[]; stop: unknown; finish: string } {
    const emitted: string[] = [];
    let reason: unknown = null;
    pieces.forEach((p, i) => {
      if (reason) return;
      const step = stop.push(100 + i, p);
      emitted.push(step.text);
      reason = step.stop;
    });
    return { emitted, stop: reason, finish: stop.finish() };
  }

  it('stops on a stop string that spans tokens, emitting only the text before it', () => {
    const r = run(new StopChecker({ stopStrings: ['<END>'] }), ['Hello', ' wor', 'ld<E', 'N', 'D>tail', 'more']);
    assert.deepEqual(r.emitted, ['Hello', ' wor', 'ld', '', '']);
    assert.deepEqual(r.stop, { kind: 'stop-string', stopString: '<END>' });
    assert.equal(r.finish, '');
  });

  it('holds back only the longest suffix that could still start a stop string', () => {
    const stop = new StopChecker({ stopStrings: ['abc', 'xyz'] });
    assert.deepEqual(stop.push(1, 'hello a'), { text: 'hello ', stop: null });
    assert.deepEqual(stop.push(2, 'b'), { text: '', stop: null });
    // "abx" cannot become "abc" any more; "x" could still start "xyz".
    assert.deepEqual(stop.push(3, 'x'), { text: 'ab', stop: null });
    assert.deepEqual(stop.push(4, 'q'), { text: 'xq', stop: null });
    assert.equal(stop.finish(), '');
    const again = new StopChecker({ stopStrings: ['aab'] });
    assert.deepEqual(again.push(1, 'aaa'), { text: 'a', stop: null });
    assert.deepEqual(again.push(2, 'b!'), { text: '', stop: { kind: 'stop-string', stopString: 'aab' } });
  });

  it('releases held-back text at the token limit and on EOS', () => {
    const atLimit = new StopChecker({ stopStrings: ['\n\nUser:'] });
    assert.equal(atLimit.push(1, 'answer\n\nUs').text, 'answer');
    assert.equal(atLimit.finish(), '\n\nUs');
    const atEos = new StopChecker({ eosTokenIds: [2], stopStrings: ['###'] });
    assert.deepEqual(atEos.push(1, 'done #'), { text: 'done ', stop: null });
    assert.deepEqual(atEos.push(2, '</s>'), { text: '#', stop: { kind: 'eos', tokenId: 2 } });
    assert.deepEqual(atEos.push(5, 'late'), { text: '', stop: { kind: 'eos', tokenId: 2 } });
    assert.equal(atEos.finish(), '');
    assert.ok(atEos.isEos(2) && !atEos.isEos(1));
  });

  it('picks the earliest stop string when several match', () => {
    const r = run(new StopChecker({ stopStrings: ['world', 'lo w'] }), ['hello world']);
    assert.deepEqual(r.emitted, ['hel']);
    assert.deepEqual(r.stop, { kind: 'stop-string', stopString: 'lo w' });
  });

  it('matches what a whole-text search would (property)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.string({ unit: fc.constantFrom('a', 'b', 'c'), maxLength: 4 }), { maxLength: 12 }),
        fc.array(fc.string({ unit: fc.constantFrom('a', 'b', 'c'), minLength: 1, maxLength: 3 }), { minLength: 1, maxLength: 3 }),
        (pieces, stops) => {
          const stop = new StopChecker({ stopStrings: stops });
          let out = '';
          let stopped = false;
          for (const [i, p] of pieces.entries()) {
            const step = stop.push(i + 10, p);
            out += step.text;
            if (step.stop) {
              stopped = true;
              break;
            }
          }
          out += stop.finish();
          const full = pieces.join('');
          // Generation stops in the piece where a stop string is first complete; everything that piece brought
          // is known then, so the earliest-starting stop string in the text up to there cuts it.
          const firstEnd = Math.min(...stops.map((s) => full.indexOf(s)).map((i, j) => (i < 0 ? Infinity : i + stops[j]!.length)));
          if (Number.isFinite(firstEnd)) {
            let seen = 0;
            for (const p of pieces) {
              seen += p.length;
              if (seen >= firstEnd) break;
            }
            const known = full.slice(0, seen);
            const cut = Math.min(...stops.map((s) => known.indexOf(s)).filter((i) => i >= 0));
            assert.ok(stopped);
            assert.equal(out, known.slice(0, cut));
          } else {
            assert.ok(!stopped);
            assert.equal(out, full);
          }
        },
      ),
      { numRuns: 500 },
    );
  });

  it('rejects an empty stop string', () => {
    throwsInput(() => new StopChecker({ stopStrings: [''] }), /^--stop$/);
  });

  it("works on a stream decoder's output, with a stop string inside multi-byte text", () => {
    const tok = loadTokenizer(modelDir());
    const ids = tok.encode('héllo 世界 🙂 bye', { addSpecialTokens: false });
    const dec = tok.createStreamDecoder();
    const stop = new StopChecker({ eosTokenIds: tok.eosTokenIds, stopStrings: ['界 🙂'] });
    let out = '';
    for (const id of ids) {
      const step = stop.push(id, dec.push(id));
      out += step.text;
      if (step.stop) break;
    }
    assert.equal(out, 'héllo 世');
    assert.deepEqual(stop.stopReason, { kind: 'stop-string', stopString: '界 🙂' });
  });
});

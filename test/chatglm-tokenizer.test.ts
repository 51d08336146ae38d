/**
 * SentencePiece (tokenizer.model) reading and BPE encoding, and ChatGLM2/3's tokenizer and prompt formats on top.
 *
 * The expected ids come from sentencepiece itself: test/fixtures/sentencepiece/tiny-bpe.model is a 560-piece BPE
 * model trained with spm_train using ChatGLM2/3's settings (byte fallback, identity normalizer, dummy prefix, no
 * whitespace removal), and tiny-bpe.expected.json holds what sentencepiece 0.1.97 encodes and decodes for it and for
 * six variants (unused and user-defined pieces, the other normalizer switches, no byte fallback). make-expected.py
 * beside them wrote that file during development; the tests only read it.
 */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { main } from '../src/cli/main.js';
import { loadChatglmTokenizer, type ChatglmTokenizer } from '../src/engine/text/chatglm-tokenizer.js';
import {
  loadSentencePieceBpe,
  MAX_MODEL_FILE_BYTES,
  MAX_PIECES,
  parseSentencePieceModel,
  SentencePieceBpe,
  type SentencePieceModelProto,
} from '../src/engine/text/sentencepiece.js';
import { loadTokenizer, type TextTokenizer } from '../src/engine/text/tokenizer.js';
import { FormatError, InputError } from '../src/util/errors.js';
import { repoRoot } from './helpers/paths.js';
import { writeTinyChatglmCheckpoint } from './helpers/tiny-chatglm.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';

const FIXTURES = join(repoRoot, 'test', 'fixtures', 'sentencepiece');
const MODEL_PATH = join(FIXTURES, 'tiny-bpe.model');
const MODEL_BYTES = new Uint8Array(readFileSync(MODEL_PATH));

interface Case {
  text: string;
  ids: number[];
}
interface DecodeCase {
  ids: number[];
  text: string;
}
interface Expected {
  pieceCount: number;
  bos: number;
  eos: number;
  unk: number;
  pad: number;
  cases: Case[];
  decode: DecodeCase[];
  variants: { name: string; description: string; cases: Case[]; decode: DecodeCase[] }[];
}
const EXPECTED = JSON.parse(readFileSync(join(FIXTURES, 'tiny-bpe.expected.json'), 'utf8')) as Expected;
const idsOf = (text: string): number[] => {
  const c = EXPECTED.cases.find((x) => x.text === text);
  assert.ok(c, `fixture case for ${JSON.stringify(text)}`);
  return c.ids;
};

const root = tempDir('vramfit-chatglm-tok-');
after(() => cleanup(root));
let dirCount = 0;

/** Text across all UTF-8 lengths, lone surrogates excluded. */
const anyText = (maxLength: number) =>
  fc.string({
    unit: fc
      .oneof(
        fc.integer({ min: 0x09, max: 0x7e }),
        fc.constantFrom(0x20, 0x20, 0x0a, 0x2581, 0x4f60, 0x597d, 0x6a21, 0x578b, 0xfeff),
        fc.integer({ min: 0x80, max: 0x7ff }),
        fc.integer({ min: 0x800, max: 0xd7ff }),
        fc.integer({ min: 0xe000, max: 0xffff }),
        fc.integer({ min: 0x10000, max: 0x10ffff }),
      )
      .map((cp) => String.fromCodePoint(cp)),
    maxLength,
  });

// ---------------------------------------------------------------------------------------------------------------
// A protobuf writer for hand-made models.

const enc = new TextEncoder();
function varint(n: number | bigint): number[] {
  let v = BigInt.asUintN(64, BigInt(n));
  const out: number[] = [];
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v) b |= 0x80;
    out.push(b);
  } while (v);
  return out;
}
const key = (field: number, wire: number): number[] => varint((field << 3) | wire);
const bytesField = (field: number, payload: number[]): number[] => [...key(field, 2), ...varint(payload.length), ...payload];
const strField = (field: number, s: string): number[] => bytesField(field, [...enc.encode(s)]);
const intField = (field: number, n: number | bigint): number[] => [...key(field, 0), ...varint(n)];
function floatField(field: number, x: number): number[] {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setFloat32(0, x, true);
  return [...key(field, 5), ...b];
}
const piece = (p: string, score: number, type = 1): number[] => bytesField(1, [...strField(1, p), ...floatField(2, score), ...intField(3, type)]);
const BPE = bytesField(2, intField(3, 2));
/** <unk> <s> </s>, then the given normal pieces; a BPE model without byte fallback. */
function handModel(normal: [string, number][], ...extra: number[][]): Uint8Array {
  return Uint8Array.from([
    ...piece('<unk>', 0, 2),
    ...piece('<s>', 0, 3),
    ...piece('</s>', 0, 3),
    ...normal.flatMap(([p, s]) => piece(p, s)),
    ...BPE,
    ...extra.flat(),
  ]);
}

function throwsFormat(fn: () => unknown, file: string, reason: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof FormatError, `expected FormatError, got ${String(e)}`);
    assert.equal(e.where, file, 'the error names the file');
    assert.match(e.reason, reason);
    return true;
  });
}

// ---------------------------------------------------------------------------------------------------------------

describe('sentencepiece: reading tokenizer.model', () => {
  const proto = parseSentencePieceModel(MODEL_BYTES, MODEL_PATH);

  it('reads pieces, trainer and normalizer settings', () => {
    assert.equal(proto.pieces.length, EXPECTED.pieceCount);
    assert.deepEqual(proto.pieces.slice(0, 4), [
      { piece: '<unk>', score: 0, type: 'unknown' },
      { piece: '<s>', score: 0, type: 'control' },
      { piece: '</s>', score: 0, type: 'control' },
      { piece: '<0x00>', score: 0, type: 'byte' },
    ]);
    assert.equal(proto.pieces[259]!.piece, '▁▁');
    assert.ok(proto.pieces[260]!.score < proto.pieces[259]!.score, 'merged pieces score by rank');
    assert.equal(proto.trainerSpec.modelType, 'bpe');
    assert.equal(proto.trainerSpec.byteFallback, true);
    assert.equal(proto.trainerSpec.treatWhitespaceAsSuffix, false);
    assert.deepEqual(proto.normalizerSpec, {
      name: 'identity',
      precompiledCharsmapBytes: 0,
      addDummyPrefix: true,
      removeExtraWhitespaces: false,
      escapeWhitespaces: true,
    });
    const sp = new SentencePieceBpe(proto, MODEL_PATH);
    assert.deepEqual([sp.unkId, sp.bosId, sp.eosId, sp.padId], [EXPECTED.unk, EXPECTED.bos, EXPECTED.eos, EXPECTED.pad]);
  });

  it('reads a hand-made model: defaults, negative int32 varints, unknown fields skipped', () => {
    const bytes = handModel(
      [
        ['a', -1],
        ['b', -2],
        ['ab', -0.5],
        ['▁', -3],
      ],
      // trainer_spec: pad_id -1 (a 10-byte varint), an unknown fixed64 and fixed32 field; a self_test_data message.
      bytesField(2, [...intField(43, -1), ...key(99, 1), 1, 2, 3, 4, 5, 6, 7, 8, ...key(98, 5), 1, 2, 3, 4]),
      bytesField(4, strField(1, 'ignored')),
    );
    const m = parseSentencePieceModel(bytes, 'hand.model');
    assert.deepEqual(m.normalizerSpec, { name: '', precompiledCharsmapBytes: 0, addDummyPrefix: true, removeExtraWhitespaces: true, escapeWhitespaces: true });
    assert.equal(m.trainerSpec.modelType, 'bpe');
    const sp = new SentencePieceBpe(m, 'hand.model');
    // "  ab a c " → "▁ab▁a▁c": c is unknown (no byte fallback), and a run of unknowns is one <unk>.
    assert.deepEqual(sp.encodeAsPieces('  ab a c '), ['▁', 'ab', '▁', 'a', '▁', '<unk>']);
    assert.deepEqual(sp.encode('ab cc'), [6, 5, 6, 0]);
    assert.equal(sp.decode([6, 5, 6, 3, 0, 2]), 'ab a ⁇ ');
  });

  it('refuses malformed files with a FormatError naming the file', () => {
    const f = 'bad.model';
    throwsFormat(() => parseSentencePieceModel(new Uint8Array(0), f), f, /no pieces/);
    throwsFormat(() => parseSentencePieceModel(MODEL_BYTES.subarray(0, 3000), f), f, /length 15 exceeds the 12 bytes left \(byte 2987\)/);
    throwsFormat(() => parseSentencePieceModel(Uint8Array.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]), f), f, /length 4294967295 exceeds the 0 bytes left/);
    throwsFormat(() => parseSentencePieceModel(Uint8Array.from([0x0a, ...Array(10).fill(0xff), 0x01]), f), f, /varint longer than (64 bits|10 bytes)/);
    throwsFormat(() => parseSentencePieceModel(Uint8Array.from([0x0a, 0x80]), f), f, /truncated varint/);
    throwsFormat(() => parseSentencePieceModel(Uint8Array.from([0x00, 0x00]), f), f, /bad field tag 0/);
    throwsFormat(() => parseSentencePieceModel(Uint8Array.from([0x0b]), f), f, /wire type 3/);
    throwsFormat(() => parseSentencePieceModel(Uint8Array.from(intField(1, 5)), f), f, /pieces \(field 1\) has wire type 0, expected 2/);
    throwsFormat(() => parseSentencePieceModel(Uint8Array.from(bytesField(1, strField(1, ''))), f), f, /pieces\[0\]: empty piece/);
    throwsFormat(() => parseSentencePieceModel(Uint8Array.from(bytesField(1, [...key(1, 2), 2, 0xc3, 0x28])), f), f, /piece is not valid UTF-8/);
    throwsFormat(() => parseSentencePieceModel(Uint8Array.from(bytesField(1, [...strField(1, 'a'), ...intField(3, 9)])), f), f, /unknown piece type 9/);
    throwsFormat(() => parseSentencePieceModel(Uint8Array.from(bytesField(1, [...strField(1, 'a'), ...floatField(2, NaN)])), f), f, /score is NaN/);
    throwsFormat(() => parseSentencePieceModel(Uint8Array.from([...piece('a', 0), ...bytesField(2, intField(3, 7))]), f), f, /unknown model_type 7/);
    throwsFormat(
      () => parseSentencePieceModel(Uint8Array.from([...piece('a', 0), ...bytesField(3, [...key(3, 2), 0])]), f),
      f,
      /add_dummy_prefix \(field 3\) has wire type 2/,
    );
  });

  it(`refuses more than ${MAX_PIECES} pieces`, () => {
    const one = piece('a', 0);
    const bytes = new Uint8Array(one.length * (MAX_PIECES + 1));
    for (let i = 0; i <= MAX_PIECES; i++) bytes.set(one, i * one.length);
    throwsFormat(() => parseSentencePieceModel(bytes, 'many.model'), 'many.model', /more than 1048576 pieces/);
  });

  it('refuses models it cannot encode with', () => {
    const f = 'sem.model';
    const build = (bytes: Uint8Array) => () => new SentencePieceBpe(parseSentencePieceModel(bytes, f), f);
    throwsFormat(
      build(
        handModel([
          ['a', 0],
          ['a', -1],
        ]),
      ),
      f,
      /piece "a" is defined twice \(ids 3 and 4\)/,
    );
    throwsFormat(build(Uint8Array.from([...piece('a', 0), ...BPE])), f, /no unknown piece/);
    throwsFormat(build(handModel([], piece('<unk2>', 0, 2))), f, /two unknown pieces/);
    throwsFormat(build(handModel([], piece('<0x41>', 0, 6))), f, /byte piece "<0x41>" \(id 3\) although byte_fallback is off/);
    throwsFormat(build(handModel([], piece('<0x4G>', 0, 6), bytesField(2, intField(35, 1)))), f, /not of the form <0xXX>/);
    const unsupported = (bytes: Uint8Array, reason: RegExp) =>
      assert.throws(build(bytes), (e: unknown) => {
        assert.ok(e instanceof InputError && !(e instanceof FormatError), `expected a plain InputError, got ${String(e)}`);
        assert.equal(e.code, 'UNSUPPORTED_TOKENIZER');
        assert.match(e.reason, reason);
        return true;
      });
    unsupported(handModel([], bytesField(2, intField(3, 1))), /a unigram sentencepiece model; only BPE/);
    unsupported(
      handModel([], bytesField(3, [...strField(1, 'nmt_nfkc'), ...bytesField(2, [1, 2, 3])])),
      /normalizer "nmt_nfkc" uses a precompiled character map/,
    );
  });

  it('refuses an oversized or unreadable file before reading it', () => {
    const big = join(root, 'big.model');
    writeFileSync(big, '');
    truncateSync(big, MAX_MODEL_FILE_BYTES + 1);
    throwsFormat(() => loadSentencePieceBpe(big), big, /67108865 bytes; a sentencepiece model is at most 67108864/);
    assert.throws(
      () => loadSentencePieceBpe(join(root, 'missing.model')),
      (e: unknown) => e instanceof InputError && e.code === 'NOT_FOUND',
    );
  });

  it('survives thousands of mutated models: a model or a FormatError, never a crash (fuzz)', () => {
    const mutation = fc.oneof(
      fc.record({ kind: fc.constant('set' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
      fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 7 }) }),
      fc.record({ kind: fc.constant('truncate' as const), at: fc.nat(), value: fc.constant(0) }),
      fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
      fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), value: fc.integer({ min: 1, max: 16 }) }),
      fc.record({ kind: fc.constant('ff' as const), at: fc.nat(), value: fc.integer({ min: 1, max: 12 }) }),
    );
    const outcomes = { parsed: 0, format: 0, refused: 0 };
    const check = (bytes: Uint8Array): void => {
      let proto: SentencePieceModelProto;
      try {
        proto = parseSentencePieceModel(bytes, 'fuzz.model');
      } catch (e) {
        assert.ok(e instanceof FormatError && e.where === 'fuzz.model', `not a FormatError naming the file: ${String(e)}`);
        outcomes.format++;
        return;
      }
      outcomes.parsed++;
      let sp: SentencePieceBpe;
      try {
        sp = new SentencePieceBpe(proto, 'fuzz.model');
      } catch (e) {
        assert.ok(e instanceof InputError && e.where === 'fuzz.model', `not an InputError naming the file: ${String(e)}`);
        outcomes.refused++;
        return;
      }
      const ids = sp.encode('hello 你好，世界 🙂 [Round 1]');
      assert.ok(
        ids.every((id) => id >= 0 && id < sp.size),
        'ids inside the vocabulary',
      );
      assert.equal(typeof sp.decode(ids), 'string', 'decodes');
    };
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 4 }), (mutations) => {
        const b = Array.from(MODEL_BYTES);
        for (const m of mutations) {
          const at = b.length === 0 ? 0 : m.at % b.length;
          if (m.kind === 'set') b[at] = m.value;
          else if (m.kind === 'flip') b[at] = (b[at] ?? 0) ^ (1 << m.value);
          else if (m.kind === 'truncate') b.length = at;
          else if (m.kind === 'insert') b.splice(at, 0, m.value);
          else if (m.kind === 'delete') b.splice(at, m.value);
          else b.splice(at, m.value, ...Array(m.value).fill(0xff));
        }
        check(Uint8Array.from(b));
      }),
      { seed: 20240607, numRuns: 3000 },
    );
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => check(bytes)),
      { seed: 7, numRuns: 1000 },
    );
    assert.ok(outcomes.format > 100 && outcomes.parsed > 100, `both outcomes exercised: ${JSON.stringify(outcomes)}`);
  });
});

describe('sentencepiece: BPE encoding equals sentencepiece', () => {
  const proto = parseSentencePieceModel(MODEL_BYTES, MODEL_PATH);
  const sp = new SentencePieceBpe(proto, MODEL_PATH);

  it(`encodes ${EXPECTED.cases.length} texts (ASCII, Chinese, byte fallback, whitespace runs) to sentencepiece's ids`, () => {
    for (const c of EXPECTED.cases) assert.deepEqual(sp.encode(c.text), c.ids, JSON.stringify(c.text));
    // Spot checks that the fixture covers what it should.
    assert.deepEqual(sp.encodeAsPieces('模型的显存 🙂'), ['▁', '模型', '的', '显', '存', '▁', '<0xF0>', '<0x9F>', '<0x99>', '<0x82>']);
    assert.deepEqual(sp.encodeAsPieces('  double'), ['▁▁', '▁', 'd', 'o', 'ub', 'le']);
  });

  it('decodes ids as sentencepiece does (control pieces, <unk>, byte runs, invalid UTF-8, the dummy-prefix space)', () => {
    for (const d of EXPECTED.decode) assert.equal(sp.decode(d.ids), d.text, d.ids.join(','));
    assert.equal(sp.decode([sp.size, -1, 1.5]), '', 'ids outside the vocabulary are skipped');
  });

  const variants: Record<string, (m: SentencePieceModelProto) => void> = {
    'unused-and-user-defined': (m) => {
      for (const p of m.pieces) if (['ChatGLM', '模型', '▁the'].includes(p.piece)) p.type = 'unused';
      for (const u of ['<|user|>', '[gMASK]', 'GPUs', '显存']) m.pieces.push({ piece: u, score: 0, type: 'user_defined' });
    },
    'remove-extra-whitespaces': (m) => void (m.normalizerSpec.removeExtraWhitespaces = true),
    'no-dummy-prefix': (m) => void (m.normalizerSpec.addDummyPrefix = false),
    'whitespace-as-suffix': (m) => void (m.trainerSpec.treatWhitespaceAsSuffix = true),
    'no-escape-whitespaces': (m) => void (m.normalizerSpec.escapeWhitespaces = false),
    'no-byte-fallback': (m) => {
      m.pieces = m.pieces.filter((p) => p.type !== 'byte');
      m.trainerSpec.byteFallback = false;
    },
  };
  for (const v of EXPECTED.variants) {
    it(`variant ${v.name}: ${v.description}`, () => {
      const m = structuredClone(proto);
      const change = variants[v.name];
      assert.ok(change, `a change for ${v.name}`);
      change(m);
      const vsp = new SentencePieceBpe(m, MODEL_PATH);
      for (const c of v.cases) assert.deepEqual(vsp.encode(c.text), c.ids, `${v.name}: ${JSON.stringify(c.text)}`);
      for (const d of v.decode) assert.equal(vsp.decode(d.ids), d.text, `${v.name}: decode ${d.ids.join(',')}`);
    });
  }

  it('round-trips any text through byte fallback (property)', () => {
    fc.assert(
      fc.property(anyText(60), (text) => {
        const ids = sp.encode(text);
        // "▁" is SentencePiece's space symbol: it comes back as a space.
        assert.equal(sp.decode(ids), text.replaceAll('\u2581', ' '));
      }),
      { seed: 11, numRuns: 500 },
    );
    assert.equal(sp.decode(sp.encode('a\uD800b')), 'a\uFFFDb', 'a lone surrogate encodes as U+FFFD, as its UTF-8 would');
  });

  it('encodes long text in time (the merge agenda is a heap)', () => {
    const text = '模型的显存 hello world ChatGLM2-6B 使用 vramfit 🙂 '.repeat(2000);
    const t0 = performance.now();
    const ids = sp.encode(text);
    const ms = performance.now() - t0;
    assert.equal(sp.decode(ids), text);
    assert.ok(ms < 2000, `${text.length} chars took ${ms.toFixed(0)} ms`);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// ChatGLM folders around the tiny model

const N = EXPECTED.pieceCount;
const ID = { MASK: N, gMASK: N + 1, sMASK: N + 2, sop: N + 3, eop: N + 4, system: N + 5, user: N + 6, assistant: N + 7, observation: N + 8 };
const CHATGLM2_TOKENIZER_CONFIG = {
  name_or_path: 'THUDM/chatglm2-6b',
  remove_space: false,
  do_lower_case: false,
  tokenizer_class: 'ChatGLMTokenizer',
  auto_map: { AutoTokenizer: ['tokenization_chatglm.ChatGLMTokenizer', null] },
};
const CHATGLM3_TOKENIZER_CONFIG = { ...CHATGLM2_TOKENIZER_CONFIG, name_or_path: 'THUDM/chatglm3-6b' };

/** A folder with the tiny tokenizer.model and the given JSON / text files (null leaves a file out). */
function chatglmDir(files: Record<string, unknown>, dir = join(root, `glm-${dirCount++}`)): string {
  mkdirSync(dir, { recursive: true });
  copyFileSync(MODEL_PATH, join(dir, 'tokenizer.model'));
  for (const [name, content] of Object.entries(files)) {
    if (content === null) continue;
    writeFileSync(join(dir, name), typeof content === 'string' ? content : JSON.stringify(content));
  }
  return dir;
}

function streamAll(tok: TextTokenizer, ids: readonly number[], skipSpecialTokens = false): string[] {
  const dec = tok.createStreamDecoder({ skipSpecialTokens });
  const pieces = ids.map((id) => dec.push(id));
  pieces.push(dec.flush());
  return pieces;
}

describe('ChatGLM tokenizer: selection and ids', () => {
  const v2 = loadTokenizer(chatglmDir({ 'tokenizer_config.json': CHATGLM2_TOKENIZER_CONFIG })) as ChatglmTokenizer;
  const v3 = loadTokenizer(chatglmDir({ 'tokenizer_config.json': CHATGLM3_TOKENIZER_CONFIG })) as ChatglmTokenizer;

  it('loadTokenizer picks it for tokenizer.model + ChatGLMTokenizer, and tells ChatGLM2 from ChatGLM3', () => {
    assert.equal(v2.version, 'chatglm2');
    assert.equal(v3.version, 'chatglm3');
    // ChatGLM3 is recognised by its role tokens anywhere, not only by name.
    const anon = { tokenizer_class: 'ChatGLMTokenizer' };
    const byTemplate = { ...anon, chat_template: "{% for m in messages %}<|{{ m['role'] }}|>{% endfor %}<|assistant|>" };
    assert.equal((loadTokenizer(chatglmDir({ 'tokenizer_config.json': anon })) as ChatglmTokenizer).version, 'chatglm2');
    assert.equal((loadTokenizer(chatglmDir({ 'tokenizer_config.json': byTemplate })) as ChatglmTokenizer).version, 'chatglm3');
    const code = 'role_special_tokens = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]\n';
    assert.equal((loadTokenizer(chatglmDir({ 'tokenizer_config.json': anon, 'tokenization_chatglm.py': code })) as ChatglmTokenizer).version, 'chatglm3');
    const gen = { eos_token_id: [2, ID.user, ID.observation] };
    assert.equal((loadTokenizer(chatglmDir({ 'tokenizer_config.json': anon, 'generation_config.json': gen })) as ChatglmTokenizer).version, 'chatglm3');
    // No tokenizer_config.json: config.json's model_type decides.
    const fromModelType = loadTokenizer(chatglmDir({ 'config.json': { model_type: 'chatglm', _name_or_path: 'THUDM/chatglm3-6b' } })) as ChatglmTokenizer;
    assert.equal(fromModelType.version, 'chatglm3');
  });

  it('is not picked for other tokenizer classes, nor when tokenizer.json is there', () => {
    assert.throws(
      () => loadTokenizer(chatglmDir({ 'tokenizer_config.json': { tokenizer_class: 'ChatGLM4Tokenizer' }, 'config.json': { model_type: 'chatglm' } })),
      (e: unknown) => e instanceof InputError && /no tokenizer\.json/.test(e.reason),
    );
    assert.throws(
      () => loadTokenizer(chatglmDir({ 'config.json': { model_type: 'llama' } })),
      (e: unknown) => e instanceof InputError && /no tokenizer\.json/.test(e.reason),
    );
    const withJson = chatglmDir({ 'tokenizer_config.json': CHATGLM2_TOKENIZER_CONFIG, 'tokenizer.json': '{"model": {"type": "NoSuchModel"}}' });
    assert.throws(
      () => loadTokenizer(withJson),
      (e: unknown) => e instanceof InputError && /tokenizer\.json$/.test(e.where),
      'tokenizer.json wins',
    );
  });

  it('gives the special tokens the ids after the SentencePiece vocabulary', () => {
    for (const tok of [v2, v3]) {
      assert.deepEqual(
        ['[MASK]', '[gMASK]', '[sMASK]', 'sop', 'eop'].map((t) => tok.tokenToId(t)),
        [ID.MASK, ID.gMASK, ID.sMASK, ID.sop, ID.eop],
      );
      assert.equal(tok.idToToken(ID.gMASK), '[gMASK]');
      assert.equal(tok.tokenToId('▁▁'), 259);
      assert.equal(tok.idToToken(13), '<0x0A>');
      assert.equal(tok.tokenToId('no such piece'), undefined);
    }
    assert.deepEqual(
      ['<|system|>', '<|user|>', '<|assistant|>', '<|observation|>'].map((t) => v3.tokenToId(t)),
      [ID.system, ID.user, ID.assistant, ID.observation],
    );
    assert.equal(v2.tokenToId('<|user|>'), undefined, 'ChatGLM2 has no role tokens');
    assert.equal(v2.idToToken(ID.system), undefined);
  });

  it('encodes text with the [gMASK] sop prefix, and special-token text as plain text', () => {
    for (const tok of [v2, v3]) {
      for (const text of ['hello world', '你好，世界', '模型的显存 🙂', '']) {
        const plain = EXPECTED.cases.find((c) => c.text === text)!.ids;
        assert.deepEqual(tok.encode(text, { addSpecialTokens: false }), plain);
        assert.deepEqual(tok.encode(text), [ID.gMASK, ID.sop, ...plain]);
      }
      // The remote code hands text to SentencePiece alone: "[gMASK]sop" and "<|user|>" in a prompt stay text.
      assert.deepEqual(tok.encode('[gMASK]sop', { addSpecialTokens: false }), idsOf('[gMASK]sop'));
      assert.deepEqual(tok.encode('<|user|>', { addSpecialTokens: false }), idsOf('<|user|>'));
    }
  });

  it('encodes ChatGLM3 role tokens in text only with encode_special_tokens', () => {
    const tok = loadTokenizer(chatglmDir({ 'tokenizer_config.json': { ...CHATGLM3_TOKENIZER_CONFIG, encode_special_tokens: true } }));
    assert.deepEqual(tok.encode('hello world<|user|>', { addSpecialTokens: false }), [...idsOf('hello world'), ID.user]);
    assert.deepEqual(tok.encode('<|user|>hello world', { addSpecialTokens: false }), [ID.user, ...idsOf('hello world')]);
  });

  it('stops at </s>, and for ChatGLM3 at <|user|> and <|observation|>; has no BOS', () => {
    assert.deepEqual(v2.eosTokenIds, [2]);
    assert.deepEqual(v3.eosTokenIds, [2, ID.user, ID.observation]);
    assert.equal(v2.eosToken, '</s>');
    assert.equal(v2.bosTokenId, null);
    assert.equal(v2.bosToken, null);
    const gen = loadTokenizer(chatglmDir({ 'tokenizer_config.json': CHATGLM2_TOKENIZER_CONFIG, 'generation_config.json': { eos_token_id: [2, 7] } }));
    assert.deepEqual(gen.eosTokenIds, [2, 7], 'generation_config.json adds its eos ids');
  });
});

describe('ChatGLM tokenizer: prompt formats', () => {
  const v2 = loadTokenizer(chatglmDir({ 'tokenizer_config.json': CHATGLM2_TOKENIZER_CONFIG }));
  const v3 = loadTokenizer(chatglmDir({ 'tokenizer_config.json': CHATGLM3_TOKENIZER_CONFIG }));
  const gen = { addGenerationPrompt: true };

  it('ChatGLM2: build_prompt\'s "[Round n]\\n\\n问：…\\n\\n答：", encoded with the prefix', () => {
    const one = [{ role: 'user', content: '你好' }];
    assert.equal(v2.applyChatTemplate(one, gen), '[Round 1]\n\n问：你好\n\n答：');
    assert.deepEqual(v2.encodeChat(one, gen), [ID.gMASK, ID.sop, ...idsOf('[Round 1]\n\n问：你好\n\n答：')]);
    const three = [
      { role: 'user', content: '你好' },
      { role: 'assistant', content: 'hello world' },
      { role: 'user', content: 'The model runs on two GPUs.' },
    ];
    const prompt = '[Round 1]\n\n问：你好\n\n答：hello world\n\n[Round 2]\n\n问：The model runs on two GPUs.\n\n答：';
    assert.equal(v2.applyChatTemplate(three, gen), prompt);
    assert.deepEqual(v2.encodeChat(three, gen), v2.encode(prompt));
    assert.equal(v2.applyChatTemplate(one), '[Round 1]\n\n问：你好', 'without the generation prompt the answer header is left off');
  });

  it('ChatGLM2: refuses roles its format has no place for', () => {
    for (const messages of [
      [
        { role: 'system', content: 'x' },
        { role: 'user', content: 'y' },
      ],
      [
        { role: 'user', content: 'x' },
        { role: 'user', content: 'y' },
      ],
    ]) {
      assert.throws(
        () => v2.encodeChat(messages, gen),
        (e: unknown) => e instanceof InputError && /ChatGLM2's format alternates user and assistant/.test(e.reason),
      );
    }
  });

  it('ChatGLM3: [gMASK] sop, then <|role|> + "\\n" + content per message, then <|assistant|>', () => {
    const one = [{ role: 'user', content: 'hello world' }];
    assert.deepEqual(v3.encodeChat(one, gen), [ID.gMASK, ID.sop, ID.user, ...idsOf('\n'), ...idsOf('hello world'), ID.assistant]);
    assert.equal(v3.applyChatTemplate(one, gen), '[gMASK]sop<|user|>\n hello world<|assistant|>');
    const four = [
      { role: 'system', content: '你好，世界' },
      { role: 'user', content: 'hello world' },
      { role: 'assistant', content: '模型的显存 🙂' },
      { role: 'observation', content: '123456' },
    ];
    assert.deepEqual(v3.encodeChat(four, gen), [
      ID.gMASK,
      ID.sop,
      ID.system,
      ...idsOf('\n'),
      ...idsOf('你好，世界'),
      ID.user,
      ...idsOf('\n'),
      ...idsOf('hello world'),
      ID.assistant,
      ...idsOf('\n'),
      ...idsOf('模型的显存 🙂'),
      ID.observation,
      ...idsOf('\n'),
      ...idsOf('123456'),
      ID.assistant,
    ]);
    assert.equal(v3.applyChatTemplate(four), '[gMASK]sop<|system|>\n 你好，世界<|user|>\n hello world<|assistant|>\n 模型的显存 🙂<|observation|>\n 123456');
    assert.deepEqual(v3.encodeChat(one), [ID.gMASK, ID.sop, ID.user, ...idsOf('\n'), ...idsOf('hello world')]);
    assert.throws(
      () => v3.encodeChat([{ role: 'tool', content: 'x' }], gen),
      (e: unknown) => e instanceof InputError && /ChatGLM3 knows system, user, assistant, observation/.test(e.reason),
    );
  });

  it('ChatGLM3 with encode_special_tokens still encodes message text as text', () => {
    const tok = loadTokenizer(chatglmDir({ 'tokenizer_config.json': { ...CHATGLM3_TOKENIZER_CONFIG, encode_special_tokens: true } }));
    assert.deepEqual(tok.encodeChat([{ role: 'user', content: '<|user|>' }], gen), [
      ID.gMASK,
      ID.sop,
      ID.user,
      ...idsOf('\n'),
      ...idsOf('<|user|>'),
      ID.assistant,
    ]);
  });
});

describe('ChatGLM tokenizer: decoding', () => {
  const v2 = loadTokenizer(chatglmDir({ 'tokenizer_config.json': CHATGLM2_TOKENIZER_CONFIG }));
  const v3 = loadTokenizer(chatglmDir({ 'tokenizer_config.json': CHATGLM3_TOKENIZER_CONFIG }));
  // "▁" is SentencePiece's space: text holding it decodes with a space there instead.
  const texts = EXPECTED.cases.map((c) => c.text).filter((t) => !t.includes('\u2581'));

  it('round-trips text, skipping the special tokens when asked', () => {
    for (const tok of [v2, v3]) {
      for (const text of texts) {
        assert.equal(tok.decode(tok.encode(text), { skipSpecialTokens: true }), text, JSON.stringify(text));
        assert.equal(tok.decode(tok.encode(text, { addSpecialTokens: false })), text, JSON.stringify(text));
      }
    }
    assert.equal(v2.decode(v2.encode('hello world')), '[gMASK]sophello world', 'special tokens as text, as SPTokenizer.decode writes them');
    const chat = v3.encodeChat([{ role: 'user', content: 'hello world' }], { addGenerationPrompt: true });
    assert.equal(v3.decode(chat), '[gMASK]sop<|user|>\n hello world<|assistant|>');
    assert.equal(v3.decode([...chat, 2], { skipSpecialTokens: true }), '\n hello world');
    // </s> and <unk> go with skipSpecialTokens; ids past the vocabulary (padded embedding rows) always.
    assert.equal(v3.decode([...idsOf('hello world'), 2, 0, ID.observation + 1, 65000], { skipSpecialTokens: true }), 'hello world');
    assert.equal(v2.decode([...idsOf('hello world'), 0, ID.eop, ID.eop + 1]), 'hello world ⁇ eop');
    assert.equal(v2.decode([]), '');
  });

  it('streams multi-byte text only once each character is complete', () => {
    for (const tok of [v2, v3]) {
      const text = '你好，世界 模型的显存 🙂 👍🏽';
      const ids = tok.encode(text);
      const pieces = streamAll(tok, ids, true);
      assert.equal(pieces.join(''), text);
      for (const p of pieces) assert.ok(!p.includes('\uFFFD'), `piece ${JSON.stringify(p)} has U+FFFD`);
      // 🙂 is four byte tokens: three silent steps, then the character.
      const emoji = ids.indexOf(3 + 0xf0);
      assert.deepEqual(pieces.slice(emoji, emoji + 4), ['', '', '', '🙂']);
      assert.equal(streamAll(tok, ids).join(''), `[gMASK]sop${text}`);
    }
  });

  it('stream pieces concatenate to the full decode for any text and any ids (property)', () => {
    fc.assert(
      fc.property(anyText(40), (text) => {
        const ids = v3.encode(text);
        const pieces = streamAll(v3, ids, true);
        assert.equal(pieces.join(''), v3.decode(ids, { skipSpecialTokens: true }));
        for (const p of pieces) assert.ok(!p.includes('\uFFFD'), `piece ${JSON.stringify(p)} has U+FFFD`);
      }),
      { seed: 5, numRuns: 300 },
    );
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: ID.observation + 2 }), { maxLength: 30 }), fc.boolean(), (ids, skip) => {
        assert.equal(streamAll(v3, ids, skip).join(''), v3.decode(ids, { skipSpecialTokens: skip }));
      }),
      { seed: 6, numRuns: 300 },
    );
  });

  it('names tokenizer.model when it is malformed', () => {
    const dir = chatglmDir({ 'tokenizer_config.json': CHATGLM2_TOKENIZER_CONFIG });
    writeFileSync(join(dir, 'tokenizer.model'), MODEL_BYTES.subarray(0, 3000));
    throwsFormat(() => loadTokenizer(dir), join(dir, 'tokenizer.model'), /exceeds the \d+ bytes left|truncated/);
    writeFileSync(join(dir, 'tokenizer.model'), '');
    throwsFormat(() => loadChatglmTokenizer(dir), join(dir, 'tokenizer.model'), /no pieces/);
  });
});

describe('ChatGLM tokenizer: vramfit run --prompt', () => {
  async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
    let out = '';
    let err = '';
    const code = await main(argv, { stdout: (s) => (out += s), stderr: (s) => (err += s) });
    return { code, out, err };
  }
  /** The tiny ChatGLM checkpoint, its vocabulary padded past the tokenizer's 569 ids as real ones are (65024). */
  function checkpointDir(tokenizerConfig: Record<string, unknown>): string {
    const dir = join(root, `ck-${dirCount++}`);
    writeTinyChatglmCheckpoint(dir, 'chatglm2', { seed: 3, paddedVocabSize: 576 });
    return chatglmDir({ 'tokenizer_config.json': tokenizerConfig }, dir);
  }
  const ARGS = ['--max-new-tokens', '3', '--json', '--devices', 'virtual:1', '--ctx', '64', '--threads', '1'];

  it('ChatGLM2: --prompt encodes with [gMASK] sop and decodes the generated ids', async () => {
    const dir = checkpointDir(CHATGLM2_TOKENIZER_CONFIG);
    const tok = loadTokenizer(dir);
    const r = await run('run', dir, '--prompt', '你好，世界', ...ARGS);
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out) as { prompt_ids: number[]; generated_ids: number[]; text: string; stop: string };
    assert.deepEqual(j.prompt_ids, [ID.gMASK, ID.sop, ...idsOf('你好，世界')]);
    assert.ok(j.generated_ids.length >= 1 && j.generated_ids.length <= 3, `generated ${j.generated_ids.join(',')}`);
    assert.ok(
      j.generated_ids.every((id) => id >= 0 && id < 576),
      'ids inside the padded vocabulary',
    );
    assert.equal(j.text, tok.decode(j.generated_ids, { skipSpecialTokens: true }));
    assert.ok(j.stop === 'max-new-tokens' || j.stop === 'eos', `stop: ${j.stop}`);

    const chat = await run('run', dir, '--prompt', '你好', '--chat', ...ARGS);
    assert.equal(chat.code, 0, chat.err);
    assert.deepEqual(JSON.parse(chat.out).prompt_ids, [ID.gMASK, ID.sop, ...idsOf('[Round 1]\n\n问：你好\n\n答：')]);

    const ids = await run('run', dir, '--input-ids', `${ID.gMASK},${ID.sop},300`, ...ARGS);
    assert.equal(ids.code, 0, ids.err);
    assert.equal(typeof JSON.parse(ids.out).text, 'string', '--input-ids decodes through tokenizer.model too');
  });

  it('ChatGLM3: --chat builds the role-token prompt', async () => {
    const dir = checkpointDir(CHATGLM3_TOKENIZER_CONFIG);
    const r = await run('run', dir, '--prompt', 'hello world', '--chat', ...ARGS);
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out) as { prompt_ids: number[]; generated_ids: number[]; text: string };
    assert.deepEqual(j.prompt_ids, [ID.gMASK, ID.sop, ID.user, ...idsOf('\n'), ...idsOf('hello world'), ID.assistant]);
    assert.equal(j.text, loadTokenizer(dir).decode(j.generated_ids, { skipSpecialTokens: true }));
  });

  it('a malformed tokenizer.model is a one-line input error', async () => {
    const dir = checkpointDir(CHATGLM2_TOKENIZER_CONFIG);
    writeFileSync(join(dir, 'tokenizer.model'), Uint8Array.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]));
    const r = await run('run', dir, '--prompt', 'hi', ...ARGS);
    assert.equal(r.code, 2, r.err);
    assert.match(r.err, /tokenizer\.model: ModelProto: length 4294967295 exceeds the 0 bytes left/);
    assert.equal(r.err.trim().split('\n').length, 1, r.err);
    assert.ok(existsSync(join(dir, 'config.json')), 'the checkpoint is still there');
  });
});

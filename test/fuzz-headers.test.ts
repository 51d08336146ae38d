/**
 * Fuzzes both header parsers with mutated files. The contract under test: a parser either returns a
 * header or throws FormatError; any other exception (RangeError, TypeError, a stack overflow, an
 * allocation failure) is a bug. Seeds are fixed so a failure reproduces; fast-check prints the
 * shrunk counterexample.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { applyMutation, type ByteMutation } from './helpers/byte-mutations.js';
import { FormatError } from '../src/util/errors.js';
import { parseSafetensorsHeader } from '../src/reader/formats/safetensors.js';
import { encodeSafetensorsHeader, frameSafetensorsHeader, safetensorsHeaderJson } from '../src/reader/formats/safetensors-writer.js';
import { bufferSource, GGML_TYPES, parseGguf, type ChunkSource } from '../src/reader/formats/gguf.js';
import { encodeGgufHeader, gv, layoutGgufTensors, type GgufRawTensorInfo, type GgufWriteValue } from '../src/reader/formats/gguf-writer.js';

const SEED = 0x5eed;
const TIMEOUT = 60_000;

/**
 * Runs `fn`; returns true when it parsed, false when it threw FormatError, and rethrows anything
 * else. Also holds every reason to the CLI's needs: one printable line of bounded length.
 */
function onlyFormatError(fn: () => unknown): boolean {
  try {
    fn();
    return true;
  } catch (e) {
    if (!(e instanceof FormatError)) throw e;
    assert.ok(!/[\u0000-\u001f\u2028\u2029]/.test(e.message), `control character in ${JSON.stringify(e.message)}`);
    assert.ok(e.message.length < 500, `message of ${e.message.length} chars`);
    return false;
  }
}

// ---- byte-level mutations shared by both formats ----

type Mutation = Exclude<ByteMutation, { kind: 'u16' }>;

/** Values that sit on the edges parsers get wrong: zero, one, sign and width boundaries, all ones. */
const edgeU64 = fc.oneof(
  fc.constantFrom(
    0n,
    1n,
    2n,
    7n,
    8n,
    31n,
    32n,
    255n,
    2n ** 31n,
    2n ** 32n - 1n,
    2n ** 32n,
    2n ** 53n - 1n,
    2n ** 53n,
    2n ** 63n - 1n,
    2n ** 63n,
    2n ** 64n - 1n,
  ),
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  fc.bigInt({ min: 0n, max: 4096n }),
);
const edgeU32 = fc.oneof(fc.constantFrom(0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 31, 39, 40, 0xffff, 0x7fffffff, 0xffffffff), fc.nat({ max: 64 }), fc.nat());

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.nat({ max: 7 }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('set' as const), at: fc.nat(), value: fc.nat({ max: 255 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 16 }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('u64' as const), at: fc.nat(), value: edgeU64 }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('u32' as const), at: fc.nat(), value: edgeU32 }) },
);

function mutate(input: Uint8Array, mutations: readonly Mutation[]): Uint8Array {
  let bytes: Uint8Array = input.slice();
  for (const m of mutations) bytes = applyMutation(bytes, m, bytes.length === 0 ? 0 : m.at % (bytes.length + 1));
  return bytes;
}

/** Length fields sit at known offsets; aim a share of the u64/u32 writes there rather than at random bytes. */
function aimed(offsets: readonly number[]): fc.Arbitrary<Mutation> {
  return fc.oneof(
    fc.record({ kind: fc.constant('u64' as const), at: fc.constantFrom(...offsets), value: edgeU64 }),
    fc.record({ kind: fc.constant('u32' as const), at: fc.constantFrom(...offsets), value: edgeU32 }),
  );
}

// ---- safetensors ----

interface StSeed {
  bytes: Uint8Array;
  dataBytes: number;
}

function stSeed(tensors: { name: string; dtype: string; shape: number[] }[], metadata?: Record<string, string>): StSeed {
  const header = encodeSafetensorsHeader(tensors, metadata);
  return { bytes: header, dataBytes: safetensorsHeaderJson(tensors, metadata).dataBytes };
}

const ST_SEEDS: StSeed[] = [
  stSeed([], { format: 'pt' }),
  stSeed([{ name: 'w', dtype: 'F16', shape: [2, 3] }]),
  stSeed(
    [
      { name: 'model.embed_tokens.weight', dtype: 'BF16', shape: [32, 8] },
      { name: 'model.layers.0.input_layernorm.weight', dtype: 'F32', shape: [8] },
      { name: 'empty', dtype: 'I64', shape: [0, 5] },
      { name: 'mask', dtype: 'BOOL', shape: [3] },
      { name: 'fp8', dtype: 'F8_E4M3', shape: [4, 4] },
    ],
    { format: 'pt', total: '12' },
  ),
  stSeed(Array.from({ length: 24 }, (_, i) => ({ name: `model.layers.${i}.mlp.down_proj.weight`, dtype: i % 2 ? 'F16' : 'U8', shape: [i + 1, 2] }))),
];

/** The claimed file size: usually honest, sometimes off by a little or a lot. */
const sizeDelta = fc.oneof(
  { weight: 6, arbitrary: fc.constant(0) },
  { weight: 2, arbitrary: fc.integer({ min: -16, max: 16 }) },
  { weight: 1, arbitrary: fc.integer({ min: -(2 ** 40), max: 2 ** 40 }) },
);

function parseSt(bytes: Uint8Array, fileSize: number): boolean {
  return onlyFormatError(() => parseSafetensorsHeader(bytes, Math.max(0, fileSize), 'fuzz.safetensors'));
}

/** JSON values that hit the type checks: wrong types, negatives, fractions, unsafe integers, nesting. */
const nastyJson: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(
    null,
    true,
    -1,
    0,
    1,
    1.5,
    2 ** 53,
    -(2 ** 53),
    1e308,
    -0,
    'F16',
    'BF16',
    'f16',
    '',
    '__metadata__',
    [],
    [0],
    [0, 0],
    [-1, 2],
    [1, 0],
    [0, 1e20],
    [[1]],
    {},
    { dtype: 'F16' },
  ),
  fc.jsonValue({ maxDepth: 3 }),
  fc.array(fc.integer({ min: -3, max: 300 }), { maxLength: 5 }),
  fc.constantFrom(...['F64', 'F32', 'F16', 'BF16', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL', 'F8_E4M3', 'F8_E5M2', 'U16', 'U32', 'U64', 'F4', 'C64']),
);

type JsonMutation =
  | { kind: 'replace-field'; entry: number; field: 'dtype' | 'shape' | 'data_offsets'; value: unknown }
  | { kind: 'replace-entry'; entry: number; value: unknown }
  | { kind: 'delete-field'; entry: number; field: 'dtype' | 'shape' | 'data_offsets' }
  | { kind: 'shift-offset'; entry: number; which: 0 | 1; delta: number }
  | { kind: 'shift-dim'; entry: number; dim: number; delta: number }
  | { kind: 'add-entry'; name: string; value: unknown }
  | { kind: 'metadata'; value: unknown };

const field = fc.constantFrom('dtype' as const, 'shape' as const, 'data_offsets' as const);
const jsonMutation: fc.Arbitrary<JsonMutation> = fc.oneof(
  fc.record({ kind: fc.constant('replace-field' as const), entry: fc.nat(), field, value: nastyJson }),
  fc.record({ kind: fc.constant('replace-entry' as const), entry: fc.nat(), value: nastyJson }),
  fc.record({ kind: fc.constant('delete-field' as const), entry: fc.nat(), field }),
  fc.record({
    kind: fc.constant('shift-offset' as const),
    entry: fc.nat(),
    which: fc.constantFrom(0 as const, 1 as const),
    delta: fc.integer({ min: -9, max: 9 }),
  }),
  fc.record({ kind: fc.constant('shift-dim' as const), entry: fc.nat(), dim: fc.nat(), delta: fc.integer({ min: -3, max: 3 }) }),
  fc.record({ kind: fc.constant('add-entry' as const), name: fc.string({ maxLength: 8 }), value: nastyJson }),
  fc.record({ kind: fc.constant('metadata' as const), value: fc.oneof(nastyJson, fc.dictionary(fc.string({ maxLength: 4 }), nastyJson, { maxKeys: 3 })) }),
);

function mutateJson(json: Record<string, unknown>, mutations: readonly JsonMutation[]): Record<string, unknown> {
  const out: Record<string, unknown> = structuredClone(json);
  for (const m of mutations) {
    const names = Object.keys(out).filter((k) => k !== '__metadata__');
    const pick = (i: number): Record<string, unknown> | undefined => {
      if (names.length === 0) return undefined;
      const v = out[names[i % names.length]!];
      return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
    };
    switch (m.kind) {
      case 'replace-field': {
        const e = pick(m.entry);
        if (e) e[m.field] = m.value;
        break;
      }
      case 'delete-field': {
        const e = pick(m.entry);
        if (e) delete e[m.field];
        break;
      }
      case 'replace-entry':
        if (names.length) out[names[m.entry % names.length]!] = m.value;
        break;
      case 'shift-offset': {
        const o = pick(m.entry)?.['data_offsets'];
        if (Array.isArray(o) && typeof o[m.which] === 'number') o[m.which] += m.delta;
        break;
      }
      case 'shift-dim': {
        const s = pick(m.entry)?.['shape'];
        if (Array.isArray(s) && s.length > 0 && typeof s[m.dim % s.length] === 'number') s[m.dim % s.length] += m.delta;
        break;
      }
      case 'add-entry':
        out[m.name] = m.value;
        break;
      case 'metadata':
        out['__metadata__'] = m.value;
        break;
    }
  }
  return out;
}

describe('fuzz: safetensors header parser', () => {
  test('byte flips, truncations, insertions and length corruption throw only FormatError', { timeout: TIMEOUT }, () => {
    let parsed = 0;
    fc.assert(
      fc.property(
        fc.nat({ max: ST_SEEDS.length - 1 }),
        fc.array(fc.oneof({ weight: 4, arbitrary: mutation }, { weight: 1, arbitrary: aimed([0, 1, 4]) }), { minLength: 1, maxLength: 4 }),
        sizeDelta,
        (i, mutations, delta) => {
          const seed = ST_SEEDS[i]!;
          const bytes = mutate(seed.bytes, mutations);
          if (parseSt(bytes, bytes.length + seed.dataBytes + delta)) parsed++;
        },
      ),
      { seed: SEED, numRuns: 15_000 },
    );
    assert.ok(parsed < 15_000, 'most mutations are rejected');
  });

  test('structured JSON mutations throw only FormatError', { timeout: TIMEOUT }, () => {
    fc.assert(
      fc.property(fc.nat({ max: ST_SEEDS.length - 1 }), fc.array(jsonMutation, { minLength: 1, maxLength: 3 }), sizeDelta, (i, mutations, delta) => {
        const seed = ST_SEEDS[i]!;
        const text = new TextDecoder().decode(seed.bytes.subarray(8)).trimEnd();
        const json = mutateJson(JSON.parse(text) as Record<string, unknown>, mutations);
        const bytes = frameSafetensorsHeader(JSON.stringify(json));
        parseSt(bytes, bytes.length + seed.dataBytes + delta);
      }),
      { seed: SEED + 1, numRuns: 10_000 },
    );
  });

  test('random JSON text and random bytes as headers throw only FormatError', { timeout: TIMEOUT }, () => {
    fc.assert(
      fc.property(
        fc.oneof(fc.json({ maxDepth: 4 }), fc.string({ maxLength: 64, unit: 'binary' })),
        fc.uint8Array({ maxLength: 64 }),
        fc.nat({ max: 256 }),
        (text, raw, data) => {
          const framed = frameSafetensorsHeader(text);
          parseSt(framed, framed.length + data);
          parseSt(raw, raw.length + data);
          const rawFramed = frameSafetensorsHeader(raw, false);
          parseSt(rawFramed, rawFramed.length + data);
        },
      ),
      { seed: SEED + 2, numRuns: 3_000 },
    );
  });

  test('randomly generated valid headers parse and round-trip', { timeout: TIMEOUT }, () => {
    const tensorArb = fc.record({
      name: fc.string({ minLength: 1, maxLength: 12 }).filter((n) => n !== '__metadata__'),
      dtype: fc.constantFrom('F64', 'F32', 'F16', 'BF16', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL', 'F8_E4M3', 'F8_E5M2', 'U16', 'U32', 'U64'),
      shape: fc.array(fc.nat({ max: 9 }), { maxLength: 4 }),
    });
    fc.assert(
      fc.property(
        fc.uniqueArray(tensorArb, { maxLength: 12, selector: (t) => t.name }),
        fc.dictionary(fc.string({ maxLength: 6 }), fc.string({ maxLength: 6 }), { maxKeys: 3 }),
        (tensors, metadata) => {
          const bytes = encodeSafetensorsHeader(tensors, metadata);
          const data = safetensorsHeaderJson(tensors, metadata).dataBytes;
          const h = parseSafetensorsHeader(bytes, bytes.length + data, 'valid.safetensors');
          assert.equal(h.tensors.length, tensors.length);
          assert.deepEqual(Object.entries(h.metadata), Object.entries(metadata));
          assert.deepEqual(new Set(h.tensors.map((t) => t.name)), new Set(tensors.map((t) => t.name)));
        },
      ),
      { seed: SEED + 3, numRuns: 1_500 },
    );
  });
});

// ---- GGUF ----

const GGUF_SEEDS: Uint8Array[] = [];
/** Offsets of length and count fields in the seeds, for aimed corruption. */
const GGUF_LENGTH_FIELDS = [8, 16, 24];

function ggufSeed(metadata: Record<string, GgufWriteValue>, tensors: { name: string; shape: number[]; dtype: string }[], alignment = 32): Uint8Array {
  const { infos, dataBytes } = layoutGgufTensors(tensors, alignment);
  const header = encodeGgufHeader({ metadata, tensors: infos, alignment });
  const bytes = new Uint8Array(header.length + dataBytes);
  bytes.set(header);
  return bytes;
}

GGUF_SEEDS.push(
  ggufSeed({}, []),
  ggufSeed({ 'general.architecture': 'llama', 'llama.block_count': gv.u32(2) }, [{ name: 'w', shape: [4], dtype: 'float32' }]),
  ggufSeed(
    {
      'general.architecture': 'llama',
      'general.alignment': gv.u32(64),
      u8: gv.u8(1),
      i8: gv.i8(-1),
      u16: gv.u16(2),
      i16: gv.i16(-2),
      i32: gv.i32(-3),
      f32: gv.f32(0.5),
      f64: gv.f64(1.25),
      u64: gv.u64(2n ** 63n),
      i64: gv.i64(-4),
      flag: true,
      'tokenizer.ggml.tokens': ['<s>', '</s>', 'hello', 'wörld'],
      'tokenizer.ggml.scores': gv.array('f32', [0, 1, 2, 3]),
      nested: gv.array('array', [gv.array('u8', [1, 2]), gv.array('string', ['a'])]),
    },
    [
      { name: 'token_embd.weight', shape: [4, 32], dtype: 'q4_0' },
      { name: 'blk.0.attn_norm.weight', shape: [32], dtype: 'float32' },
      { name: 'blk.0.ffn_up.weight', shape: [2, 256], dtype: 'q4_k' },
      { name: 'x', shape: [1, 2, 3, 4], dtype: 'bfloat16' },
    ],
    64,
  ),
  ggufSeed(
    { s: 'x'.repeat(100) },
    Array.from({ length: 12 }, (_, i) => ({ name: `blk.${i}.w`, shape: [i + 1, 32], dtype: i % 2 ? 'q8_0' : 'float16' })),
  ),
);

/** A source that hands out the bytes in pieces, with a claimed size that may disagree with them. */
function lyingSource(bytes: Uint8Array, size: number): ChunkSource {
  return { size, read: (position, length) => bytes.subarray(Math.min(position, bytes.length), Math.min(position + length, bytes.length)) };
}

const chunkSize = fc.constantFrom(16, 17, 33, 100, 4096, 1 << 20);

function parseGg(source: ChunkSource, chunk: number): boolean {
  return onlyFormatError(() => parseGguf(source, 'fuzz.gguf', { chunkSize: chunk }));
}

const ggufValueArb: fc.Arbitrary<GgufWriteValue> = fc.letrec<{ value: GgufWriteValue; array: GgufWriteValue }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.string({ maxLength: 8 }),
    fc.boolean(),
    fc.nat({ max: 1000 }).map((n) => gv.u32(n)),
    fc.integer({ min: -128, max: 127 }).map((n) => gv.i8(n)),
    fc.integer({ min: 0, max: 65535 }).map((n) => gv.u16(n)),
    fc.double({ noNaN: true }).map((n) => gv.f64(n)),
    fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }).map((n) => gv.u64(n)),
    fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map((n) => gv.i64(n)),
    fc.record({ type: fc.constant('raw' as const), typeId: edgeU32, bytes: fc.uint8Array({ maxLength: 12 }) }),
    tie('array'),
  ),
  array: fc.oneof(
    fc.array(fc.string({ maxLength: 4 }), { maxLength: 4 }).map((v) => gv.array('string', v)),
    fc.array(fc.integer({ min: -5, max: 5 }), { maxLength: 4 }).map((v) => gv.array('i32', v)),
    fc.array(tie('array'), { maxLength: 3 }).map((v) => gv.array('array', v)),
  ),
})).value;

/** Tensor infos that are usually plausible and sometimes not: odd types, dims, offsets. */
const rawInfoArb: fc.Arbitrary<GgufRawTensorInfo> = fc.record({
  name: fc.string({ maxLength: 6 }),
  ne: fc.array(fc.oneof(fc.constantFrom(1, 2, 32, 33, 256), fc.nat({ max: 600 }), edgeU64), { minLength: 0, maxLength: 5 }),
  ggmlType: fc.oneof(fc.constantFrom(...Object.keys(GGML_TYPES).map(Number)), edgeU32),
  offset: fc.oneof(fc.constantFrom(0, 32, 64, 96, 128, 256, 1024), fc.nat({ max: 2048 }), edgeU64),
});

describe('fuzz: GGUF header parser', () => {
  test('byte flips, truncations, insertions and count corruption throw only FormatError', { timeout: TIMEOUT }, () => {
    let parsed = 0;
    fc.assert(
      fc.property(
        fc.nat({ max: GGUF_SEEDS.length - 1 }),
        fc.array(fc.oneof({ weight: 4, arbitrary: mutation }, { weight: 1, arbitrary: aimed(GGUF_LENGTH_FIELDS) }), { minLength: 1, maxLength: 4 }),
        chunkSize,
        (i, mutations, chunk) => {
          const bytes = mutate(GGUF_SEEDS[i]!, mutations);
          if (parseGg(bufferSource(bytes), chunk)) parsed++;
        },
      ),
      { seed: SEED + 10, numRuns: 15_000 },
    );
    assert.ok(parsed < 15_000);
  });

  test('sources whose claimed size disagrees with their bytes throw only FormatError', { timeout: TIMEOUT }, () => {
    fc.assert(
      fc.property(
        fc.nat({ max: GGUF_SEEDS.length - 1 }),
        fc.array(mutation, { maxLength: 2 }),
        fc.oneof(fc.integer({ min: -64, max: 64 }), fc.integer({ min: 0, max: 2 ** 45 })),
        chunkSize,
        (i, mutations, delta, chunk) => {
          const bytes = mutate(GGUF_SEEDS[i]!, mutations);
          parseGg(lyingSource(bytes, Math.max(0, bytes.length + delta)), chunk);
        },
      ),
      { seed: SEED + 11, numRuns: 5_000 },
    );
  });

  test('generated headers with random metadata and tensor infos throw only FormatError', { timeout: TIMEOUT }, () => {
    fc.assert(
      fc.property(
        fc.dictionary(fc.string({ maxLength: 6 }), ggufValueArb, { maxKeys: 5 }),
        fc.array(rawInfoArb, { maxLength: 5 }),
        fc.constantFrom(1, 8, 32),
        fc.nat({ max: 2048 }),
        chunkSize,
        (metadata, tensors, alignment, dataBytes, chunk) => {
          const header = encodeGgufHeader({ metadata, tensors, alignment });
          const bytes = new Uint8Array(header.length + dataBytes);
          bytes.set(header);
          parseGg(bufferSource(bytes), chunk);
        },
      ),
      { seed: SEED + 12, numRuns: 6_000 },
    );
  });

  test('random bytes after a valid magic and version throw only FormatError', { timeout: TIMEOUT }, () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 96 }), fc.constantFrom(2, 3), chunkSize, (tail, version, chunk) => {
        const bytes = new Uint8Array(8 + tail.length);
        const view = new DataView(bytes.buffer);
        view.setUint32(0, 0x46554747, true);
        view.setUint32(4, version, true);
        bytes.set(tail, 8);
        parseGg(bufferSource(bytes), chunk);
        parseGg(bufferSource(tail), chunk);
      }),
      { seed: SEED + 13, numRuns: 4_000 },
    );
  });

  test('valid generated files parse identically at every chunk size', { timeout: TIMEOUT }, () => {
    const dtypes = Object.values(GGML_TYPES);
    const tensorArb = fc.record({
      name: fc.string({ maxLength: 8 }),
      dtype: fc.constantFrom(...dtypes),
      rows: fc.array(fc.integer({ min: 0, max: 3 }), { maxLength: 3 }),
      blocks: fc.integer({ min: 0, max: 2 }),
    });
    fc.assert(
      fc.property(
        fc.uniqueArray(tensorArb, { maxLength: 6, selector: (t) => t.name }),
        fc.dictionary(
          fc.string({ maxLength: 6 }).filter((k) => k !== 'general.alignment'),
          ggufValueArb.filter((v) => !(typeof v === 'object' && !Array.isArray(v) && v.type === 'raw')),
          { maxKeys: 4 },
        ),
        (specs, metadata) => {
          const tensors = specs.map((t) => ({ name: t.name, dtype: t.dtype, shape: [...t.rows, t.blocks * 256] }));
          const bytes = ggufSeed(metadata, tensors);
          let reference: ReturnType<typeof parseGguf> | undefined;
          for (const chunk of [16, 100, 1 << 20]) {
            const h = parseGguf(bufferSource(bytes), 'valid.gguf', { chunkSize: chunk });
            assert.deepEqual(
              h.tensors.map((t) => [t.name, t.dtype, t.shape]),
              tensors.map((t) => [t.name, t.dtype, t.shape]),
            );
            if (reference) assert.deepEqual(h, { ...reference, bytesRead: h.bytesRead });
            reference = h;
          }
        },
      ),
      { seed: SEED + 14, numRuns: 800 },
    );
  });
});

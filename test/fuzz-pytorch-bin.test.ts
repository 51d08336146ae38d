/**
 * Fuzzes the ZIP reader, the restricted unpickler and the .bin reader with mutated checkpoints and random
 * opcode streams. The contract: a reader returns, or throws FormatError with a one-line reason; any other
 * exception (RangeError, TypeError, a stack overflow, an allocation failure) or a hang is a bug. Every read
 * the readers ask of the byte source is checked to stay inside the file, so no buffer is ever sized by a
 * length the file claims. What parses is checked too: every byte range lies inside the file and is exactly
 * as long as the tensor's shape × dtype. Seeds are fixed so a failure reproduces.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { applyMutation, type ByteMutation } from './helpers/byte-mutations.js';
import { lookupDType } from '../src/reader/dtypes.js';
import { parseStateDictPickle } from '../src/reader/formats/pickle.js';
import { parsePytorchBin } from '../src/reader/formats/pytorch-bin.js';
import { bufferByteSource, readZipDirectory, type ByteSource } from '../src/reader/formats/zip.js';
import { FormatError } from '../src/util/errors.js';
import {
  buildLegacyPytorchBin,
  buildPytorchBin,
  buildZip,
  f32Bytes,
  i64Bytes,
  stateDictPickle,
  u16Bytes,
  type PtStorage,
  type PtTensor,
} from './helpers/pytorch-bin-writer.js';

const SEED = 0xb1a5;
const TIMEOUT = 60_000;

/** Returns true when `fn` returned, false on FormatError (with a printable one-line reason); rethrows the rest. */
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

/** A byte source that fails the test if asked for bytes outside the file. */
function guardedSource(bytes: Uint8Array): ByteSource {
  const inner = bufferByteSource(bytes, 'fuzz.bin');
  return {
    name: inner.name,
    size: inner.size,
    read(position: number, length: number): Uint8Array {
      assert.ok(Number.isSafeInteger(position) && position >= 0, `read at ${position}`);
      assert.ok(
        Number.isSafeInteger(length) && length >= 0 && position + length <= bytes.length,
        `read of ${length} bytes at ${position} in a ${bytes.length}-byte file`,
      );
      return inner.read(position, length);
    },
  };
}

/** Parses a whole checkpoint and checks what it says against the file. */
function parseBin(bytes: Uint8Array): boolean {
  return onlyFormatError(() => {
    const h = parsePytorchBin(guardedSource(bytes));
    for (const t of h.tensors) {
      if (!t.range) continue;
      const [start, end] = t.range;
      assert.ok(start >= 0 && start <= end && end <= bytes.length, `${t.name}: range [${start}, ${end}] outside the ${bytes.length}-byte file`);
      const n = t.shape.reduce((a, b) => a * b, 1);
      assert.equal(end - start, n * lookupDType(t.dtype)!.blockBytes, `${t.name}: range length`);
    }
  });
}

// ---- mutations ----

type Mutation = ByteMutation;

const edgeU64 = fc.oneof(
  fc.constantFrom(0n, 1n, 2n, 8n, 30n, 46n, 56n, 255n, 2n ** 31n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n),
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  fc.bigInt({ min: 0n, max: 4096n }),
);
const edgeU32 = fc.oneof(fc.constantFrom(0, 1, 2, 4, 8, 22, 30, 46, 64, 0xffff, 0x7fffffff, 0xfffffffe, 0xffffffff), fc.nat({ max: 4096 }), fc.nat());
const edgeU16 = fc.oneof(fc.constantFrom(0, 1, 8, 0xfffe, 0xffff), fc.nat({ max: 0xffff }));

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.nat({ max: 7 }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('set' as const), at: fc.nat(), value: fc.nat({ max: 255 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 16 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('u64' as const), at: fc.nat(), value: edgeU64 }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('u32' as const), at: fc.nat(), value: edgeU32 }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('u16' as const), at: fc.nat(), value: edgeU16 }) },
);

function mutate(input: Uint8Array, mutations: readonly Mutation[], aimAt: readonly number[] = []): Uint8Array {
  let bytes: Uint8Array = input.slice();
  for (const [i, m] of mutations.entries()) {
    // Every other write aims at a known field when the seed names some.
    const aimedAt = aimAt.length > 0 && i % 2 === 1 && (m.kind === 'u64' || m.kind === 'u32' || m.kind === 'u16') ? aimAt[m.at % aimAt.length]! : undefined;
    const at = aimedAt ?? (bytes.length === 0 ? 0 : m.at % (bytes.length + 1));
    bytes = applyMutation(bytes, m, at);
  }
  return bytes;
}

// ---- seeds ----

function seedTensors(): PtTensor[] {
  const shared: PtStorage = { dtype: 'float32', bytes: f32Bytes([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]) };
  return [
    { name: 'model.embed_tokens.weight', storage: shared, shape: [3, 4] },
    { name: 'lm_head.weight', storage: shared, shape: [3, 4] },
    { name: 'row', storage: shared, shape: [4], offset: 4 },
    { name: 't', storage: shared, shape: [4, 3], strides: [1, 4] },
    { name: 'h', storage: { dtype: 'float16', bytes: u16Bytes([0x3c00, 0x4000]) }, shape: [2] },
    { name: 'bf', storage: { dtype: 'bfloat16', bytes: u16Bytes([0x3f80]) }, shape: [1, 1, 1, 1] },
    { name: 'ids', storage: { dtype: 'int64', bytes: i64Bytes([1, 2, 3]) }, shape: [3] },
    { name: 'mask', storage: { dtype: 'bool', bytes: Uint8Array.of(1, 0) }, shape: [2] },
  ];
}

const ZIP_SEEDS: Uint8Array[] = [
  buildPytorchBin(seedTensors(), { archiveName: 'pytorch_model' }),
  buildPytorchBin(seedTensors(), { protocol: 4, container: 'dict', byteorder: 'little' }),
  buildPytorchBin(seedTensors().slice(0, 3), { parameters: true, moduleMetadata: ['', 'model'], zip64Entries: true }),
  buildPytorchBin(seedTensors().slice(4, 6), { noZip64End: true }),
];
const LEGACY_SEEDS: Uint8Array[] = [buildLegacyPytorchBin(seedTensors()), buildLegacyPytorchBin(seedTensors().slice(4, 6))];
const PICKLE_SEEDS: Uint8Array[] = [
  stateDictPickle(seedTensors()),
  stateDictPickle(seedTensors(), { protocol: 4, container: 'dict' }),
  stateDictPickle(seedTensors().slice(0, 2), { parameters: true, moduleMetadata: ['', 'a', 'b'] }),
  stateDictPickle(seedTensors(), { legacy: true }),
];

/** Offsets of the zip fields that say where things are: EOCD, ZIP64 record and locator, central entries. */
function zipFieldOffsets(bytes: Uint8Array): number[] {
  const out: number[] = [];
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let p = 0; p + 4 <= bytes.length; p++) {
    const sig = dv.getUint32(p, true);
    if (sig === 0x06054b50) out.push(p + 8, p + 10, p + 12, p + 16, p + 20);
    else if (sig === 0x06064b50) out.push(p + 24, p + 32, p + 40, p + 48);
    else if (sig === 0x07064b50) out.push(p + 8);
    else if (sig === 0x02014b50) out.push(p + 10, p + 20, p + 24, p + 28, p + 30, p + 42, p + 46);
    else if (sig === 0x04034b50) out.push(p + 8, p + 26, p + 28);
  }
  return out;
}
const ZIP_AIMS = ZIP_SEEDS.map(zipFieldOffsets);

/** Offsets just after each length-prefixed opcode (X, B, 0x8d, 0x8e, 0x95, 0x8a) in a pickle. */
function pickleLengthOffsets(bytes: Uint8Array): number[] {
  const out: number[] = [];
  for (let p = 0; p < bytes.length; p++) if ([0x58, 0x42, 0x8d, 0x8e, 0x95, 0x8a, 0x72, 0x6a].includes(bytes[p]!)) out.push(p + 1);
  return out;
}

// ---- random opcode streams ----

const enc = new TextEncoder();
const u32le = (v: number): number[] => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
const u64le = (v: bigint): number[] => Array.from({ length: 8 }, (_, i) => Number((BigInt.asUintN(64, v) >> BigInt(8 * i)) & 0xffn));

const globalName = fc.constantFrom(
  ['collections', 'OrderedDict'],
  ['torch._utils', '_rebuild_tensor_v2'],
  ['torch._utils', '_rebuild_tensor_v3'],
  ['torch._utils', '_rebuild_parameter'],
  ['torch._utils', '_rebuild_parameter_with_state'],
  ['torch._tensor', '_rebuild_from_type_v2'],
  ['torch.nn.parameter', 'Parameter'],
  ['torch', 'FloatStorage'],
  ['torch', 'HalfStorage'],
  ['torch', 'UntypedStorage'],
  ['torch', 'ComplexFloatStorage'],
  ['torch', 'bfloat16'],
  ['torch', 'float8_e4m3fn'],
  ['torch', 'complex64'],
  ['os', 'system'],
  ['builtins', 'eval'],
  ['__builtin__', 'getattr'],
  ['torch', 'load'],
);

/** One opcode with arguments, lengths sometimes honest and sometimes absurd. */
const opcode: fc.Arbitrary<number[]> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc
      .constantFrom(0x28, 0x7d, 0x5d, 0x29, 0x4e, 0x88, 0x89, 0x74, 0x85, 0x86, 0x87, 0x94, 0x73, 0x75, 0x61, 0x65, 0x52, 0x62, 0x51, 0x93, 0x2e)
      .map((o) => [o]),
  },
  { weight: 3, arbitrary: fc.tuple(fc.constantFrom(0x4b, 0x71, 0x68), fc.nat({ max: 255 })).map(([o, a]) => [o, a]) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom(0x4d), fc.nat({ max: 0xffff })).map(([o, a]) => [o, a & 0xff, a >>> 8]) },
  { weight: 2, arbitrary: fc.tuple(fc.constantFrom(0x4a, 0x72, 0x6a), edgeU32).map(([o, a]) => [o, ...u32le(a)]) },
  { weight: 1, arbitrary: fc.tuple(fc.nat({ max: 20 }), fc.uint8Array({ maxLength: 20 })).map(([n, b]) => [0x8a, n, ...b]) },
  { weight: 1, arbitrary: edgeU32.map((n) => [0x8b, ...u32le(n), 1, 2]) },
  {
    weight: 1,
    arbitrary: fc.double().map((d) => {
      const b = new Uint8Array(8);
      new DataView(b.buffer).setFloat64(0, d, false);
      return [0x47, ...b];
    }),
  },
  {
    weight: 4,
    arbitrary: fc
      .tuple(fc.constantFrom('storage', 'cpu', '0', '1', 'w', 'lm_head.weight', '', 'version', '_metadata'), fc.constantFrom(0x58, 0x8c, 0x8d))
      .map(([s, o]) => {
        const b = [...enc.encode(s)];
        return o === 0x58 ? [o, ...u32le(b.length), ...b] : o === 0x8c ? [o, b.length, ...b] : [o, ...u64le(BigInt(b.length)), ...b];
      }),
  },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom(0x58, 0x42), edgeU32, fc.uint8Array({ maxLength: 8 })).map(([o, n, b]) => [o, ...u32le(n), ...b]) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom(0x8d, 0x8e, 0x95), edgeU64, fc.uint8Array({ maxLength: 8 })).map(([o, n, b]) => [o, ...u64le(n), ...b]) },
  { weight: 1, arbitrary: fc.tuple(fc.nat({ max: 255 }), fc.uint8Array({ maxLength: 12 })).map(([o, b]) => [0x43, o, ...b]) },
  { weight: 3, arbitrary: globalName.map(([m, n]) => [0x63, ...enc.encode(`${m}\n${n}\n`)]) },
  { weight: 1, arbitrary: fc.tuple(fc.string({ maxLength: 6 }), fc.string({ maxLength: 6 })).map(([m, n]) => [0x63, ...enc.encode(`${m}\n${n}\n`)]) },
  { weight: 1, arbitrary: fc.nat({ max: 255 }).map((o) => [o]) },
);

const opStream = fc.array(opcode, { minLength: 1, maxLength: 80 }).map((ops) => Uint8Array.from([0x80, 2, ...ops.flat(), 0x2e]));

describe('fuzz: PyTorch .bin readers', () => {
  test('mutated zip-format checkpoints: FormatError or a result consistent with the file', { timeout: TIMEOUT }, () => {
    let parsed = 0;
    fc.assert(
      fc.property(fc.nat({ max: ZIP_SEEDS.length - 1 }), fc.array(mutation, { minLength: 1, maxLength: 6 }), (i, ms) => {
        if (parseBin(mutate(ZIP_SEEDS[i]!, ms, ZIP_AIMS[i]!))) parsed++;
      }),
      { seed: SEED, numRuns: 8_000 },
    );
    assert.ok(parsed > 100, `only ${parsed} mutated files parsed: mutations too destructive to reach the pickle`);
  });

  test('mutated data.pkl inside a valid zip: the unpickler alone decides', { timeout: TIMEOUT }, () => {
    const storages = new Map<string, Uint8Array>([
      ['0', new Uint8Array(48)],
      ['1', new Uint8Array(4)],
      ['2', new Uint8Array(2)],
      ['3', new Uint8Array(24)],
      ['4', new Uint8Array(2)],
    ]);
    const aims = PICKLE_SEEDS.map(pickleLengthOffsets);
    fc.assert(
      fc.property(fc.nat({ max: PICKLE_SEEDS.length - 2 }), fc.array(mutation, { minLength: 1, maxLength: 4 }), (i, ms) => {
        const pkl = mutate(PICKLE_SEEDS[i]!, ms, aims[i]!);
        parseBin(buildZip([{ name: 'archive/data.pkl', data: pkl }, ...[...storages].map(([k, data]) => ({ name: `archive/data/${k}`, data }))]));
      }),
      { seed: SEED + 1, numRuns: 6_000 },
    );
  });

  test('mutated pickles, unpickled directly (legacy persistent ids allowed)', { timeout: TIMEOUT }, () => {
    const aims = PICKLE_SEEDS.map(pickleLengthOffsets);
    fc.assert(
      fc.property(fc.nat({ max: PICKLE_SEEDS.length - 1 }), fc.array(mutation, { minLength: 1, maxLength: 4 }), fc.boolean(), (i, ms, legacy) => {
        const pkl = mutate(PICKLE_SEEDS[i]!, ms, aims[i]!);
        onlyFormatError(() => parseStateDictPickle(pkl, 'fuzz.pkl', { legacy }));
      }),
      { seed: SEED + 2, numRuns: 6_000 },
    );
  });

  test('random opcode streams', { timeout: TIMEOUT }, () => {
    fc.assert(
      fc.property(opStream, fc.boolean(), (pkl, legacy) => {
        onlyFormatError(() => parseStateDictPickle(pkl, 'fuzz.pkl', { legacy }));
      }),
      { seed: SEED + 3, numRuns: 6_000 },
    );
  });

  test('mutated legacy checkpoints', { timeout: TIMEOUT }, () => {
    const aims = LEGACY_SEEDS.map(pickleLengthOffsets);
    fc.assert(
      fc.property(fc.nat({ max: LEGACY_SEEDS.length - 1 }), fc.array(mutation, { minLength: 1, maxLength: 5 }), (i, ms) => {
        parseBin(mutate(LEGACY_SEEDS[i]!, ms, aims[i]!));
      }),
      { seed: SEED + 4, numRuns: 3_000 },
    );
  });

  test('mutated zip directories, listed directly', { timeout: TIMEOUT }, () => {
    fc.assert(
      fc.property(fc.nat({ max: ZIP_SEEDS.length - 1 }), fc.array(mutation, { minLength: 1, maxLength: 6 }), (i, ms) => {
        const bytes = mutate(ZIP_SEEDS[i]!, ms, ZIP_AIMS[i]!);
        onlyFormatError(() => {
          const dir = readZipDirectory(guardedSource(bytes));
          for (const e of dir.entries) {
            assert.ok(e.dataOffset >= 0 && e.dataOffset + e.compressedSize <= bytes.length, `${e.name}: data outside the file`);
          }
        });
      }),
      { seed: SEED + 5, numRuns: 5_000 },
    );
  });

  test('random bytes, with and without a zip or legacy signature', { timeout: TIMEOUT }, () => {
    const prefixes = [[], [0x50, 0x4b, 0x03, 0x04], [0x50, 0x4b, 0x05, 0x06], [0x80, 0x02, 0x8a, 0x0a]];
    fc.assert(
      fc.property(fc.nat({ max: prefixes.length - 1 }), fc.uint8Array({ maxLength: 300 }), (i, body) => {
        parseBin(Uint8Array.from([...prefixes[i]!, ...body]));
      }),
      { seed: SEED + 6, numRuns: 3_000 },
    );
  });
});

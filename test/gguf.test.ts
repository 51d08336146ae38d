import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { assertFormatError, tempFiles } from './helpers/format-errors.js';
import { tensorBytes } from '../src/reader/dtypes.js';
import { bufferSource, GGML_TYPES, GGUF_LIMITS, ggmlTypeId, parseGguf, readGgufHeader } from '../src/reader/formats/gguf.js';
import { encodeGgufHeader, gv, layoutGgufTensors, writeGguf, type GgufHeaderSpec, type GgufRawTensorInfo } from '../src/reader/formats/gguf-writer.js';

const tmp = tempFiles('vramfit-gguf-', 'gguf');

/** Writes `bytes` (plus `extra` zero bytes) to a file and expects readGgufHeader to refuse it. */
function readBytes(bytes: Uint8Array, reason: RegExp, extra = 0): void {
  const path = tmp('bad');
  const all = new Uint8Array(bytes.length + extra);
  all.set(bytes);
  writeFileSync(path, all);
  assertFormatError(() => readGgufHeader(path), path, reason);
}

/** A header from `spec` followed by `dataBytes` zeros, refused with `reason`. */
function readCrafted(spec: GgufHeaderSpec, reason: RegExp, dataBytes = 0): void {
  readBytes(encodeGgufHeader(spec), reason, dataBytes);
}

const f32 = (name: string, ne: number[], offset = 0): GgufRawTensorInfo => ({ name, ne, ggmlType: 0, offset });

describe('gguf round trips', () => {
  test('metadata of every type survives writer → reader with its stored type', () => {
    const path = tmp();
    const metadata = {
      'general.architecture': 'llama',
      u8: gv.u8(200),
      i8: gv.i8(-100),
      u16: gv.u16(60000),
      i16: gv.i16(-30000),
      u32: gv.u32(4_000_000_000),
      i32: gv.i32(-2_000_000_000),
      f32: gv.f32(1e-5),
      f64: gv.f64(Math.PI),
      u64: gv.u64(2n ** 64n - 1n),
      u64small: gv.u64(4096),
      i64: gv.i64(-(2n ** 62n)),
      t: true,
      f: false,
      s: 'héllo ✓',
      empty: '',
      tokens: ['<s>', '</s>', 'a', '▁the'],
      scores: gv.array('f32', [0, -1.5, 2.25]),
      types: gv.array('i32', [1, 3, -6]),
      bytes: gv.array('u8', [0, 255]),
      nested: gv.array('array', [gv.array('u32', [1, 2]), gv.array('string', ['x']), gv.array('array', [[true]])]),
      none: gv.array('u64', []),
    };
    writeGguf(path, { metadata, tensors: [] });
    const h = readGgufHeader(path);
    assert.equal(h.version, 3);
    assert.deepEqual(h.metadata, {
      'general.architecture': 'llama',
      u8: 200,
      i8: -100,
      u16: 60000,
      i16: -30000,
      u32: 4_000_000_000,
      i32: -2_000_000_000,
      f32: Math.fround(1e-5),
      f64: Math.PI,
      u64: 2n ** 64n - 1n,
      u64small: 4096,
      i64: -(2n ** 62n),
      t: true,
      f: false,
      s: 'héllo ✓',
      empty: '',
      tokens: ['<s>', '</s>', 'a', '▁the'],
      scores: [0, -1.5, 2.25],
      types: [1, 3, -6],
      bytes: [0, 255],
      nested: [[1, 2], ['x'], [[true]]],
      none: [],
    });
    assert.deepEqual(h.metadataTypes, {
      'general.architecture': 'string',
      u8: 'u8',
      i8: 'i8',
      u16: 'u16',
      i16: 'i16',
      u32: 'u32',
      i32: 'i32',
      f32: 'f32',
      f64: 'f64',
      u64: 'u64',
      u64small: 'u64',
      i64: 'i64',
      t: 'bool',
      f: 'bool',
      s: 'string',
      empty: 'string',
      tokens: 'array',
      scores: 'array',
      types: 'array',
      bytes: 'array',
      nested: 'array',
      none: 'array',
    });
    assert.deepEqual(h.tensors, []);
  });

  test('plain values get the types llama.cpp would use', () => {
    const path = tmp();
    writeGguf(path, { metadata: { a: 5, b: -5, c: 0.5, d: 2 ** 40, e: [1, 2], f: [1, -2], g: [1, 0.5], h: 7n }, tensors: [] });
    const h = readGgufHeader(path);
    assert.deepEqual(h.metadataTypes, { a: 'u32', b: 'i32', c: 'f32', d: 'u64', e: 'array', f: 'array', g: 'array', h: 'u64' });
    assert.deepEqual(h.metadata, { a: 5, b: -5, c: 0.5, d: 2 ** 40, e: [1, 2], f: [1, -2], g: [1, 0.5], h: 7 });
  });

  test('tensors come back in torch order with ggml types, dtypes and aligned ranges', () => {
    const path = tmp();
    const tensors = [
      { name: 'token_embd.weight', shape: [64, 256], dtype: 'q4_k' },
      { name: 'blk.0.attn_norm.weight', shape: [256], dtype: 'float32' },
      { name: 'blk.0.attn_q.weight', shape: [256, 256], dtype: 'q8_0' },
      { name: 'blk.0.ffn_up.weight', shape: [3, 64], dtype: 'q4_0' },
      { name: 'x.f16', shape: [2, 3, 4], dtype: 'float16' },
      { name: 'x.bf16', shape: [1, 2, 3, 5], dtype: 'bfloat16' },
      { name: 'x.i8', shape: [7], dtype: 'int8' },
    ];
    const written = writeGguf(path, { metadata: { 'general.architecture': 'llama' }, tensors });
    const h = readGgufHeader(path);
    assert.equal(h.fileSize, statSync(path).size);
    assert.equal(h.dataStart, written.dataStart);
    assert.equal(h.dataStart % 32, 0);
    assert.equal(h.alignment, 32);
    assert.deepEqual(
      h.tensors.map((t) => [t.name, t.shape, t.dtype]),
      tensors.map((t) => [t.name, t.shape, t.dtype]),
    );
    assert.deepEqual(
      h.tensors.map((t) => t.ggmlType),
      [12, 0, 8, 2, 1, 30, 24],
    );
    assert.deepEqual(
      h.tensors.map((t) => t.range),
      written.ranges,
    );
    for (const t of h.tensors) {
      assert.equal((t.range[0] - h.dataStart) % 32, 0);
      assert.equal(t.range[1] - t.range[0], tensorBytes(t.shape, t.dtype));
    }
  });

  test('every ggml type id maps to a dtype that round-trips', () => {
    for (const [id, dtype] of Object.entries(GGML_TYPES)) assert.equal(ggmlTypeId(dtype), Number(id));
    const path = tmp();
    const tensors = Object.values(GGML_TYPES).map((dtype, i) => ({ name: `t${i}`, shape: [2, 256], dtype }));
    writeGguf(path, { tensors });
    const h = readGgufHeader(path);
    assert.deepEqual(
      h.tensors.map((t) => t.dtype),
      Object.values(GGML_TYPES),
    );
    assert.deepEqual(
      h.tensors.map((t) => t.ggmlType),
      Object.keys(GGML_TYPES).map(Number),
    );
  });

  test('GGUF version 2 files parse too', () => {
    const header = encodeGgufHeader({ version: 2, metadata: { a: gv.u32(1) }, tensors: [f32('w', [4])] });
    const bytes = new Uint8Array(header.length + 16);
    bytes.set(header);
    const h = parseGguf(bufferSource(bytes), 'v2.gguf');
    assert.equal(h.version, 2);
    assert.deepEqual(h.tensors[0]!.range, [header.length, header.length + 16]);
  });

  test('general.alignment moves the data section and tensor offsets', () => {
    const path = tmp();
    const written = writeGguf(path, {
      metadata: { 'general.alignment': gv.u32(256) },
      tensors: [
        { name: 'a', shape: [3], dtype: 'float32' },
        { name: 'b', shape: [5], dtype: 'float16' },
      ],
    });
    const h = readGgufHeader(path);
    assert.equal(h.alignment, 256);
    assert.equal(h.dataStart % 256, 0);
    assert.deepEqual(
      h.tensors.map((t) => t.range),
      written.ranges,
    );
    assert.equal(h.tensors[1]!.range[0], h.dataStart + 256);
  });

  test('given data and random fill land at the reported ranges', () => {
    const path = tmp();
    const data = Uint8Array.from({ length: 16 }, (_, i) => 255 - i);
    writeGguf(
      path,
      {
        tensors: [
          { name: 'r', shape: [1000], dtype: 'int8' },
          { name: 'g', shape: [4], dtype: 'float32', data },
        ],
      },
      { fill: 'random' },
    );
    const file = readFileSync(path);
    const [r, g] = readGgufHeader(path).tensors;
    assert.deepEqual(new Uint8Array(file.subarray(g!.range[0], g!.range[1])), data);
    assert.ok(file.subarray(r!.range[0], r!.range[1]).some((b) => b !== 0));
  });

  test('metadata many chunks long parses, and chunk size does not change the result', () => {
    const tokens = Array.from({ length: 50_000 }, (_, i) => `tok_${i}_${'x'.repeat(i % 13)}`);
    const scores = gv.array(
      'f32',
      tokens.map((_, i) => i / 2),
    );
    const path = tmp('tokenizer');
    writeGguf(path, {
      metadata: { 'tokenizer.ggml.tokens': tokens, 'tokenizer.ggml.scores': scores, long: 'y'.repeat(300_000) },
      tensors: [{ name: 'w', shape: [4, 32], dtype: 'q8_0' }],
    });
    const full = readGgufHeader(path);
    assert.ok(full.dataStart > 1 << 20, 'header spans more than one 1 MiB chunk');
    assert.equal((full.metadata['tokenizer.ggml.tokens'] as string[])[49_999], tokens[49_999]);
    assert.equal((full.metadata['long'] as string).length, 300_000);
    for (const chunkSize of [16, 1000, 64 * 1024]) {
      const h = readGgufHeader(path, { chunkSize });
      assert.deepEqual(h.metadata, full.metadata);
      assert.deepEqual(h.tensors, full.tensors);
      assert.ok(h.bytesRead <= h.fileSize, 'no byte read twice');
    }
  });

  test('reading a 5 GB sparse GGUF reads only its header', () => {
    const path = tmp('big');
    const written = writeGguf(path, {
      metadata: { 'general.architecture': 'llama', 'tokenizer.ggml.tokens': Array.from({ length: 1000 }, (_, i) => `t${i}`) },
      tensors: [
        { name: 'token_embd.weight', shape: [128256, 8192], dtype: 'float16' },
        { name: 'output.weight', shape: [128256, 8192], dtype: 'bfloat16' },
        { name: 'blk.0.ffn_up.weight', shape: [28672, 8192], dtype: 'q4_k' },
      ],
    });
    assert.ok(written.fileSize > 4 * 2 ** 30);
    assert.equal(statSync(path).size, written.fileSize);
    const h = readGgufHeader(path);
    assert.ok(h.bytesRead >= h.dataStart - 32, 'read at least the header');
    assert.ok(h.bytesRead <= 64 * 1024, `read ${h.bytesRead} bytes`);
    assert.deepEqual(
      h.tensors.map((t) => t.range),
      written.ranges,
    );
    assert.equal(h.tensors[2]!.range[1], written.ranges[2]![1]);
  });

  test('layoutGgufTensors pads every tensor, including the last, to the alignment', () => {
    const { sizes, dataBytes, infos } = layoutGgufTensors(
      [
        { name: 'a', shape: [3], dtype: 'float32' },
        { name: 'b', shape: [1], dtype: 'int8' },
      ],
      32,
    );
    assert.deepEqual(sizes, [12, 1]);
    assert.deepEqual(
      infos.map((i) => i.offset),
      [0, 32],
    );
    assert.equal(dataBytes, 64);
  });

  test('a __proto__ metadata key stays plain data', () => {
    const bytes = encodeGgufHeader({ metadata: { ['__proto__']: gv.u32(3) } });
    const h = parseGguf(bufferSource(bytes), 'p.gguf');
    assert.equal(Object.getPrototypeOf(h.metadata), Object.prototype);
    assert.equal(Object.getOwnPropertyDescriptor(h.metadata, '__proto__')?.value, 3);
  });
});

describe('gguf errors', () => {
  test('bad magic', () => {
    readBytes(new TextEncoder().encode('GGML\x03\x00\x00\x00' + '\x00'.repeat(16)), /bad magic: not a GGUF file/);
  });

  test('a file too short for the magic', () => {
    readBytes(new Uint8Array([0x47, 0x47]), /2 bytes, too short for the GGUF magic/);
  });

  test('unsupported version', () => {
    readCrafted({ version: 1 }, /unsupported GGUF version 1 \(only versions 2 and 3 are\)/);
    readCrafted({ version: 4 }, /unsupported GGUF version 4/);
  });

  test('big-endian files are named as such', () => {
    readCrafted({ version: 0x03000000 }, /unsupported GGUF version 50331648 \(a big-endian file/);
  });

  test('absurd tensor count', () => {
    readCrafted({ tensorCount: 2n ** 64n - 1n }, /tensor count 18446744073709551615 at offset 8 cannot fit in the \d+ bytes left in the file/);
    readCrafted({ tensorCount: 1000 }, /tensor count 1000 at offset 8 cannot fit/, 1000);
  });

  test('absurd metadata count', () => {
    readCrafted({ kvCount: 2n ** 63n }, /metadata count 9223372036854775808 at offset 16 cannot fit/);
    readCrafted({ kvCount: 100, metadata: { a: 1 } }, /metadata count 100 at offset 16 cannot fit/, 100);
  });

  test('absurd array length', () => {
    // u32 item type, then a length far beyond the file.
    const payload = new Uint8Array(12);
    const view = new DataView(payload.buffer);
    view.setUint32(0, 4, true);
    view.setBigUint64(4, 2n ** 62n, true);
    readCrafted({ metadata: { arr: { type: 'raw', typeId: 9, bytes: payload } } }, /array length of "arr" 4611686018427387904 at offset \d+ cannot fit/);
  });

  test('array length just past what the remaining bytes can hold', () => {
    const payload = new Uint8Array(12 + 40);
    const view = new DataView(payload.buffer);
    view.setUint32(0, 6, true); // f32: 40 bytes hold 10 items, not 11
    view.setBigUint64(4, 11n, true);
    readCrafted(
      { metadata: { scores: { type: 'raw', typeId: 9, bytes: payload } }, alignment: 1 },
      /array length of "scores" 11 at offset \d+ cannot fit in the 40 bytes left/,
    );
  });

  test('absurd string lengths (key, value, tensor name)', () => {
    const key = encodeGgufHeader({ metadata: { k: 'v' } });
    new DataView(key.buffer).setBigUint64(24, 2n ** 40n, true);
    readBytes(key, /metadata key length 1099511627776 at offset 24 cannot fit/);

    const value = encodeGgufHeader({ metadata: { k: 'v' } });
    new DataView(value.buffer).setBigUint64(24 + 8 + 1 + 4, 2n ** 64n - 1n, true);
    readBytes(value, /value of "k" length 18446744073709551615 at offset 37 cannot fit/);

    const name = encodeGgufHeader({ tensors: [f32('w', [4])] });
    new DataView(name.buffer).setBigUint64(24, 10_000n, true);
    readBytes(name, /tensor name length 10000 at offset 24 cannot fit/);
  });

  test('an array count that fits a multi-GB file but no real header is refused before allocating', () => {
    const payload = new Uint8Array(12);
    const view = new DataView(payload.buffer);
    view.setUint32(0, 0, true); // u8 items: the cheapest per byte, the worst for memory
    view.setBigUint64(4, BigInt(GGUF_LIMITS.arrayLength + 1), true);
    const path = tmp('sparse');
    writeFileSync(path, encodeGgufHeader({ metadata: { arr: { type: 'raw', typeId: 9, bytes: payload } } }));
    truncateSync(path, 64 * 2 ** 20);
    assertFormatError(() => readGgufHeader(path), path, /array length of "arr" 16777217 at offset \d+ is absurdly large \(limit 16777216\)/);
  });

  test('a string length that fits the file but no real header is refused before allocating', () => {
    const payload = new Uint8Array(8);
    new DataView(payload.buffer).setBigUint64(0, BigInt(GGUF_LIMITS.stringBytes + 1), true);
    const path = tmp('sparse');
    writeFileSync(path, encodeGgufHeader({ metadata: { s: { type: 'raw', typeId: 8, bytes: payload } } }));
    truncateSync(path, 128 * 2 ** 20);
    assertFormatError(() => readGgufHeader(path), path, /value of "s" length 67108865 at offset \d+ is absurdly large \(limit 67108864\)/);
  });

  test('a header longer than the header-size cap', () => {
    const bytes = encodeGgufHeader({ metadata: { a: 'x'.repeat(3000), b: 'y'.repeat(3000) } });
    assertFormatError(
      () => parseGguf(bufferSource(bytes), 'long.gguf', { chunkSize: 1024, limits: { headerBytes: 4096 } }),
      'long.gguf',
      /header runs past 4096 bytes \(at value of "b"\)/,
    );
    assert.equal(parseGguf(bufferSource(bytes), 'long.gguf').metadata['b'], 'y'.repeat(3000));
  });

  test('a file truncated inside the metadata', () => {
    const full = encodeGgufHeader({ metadata: { 'general.architecture': 'llama', n: gv.u64(5) }, alignment: 1 });
    readBytes(full.subarray(0, full.length - 4), /file is truncated: value of "n" needs 8 bytes at offset \d+ but the file is \d+ bytes/);
  });

  test('a file truncated inside the tensor infos', () => {
    // Cut inside the second info: enough bytes remain for the count check, not for the info itself.
    const full = encodeGgufHeader({ tensors: [f32('w', [4, 4]), f32('v', [4, 4], 64)] });
    const first = 8 + 1 + 4 + 16 + 4 + 8;
    readBytes(full.subarray(0, 24 + first + 8 + 1 + 4 + 8), /file is truncated: ne\[1\] of tensor "v" needs 8 bytes/);
  });

  test('a file truncated inside the fixed header', () => {
    readBytes(encodeGgufHeader({}).subarray(0, 12), /file is truncated: tensor count needs 8 bytes at offset 8/);
  });

  test('unknown metadata value type', () => {
    readCrafted({ metadata: { weird: { type: 'raw', typeId: 13, bytes: new Uint8Array(8) } } }, /metadata "weird": unknown value type 13 at offset 37/);
  });

  test('unknown array item type', () => {
    const payload = new Uint8Array(12);
    new DataView(payload.buffer).setUint32(0, 77, true);
    readCrafted({ metadata: { arr: { type: 'raw', typeId: 9, bytes: payload } } }, /metadata "arr": unknown array item type 77/);
  });

  test('bool that is neither 0 nor 1', () => {
    readCrafted({ metadata: { flag: { type: 'raw', typeId: 7, bytes: new Uint8Array([2]) } } }, /metadata "flag": bool at offset \d+ holds 2, not 0 or 1/, 32);
  });

  test('arrays nested absurdly deep', () => {
    let v: ReturnType<typeof gv.array> = gv.array('u8', []);
    for (let i = 0; i < 40; i++) v = gv.array('array', [v]);
    readCrafted({ metadata: { deep: v } }, /metadata "deep": arrays nested deeper than 16/);
  });

  test('duplicate metadata key', () => {
    // Object keys cannot repeat, so splice a second copy of the one KV into the header.
    const one = encodeGgufHeader({ metadata: { k: gv.u32(1) }, alignment: 1 });
    const kv = one.subarray(24);
    const bytes = new Uint8Array(24 + 2 * kv.length);
    bytes.set(one.subarray(0, 24));
    new DataView(bytes.buffer).setBigUint64(16, 2n, true);
    bytes.set(kv, 24);
    bytes.set(kv, 24 + kv.length);
    readBytes(bytes, /duplicate metadata key "k"/);
  });

  test('duplicate tensor name', () => {
    readCrafted({ tensors: [f32('w', [8]), f32('w', [8], 32)] }, /duplicate tensor name "w"/, 64);
  });

  test('unknown ggml type', () => {
    readCrafted({ tensors: [{ name: 'w', ne: [32], ggmlType: 31, offset: 0 }] }, /tensor "w": unknown ggml type 31/, 64);
    readCrafted({ tensors: [{ name: 'w', ne: [32], ggmlType: 4000, offset: 0 }] }, /unknown ggml type 4000/, 64);
  });

  test('n_dims of 0', () => {
    readCrafted({ tensors: [f32('w', [])] }, /tensor "w": n_dims 0 is not between 1 and 4/, 64);
  });

  test('n_dims above 4', () => {
    readCrafted({ tensors: [f32('w', [1, 1, 1, 1, 2])] }, /tensor "w": n_dims 5 is not between 1 and 4/, 64);
  });

  test('absurd dimension', () => {
    readCrafted({ tensors: [f32('w', [2n ** 63n] as unknown as number[])] }, /tensor "w": ne\[0\] = 9223372036854775808 is absurdly large/, 64);
  });

  test('element count not a multiple of the block size', () => {
    readCrafted(
      { tensors: [{ name: 'w', ne: [33, 2], ggmlType: 2, offset: 0 }] },
      /tensor "w": row length ne\[0\] = 33 is not a multiple of the q4_0 block size 32/,
      128,
    );
    readCrafted({ tensors: [{ name: 'k', ne: [128, 2], ggmlType: 12, offset: 0 }] }, /ne\[0\] = 128 is not a multiple of the q4_k block size 256/, 512);
  });

  test('tensor data past the end of the file', () => {
    readCrafted({ tensors: [f32('w', [16])] }, /tensor "w": data \(64 bytes at offset \d+\) lies outside the \d+-byte file/, 32);
    readCrafted({ tensors: [f32('w', [1], (2n ** 62n) as unknown as number)] }, /tensor "w": offset 4611686018427387904 lies outside/, 32);
    readCrafted({ tensors: [f32('w', [2 ** 40, 2 ** 40])] }, /data \(more than the file at offset \d+\) lies outside/, 32);
  });

  test('tensor offset not aligned', () => {
    readCrafted({ tensors: [f32('w', [4], 8)] }, /tensor "w": offset 8 is not a multiple of the alignment 32/, 64);
  });

  test('overlapping tensors', () => {
    readCrafted({ tensors: [f32('a', [16]), f32('b', [8], 32)] }, /tensor "b" overlaps tensor "a"/, 128);
  });

  test('general.alignment that is not a power of two, or not u32', () => {
    readCrafted({ metadata: { 'general.alignment': gv.u32(24) }, alignment: 8 }, /general.alignment 24 is not a power of two/);
    readCrafted({ metadata: { 'general.alignment': gv.u32(0) }, alignment: 8 }, /general.alignment 0 is not a power of two/);
    readCrafted({ metadata: { 'general.alignment': gv.u64(32) } }, /general.alignment has type u64, expected u32/);
  });
});

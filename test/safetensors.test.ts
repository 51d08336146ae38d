import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { assertFormatError, tempFiles } from './helpers/format-errors.js';
import { MAX_HEADER_LENGTH, parseSafetensorsHeader, readSafetensorsHeader, SAFETENSORS_DTYPE_CODES } from '../src/reader/formats/safetensors.js';
import {
  encodeSafetensorsHeader,
  frameSafetensorsHeader,
  safetensorsCode,
  writeSafetensors,
  writeSparseSafetensors,
} from '../src/reader/formats/safetensors-writer.js';

const tmp = tempFiles('vramfit-st-', 'safetensors');

/** Writes a file made of a header built from `json` (an object or raw text) and `dataBytes` zero bytes, then reads it. */
function readCrafted(json: unknown, dataBytes: number, reason: RegExp): void {
  const path = tmp('bad');
  const header = frameSafetensorsHeader(typeof json === 'string' ? json : JSON.stringify(json));
  const bytes = new Uint8Array(header.length + dataBytes);
  bytes.set(header);
  writeFileSync(path, bytes);
  assertFormatError(() => readSafetensorsHeader(path), path, reason);
}

const t = (dtype: string, shape: unknown, data_offsets: unknown): Record<string, unknown> => ({ dtype, shape, data_offsets });

describe('safetensors round trips', () => {
  test('writer → reader keeps names, canonical dtypes, shapes, metadata and exact ranges', () => {
    const path = tmp();
    const tensors = [
      { name: 'model.embed_tokens.weight', dtype: 'bfloat16', shape: [32, 16] },
      { name: 'model.norm.weight', dtype: 'float32', shape: [16] },
      { name: 'lm_head.weight', dtype: 'F16', shape: [32, 16] },
      { name: 'scalar', dtype: 'float64', shape: [] },
      { name: 'mask', dtype: 'bool', shape: [3] },
    ];
    const written = writeSafetensors(path, tensors, { format: 'pt', note: 'round trip' });
    const h = readSafetensorsHeader(path);
    assert.equal(h.fileSize, statSync(path).size);
    assert.equal(h.fileSize, written.fileSize);
    assert.equal(h.headerBytes, written.headerBytes);
    assert.equal(h.headerBytes % 8, 0, 'header padded to 8 bytes');
    assert.deepEqual(h.metadata, { format: 'pt', note: 'round trip' });
    assert.deepEqual(
      h.tensors.map((x) => [x.name, x.dtype, x.shape]),
      [
        ['model.embed_tokens.weight', 'bfloat16', [32, 16]],
        ['model.norm.weight', 'float32', [16]],
        ['lm_head.weight', 'float16', [32, 16]],
        ['scalar', 'float64', []],
        ['mask', 'bool', [3]],
      ],
    );
    assert.deepEqual(
      h.tensors.map((x) => x.range),
      written.ranges,
    );
    assert.equal(h.bytesRead, h.headerBytes);
  });

  test('every safetensors dtype code maps to a canonical name and back', () => {
    const path = tmp();
    const tensors = SAFETENSORS_DTYPE_CODES.map((code, i) => ({ name: `t${i}`, dtype: code, shape: [2, 3] }));
    writeSafetensors(path, tensors);
    const h = readSafetensorsHeader(path);
    const names = h.tensors.map((x) => x.dtype);
    assert.deepEqual(names, [
      'float64',
      'float32',
      'float16',
      'bfloat16',
      'int64',
      'int32',
      'int16',
      'int8',
      'uint8',
      'bool',
      'float8_e4m3fn',
      'float8_e5m2',
      'uint16',
      'uint32',
      'uint64',
    ]);
    assert.deepEqual(names.map(safetensorsCode), [...SAFETENSORS_DTYPE_CODES]);
  });

  test('tensors come back in data-offset order whatever the JSON key order', () => {
    const path = tmp();
    const json = { b: t('F32', [2], [8, 16]), __metadata__: { k: 'v' }, a: t('F32', [2], [0, 8]), '0': t('U8', [1], [16, 17]) };
    const header = frameSafetensorsHeader(JSON.stringify(json));
    writeFileSync(path, Buffer.concat([header, new Uint8Array(17)]));
    const h = readSafetensorsHeader(path);
    assert.deepEqual(
      h.tensors.map((x) => x.name),
      ['a', 'b', '0'],
    );
    assert.deepEqual(h.tensors[0]!.range, [header.length, header.length + 8]);
  });

  test('given data and random fill land at the reported ranges', () => {
    const path = tmp();
    const data = Uint8Array.from({ length: 24 }, (_, i) => i + 1);
    const written = writeSafetensors(
      path,
      [
        { name: 'given', dtype: 'float32', shape: [2, 3], data },
        { name: 'random', dtype: 'int8', shape: [4096] },
      ],
      undefined,
      { fill: 'random', seed: 7 },
    );
    const file = readFileSync(path);
    const h = readSafetensorsHeader(path);
    const [g, r] = h.tensors;
    assert.deepEqual(new Uint8Array(file.subarray(g!.range[0], g!.range[1])), data);
    const rnd = file.subarray(r!.range[0], r!.range[1]);
    assert.equal(rnd.length, 4096);
    assert.ok(
      rnd.some((b) => b !== 0),
      'random fill is not all zeros',
    );
    assert.deepEqual(
      h.tensors.map((x) => x.range),
      written.ranges,
    );
  });

  test('zero-element tensors are allowed, including several at one offset', () => {
    const path = tmp();
    writeSafetensors(path, [
      { name: 'empty', dtype: 'float16', shape: [0, 4096] },
      { name: 'w', dtype: 'float16', shape: [2] },
      { name: 'empty2', dtype: 'int64', shape: [0] },
      { name: 'empty3', dtype: 'int64', shape: [7, 0] },
    ]);
    const h = readSafetensorsHeader(path);
    assert.equal(h.tensors.length, 4);
    assert.deepEqual(h.tensors.find((x) => x.name === 'empty')!.shape, [0, 4096]);
  });

  test('a file with no tensors and only metadata is valid', () => {
    const path = tmp();
    writeSafetensors(path, [], { format: 'pt' });
    const h = readSafetensorsHeader(path);
    assert.deepEqual(h.tensors, []);
    assert.deepEqual(h.metadata, { format: 'pt' });
    assert.equal(h.fileSize, h.headerBytes);
  });

  test('reading a 5 GB sparse shard reads only its header', () => {
    const path = tmp('big');
    const written = writeSparseSafetensors(path, [
      { name: 'model.embed_tokens.weight', dtype: 'bfloat16', shape: [128256, 8192] },
      { name: 'model.layers.0.mlp.up_proj.weight', dtype: 'bfloat16', shape: [28672, 8192] },
      { name: 'lm_head.weight', dtype: 'bfloat16', shape: [128256, 8192] },
    ]);
    assert.ok(written.fileSize > 2 ** 32, 'past 32-bit offsets');
    assert.equal(statSync(path).size, written.fileSize);
    const h = readSafetensorsHeader(path);
    assert.equal(h.bytesRead, h.headerBytes);
    assert.ok(h.bytesRead < 1024);
    assert.equal(h.tensors[2]!.range[1], written.fileSize);
  });

  test('encodeSafetensorsHeader gives the same bytes the writer puts first', () => {
    const path = tmp();
    const tensors = [{ name: 'x', dtype: 'float16', shape: [3] }];
    writeSafetensors(path, tensors, { a: 'b' });
    const header = encodeSafetensorsHeader(tensors, { a: 'b' });
    assert.deepEqual(new Uint8Array(readFileSync(path).subarray(0, header.length)), header);
    const parsed = parseSafetensorsHeader(header, header.length + 6, 'x.safetensors');
    assert.equal(parsed.tensors[0]!.range[1], header.length + 6);
  });

  test('a __proto__ metadata key stays plain data', () => {
    const h = parseSafetensorsHeader(frameSafetensorsHeader('{"__metadata__":{"__proto__":"x"}}'), 48, 'p.safetensors');
    assert.equal(Object.getPrototypeOf(h.metadata), Object.prototype);
    assert.equal(Object.getOwnPropertyDescriptor(h.metadata, '__proto__')?.value, 'x');
  });
});

describe('safetensors errors', () => {
  test('an empty file', () => {
    const path = tmp('empty');
    writeFileSync(path, new Uint8Array(0));
    assertFormatError(() => readSafetensorsHeader(path), path, /0 bytes, shorter than the 8-byte/);
  });

  test('a file shorter than 8 bytes', () => {
    const path = tmp('short');
    writeFileSync(path, new Uint8Array([1, 2, 3, 4, 5]));
    assertFormatError(() => readSafetensorsHeader(path), path, /5 bytes, shorter than the 8-byte/);
  });

  test('header length larger than the file', () => {
    const path = tmp();
    const header = frameSafetensorsHeader('{}');
    new DataView(header.buffer).setBigUint64(0, 1000n, true);
    writeFileSync(path, header);
    assertFormatError(() => readSafetensorsHeader(path), path, /header length 1000 runs past the end of the 16-byte file/);
  });

  test('absurdly large header length (over 100 MiB), even in a file that big', () => {
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigUint64(0, BigInt(MAX_HEADER_LENGTH + 1), true);
    assertFormatError(() => parseSafetensorsHeader(bytes, 10 * MAX_HEADER_LENGTH, 'huge.safetensors'), 'huge.safetensors', /absurdly large/);
    new DataView(bytes.buffer).setBigUint64(0, 2n ** 64n - 1n, true);
    const path = tmp();
    writeFileSync(path, bytes);
    assertFormatError(() => readSafetensorsHeader(path), path, /header length 18446744073709551615 is absurdly large/);
  });

  test('header bytes missing from the buffer given to the pure parser', () => {
    const header = frameSafetensorsHeader('{"__metadata__":{}}');
    assertFormatError(() => parseSafetensorsHeader(header.subarray(0, 12), header.length, 'cut.safetensors'), 'cut.safetensors', /truncated/);
  });

  test('header that is not valid UTF-8', () => {
    const body = new Uint8Array([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]); // {"\xff\xfe":1}
    const path = tmp();
    writeFileSync(path, frameSafetensorsHeader(body));
    assertFormatError(() => readSafetensorsHeader(path), path, /not valid UTF-8/);
  });

  test('header that is not JSON', () => {
    readCrafted('{"a": {"dtype": "F16",', 0, /not valid JSON/);
  });

  test('header that is JSON but not an object', () => {
    readCrafted('[1, 2, 3]', 0, /not a JSON object/);
    readCrafted('"text"', 0, /not a JSON object/);
    readCrafted('null', 0, /not a JSON object/);
  });

  test('tensor entry that is not an object', () => {
    readCrafted({ w: [1, 2, 3] }, 0, /tensor "w": entry is not \{dtype, shape, data_offsets\}/);
    readCrafted({ w: 'F16' }, 0, /tensor "w": entry is not/);
  });

  test('tensor entry missing dtype, shape or data_offsets', () => {
    readCrafted({ w: { shape: [2], data_offsets: [0, 4] } }, 4, /tensor "w": entry is not \{dtype, shape, data_offsets\}/);
    readCrafted({ w: { dtype: 'F16', data_offsets: [0, 4] } }, 4, /tensor "w": entry is not/);
    readCrafted({ w: { dtype: 'F16', shape: [2] } }, 4, /tensor "w": entry is not/);
  });

  test('unknown dtype', () => {
    readCrafted({ w: t('F4', [2], [0, 1]) }, 1, /tensor "w": unknown dtype "F4"/);
    readCrafted({ w: t('f16', [2], [0, 4]) }, 4, /unknown dtype "f16"/);
    readCrafted({ w: { dtype: 16, shape: [2], data_offsets: [0, 4] } }, 4, /unknown dtype 16/);
  });

  test('shape that is not an array', () => {
    readCrafted({ w: t('F16', 2, [0, 4]) }, 4, /tensor "w": shape is not an array/);
  });

  test('negative shape dimension', () => {
    readCrafted({ w: t('F16', [2, -1], [0, 4]) }, 4, /shape dimension -1 is not a non-negative safe integer/);
  });

  test('non-integer shape dimension', () => {
    readCrafted({ w: t('F16', [2.5], [0, 5]) }, 5, /shape dimension 2.5 is not/);
    readCrafted({ w: t('F16', ['2'], [0, 4]) }, 4, /shape dimension "2" is not/);
  });

  test('unsafe shape dimension', () => {
    readCrafted({ w: t('U8', [2 ** 53], [0, 4]) }, 4, /shape dimension 9007199254740992 is not a non-negative safe integer/);
  });

  test('shape whose byte size overflows', () => {
    readCrafted({ w: t('F64', [2 ** 40, 2 ** 40], [0, 8]) }, 8, /needs over 2\^53 bytes/);
  });

  test('data_offsets that are not a pair of non-negative integers', () => {
    readCrafted({ w: t('F16', [2], [0]) }, 4, /data_offsets is not a pair/);
    readCrafted({ w: t('F16', [2], [-4, 0]) }, 4, /data_offsets is not a pair/);
    readCrafted({ w: t('F16', [2], [0, 4.5]) }, 4, /data_offsets is not a pair/);
    readCrafted({ w: t('F16', [2], 'x') }, 4, /data_offsets is not a pair/);
  });

  test('data_offsets that end before they begin', () => {
    readCrafted({ w: t('F16', [2], [4, 0]) }, 4, /end before they begin/);
  });

  test('data_offsets out of range of the data section', () => {
    readCrafted({ w: t('F16', [2], [0, 4]) }, 3, /data_offsets \[0, 4\] run past the 3-byte data section/);
    readCrafted({ w: t('F16', [2], [100, 104]) }, 4, /run past the 4-byte data section/);
  });

  test('overlapping tensors', () => {
    readCrafted({ a: t('F16', [4], [0, 8]), b: t('F16', [2], [4, 8]) }, 8, /tensor "b" overlaps tensor "a"/);
  });

  test('a zero-length tensor placed inside another counts as overlapping', () => {
    readCrafted({ a: t('F16', [4], [0, 8]), b: t('F16', [0], [4, 4]) }, 8, /tensor "b" overlaps tensor "a"/);
  });

  test('a hole between tensors', () => {
    readCrafted({ a: t('F16', [2], [0, 4]), b: t('F16', [2], [6, 10]) }, 10, /hole of 2 bytes before tensor "b"/);
  });

  test('a hole at the start of the data section', () => {
    readCrafted({ a: t('F16', [2], [4, 8]) }, 8, /hole of 4 bytes before tensor "a"/);
  });

  test('data section longer than the tensors cover', () => {
    readCrafted({ a: t('F16', [2], [0, 4]) }, 12, /tensors cover 4 bytes but the data section is 12 bytes/);
  });

  test('trailing bytes in a file with no tensors', () => {
    readCrafted({ __metadata__: { a: 'b' } }, 1, /tensors cover 0 bytes but the data section is 1 bytes/);
  });

  test('shape × dtype size different from the byte length', () => {
    readCrafted({ w: t('BF16', [2, 3], [0, 10]) }, 10, /shape \[2, 3\] of bfloat16 needs 12 bytes but data_offsets span 10/);
    readCrafted({ w: t('F32', [0], [0, 4]) }, 4, /needs 0 bytes but data_offsets span 4/);
  });

  test('__metadata__ that is not an object', () => {
    readCrafted({ __metadata__: 'pt' }, 0, /__metadata__ is not a map of strings to strings/);
    readCrafted({ __metadata__: ['a'] }, 0, /__metadata__ is not a map of strings to strings/);
  });

  test('__metadata__ with a non-string value', () => {
    readCrafted({ __metadata__: { format: 'pt', step: 10 } }, 0, /not a map of strings to strings \(key "step" holds number\)/);
    readCrafted({ __metadata__: { nested: { a: 'b' } } }, 0, /key "nested" holds object/);
  });
});

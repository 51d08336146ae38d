/**
 * PyTorch .bin checkpoints: the zip reader, the restricted unpickler and the checkpoint reader, against files
 * torch itself wrote (inline below, made with torch 1.13's torch.save) and files the test writer makes, which
 * reproduces those byte for byte. Every malformed or hostile input must be a FormatError naming the file.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { parsePytorchBin, readPytorchBinHeader, type PytorchBinHeader, type PytorchBinTensor } from '../src/reader/formats/pytorch-bin.js';
import { bufferByteSource, readZipDirectory } from '../src/reader/formats/zip.js';
import { FormatError } from '../src/util/errors.js';
import {
  buildLegacyPytorchBin,
  buildPytorchBin,
  buildZip,
  f32Bytes,
  i64Bytes,
  PickleWriter,
  u16Bytes,
  type PtStorage,
  type PtTensor,
  type PytorchBinOptions,
  type ZipWriteEntry,
} from './helpers/pytorch-bin-writer.js';
import { bfloat16BitsToFloat32, float16BitsToFloat32 } from './helpers/tiny-llama-family.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';

// torch 1.13: torch.save(OrderedDict(a.weight=arange(6).reshape(2,3), b=f16[1.5,2.5], t=arange(12).reshape(3,4),
// tt=t.t(), row=t[1], i=i64[1,2,3], bo=[True,False], bf=bf16[1.0], s=tensor(3.0)), 'm.bin')
const TORCH_ZIP_FIXTURE = [
  'UEsDBAAACAgAAAAAAAAAAAAAAAAAAAAAAAAKABgAbS9kYXRhLnBrbEZCFABaWlpaWlpaWlpaWlpaWlpaWlpaWoACY2NvbGxlY3Rpb25zCk9yZG',
  'VyZWREaWN0CnEAKVJxAShYCAAAAGEud2VpZ2h0cQJjdG9yY2guX3V0aWxzCl9yZWJ1aWxkX3RlbnNvcl92MgpxAygoWAcAAABzdG9yYWdlcQRj',
  'dG9yY2gKRmxvYXRTdG9yYWdlCnEFWAEAAAAwcQZYAwAAAGNwdXEHSwZ0cQhRSwBLAksDhnEJSwNLAYZxColoAClScQt0cQxScQ1YAQAAAGJxDm',
  'gDKChoBGN0b3JjaApIYWxmU3RvcmFnZQpxD1gBAAAAMXEQaAdLAnRxEVFLAEsChXESSwGFcROJaAApUnEUdHEVUnEWWAEAAAB0cRdoAygoaARo',
  'BVgBAAAAMnEYaAdLDHRxGVFLAEsDSwSGcRpLBEsBhnEbiWgAKVJxHHRxHVJxHlgCAAAAdHRxH2gDKChoBGgFaBhoB0sMdHEgUUsASwRLA4ZxIU',
  'sBSwSGcSKJaAApUnEjdHEkUnElWAMAAAByb3dxJmgDKChoBGgFaBhoB0sMdHEnUUsESwSFcShLAYVxKYloAClScSp0cStScSxYAQAAAGlxLWgD',
  'KChoBGN0b3JjaApMb25nU3RvcmFnZQpxLlgBAAAAM3EvaAdLA3RxMFFLAEsDhXExSwGFcTKJaAApUnEzdHE0UnE1WAIAAABib3E2aAMoKGgEY3',
  'RvcmNoCkJvb2xTdG9yYWdlCnE3WAEAAAA0cThoB0sCdHE5UUsASwKFcTpLAYVxO4loAClScTx0cT1ScT5YAgAAAGJmcT9oAygoaARjdG9yY2gK',
  'QkZsb2F0MTZTdG9yYWdlCnFAWAEAAAA1cUFoB0sBdHFCUUsASwGFcUNLAYVxRIloAClScUV0cUZScUdYAQAAAHNxSGgDKChoBGgFWAEAAAA2cU',
  'loB0sBdHFKUUsAKSmJaAApUnFLdHFMUnFNdS5QSwcITU6QEMICAADCAgAAUEsDBAAACAgAAAAAAAAAAAAAAAAAAAAAAAAIAAgAbS9kYXRhLzBG',
  'QgQAWlpaWgAAAAAAAIA/AAAAQAAAQEAAAIBAAACgQFBLBwgXkOeRGAAAABgAAABQSwMEAAAICAAAAAAAAAAAAAAAAAAAAAAAAAgAMgBtL2RhdG',
  'EvMUZCLgBaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaAD4AQVBLBwiAZmoOBAAAAAQAAABQSwMEAAAICAAA',
  'AAAAAAAAAAAAAAAAAAAAAAgABgBtL2RhdGEvMkZCAgBaWgAAAAAAAIA/AAAAQAAAQEAAAIBAAACgQAAAwEAAAOBAAAAAQQAAEEEAACBBAAAwQV',
  'BLBwh4fWY+MAAAADAAAABQSwMEAAAICAAAAAAAAAAAAAAAAAAAAAAAAAgAGgBtL2RhdGEvM0ZCFgBaWlpaWlpaWlpaWlpaWlpaWlpaWlpaAQAA',
  'AAAAAAACAAAAAAAAAAMAAAAAAAAAUEsHCIeNyysYAAAAGAAAAFBLAwQAAAgIAAAAAAAAAAAAAAAAAAAAAAAACAAyAG0vZGF0YS80RkIuAFpaWl',
  'paWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWloBAFBLBwi+I8JYAgAAAAIAAABQSwMEAAAICAAAAAAAAAAAAAAAAAAA',
  'AAAAAAgACABtL2RhdGEvNUZCBABaWlpagD9QSwcIiac8zAIAAAACAAAAUEsDBAAACAgAAAAAAAAAAAAAAAAAAAAAAAAIAAgAbS9kYXRhLzZGQg',
  'QAWlpaWgAAQEBQSwcIidHhpwQAAAAEAAAAUEsDBAAACAgAAAAAAAAAAAAAAAAAAAAAAAAJAAUAbS92ZXJzaW9uRkIBAFozClBLBwjRnmdVAgAA',
  'AAIAAABQSwECAAAAAAgIAAAAAAAATU6QEMICAADCAgAACgAAAAAAAAAAAAAAAAAAAAAAbS9kYXRhLnBrbFBLAQIAAAAACAgAAAAAAAAXkOeRGA',
  'AAABgAAAAIAAAAAAAAAAAAAAAAABIDAABtL2RhdGEvMFBLAQIAAAAACAgAAAAAAACAZmoOBAAAAAQAAAAIAAAAAAAAAAAAAAAAAGgDAABtL2Rh',
  'dGEvMVBLAQIAAAAACAgAAAAAAAB4fWY+MAAAADAAAAAIAAAAAAAAAAAAAAAAANQDAABtL2RhdGEvMlBLAQIAAAAACAgAAAAAAACHjcsrGAAAAB',
  'gAAAAIAAAAAAAAAAAAAAAAAEAEAABtL2RhdGEvM1BLAQIAAAAACAgAAAAAAAC+I8JYAgAAAAIAAAAIAAAAAAAAAAAAAAAAAKgEAABtL2RhdGEv',
  'NFBLAQIAAAAACAgAAAAAAACJpzzMAgAAAAIAAAAIAAAAAAAAAAAAAAAAABIFAABtL2RhdGEvNVBLAQIAAAAACAgAAAAAAACJ0eGnBAAAAAQAAA',
  'AIAAAAAAAAAAAAAAAAAFIFAABtL2RhdGEvNlBLAQIAAAAACAgAAAAAAADRnmdVAgAAAAIAAAAJAAAAAAAAAAAAAAAAAJQFAABtL3ZlcnNpb25Q',
  'SwYGLAAAAAAAAAAeAy0AAAAAAAAAAAAJAAAAAAAAAAkAAAAAAAAA6QEAAAAAAADSBQAAAAAAAFBLBgcAAAAAuwcAAAAAAAABAAAAUEsFBgAAAA',
  'AJAAkA6QEAANIFAAAAAA==',
].join('');

// torch 1.13: torch.save(OrderedDict(w=arange(12).reshape(3,4), row=w[1], h=f16[1.5,2.5]), _use_new_zipfile_serialization=False)
const TORCH_LEGACY_FIXTURE = [
  'gAKKCmz8nEb5IGqoUBkugAJN6QMugAJ9cQAoWBAAAABwcm90b2NvbF92ZXJzaW9ucQFN6QNYDQAAAGxpdHRsZV9lbmRpYW5xAohYCgAAAHR5cG',
  'Vfc2l6ZXNxA31xBChYBQAAAHNob3J0cQVLAlgDAAAAaW50cQZLBFgEAAAAbG9uZ3EHSwR1dS6AAmNjb2xsZWN0aW9ucwpPcmRlcmVkRGljdApx',
  'AClScQEoWAEAAAB3cQJjdG9yY2guX3V0aWxzCl9yZWJ1aWxkX3RlbnNvcl92MgpxAygoWAcAAABzdG9yYWdlcQRjdG9yY2gKRmxvYXRTdG9yYW',
  'dlCnEFWAkAAAAzMzU3OTI0MDBxBlgDAAAAY3B1cQdLDE50cQhRSwBLA0sEhnEJSwRLAYZxColoAClScQt0cQxScQ1YAwAAAHJvd3EOaAMoKGgE',
  'aAVYCQAAADMzNTc5MjQwMHEPaAdLDE50cRBRSwRLBIVxEUsBhXESiWgAKVJxE3RxFFJxFVgBAAAAaHEWaAMoKGgEY3RvcmNoCkhhbGZTdG9yYW',
  'dlCnEXWAkAAAAyNzM5MDU3MTJxGGgHSwJOdHEZUUsASwKFcRpLAYVxG4loAClScRx0cR1ScR51LoACXXEAKFgJAAAAMjczOTA1NzEycQFYCQAA',
  'ADMzNTc5MjQwMHECZS4CAAAAAAAAAAA+AEEMAAAAAAAAAAAAAAAAAIA/AAAAQAAAQEAAAIBAAACgQAAAwEAAAOBAAAAAQQAAEEEAACBBAAAwQQ',
  '==',
].join('');

const root = tempDir('vramfit-bin-');
after(() => cleanup(root));
let count = 0;

function save(bytes: Uint8Array, name = `f${count++}.bin`): string {
  const path = join(root, name);
  writeFileSync(path, bytes);
  return path;
}

function read(bytes: Uint8Array): { header: PytorchBinHeader; bytes: Uint8Array } {
  return { header: readPytorchBinHeader(save(bytes)), bytes };
}

/** Asserts reading `bytes` fails with a one-line FormatError that names the file and matches `pattern`. */
function refuses(bytes: Uint8Array, pattern: RegExp): void {
  const path = save(bytes);
  assert.throws(
    () => readPytorchBinHeader(path),
    (e: unknown) => {
      assert.ok(e instanceof FormatError, `expected FormatError, got ${String(e)}`);
      assert.equal(e.where, path);
      assert.match(e.reason, pattern);
      assert.ok(!/[\n\r]/.test(e.message), 'one line');
      return true;
    },
  );
}

/** Values of a tensor's bytes, for the dtypes the fixtures use. */
function decode(bytes: Uint8Array, dtype: string): number[] {
  const copy = bytes.slice();
  switch (dtype) {
    case 'float32':
      return [...new Float32Array(copy.buffer)];
    case 'float16':
      return [...new Uint16Array(copy.buffer)].map(float16BitsToFloat32);
    case 'bfloat16':
      return [...new Uint16Array(copy.buffer)].map(bfloat16BitsToFloat32);
    case 'int64':
      return [...new BigInt64Array(copy.buffer)].map(Number);
    default:
      return [...copy];
  }
}

const at = (bytes: Uint8Array, t: PytorchBinTensor): Uint8Array => bytes.subarray(t.range![0], t.range![1]);
const byName = (h: PytorchBinHeader, name: string): PytorchBinTensor => h.tensors.find((t) => t.name === name)!;
const b64 = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'base64'));
const arange = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/** The state_dict of TORCH_ZIP_FIXTURE, as the writer builds it. */
function fixtureTensors(): PtTensor[] {
  const base: PtStorage = { dtype: 'float32', bytes: f32Bytes(arange(12)) };
  return [
    { name: 'a.weight', storage: { dtype: 'float32', bytes: f32Bytes(arange(6)) }, shape: [2, 3] },
    { name: 'b', storage: { dtype: 'float16', bytes: u16Bytes([0x3e00, 0x4100]) }, shape: [2] },
    { name: 't', storage: base, shape: [3, 4] },
    { name: 'tt', storage: base, shape: [4, 3], strides: [1, 4] },
    { name: 'row', storage: base, shape: [4], offset: 4 },
    { name: 'i', storage: { dtype: 'int64', bytes: i64Bytes([1, 2, 3]) }, shape: [3] },
    { name: 'bo', storage: { dtype: 'bool', bytes: Uint8Array.from([1, 0]) }, shape: [2] },
    { name: 'bf', storage: { dtype: 'bfloat16', bytes: u16Bytes([0x3f80]) }, shape: [1] },
    { name: 's', storage: { dtype: 'float32', bytes: f32Bytes([3]) }, shape: [] },
  ];
}

/** What torch.load gives for TORCH_ZIP_FIXTURE: name, dtype, shape, stride, storage offset, values (row-major). */
const TORCH_ZIP_EXPECTED: [string, string, number[], number[], number, number[]][] = [
  ['a.weight', 'float32', [2, 3], [3, 1], 0, arange(6)],
  ['b', 'float16', [2], [1], 0, [1.5, 2.5]],
  ['t', 'float32', [3, 4], [4, 1], 0, arange(12)],
  ['tt', 'float32', [4, 3], [1, 4], 0, [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]],
  ['row', 'float32', [4], [1], 4, [4, 5, 6, 7]],
  ['i', 'int64', [3], [1], 0, [1, 2, 3]],
  ['bo', 'bool', [2], [1], 0, [1, 0]],
  ['bf', 'bfloat16', [1], [1], 0, [1]],
  ['s', 'float32', [], [], 0, [3]],
];

describe('PyTorch .bin: files torch wrote', () => {
  it('reads a zip-format checkpoint: names, dtypes, shapes, strides, offsets and byte ranges as torch.load sees them', () => {
    const { header, bytes } = read(b64(TORCH_ZIP_FIXTURE));
    assert.equal(header.format, 'zip');
    assert.deepEqual(
      header.tensors.map((t) => t.name),
      TORCH_ZIP_EXPECTED.map((e) => e[0]),
    );
    for (const [name, dtype, shape, strides, offset, values] of TORCH_ZIP_EXPECTED) {
      const t = byName(header, name);
      assert.deepEqual([t.dtype, t.shape, t.strides, t.storageOffset], [dtype, shape, strides, offset], name);
      if (name === 'tt') {
        assert.equal(t.range, undefined, 'a transposed view has no byte range');
        assert.match(t.noRange!, /not contiguous \(shape \[4, 3\], strides \[1, 4\]\)/);
      } else {
        assert.deepEqual(decode(at(bytes, t), dtype), values, name);
        assert.equal(t.range![0] % 64 === 0 || t.storageOffset > 0, true, 'torch aligns storages to 64 bytes');
      }
    }
    assert.equal(byName(header, 't').storageKey, byName(header, 'row').storageKey, 'views share their storage');
  });

  it('reads a legacy (pre-1.6) checkpoint', () => {
    const { header, bytes } = read(b64(TORCH_LEGACY_FIXTURE));
    assert.equal(header.format, 'legacy');
    assert.deepEqual(
      header.tensors.map((t) => [t.name, t.dtype, t.shape, t.strides, t.storageOffset, decode(at(bytes, t), t.dtype)]),
      [
        ['w', 'float32', [3, 4], [4, 1], 0, arange(12)],
        ['row', 'float32', [4], [1], 4, [4, 5, 6, 7]],
        ['h', 'float16', [2], [1], 0, [1.5, 2.5]],
      ],
    );
  });

  it('the test writer reproduces both files byte for byte', () => {
    assert.deepEqual(buildPytorchBin(fixtureTensors(), { archiveName: 'm' }), b64(TORCH_ZIP_FIXTURE));
    const base: PtStorage = { dtype: 'float32', bytes: f32Bytes(arange(12)) };
    const half: PtStorage = { dtype: 'float16', bytes: u16Bytes([0x3e00, 0x4100]) };
    const legacy = buildLegacyPytorchBin(
      [
        { name: 'w', storage: base, shape: [3, 4] },
        { name: 'row', storage: base, shape: [4], offset: 4 },
        { name: 'h', storage: half, shape: [2] },
      ],
      {
        keys: new Map([
          [base, '335792400'],
          [half, '273905712'],
        ]),
      },
    );
    assert.deepEqual(legacy, b64(TORCH_LEGACY_FIXTURE));
  });

  it('lists the zip: entries, methods, sizes and 64-byte aligned data offsets', () => {
    const dir = readZipDirectory(bufferByteSource(b64(TORCH_ZIP_FIXTURE), 'm.bin'));
    assert.deepEqual(
      dir.entries.map((e) => e.name),
      ['m/data.pkl', ...arange(7).map((i) => `m/data/${i}`), 'm/version'],
    );
    for (const e of dir.entries) {
      assert.equal(e.method, 0);
      assert.equal(e.compressedSize, e.uncompressedSize);
      assert.equal(e.dataOffset % 64, 0);
    }
    assert.equal(dir.byName.get('m/data/2')!.uncompressedSize, 48);
  });
});

/** Every dtype torch.save writes a storage class for, plus shared storages, slices and views. */
function roundTripTensors(): PtTensor[] {
  const tied: PtStorage = { dtype: 'float16', bytes: u16Bytes(arange(24).map((i) => 0x3c00 + i)) };
  const matrix: PtStorage = { dtype: 'float32', bytes: f32Bytes(arange(12)) };
  const vec = (dtype: PtStorage['dtype'], bytes: Uint8Array, shape: number[]): PtTensor => ({ name: `x.${dtype}`, storage: { dtype, bytes }, shape });
  return [
    vec('float32', f32Bytes([1.5, -2, 3.25, 0]), [2, 2]),
    vec('float16', u16Bytes([0x3c00, 0xc000, 0x3e00]), [3]),
    vec('bfloat16', u16Bytes([0x3f80, 0x4000]), [2, 1]),
    vec('int64', i64Bytes([-1, 2 ** 40, 7]), [3]),
    vec('bool', Uint8Array.from([1, 0, 1, 1]), [4]),
    vec('float64', new Uint8Array(new Float64Array([Math.PI]).buffer), [1]),
    vec('int32', new Uint8Array(new Int32Array([-5, 6]).buffer), [2]),
    vec('int16', new Uint8Array(new Int16Array([300]).buffer), [1]),
    vec('int8', Uint8Array.from([0xff, 1]), [2]),
    vec('uint8', Uint8Array.from([200, 100, 50]), [3]),
    { name: 'embed.weight', storage: tied, shape: [6, 4] },
    { name: 'lm_head.weight', storage: tied, shape: [6, 4] },
    { name: 'matrix', storage: matrix, shape: [3, 4] },
    { name: 'matrix.rows_1_2', storage: matrix, shape: [2, 4], offset: 4 },
    { name: 'matrix.column', storage: matrix, shape: [3], strides: [4], offset: 1 },
    { name: 'matrix.t', storage: matrix, shape: [4, 3], strides: [1, 4] },
    { name: 'matrix.expanded', storage: matrix, shape: [5, 4], strides: [0, 1] },
    { name: 'matrix.unit_dims', storage: matrix, shape: [1, 4, 1], strides: [99, 1, 7], offset: 8 },
    { name: 'empty', storage: { dtype: 'float32', bytes: new Uint8Array(0) }, shape: [0, 3] },
    { name: 'scalar', storage: { dtype: 'float32', bytes: f32Bytes([9]) }, shape: [] },
  ];
}

function checkRoundTrip(header: PytorchBinHeader, bytes: Uint8Array, tensors: PtTensor[]): void {
  assert.deepEqual(
    header.tensors.map((t) => t.name),
    tensors.map((t) => t.name),
  );
  for (const t of tensors) {
    const got = byName(header, t.name);
    assert.equal(got.dtype, t.storage.dtype, t.name);
    assert.deepEqual(got.shape, t.shape, t.name);
    assert.equal(got.storageOffset, t.offset ?? 0, t.name);
    const el = got.dtype === 'float64' || got.dtype === 'int64' ? 8 : got.dtype === 'float32' || got.dtype === 'int32' ? 4 : got.dtype.endsWith('16') ? 2 : 1;
    const n = t.shape.reduce((a, b) => a * b, 1);
    const viewOnly = ['matrix.column', 'matrix.t', 'matrix.expanded'].includes(t.name);
    if (viewOnly) {
      assert.equal(got.range, undefined, t.name);
      assert.match(got.noRange!, /not contiguous/, t.name);
    } else {
      const start = (t.offset ?? 0) * el;
      assert.deepEqual(at(bytes, got), t.storage.bytes.subarray(start, start + n * el), t.name);
    }
  }
  assert.deepEqual(byName(header, 'embed.weight').range, byName(header, 'lm_head.weight').range, 'tied tensors share one range');
  assert.ok(header.bytesRead < 70_000, `read ${header.bytesRead} bytes`);
}

describe('PyTorch .bin: round trip through the test writer', () => {
  const variants: [string, PytorchBinOptions][] = [
    ['protocol 2, OrderedDict', {}],
    ['protocol 4 (FRAME, MEMOIZE, STACK_GLOBAL), plain dict as HF shards', { protocol: 4, container: 'dict' }],
    ['nn.Parameter values and module _metadata (BUILD)', { parameters: true, moduleMetadata: ['', 'embed', 'lm_head'] }],
    ['ZIP64 central directory fields and a byteorder record', { zip64Entries: true, byteorder: 'little' }],
    ['no ZIP64 end record', { noZip64End: true }],
  ];
  for (const [what, opts] of variants) {
    it(`zip format: ${what}`, () => {
      const tensors = roundTripTensors().filter((t) => !opts.parameters || t.storage.dtype.startsWith('float') || t.storage.dtype === 'bfloat16');
      const { header, bytes } = read(buildPytorchBin(tensors, opts));
      assert.equal(header.format, 'zip');
      checkRoundTrip(header, bytes, tensors);
    });
  }

  it('legacy format', () => {
    const tensors = roundTripTensors();
    const { header, bytes } = read(buildLegacyPytorchBin(tensors));
    assert.equal(header.format, 'legacy');
    checkRoundTrip(header, bytes, tensors);
  });

  it('thousands of tensors: SETITEMS batches, LONG_BINPUT memo slots, a legacy head read in growing chunks', () => {
    const tensors: PtTensor[] = arange(3000).map((i) => ({
      name: `layers.${i}.weight`,
      storage: { dtype: 'float16', bytes: u16Bytes([i, i + 1]) },
      shape: [2],
    }));
    for (const bytes of [buildPytorchBin(tensors), buildLegacyPytorchBin(tensors)]) {
      const { header } = read(bytes);
      assert.equal(header.tensors.length, 3000);
      assert.deepEqual(at(bytes, byName(header, 'layers.2999.weight')), u16Bytes([2999, 3000]));
    }
  });

  it('reads only the directory and the pickle of a large checkpoint', () => {
    const big: PtTensor = { name: 'big', storage: { dtype: 'float32', bytes: new Uint8Array(8 << 20) }, shape: [2048, 1024] };
    const { header } = read(buildPytorchBin([big]));
    assert.deepEqual(byName(header, 'big').range![1] - byName(header, 'big').range![0], 8 << 20);
    assert.ok(header.bytesRead < 70_000, `read ${header.bytesRead} bytes`);
    const legacy = read(buildLegacyPytorchBin([big])).header;
    assert.ok(legacy.bytesRead < 70_000, `read ${legacy.bytesRead} bytes of a legacy file`);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Hand-built pickles

interface OneTensor {
  name?: string;
  rebuild?: [string, string];
  storageModule?: string;
  storageClass?: string;
  key?: string;
  numel?: number;
  offset?: number;
  shape?: number[];
  strides?: number[];
  /** Extra trailing arguments (v3's dtype). */
  extra?: (w: PickleWriter) => number;
}

/** A dict holding one tensor, written with explicit opcodes so each part can be made wrong. */
function onePickle(o: OneTensor = {}, protocol: 2 | 4 = 2): Uint8Array {
  const w = new PickleWriter(protocol);
  w.proto().emptyDict();
  w.str(o.name ?? 'w');
  const [m, f] = o.rebuild ?? ['torch._utils', '_rebuild_tensor_v2'];
  w.global(m, f);
  w.mark();
  w.mark()
    .str('storage')
    .global(o.storageModule ?? 'torch', o.storageClass ?? 'FloatStorage')
    .str(o.key ?? '0')
    .str('cpu')
    .int(o.numel ?? 4);
  w.byte(0x74).binpersid();
  w.int(o.offset ?? 0);
  for (const dims of [o.shape ?? [2, 2], o.strides ?? [2, 1]]) {
    if (dims.length > 3) w.mark();
    for (const d of dims) w.int(d);
    w.tuple(dims.length);
  }
  w.bool(false).global('collections', 'OrderedDict').emptyTuple().reduce();
  o.extra?.(w);
  w.byte(0x74).reduce().setitem().stop();
  return w.bytes();
}

function archive(pkl: Uint8Array, storages: Record<string, Uint8Array> = { '0': new Uint8Array(16) }, extra: ZipWriteEntry[] = []): Uint8Array {
  return buildZip([{ name: 'archive/data.pkl', data: pkl }, ...Object.entries(storages).map(([k, data]) => ({ name: `archive/data/${k}`, data })), ...extra]);
}

/** A pickle of raw opcodes (PROTO 2 first). */
function raw(...ops: (number | Uint8Array | string)[]): Uint8Array {
  const w = new PickleWriter(2);
  w.proto();
  for (const op of ops) {
    if (typeof op === 'number') w.byte(op);
    else if (typeof op === 'string') w.raw(new TextEncoder().encode(op));
    else w.raw(op);
  }
  return w.bytes();
}

describe('PyTorch .bin: torch 2.x forms', () => {
  it('_rebuild_tensor_v3 over an UntypedStorage with a torch dtype (float8, bfloat16)', () => {
    for (const [dtype, el] of [
      ['float8_e4m3fn', 1],
      ['bfloat16', 2],
    ] as const) {
      const pkl = onePickle({
        rebuild: ['torch._utils', '_rebuild_tensor_v3'],
        storageClass: 'UntypedStorage',
        numel: 16,
        offset: 2,
        shape: [2, 3],
        strides: [3, 1],
        extra: (w) => (w.global('torch', dtype), 0),
      });
      const storage = Uint8Array.from(arange(16));
      const { header, bytes } = read(archive(pkl, { '0': storage }));
      const t = header.tensors[0]!;
      assert.equal(t.dtype, dtype);
      assert.deepEqual(at(bytes, t), storage.subarray(2 * el, (2 + 6) * el));
    }
  });

  it('_rebuild_from_type_v2 wrapping a tensor rebuild (a tensor with Python attributes)', () => {
    const w = new PickleWriter(2);
    w.proto().emptyDict().str('w');
    w.global('torch._tensor', '_rebuild_from_type_v2');
    w.mark().global('torch._utils', '_rebuild_tensor_v2').global('torch.nn.parameter', 'Parameter');
    w.mark().mark().str('storage').global('torch', 'HalfStorage').str('0').str('cpu').int(8).byte(0x74).binpersid();
    w.int(0).int(8).tuple(1).int(1).tuple(1).bool(false).global('collections', 'OrderedDict').emptyTuple().reduce().byte(0x74);
    w.emptyDict().byte(0x74).reduce().setitem().stop();
    const { header } = read(archive(w.bytes(), { '0': new Uint8Array(16) }));
    assert.deepEqual([header.tensors[0]!.dtype, header.tensors[0]!.shape], ['float16', [8]]);
  });

  it('a big-endian byteorder record is refused; a little-endian one is read', () => {
    refuses(buildPytorchBin(roundTripTensors().slice(0, 1), { byteorder: 'big' }), /byteorder is "big": only little-endian/);
    assert.equal(read(buildPytorchBin(roundTripTensors().slice(0, 1), { byteorder: 'little' })).header.tensors.length, 1);
  });
});

describe('PyTorch .bin: malformed files are FormatErrors naming the file', () => {
  const good = (): Uint8Array => buildPytorchBin(roundTripTensors().slice(0, 3), { noZip64End: true });

  it('not a checkpoint at all', () => {
    refuses(new TextEncoder().encode('{"not": "a checkpoint"}'), /not a PyTorch checkpoint: neither a zip archive nor a legacy/);
    refuses(new Uint8Array(0), /empty/);
    refuses(raw(0x4b, 1, 0x2e), /neither a zip archive nor a legacy/);
    const tar = new Uint8Array(1024);
    tar.set(new TextEncoder().encode('ustar'), 257);
    refuses(tar, /tar-format/);
  });

  it('compressed entries', () => {
    const pkl = onePickle();
    refuses(
      buildZip([
        { name: 'archive/data.pkl', data: pkl, deflate: true },
        { name: 'archive/data/0', data: new Uint8Array(16) },
      ]),
      /entry "archive\/data\.pkl" is compressed \(method 8, deflate\)/,
    );
    refuses(
      buildZip([
        { name: 'archive/data.pkl', data: pkl },
        { name: 'archive/data/0', data: new Uint8Array(16), deflate: true },
      ]),
      /entry "archive\/data\/0" is compressed/,
    );
  });

  it('no data.pkl, or two', () => {
    refuses(
      buildZip([
        { name: 'archive/data/0', data: new Uint8Array(16) },
        { name: 'archive/version', data: Uint8Array.of(0x33) },
      ]),
      /no <name>\/data\.pkl/,
    );
    refuses(
      buildZip([
        { name: 'a/data.pkl', data: onePickle() },
        { name: 'b/data.pkl', data: onePickle() },
      ]),
      /2 data\.pkl entries/,
    );
    refuses(buildZip([]), /no <name>\/data\.pkl/);
  });

  it('truncated files, at every length', () => {
    const bytes = good();
    for (let n = 1; n < bytes.length; n += 7) refuses(bytes.subarray(0, n), /./);
    const legacy = buildLegacyPytorchBin(roundTripTensors().slice(0, 3));
    for (let n = 4; n < legacy.length; n += 5) refuses(legacy.subarray(0, n), /truncated|ended|runs past|no STOP/);
  });

  it('storages missing, too small, or too small for a tensor', () => {
    refuses(archive(onePickle(), {}), /storage "0" has no entry "archive\/data\/0"/);
    refuses(archive(onePickle(), { '0': new Uint8Array(12) }), /storage "0" holds 12 bytes but the pickle declares 4 float32 elements \(16 bytes\)/);
    refuses(archive(onePickle({ offset: 1 }), { '0': new Uint8Array(16) }), /tensor "w" .* reaches byte 20 of storage "0", which holds 16/);
    refuses(archive(onePickle({ shape: [2, 3], strides: [3, 1] })), /reaches byte 24/);
    refuses(archive(onePickle({ shape: [2, 2], strides: [1, 5] })), /reaches byte 28/);
    const w: PtTensor = { name: 'w', storage: { dtype: 'float32', bytes: new Uint8Array(8), numel: 4 }, shape: [2] };
    refuses(buildLegacyPytorchBin([w]), /storage "0" \(16 bytes at \d+\) runs past the end of the \d+-byte file/);
  });

  it('unknown dtypes', () => {
    refuses(archive(onePickle({ storageClass: 'ComplexFloatStorage' })), /storage "0" is a torch\.ComplexFloatStorage: unknown dtype/);
    refuses(archive(onePickle({ storageClass: 'QInt8Storage' })), /unknown dtype/);
    refuses(
      archive(
        onePickle({
          rebuild: ['torch._utils', '_rebuild_tensor_v3'],
          storageClass: 'UntypedStorage',
          numel: 16,
          extra: (w) => (w.global('torch', 'complex64'), 0),
        }),
      ),
      /unknown dtype torch\.complex64/,
    );
    refuses(archive(onePickle({ storageClass: 'NotAStorage' })), /refusing to unpickle GLOBAL torch\.NotAStorage/);
  });

  it('forbidden globals, by GLOBAL and STACK_GLOBAL, are refused before anything else happens', () => {
    const global = (module: string, name: string): Uint8Array => raw(0x63, `${module}\n${name}\n`, 0x29, 0x52, 0x2e);
    refuses(archive(global('os', 'system')), /^pickle: refusing to unpickle GLOBAL os\.system: only state_dict tensors are read$/);
    refuses(archive(global('builtins', 'eval')), /refusing to unpickle GLOBAL builtins\.eval/);
    refuses(archive(global('__builtin__', 'eval')), /refusing to unpickle GLOBAL __builtin__\.eval/);
    refuses(archive(global('posix', 'system')), /GLOBAL posix\.system/);
    refuses(archive(global('torch', 'load')), /GLOBAL torch\.load/);
    refuses(archive(global('torch.storage', '_load_from_bytes')), /GLOBAL torch\.storage\._load_from_bytes/);
    // Python resolves dotted names through attributes; only exact names are allowed here.
    refuses(archive(global('torch._utils', '_rebuild_tensor_v2.__globals__')), /GLOBAL torch\._utils\._rebuild_tensor_v2\.__globals__/);
    refuses(archive(global('collections', 'OrderedDict.fromkeys')), /GLOBAL collections\.OrderedDict\.fromkeys/);
    refuses(archive(onePickle({ rebuild: ['subprocess', 'Popen'] }, 4)), /refusing to unpickle GLOBAL subprocess\.Popen/);
    refuses(archive(onePickle({ storageModule: 'os', storageClass: 'system' })), /GLOBAL os\.system/);
    // Allowed names still cannot be called unless they are rebuild functions.
    refuses(archive(raw(0x63, 'torch\nFloatStorage\n', 0x29, 0x52, 0x2e)), /calls torch\.FloatStorage, which a state_dict does not need/);
    refuses(archive(raw(0x63, 'collections\nOrderedDict\n', 0x4b, 1, 0x85, 0x52, 0x2e)), /OrderedDict at byte \d+ is given arguments/);
    // A legacy file is held to the same rules.
    const legacy = buildLegacyPytorchBin(roundTripTensors().slice(0, 1));
    const evil = new TextEncoder().encode('c__builtin__\neval\n');
    const ordered = 'ccollections\nOrderedDict\n';
    const mainAt = Buffer.from(legacy).indexOf(ordered);
    assert.ok(mainAt > 0);
    const patched = new Uint8Array([...legacy.subarray(0, mainAt), ...evil, ...legacy.subarray(mainAt + ordered.length)]);
    refuses(patched, /refusing to unpickle GLOBAL __builtin__\.eval/);
  });

  it('opcodes outside the state_dict subset', () => {
    refuses(archive(raw(0x69, 'os\nsystem\n', 0x2e)), /opcode 0x69 \("i"\) at byte 2 is not one a state_dict needs/); // INST
    refuses(archive(raw(0x28, 0x6f, 0x2e)), /opcode 0x6f \("o"\)/); // OBJ
    refuses(archive(raw(0x81, 0x2e)), /opcode 0x81/); // NEWOBJ
    refuses(archive(raw(0x82, 1, 0x2e)), /opcode 0x82/); // EXT1
    refuses(archive(raw(0x49, '1\n', 0x2e)), /opcode 0x49 \("I"\)/); // INT (protocol 0)
    refuses(archive(raw(0xff)), /opcode 0xff/);
    refuses(archive(raw(0x80, 9, 0x2e)), /protocol 9/);
  });

  it('absurd lengths and counts', () => {
    const u32 = (v: number): Uint8Array => Uint8Array.of(v, v >>> 8, v >>> 16, v >>> 24);
    const u64 = (v: bigint): Uint8Array => new Uint8Array(new BigUint64Array([v]).buffer);
    refuses(archive(raw(0x58, u32(0xffffffff), 'abc')), /truncated: a string at byte \d+ needs 4294967295 bytes/);
    refuses(archive(raw(0x8d, u64(2n ** 62n), 'abc')), /string of 4611686018427387904 bytes .* runs past/);
    refuses(archive(raw(0x8e, u64(2n ** 64n - 1n))), /bytes of 18446744073709551615 bytes/);
    refuses(archive(raw(0x95, u64(2n ** 63n), 0x4e, 0x2e)), /frame of 9223372036854775808 bytes/);
    refuses(archive(raw(0x8b, u32(0x7fffffff), 0x2e)), /integer of 2147483647 bytes .* absurdly large/);
    refuses(archive(raw(0x68, 5, 0x2e)), /memo slot 5 .* never written/);
    refuses(archive(raw(...new Array<number>(1001).fill(0x28), 0x2e)), /over 1000 nested MARKs/);
    refuses(archive(raw(0x85, 0x2e)), /stack underflow/);
    refuses(archive(raw(0x4e, 0x4e, 0x2e)), /STOP at byte \d+ with 2 values/);
    refuses(archive(raw(0x4e)), /no STOP opcode/);
    refuses(archive(raw(0x63, 'a'.repeat(300), '\n', 'b\n')), /GLOBAL at byte \d+ has a name over 256 characters/);
    refuses(archive(onePickle({ numel: -1 })), /gives storage "0" the integer -1 elements/);
    refuses(archive(onePickle({ shape: new Array<number>(65).fill(1), strides: new Array<number>(65).fill(1) })), /size has 65 dimensions, over 64/);
    refuses(archive(onePickle({ shape: [2 ** 40, 2 ** 40], strides: [2 ** 40, 1] })), /reaches byte/);
    // A million nested 1-tuples, then five million more: bounded by the value budget, not by memory.
    refuses(archive(raw(0x4e, new Uint8Array(6_000_000).fill(0x85), 0x2e)), /builds over 5000000 values: not a state_dict/);
    refuses(archive(raw(0x58, u32(17 << 20), new Uint8Array(17 << 20), 0x2e)), /a string of 17825792 bytes at byte \d+ is over the 16777216-byte limit/);
  });

  it('_rebuild_from_type_v2 may only wrap the plain tensor rebuilds', () => {
    const w = new PickleWriter(2);
    w.proto().global('torch._tensor', '_rebuild_from_type_v2');
    w.mark().global('torch._tensor', '_rebuild_from_type_v2').global('torch._tensor', 'Tensor').emptyTuple().emptyDict().byte(0x74).reduce().stop();
    refuses(archive(w.bytes()), /_rebuild_from_type_v2 at byte \d+ calls torch\._tensor\._rebuild_from_type_v2/);
    const v = new PickleWriter(2);
    v.proto().global('torch._tensor', '_rebuild_from_type_v2');
    v.mark().global('torch._utils', '_rebuild_tensor_v2').global('builtins', 'object');
    refuses(archive(v.bytes()), /refusing to unpickle GLOBAL builtins\.object/);
  });

  it('zip structures that lie', () => {
    const base = good();
    const view = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);
    const eocd = base.length - 22;
    const patch = (fn: (v: DataView, b: Uint8Array) => void): Uint8Array => {
      const b = base.slice();
      fn(view(b), b);
      return b;
    };
    refuses(
      patch((v) => (v.setUint16(eocd + 8, 0xfffe, true), v.setUint16(eocd + 10, 0xfffe, true))),
      /claims 65534 entries, more than its \d+-byte central directory can hold/,
    );
    refuses(
      patch((v) => v.setUint32(eocd + 16, 0x7ffffff0, true)),
      /central directory \(offset 2147483632, \d+ bytes\) runs past/,
    );
    refuses(
      patch((v) => v.setUint32(eocd + 12, 0xffffffff, true)),
      /needs a ZIP64 end-of-central-directory record/,
    );
    refuses(
      patch((v) => v.setUint16(eocd + 4, 1, true)),
      /multi-volume/,
    );
    refuses(
      patch((v) => v.setUint16(eocd + 20, 5, true)),
      /no end-of-central-directory record/,
    );
    const cd = view(base).getUint32(eocd + 16, true);
    // data.pkl's central entry: make its data run past the archive, then into the next entry.
    refuses(
      patch((v) => v.setUint32(cd + 20, 0x7ffffff0, true)),
      /entry "archive\/data\.pkl": its 2147483632 bytes at offset 64 run past/,
    );
    refuses(
      patch((v) => v.setUint32(cd + 20, cd - 100, true)),
      /entries "archive\/data\.pkl" and "archive\/data\/0" overlap/,
    );
    refuses(
      patch((v) => v.setUint32(cd + 42, 1, true)),
      /no local file header at offset 1/,
    );
    refuses(
      patch((v) => v.setUint32(cd + 42, 0x7ffffff0, true)),
      /local header at 2147483632 lies outside/,
    );
    refuses(
      patch((v) => v.setUint32(cd, 0x12345678, true)),
      /central directory entry 0 of 5 is missing or malformed/,
    );
    refuses(
      patch((_, b) => (b[cd + 46 + 8] = 0x78)),
      /local header names a different file/,
    ); // central name 'archive/xata.pkl'
    const withZip64 = buildPytorchBin(roundTripTensors().slice(0, 1));
    const loc = withZip64.length - 22 - 20;
    const z = withZip64.slice();
    view(z).setBigUint64(loc + 8, 2n ** 40n, true);
    refuses(z, /ZIP64 end-of-central-directory offset 1099511627776 lies outside the file/);
    const z2 = withZip64.slice();
    view(z2).setBigUint64(loc + 8, 0n, true);
    refuses(z2, /no ZIP64 end-of-central-directory record at offset 0/);
    const dup = buildZip([
      { name: 'archive/data.pkl', data: onePickle() },
      { name: 'archive/data.pkl', data: onePickle() },
    ]);
    refuses(dup, /lists entry "archive\/data\.pkl" twice/);
  });

  it('pickles that are not a flat state_dict', () => {
    refuses(archive(raw(0x5d, 0x2e)), /pickle holds a list of 0, not a state_dict/);
    const nested = new PickleWriter(2);
    nested.proto().emptyDict().str('model').emptyDict().setitem().stop();
    refuses(archive(nested.bytes()), /state_dict entry "model" is a dict of 0, not a tensor: only flat state_dicts are read/);
    refuses(archive(raw(0x7d, 0x4b, 1, 0x4e, 0x73, 0x2e)), /state_dict key the integer 1 is not a string/);
    refuses(archive(raw(0x7d, 0x58, u32le(1), 'k', 0x4b, 3, 0x73, 0x2e)), /state_dict entry "k" is the integer 3, not a tensor/);
    refuses(archive(new Uint8Array([...onePickle(), 0x4e])), /1 bytes after its STOP/);
    refuses(archive(raw(0x58, u32le(2), Uint8Array.of(0xc3, 0x28), 0x2e)), /not valid UTF-8/);
    refuses(archive(onePickle({ key: 'x'.repeat(300) })), /has no storage key/);
  });

  it('legacy files that lie', () => {
    const tensors = roundTripTensors().slice(0, 2);
    const legacy = buildLegacyPytorchBin(tensors);
    // A LONG1 of 10 bytes that is not the magic number.
    const wrongMagic = legacy.slice();
    wrongMagic[4] = wrongMagic[4]! ^ 1;
    refuses(wrongMagic, /without torch\.save's magic number/);
    // little_endian False.
    const i = legacy.indexOf(0x88, 20);
    const bigEndian = legacy.slice();
    bigEndian[i] = 0x89;
    refuses(bigEndian, /not saved little-endian/);
    // The element count before a storage disagrees with the pickle.
    const countAt = legacy.length - tensors.reduce((n, t) => n + 8 + t.storage.bytes.length, 0);
    const wrongCount = legacy.slice();
    wrongCount[countAt] = 99;
    refuses(wrongCount, /has 99 elements, the pickle says 4/);
  });
});

function u32le(v: number): Uint8Array {
  return Uint8Array.of(v, v >>> 8, v >>> 16, v >>> 24);
}

describe('PyTorch .bin: the reader works on any byte source', () => {
  it('parsePytorchBin reads from memory as from a file', () => {
    const bytes = buildPytorchBin(roundTripTensors());
    const fromMemory = parsePytorchBin(bufferByteSource(bytes, 'mem.bin'));
    const fromFile = readPytorchBinHeader(save(bytes));
    assert.deepEqual(fromMemory.tensors, fromFile.tensors);
  });
});

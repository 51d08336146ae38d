/**
 * The binding's bridge to ggml's own block formats: quantize (ggml_quantize_chunk) and dequantize (the type's
 * to_float), with the sizes checked in TypeScript first since ggml aborts the process on a partial block.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { GGML_TYPE, loadGgml } from '../src/engine/ggml/binding.js';
import { quantizeQ8_0 } from './helpers/tiny-gguf.js';

const g = loadGgml();
const values = Float32Array.from({ length: 512 }, (_, i) => Math.sin(i * 0.37) * 2 + (i % 7) * 0.01);

describe('ggml block formats through the binding', () => {
  it('Q8_0 equals the reference quantize_row_q8_0_ref bit for bit, and dequantizes within half a step (plus the rounding of its float16 scale)', () => {
    const q = g.quantize(GGML_TYPE.Q8_0, values, 2, 256);
    assert.deepEqual(Buffer.from(q), Buffer.from(quantizeQ8_0(values)));
    const back = g.dequantize(GGML_TYPE.Q8_0, q, values.length);
    for (let b = 0; b < values.length / 32; b++) {
      const block = values.subarray(b * 32, b * 32 + 32);
      const step = Math.max(...block.map(Math.abs)) / 127;
      for (let j = 0; j < 32; j++) assert.ok(Math.abs(back[b * 32 + j]! - block[j]!) <= step * (0.5 + 127 * 2 ** -11), `value ${b * 32 + j}`);
    }
  });

  it('K-quants round-trip with their usual error (Q4_K under 10% of the range, Q6_K under 2%)', () => {
    for (const [type, bound] of [
      [GGML_TYPE.Q4_K, 0.1],
      [GGML_TYPE.Q6_K, 0.02],
    ] as const) {
      const back = g.dequantize(type, g.quantize(type, values, 2, 256), values.length);
      const err = Math.max(...back.map((v, i) => Math.abs(v - values[i]!)));
      assert.ok(err < bound * 4, `type ${type}: max error ${err}`);
    }
  });

  it('partial blocks and short buffers are refused before ggml sees them', () => {
    assert.throws(() => g.quantize(GGML_TYPE.Q4_K, values.subarray(0, 128), 1, 128), /cannot quantize 1 rows of 128 values/);
    assert.throws(() => g.dequantize(GGML_TYPE.Q8_0, new Uint8Array(10), 32), /cannot dequantize 32 values/);
    assert.throws(() => g.quantize(GGML_TYPE.IQ2_XXS, values, 2, 256), /importance matrix/);
  });
});

/**
 * The engine runs a PyTorch .bin checkpoint: the reader gives each contiguous tensor the byte range of its
 * data inside the zip, and the engine streams it as it does a safetensors tensor. Same weights, same logits.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { loadModel } from '../src/engine/load.js';
import { f32Bytes, writePytorchBin, type PtTensor } from './helpers/pytorch-bin-writer.js';
import { writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';

const root = tempDir('vramfit-engine-bin-');
after(() => cleanup(root));

const PROMPT = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3];

describe('engine: PyTorch .bin checkpoints', () => {
  it('a tiny Llama saved as pytorch_model.bin gives the logits of its safetensors twin, over two devices', async () => {
    const ck = writeTinyFamilyCheckpoint(join(root, 'st'), 'llama2', { seed: 11 });
    const binDir = join(root, 'bin');
    mkdirSync(binDir, { recursive: true });
    copyFileSync(join(ck.dir, 'config.json'), join(binDir, 'config.json'));
    const tensors: PtTensor[] = ck.names.map((name) => ({ name, storage: { dtype: 'float32', bytes: f32Bytes(ck.tensors[name]!) }, shape: ck.shapes[name]! }));
    writePytorchBin(join(binDir, 'pytorch_model.bin'), tensors, { archiveName: 'pytorch_model' });

    const opts = { devices: 'virtual:2', ctx: 32, kvDtype: 'float32' as const, threads: 1 };
    const st = await loadModel(ck.dir, opts);
    let expected: Float32Array[];
    try {
      expected = st.forward(PROMPT, true);
    } finally {
      st.dispose();
    }
    const bin = await loadModel(binDir, opts);
    try {
      assert.equal(bin.skeleton.source.kind, 'bin');
      const got = bin.forward(PROMPT, true);
      assert.equal(got.length, expected.length);
      got.forEach((row, r) => assert.deepEqual(row, expected[r], `row ${r}`));
    } finally {
      bin.dispose();
    }
  });

  it('blocks offloaded to disk run in place from the mapped .bin and give the same logits', async () => {
    const ck = writeTinyFamilyCheckpoint(join(root, 'st-disk'), 'llama3', { seed: 5 });
    const binDir = join(root, 'bin-disk');
    mkdirSync(binDir, { recursive: true });
    copyFileSync(join(ck.dir, 'config.json'), join(binDir, 'config.json'));
    writePytorchBin(
      join(binDir, 'pytorch_model.bin'),
      ck.names.map((name) => ({ name, storage: { dtype: 'float32', bytes: f32Bytes(ck.tensors[name]!) }, shape: ck.shapes[name]! })),
    );
    const ram = await loadModel(ck.dir, { devices: 'virtual:1', ctx: 32, threads: 1 });
    const expected = ram.forward(PROMPT, true);
    const need = ram.report()[0]!.predicted;
    ram.dispose();
    const model = await loadModel(binDir, {
      devices: 'virtual:1',
      ctx: 32,
      threads: 1,
      maxMemory: `0=${Math.floor(need / 3)}B,cpu=${Math.floor(need / 3)}B,disk=1GB`,
    });
    try {
      assert.ok(
        model.plan.devices.find((d) => d.id === 'disk')!.modules.some((m) => m.startsWith('model.layers.')),
        'some blocks are on disk',
      );
      model.forward(PROMPT, true).forEach((row, r) => assert.deepEqual(row, expected[r], `row ${r}`));
    } finally {
      model.dispose();
    }
  });

  it('refuses a checkpoint whose weight is a non-contiguous view, saying which and why', async () => {
    const ck = writeTinyFamilyCheckpoint(join(root, 'st2'), 'llama2', { seed: 11 });
    const dir = join(root, 'view');
    mkdirSync(dir, { recursive: true });
    copyFileSync(join(ck.dir, 'config.json'), join(dir, 'config.json'));
    const tensors: PtTensor[] = ck.names.map((name) => {
      const shape = ck.shapes[name]!;
      if (name !== 'lm_head.weight') return { name, storage: { dtype: 'float32', bytes: f32Bytes(ck.tensors[name]!) }, shape };
      // Stored as the transpose of a [hidden, vocab] storage: same values, column-major.
      const [rows, cols] = shape as [number, number];
      const values = ck.tensors[name]!;
      const t = new Float32Array(values.length);
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = values[r * cols + c]!;
      return { name, storage: { dtype: 'float32', bytes: f32Bytes(t) }, shape, strides: [1, rows] };
    });
    writePytorchBin(join(dir, 'pytorch_model.bin'), tensors);
    await assert.rejects(
      loadModel(dir, { devices: 'virtual:1', ctx: 16, threads: 1 }),
      /cannot load lm_head\.weight from pytorch_model\.bin: not contiguous \(shape \[128, 64\], strides \[1, 128\]\)/,
    );
  });
});

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { main } from '../src/cli/main.js';
import { liveResources, OutOfDeviceMemory } from '../src/engine/device.js';
import { loadModel } from '../src/engine/load.js';
import { assertAgreesWithReference, assertSplitsAgree, greedy, maxAbsDiff, PROMPT, SPLIT_OPTIONS, assertRunsUnderTightCaps } from './helpers/engine-harness.js';
import { createReferenceModel } from './helpers/reference-llama.js';
import { writeTinyGguf } from './helpers/tiny-gguf.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { TINY_FAMILY_NAMES, writeTinyFamilyCheckpoint, type TinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';

const root = tempDir('vramfit-engine-');
after(() => cleanup(root));

function checkpoint(name: (typeof TINY_FAMILY_NAMES)[number], dtype: 'float32' | 'float16' | 'bfloat16' = 'float32'): TinyFamilyCheckpoint {
  return writeTinyFamilyCheckpoint(join(root, `${name}-${dtype}`), name, { dtype, seed: 11 });
}

describe('engine: one device against a plain-TypeScript reference', () => {
  for (const name of TINY_FAMILY_NAMES) {
    it(`${name}: logits and greedy tokens agree with the reference`, async () => {
      const ck = checkpoint(name);
      const model = await loadModel(ck.dir, { devices: 'virtual:1', ctx: 64, ubatch: 4, kvDtype: 'float32', threads: 1 });
      try {
        assertAgreesWithReference(await greedy(model), createReferenceModel(ck));
      } finally {
        model.dispose();
      }
    });
  }
});

describe('engine: the same model split over 1, 2 and 4 virtual devices', () => {
  for (const name of TINY_FAMILY_NAMES) {
    it(`${name}: identical greedy tokens, logits within 1e-5, every device under its cap`, async () => {
      await assertSplitsAgree(checkpoint(name).dir, SPLIT_OPTIONS);
    });
  }
});

describe('engine: caps are enforced', () => {
  it('a plan under caps: measured peak within 2 % of the prediction and below each cap', async () => {
    await assertRunsUnderTightCaps(checkpoint('llama3').dir, { devices: 'virtual:2', ctx: 128, ubatch: 8, threads: 1 });
  });

  it('a device one block too small fails with OutOfDeviceMemory before anything is loaded, leaking nothing', async () => {
    const ck = checkpoint('llama2');
    const probe = await loadModel(ck.dir, { devices: 'virtual:2', ctx: 64, ubatch: 8, threads: 1, layerSplit: [1, 1] });
    const [a, b] = probe.report().map((d) => d.predicted) as [number, number];
    probe.dispose();
    const before = { ...liveResources };
    let progressed = 0;
    await assert.rejects(
      loadModel(ck.dir, {
        devices: 'virtual:2',
        ctx: 64,
        ubatch: 8,
        threads: 1,
        layerSplit: [1, 1],
        maxMemory: `0=${a}B,1=${b - 1}B`,
        onProgress: (n) => (progressed = n),
      }),
      (e: unknown) => {
        assert.ok(e instanceof OutOfDeviceMemory, String(e));
        assert.equal(e.device, '1');
        assert.equal(e.cap, b - 1);
        assert.ok(e.requested + e.inUse > e.cap);
        return true;
      },
    );
    assert.equal(progressed, 0, 'no weight byte was read');
    assert.deepEqual({ ...liveResources }, before, 'every buffer, backend and allocator was released');
  });

  it('the planner refuses caps that cannot hold the model, naming the short device', async () => {
    const ck = checkpoint('llama2');
    await assert.rejects(loadModel(ck.dir, { devices: 'virtual:2', ctx: 64, maxMemory: '0=100KB,1=100KB' }), /does not fit.*device|GPU 0 is short|short by/);
  });

  it('blocks offloaded to disk run in place from the mapped file and give the same logits', async () => {
    const ck = checkpoint('llama3');
    const ram = await loadModel(ck.dir, { devices: 'virtual:1', ctx: 32, threads: 1 });
    const expected = ram.forward(PROMPT, true);
    const need = ram.report()[0]!.predicted;
    ram.dispose();
    const before = { ...liveResources };
    const model = await loadModel(ck.dir, {
      devices: 'virtual:1',
      ctx: 32,
      threads: 1,
      maxMemory: `0=${Math.floor(need / 3)}B,cpu=${Math.floor(need / 3)}B,disk=1GB`,
    });
    try {
      const disk = model.plan.devices.find((d) => d.id === 'disk')!;
      assert.ok(
        disk.modules.some((m) => m.startsWith('model.layers.')),
        'some blocks are on disk',
      );
      assert.equal(maxAbsDiff(model.forward(PROMPT, true), expected), 0);
      const report = model.report();
      const mapped = report.find((d) => d.id === 'disk')!;
      assert.equal(mapped.measured, mapped.predicted, 'every disk tensor is used in place');
      for (const d of report) assert.ok(d.measured <= d.cap);
    } finally {
      model.dispose();
    }
    assert.deepEqual({ ...liveResources }, before);
  });

  it('dispose frees every buffer', async () => {
    const ck = checkpoint('qwen3');
    const before = { ...liveResources };
    const model = await loadModel(ck.dir, { devices: 'virtual:4', ctx: 32, threads: 1 });
    assert.ok(liveResources.buffers > before.buffers);
    model.dispose();
    assert.deepEqual({ ...liveResources }, before);
    assert.throws(() => model.forward([1]), /disposed/);
  });
});

describe('engine: storage dtypes and inputs', () => {
  for (const dtype of ['float16', 'bfloat16'] as const) {
    it(`${dtype} weights run and stay close to the reference`, async () => {
      const ck = checkpoint('mistral', dtype);
      const model = await loadModel(ck.dir, { devices: 'virtual:2', ctx: 32, kvDtype: 'float32', threads: 1 });
      try {
        const rows = model.forward(PROMPT, true);
        const ref = createReferenceModel(ck).forward(PROMPT, 0);
        // Half-precision matrices make ggml round the activations too: a looser bound than F32's.
        assert.ok(maxAbsDiff(rows, ref) < 0.05, `differs by ${maxAbsDiff(rows, ref)}`);
      } finally {
        model.dispose();
      }
    });
  }

  it('token ids outside the vocabulary and contexts that overflow are bad input', async () => {
    const ck = checkpoint('llama2');
    const model = await loadModel(ck.dir, { ctx: 8, threads: 1 });
    try {
      assert.throws(() => model.forward([1, 100000]), /outside the vocabulary/);
      assert.throws(() => model.forward(Array.from({ length: 9 }, () => 1)), /do not fit the 8-token context/);
    } finally {
      model.dispose();
    }
  });
});

describe('engine: GGUF files of the Llama family', () => {
  for (const name of ['llama2', 'llama3', 'llama-linear', 'qwen2', 'qwen3', 'llama3-tied'] as const) {
    it(`${name}: a GGUF written as llama.cpp's converter does gives the safetensors logits`, async () => {
      const ck = checkpoint(name);
      const st = await loadModel(ck.dir, { ctx: 32, kvDtype: 'float32', threads: 1 });
      const expected = st.forward(PROMPT, true);
      st.dispose();
      const gguf = await loadModel(writeTinyGguf(ck), { devices: 'virtual:2', ctx: 32, kvDtype: 'float32', threads: 1 });
      try {
        // float32 rope tables differ from ggml's by rounding only (the GGUF eps and theta are float32).
        assert.ok(maxAbsDiff(gguf.forward(PROMPT, true), expected) < 1e-4, 'GGUF and safetensors runs agree');
      } finally {
        gguf.dispose();
      }
    });
  }

  it('float16 matrices in a GGUF run within half-precision error', async () => {
    const ck = checkpoint('mistral');
    const ref = createReferenceModel(ck).forward(PROMPT, 0);
    const gguf = await loadModel(writeTinyGguf(ck, 'float16'), { ctx: 32, kvDtype: 'float32', threads: 1 });
    try {
      assert.ok(maxAbsDiff(gguf.forward(PROMPT, true), ref) < 0.05, 'close to the reference');
    } finally {
      gguf.dispose();
    }
  });
});

describe('vramfit run', () => {
  async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
    let out = '';
    let err = '';
    const code = await main(argv, { stdout: (s) => (out += s), stderr: (s) => (err += s) });
    return { code, out, err };
  }

  it('--json with --logits gives ids, devices and logits rows', async () => {
    const ck = checkpoint('llama3-tied');
    const r = await run(
      'run',
      ck.dir,
      '--input-ids',
      '1,2,3',
      '--max-new-tokens',
      '3',
      '--json',
      '--logits',
      '--devices',
      'virtual:2',
      '--ctx',
      '32',
      '--threads',
      '1',
    );
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out);
    assert.deepEqual(j.prompt_ids, [1, 2, 3]);
    assert.equal(j.generated_ids.length, 3);
    assert.equal(j.devices.length, 2);
    assert.equal(j.prompt_logits.length, 3);
    assert.equal(j.step_logits.length, 3);
    assert.equal(j.prompt_logits[0].length, ck.config['vocab_size']);
    assert.ok(j.devices.every((d: { measured_peak: number; predicted_peak: number }) => d.measured_peak > 0));
  });

  it('--max-new-tokens 0 generates nothing', async () => {
    const ck = checkpoint('llama2');
    const r = await run('run', ck.dir, '--input-ids', '5', '--max-new-tokens', '0', '--json', '--threads', '1');
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(JSON.parse(r.out).generated_ids, []);
  });

  it('bad input exits 2 with one line', async () => {
    const ck = checkpoint('llama2');
    for (const argv of [
      ['--input-ids', '1,x'],
      ['--input-ids', '1', '--temperature', '0'],
      ['--input-ids', '1', '--kv-dtype', 'q4_0'],
      ['--prompt', 'hi'],
      ['--input-ids', '1', '--devices', 'virtual:0'],
    ]) {
      const r = await run('run', ck.dir, ...argv, '--threads', '1');
      assert.equal(r.code, 2, `${argv.join(' ')}: ${r.err}`);
      assert.equal(r.err.trim().split('\n').length, 1, r.err);
    }
  });

  it('a plan that does not fit names each short device and what run accepts to fix it, each line short', async () => {
    const ck = checkpoint('llama2');
    const r = await run('run', ck.dir, '--input-ids', '1', '--max-memory', '0=10KB', '--threads', '1');
    assert.equal(r.code, 2, r.err);
    const lines = r.err.trim().split('\n');
    assert.match(lines[0]!, /^vramfit: plan: the model does not fit/);
    assert.match(r.err, /^  device 0 is short by [\d.]+ KiB$/m);
    assert.match(r.err, /^  --max-memory …,cpu=\d+MiB$/m);
    assert.doesNotMatch(r.err, /--ctx auto|q8_0|q4_0/, 'run accepts neither');
    assert.ok(lines.every((l) => l.length <= 120));
    assert.doesNotMatch(r.err, /\n\s+at /);
  });
});

describe('engine: one reading of config.json with the reader', () => {
  it("Qwen3 without head_dim uses Qwen3Config's default 128 and attention_bias covers o_proj, as the skeleton says", async () => {
    const ck = writeTinyFamilyCheckpoint(join(root, 'qwen3-defaults'), 'qwen3', { seed: 3, config: { head_dim: undefined, attention_bias: true } });
    const model = await loadModel(ck.dir, { devices: 'virtual:1', ctx: 32, threads: 1 });
    try {
      const h = model.hyper as unknown as { headDim: number; oBias: boolean; qkvBias: boolean };
      assert.equal(h.headDim, 128);
      assert.equal(h.qkvBias, true);
      assert.equal(h.oBias, true);
      assert.ok(model.skeleton.tensors.some((t) => t.name === 'model.layers.0.self_attn.o_proj.bias'));
      const run = await greedy(model, [1, 2, 3], 2);
      assert.equal(run.ids.length, 2);
      assert.ok(run.steps.flatMap((r) => [...r]).every(Number.isFinite));
    } finally {
      model.dispose();
    }
  });
});

/**
 * Hyper-parameters ggml asserts on (a negative epsilon aborts the process) or computes NaN from, and
 * GGUF keys of the wrong type, are refused at read time. Weights ggml must never see as they are: integer or boolean tensors where floats are expected (ggml
 * asserts and the process dies), float64 (narrowed to F32 instead), and skeleton JSONs whose file
 * paths and byte ranges are claims: only files in the JSON's own folder, and ranges that are exactly
 * each tensor's size inside its file.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { loadModel } from '../src/engine/load.js';
import { readSafetensorsHeader } from '../src/reader/formats/safetensors.js';
import { gv, type GgufWriteValue } from '../src/reader/formats/gguf-writer.js';
import { writeSafetensors } from '../src/reader/formats/safetensors-writer.js';
import { greedy } from './helpers/engine-harness.js';
import { writeTinyGguf } from './helpers/tiny-gguf.js';
import { writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { cli } from './helpers/run-cli.js';

const root = tempDir('vramfit-hostile-');
after(() => cleanup(root));
const base = writeTinyFamilyCheckpoint(join(root, 'base'), 'llama2', { seed: 4 });

/** A copy of the base checkpoint with one tensor re-stored by `change`. */
function withTensor(name: string, change: (values: Float32Array) => { dtype: string; data: Uint8Array }): string {
  const dir = join(root, `${name.replace(/\W/g, '_')}-${Math.random().toString(36).slice(2, 8)}`);
  mkdirSync(dir);
  copyFileSync(join(base.dir, 'config.json'), join(dir, 'config.json'));
  const file = join(base.dir, 'model.safetensors');
  const bytes = readFileSync(file);
  const tensors = readSafetensorsHeader(file).tensors.map((t) => {
    const data = new Uint8Array(bytes.subarray(t.range[0], t.range[1]));
    if (t.name !== name) return { name: t.name, dtype: t.dtype, shape: t.shape, data };
    return { name: t.name, shape: t.shape, ...change(new Float32Array(data.slice().buffer)) };
  });
  writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  return dir;
}

const RUN = ['--input-ids', '1,2,3', '--max-new-tokens', '3', '--json', '--threads', '1'];

describe('hostile weights: checked before any native call', () => {
  for (const [dtype, make] of [
    ['int32', (v: Float32Array) => new Uint8Array(Int32Array.from(v, (x) => Math.round(x * 100)).buffer)],
    ['int8', (v: Float32Array) => new Uint8Array(Int8Array.from(v, () => 1).buffer)],
    ['bool', (v: Float32Array) => new Uint8Array(v.length).fill(1)],
  ] as const) {
    it(`an ${dtype} matrix is refused with the tensor and file named, exit 2`, async () => {
      const dir = withTensor('model.layers.0.self_attn.q_proj.weight', (v) => ({ dtype, data: make(v) }));
      const r = await cli(['run', dir, ...RUN]);
      assert.equal(r.code, 2, r.err);
      assert.match(
        r.err,
        new RegExp(`^vramfit: .*model\\.safetensors: model\\.layers\\.0\\.self_attn\\.q_proj\\.weight is stored as ${dtype} \\(not floating\\)`),
      );
      assert.equal(r.err.trim().split('\n').length, 1);
    });
  }

  it("float64 weights (a matrix and a norm) are narrowed to F32 and give the float32 model's tokens", async () => {
    const f64 = (v: Float32Array) => ({ dtype: 'float64', data: new Uint8Array(Float64Array.from(v).buffer) });
    const matrix = withTensor('model.layers.1.mlp.up_proj.weight', f64);
    const both = withTensor('model.norm.weight', f64);
    const runs = [];
    for (const dir of [base.dir, matrix, both]) {
      const m = await loadModel(dir, { devices: 'virtual:1', ctx: 32, threads: 1 });
      try {
        runs.push(await greedy(m, [1, 2, 3], 3));
        // the plan sizes a float64 matrix as the F32 it becomes
        const r = m.report()[0]!;
        assert.ok(Math.abs(r.measured - r.predicted) <= 0.02 * r.predicted, `measured ${r.measured}, predicted ${r.predicted}`);
      } finally {
        m.dispose();
      }
    }
    assert.deepEqual(runs[1]!.ids, runs[0]!.ids);
    assert.deepEqual(runs[2]!.ids, runs[0]!.ids);
  });
});

describe('hostile skeleton JSONs given to run', () => {
  /** A skeleton JSON of the base checkpoint, edited, written into `folder`. */
  async function skeletonIn(
    folder: string,
    edit: (j: { tensors: { name: string; location: { file: string; range: [number, number] } }[]; source: { files: string[] } }) => void,
  ): Promise<string> {
    const r = await cli(['inspect', base.dir, '--json']);
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out);
    edit(j);
    mkdirSync(folder, { recursive: true });
    const path = join(folder, 'skeleton.json');
    writeFileSync(path, JSON.stringify(j));
    return path;
  }

  it('a skeleton JSON in the model folder runs', async () => {
    const path = await skeletonIn(base.dir, () => {});
    const r = await cli(['run', path, ...RUN]);
    assert.equal(r.code, 0, r.err);
  });

  it("a file outside the JSON's folder (an absolute path, a ../ path, a symlink out) is refused before it is read", async () => {
    const outside = join(root, 'elsewhere');
    mkdirSync(outside, { recursive: true });
    copyFileSync(join(base.dir, 'model.safetensors'), join(outside, 'model.safetensors'));
    const cases: [string, (j: Parameters<Parameters<typeof skeletonIn>[1]>[0]) => void][] = [
      ['absolute', (j) => (j.tensors[0]!.location.file = join(outside, 'model.safetensors'))],
      ['etc', (j) => (j.tensors[0]!.location.file = '/etc/passwd')],
      ['dotdot', (j) => (j.tensors[0]!.location.file = '../elsewhere/model.safetensors')],
    ];
    for (const [name, edit] of cases) {
      const folder = join(root, `json-${name}`);
      mkdirSync(folder, { recursive: true });
      for (const f of ['config.json', 'model.safetensors']) copyFileSync(join(base.dir, f), join(folder, f));
      const path = await skeletonIn(folder, (j) => {
        j.source.files = j.source.files.map((f) => join(folder, f.split('/').pop()!));
        edit(j);
      });
      const r = await cli(['run', path, ...RUN]);
      assert.equal(r.code, 2, `${name}: ${r.err}`);
      assert.match(r.err, /is outside the skeleton JSON's folder|does not exist/, name);
    }
    // a link inside the folder that points out of it
    const linked = join(root, 'json-link');
    mkdirSync(linked, { recursive: true });
    copyFileSync(join(base.dir, 'config.json'), join(linked, 'config.json'));
    symlinkSync(join(outside, 'model.safetensors'), join(linked, 'model.safetensors'));
    const path = await skeletonIn(linked, (j) => (j.source.files = j.source.files.map((f) => join(linked, f.split('/').pop()!))));
    const r = await cli(['run', path, ...RUN]);
    assert.equal(r.code, 2, r.err);
    assert.match(r.err, /is outside the skeleton JSON's folder/);
  });

  it("a byte range that is not exactly the tensor's size, or runs past the file, is refused", async () => {
    for (const [name, edit, reason] of [
      [
        'short',
        (j: { tensors: { location: { range: [number, number] } }[] }) => (j.tensors[0]!.location.range[1] -= 2),
        /spans bytes .* but float32 \[128,64\] takes 32768/,
      ],
      [
        'past-end',
        (j: { tensors: { location: { range: [number, number] } }[] }) => {
          const t = j.tensors.at(-1)!;
          t.location.range = [t.location.range[0] + 4096, t.location.range[1] + 4096];
        },
        /ends at byte \d+, past the file's \d+ bytes/,
      ],
    ] as const) {
      const folder = join(root, `range-${name}`);
      mkdirSync(folder, { recursive: true });
      for (const f of ['config.json', 'model.safetensors']) copyFileSync(join(base.dir, f), join(folder, f));
      const path = await skeletonIn(folder, (j) => {
        j.source.files = j.source.files.map((f) => join(folder, f.split('/').pop()!));
        edit(j as never);
      });
      const r = await cli(['run', path, ...RUN]);
      assert.equal(r.code, 2, `${name}: ${r.err}`);
      assert.match(r.err, reason, name);
    }
  });
});

describe('hostile hyper-parameters: refused before ggml could assert on them', () => {
  const ggufCases: [string, Record<string, GgufWriteValue>, RegExp][] = [
    ['10^9 blocks', { '{arch}.block_count': gv.u32(1e9) }, /num_hidden_layers must be between 1 and 10,000, got 1,000,000,000/],
    ['no heads', { '{arch}.attention.head_count': gv.u32(0) }, /num_attention_heads must be between 1/],
    ['no KV heads', { '{arch}.attention.head_count_kv': gv.u32(0) }, /num_key_value_heads must be between 1/],
    [
      'epsilon as a string',
      { '{arch}.attention.layer_norm_rms_epsilon': gv.string('1e-5') },
      /GGUF key llama\.attention\.layer_norm_rms_epsilon holds a string \("1e-5"\), expected a number/,
    ],
    [
      'a negative epsilon (ggml asserts eps >= 0)',
      { '{arch}.attention.layer_norm_rms_epsilon': gv.f32(-1) },
      /rms_norm_eps must be at least 0 and below 1, got -1/,
    ],
    ['a rope base of 0', { '{arch}.rope.freq_base': gv.f32(0) }, /rope_theta must be above 0, got 0/],
    ['a NaN rope base', { '{arch}.rope.freq_base': gv.f32(NaN) }, /rope_theta must be a number/],
    ['no positions', { '{arch}.context_length': gv.u32(0) }, /max_position_embeddings must be between 1/],
  ];
  ggufCases.forEach(([what, overrides, reason], i) => {
    it(`GGUF with ${what}: exit 2 naming the file`, async () => {
      const path = writeTinyGguf(base, 'float32', overrides, `hostile-${i}.gguf`);
      const r = await cli(['run', path, ...RUN]);
      assert.equal(r.code, 2, r.err);
      assert.ok(r.err.startsWith(`vramfit: ${path}`), r.err);
      assert.match(r.err, reason);
    });
  });

  it('config.json with a negative epsilon or a zero rope base: exit 2 naming config.json', async () => {
    for (const [key, value, reason] of [
      ['rms_norm_eps', -1e-6, /rms_norm_eps must be at least 0/],
      ['rope_theta', 0, /rope_theta must be above 0/],
    ] as const) {
      const dir = join(root, `config-${key}`);
      mkdirSync(dir, { recursive: true });
      copyFileSync(join(base.dir, 'model.safetensors'), join(dir, 'model.safetensors'));
      writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...base.config, [key]: value }));
      const r = await cli(['run', dir, ...RUN]);
      assert.equal(r.code, 2, r.err);
      assert.match(r.err, /config\.json: /);
      assert.match(r.err, reason);
    }
  });
});

describe('non-finite weights: generation stops naming the layer', () => {
  it("a NaN in one layer's matrix stops the run with that tensor and layer named, on one device and split", async () => {
    const dir = withTensor('model.layers.1.mlp.up_proj.weight', (v) => {
      const x = v.slice();
      x[7] = NaN;
      return { dtype: 'float32', data: new Uint8Array(x.buffer) };
    });
    for (const devices of ['virtual:1', 'virtual:2']) {
      const r = await cli(['run', dir, ...RUN, '--devices', devices]);
      assert.equal(r.code, 2, `${devices}: ${r.err}`);
      assert.match(
        r.err,
        /non-finite (hidden state|logits) from layers? [\d–]+ on device \d: weight model\.layers\.1\.mlp\.up_proj\.weight \(layer 1\) holds NaN/,
        devices,
      );
      assert.equal(r.err.trim().split('\n').length, 1);
    }
  });

  it('an Inf in the final norm is found on the device holding the head', async () => {
    const dir = withTensor('model.norm.weight', (v) => {
      const x = v.slice();
      x[0] = Infinity;
      return { dtype: 'float32', data: new Uint8Array(x.buffer) };
    });
    const r = await cli(['run', dir, ...RUN]);
    assert.equal(r.code, 2, r.err);
    assert.match(r.err, /non-finite logits from .* weight model\.norm\.weight holds Inf/);
  });
});

describe('hostile sizes: algorithms over modules are linear', () => {
  // A quadratic step over 100,000 module lists takes hours; linear ones take seconds. The timeout
  // only turns a hang into a failure; speeds are measured by the benchmarks.
  it('a skeleton JSON with 100,000 module lists is inspected and planned', { timeout: 120_000 }, async () => {
    const modules: { name: string; class: string }[] = [];
    const tensors: { name: string; shape: number[]; dtype: string }[] = [];
    for (let i = 0; i < 100_000; i++) {
      modules.push({ name: `l${i}`, class: 'ModuleList' }, { name: `l${i}.0`, class: 'Linear' }, { name: `l${i}.1`, class: 'Linear' });
      tensors.push({ name: `l${i}.0.weight`, shape: [4, 4], dtype: 'float16' });
    }
    const path = join(root, 'lists.json');
    writeFileSync(path, JSON.stringify({ root_class: 'X', modules, tensors }));
    const inspect = await cli(['inspect', path]);
    assert.equal(inspect.code, 0, inspect.err);
    const plan = await cli(['plan', path, '--gpu-memory', '24GiB,24GiB', '--max-memory', '0=1MiB,1=1GiB', '--format', 'json']);
    assert.equal(plan.code, 0, plan.err);
    const p = JSON.parse(plan.out) as { devices: { id: string; modules: string[] }[] };
    assert.equal(
      p.devices.reduce((n, d) => n + d.modules.length, 0),
      200_000,
    );
  });
});

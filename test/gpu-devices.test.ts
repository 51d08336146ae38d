/**
 * Choosing GPUs and capping them: `--devices` parsing, one numbering for nvidia-smi's and ggml's GPUs,
 * caps resolved against the device's own memory, the errors a user meets, and GPU libraries loaded only
 * when a GPU is asked for. The Vulkan parts run on the emulated devices (test/helpers/vulkan.ts).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { vulkanSkip } from './helpers/vulkan.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { parseDeviceSelection } from '../src/planner/devices/selection.js';
import { numberGpus, samePciBus, selectNumbered, type GgmlGpu } from '../src/planner/devices/gpu-match.js';
import { releaseProblem } from '../src/engine/ggml/packages.js';
import { noGpuError, listEngineGpus } from '../src/engine/gpus.js';
import { resolveRunDevices } from '../src/engine/run-devices.js';
import { CappedAllocator, liveResources, OutOfDeviceMemory } from '../src/engine/device.js';
import { loadGgml, type BufferType } from '../src/engine/ggml/binding.js';
import { loadModel } from '../src/engine/load.js';
import { InputError } from '../src/util/errors.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const GiB = 1024 ** 3;
const NO_OVERHEAD = { cuda: 0, vulkan: 0 };

describe('--devices', () => {
  it('takes cpu, virtual:N, every GPU, GPUs by id, and a GPU form followed by cpu', () => {
    assert.deepEqual(parseDeviceSelection(undefined), { kind: 'virtual', count: 1 });
    assert.deepEqual(parseDeviceSelection('cpu'), { kind: 'virtual', count: 1 });
    assert.deepEqual(parseDeviceSelection('virtual:3'), { kind: 'virtual', count: 3 });
    assert.deepEqual(parseDeviceSelection('gpu'), { kind: 'gpu', gpus: 'all', cpu: false });
    assert.deepEqual(parseDeviceSelection('gpu:1'), { kind: 'gpu', gpus: [1], cpu: false });
    assert.deepEqual(parseDeviceSelection('gpu:1,3'), { kind: 'gpu', gpus: [1, 3], cpu: false });
    assert.deepEqual(parseDeviceSelection('gpu:0,cpu'), { kind: 'gpu', gpus: [0], cpu: true });
    assert.deepEqual(parseDeviceSelection('gpu,cpu'), { kind: 'gpu', gpus: 'all', cpu: true });
  });

  it('refuses malformed lists, repeated GPUs and virtual counts out of range, naming the flag', () => {
    for (const bad of ['gpu:', 'gpu:a', 'gpu:1,x', 'gpu:1,1', 'virtual:0', 'virtual:65', 'tpu', 'cpu,gpu', 'gpu,1']) {
      assert.throws(
        () => parseDeviceSelection(bad),
        (e: unknown) => e instanceof InputError && e.where === '--devices',
        bad,
      );
    }
  });
});

const gpu = (over: Partial<GgmlGpu>): GgmlGpu => ({
  name: 'X',
  description: 'card',
  backend: 'cuda',
  integrated: false,
  totalBytes: 80 * GiB,
  freeBytes: 79 * GiB,
  pciBusId: null,
  ...over,
});

describe('one numbering for nvidia-smi and ggml', () => {
  it('treats nvidia-smi and ggml spellings of a PCI bus id as the same bus', () => {
    assert.ok(samePciBus('00000000:1A:00.0', '0000:1a:00.0'));
    assert.ok(!samePciBus('00000000:1A:00.0', '0000:1b:00.0'));
    assert.ok(!samePciBus(null, null));
  });

  it('gives each ggml GPU the id nvidia-smi (and so plan) gives its card', () => {
    // CUDA's fastest-first order differs from nvidia-smi's PCI order here.
    const cards = [
      { logicalIndex: 0, pciBusId: '00000000:01:00.0', name: 'A100' },
      { logicalIndex: 1, pciBusId: '00000000:02:00.0', name: 'H100' },
    ];
    const { gpus } = numberGpus([gpu({ name: 'CUDA0', pciBusId: '0000:02:00.0' }), gpu({ name: 'CUDA1', pciBusId: '0000:01:00.0' })], cards);
    assert.deepEqual(
      gpus.map((g) => [g.id, g.name, g.smiName]),
      [
        [0, 'CUDA1', 'A100'],
        [1, 'CUDA0', 'H100'],
      ],
    );
  });

  it('offers a card seen by CUDA and Vulkan once, through CUDA unless Vulkan is chosen', () => {
    const both = [
      gpu({ name: 'CUDA0', pciBusId: '0000:01:00.0' }),
      gpu({ name: 'Vulkan0', backend: 'vulkan', pciBusId: '0000:01:00.0' }),
      gpu({ name: 'Vulkan1', backend: 'vulkan', description: 'AMD', pciBusId: '0000:05:00.0' }),
    ];
    const cards = [{ logicalIndex: 0, pciBusId: '00000000:01:00.0', name: 'H100' }];
    const auto = numberGpus(both, cards);
    assert.deepEqual(
      auto.gpus.map((g) => [g.id, g.name]),
      [
        [0, 'CUDA0'],
        [1, 'Vulkan1'],
      ],
    );
    assert.match(auto.notes.join(), /seen by both CUDA and Vulkan/);
    const vk = numberGpus(both, cards, 'vulkan');
    assert.deepEqual(
      vk.gpus.map((g) => [g.id, g.name]),
      [
        [0, 'Vulkan0'],
        [1, 'Vulkan1'],
      ],
    );
    // Without bus ids, the same name and memory tell the two apart.
    const noIds = numberGpus(
      [gpu({ name: 'CUDA0', description: 'NVIDIA H100' }), gpu({ name: 'Vulkan0', backend: 'vulkan', description: 'NVIDIA H100 80GB HBM3' })],
      [],
    );
    assert.deepEqual(
      noIds.gpus.map((g) => g.name),
      ['CUDA0'],
    );
  });

  it('keeps a card CUDA_VISIBLE_DEVICES hides hidden from Vulkan too, and counts integrated GPUs', () => {
    const cards = [
      { logicalIndex: null, pciBusId: '00000000:01:00.0', name: 'A100' },
      { logicalIndex: 0, pciBusId: '00000000:02:00.0', name: 'A100' },
    ];
    const { gpus, notes } = numberGpus(
      [
        gpu({ name: 'Vulkan0', backend: 'vulkan', pciBusId: '0000:01:00.0' }),
        gpu({ name: 'Vulkan1', backend: 'vulkan', pciBusId: '0000:02:00.0' }),
        gpu({ name: 'Vulkan2', backend: 'vulkan', integrated: true }),
      ],
      cards,
    );
    assert.deepEqual(
      gpus.map((g) => [g.id, g.name, g.integrated]),
      [
        [0, 'Vulkan1', false],
        [1, 'Vulkan2', true],
      ],
    );
    assert.match(notes.join(), /Vulkan0 hidden by CUDA_VISIBLE_DEVICES/);
  });

  it('says which GPUs exist when a selection names one that does not', () => {
    const { gpus } = numberGpus([gpu({ name: 'Vulkan0', backend: 'vulkan' })], []);
    assert.throws(() => selectNumbered(gpus, [1]), /--devices: GPU 1 does not exist \(GPUs: 0 Vulkan0\)/);
  });
});

describe('GPU packages', () => {
  it('tells an absent package from one of another release, each with the command that fixes it', () => {
    assert.deepEqual(releaseProblem('cuda', undefined, '3.22.1')?.state, 'absent');
    assert.match(releaseProblem('cuda', undefined, '3.22.1')!.detail, /npm install --save-exact @node-llama-cpp\/linux-x64-cuda@3\.22\.1/);
    const mismatch = releaseProblem('vulkan', '3.21.0', '3.22.1')!;
    assert.equal(mismatch.state, 'mismatch');
    assert.match(mismatch.detail, /is 3\.21\.0 but the CPU package @node-llama-cpp\/linux-x64 is 3\.22\.1/);
    assert.equal(releaseProblem('vulkan', '3.22.1', '3.22.1'), null);
  });

  it('gives three different messages: not installed, installed without a device, chosen backend missing', () => {
    const absent = noGpuError({
      gpus: [],
      notes: [],
      packages: [
        { backend: 'cuda', package: 'c', state: 'absent', detail: '' },
        { backend: 'vulkan', package: 'v', state: 'absent', detail: '' },
      ],
    });
    assert.match(
      absent.message,
      /no GPU package is installed: npm install --save-exact @node-llama-cpp\/linux-x64-cuda@[\d.]+ \(NVIDIA, CUDA 13\) or npm install/,
    );
    const noDevice = noGpuError({
      gpus: [],
      notes: [],
      packages: [
        { backend: 'cuda', package: 'c', state: 'absent', detail: '' },
        { backend: 'vulkan', package: 'v', state: 'no-device', detail: 'installed but found no usable device' },
      ],
    });
    assert.match(noDevice.message, /no usable GPU: installed but found no usable device/);
    const chosen = noGpuError(
      {
        gpus: [],
        notes: [],
        packages: [
          { backend: 'cuda', package: 'c', state: 'absent', detail: '' },
          { backend: 'vulkan', package: 'v', state: 'ready', detail: '2 device(s)' },
        ],
      },
      'cuda',
    );
    assert.match(chosen.message, /no GPU package is installed: npm install --save-exact @node-llama-cpp\/linux-x64-cuda@/);
  });

  it('a CPU run never loads a GPU library, and prints nothing of ggml', () => {
    const dir = tempDir();
    try {
      writeTinyFamilyCheckpoint(dir, 'llama2');
      const script = `
        import { loadModel } from './src/engine/load.ts';
        import { readFileSync } from 'node:fs';
        const m = await loadModel(${JSON.stringify(dir)}, { devices: 'cpu', ctx: 16, threads: 1 });
        m.forward([1, 2, 3]);
        m.dispose();
        const maps = readFileSync('/proc/self/maps', 'utf8');
        console.log(JSON.stringify({ vulkan: maps.includes('libggml-vulkan'), cuda: maps.includes('libggml-cuda') }));`;
      const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
        cwd: ROOT,
        encoding: 'utf8',
        env: { ...process.env, GGML_VK_VISIBLE_DEVICES: '0' },
      });
      assert.equal(r.status, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout.trim().split('\n').at(-1)!), { vulkan: false, cuda: false });
      assert.equal(r.stderr, '');
    } finally {
      cleanup(dir);
    }
  });
});

describe('caps on Vulkan devices', { skip: vulkanSkip() }, () => {
  it('numbers the emulated GPUs 0 and 1 and reads their memory from the backend', () => {
    const { gpus } = listEngineGpus();
    assert.deepEqual(
      gpus.map((g) => [g.id, g.name, g.backend]),
      [
        [0, 'Vulkan0', 'vulkan'],
        [1, 'Vulkan1', 'vulkan'],
      ],
    );
    assert.ok(gpus.every((g) => g.totalBytes > 0 && g.freeBytes > 0 && g.freeBytes <= g.totalBytes));
  });

  it('resolves relative caps against the device and the host, as plan does', async () => {
    const [, g1] = listEngineGpus().gpus;
    const cap = async (devices: string, maxMemory: string, id: string): Promise<number> =>
      (await resolveRunDevices({ devices, maxMemory }, NO_OVERHEAD)).specs.find((s) => s.id === id)!.cap;
    assert.equal(await cap('gpu:1', '1=50%', '1'), Math.floor(g1!.totalBytes / 2));
    assert.equal(await cap('gpu:1', '1=free-512MiB', '1'), g1!.freeBytes - 512 * 1024 ** 2);
    assert.equal(await cap('gpu:1', '1=total', '1'), g1!.totalBytes);
    assert.equal(await cap('gpu:1', '1=free', '1'), g1!.freeBytes);
    const cpu = await cap('gpu:0,cpu', 'cpu=50%', 'cpu');
    assert.ok(cpu > 0 && cpu < Number.MAX_SAFE_INTEGER);
    // Uncapped: what the GPU has free.
    assert.equal((await resolveRunDevices({ devices: 'gpu:1' }, NO_OVERHEAD)).specs[0]!.cap, g1!.freeBytes);
  });

  it('refuses a cap above the device, a GPU that does not exist, and a cap for a device not opened', async () => {
    await assert.rejects(
      resolveRunDevices({ devices: 'gpu:1', maxMemory: '1=1TiB' }, NO_OVERHEAD),
      /--max-memory 1: 1\.00 TiB \(1099511627776 B\) is more than GPU 1 \(Vulkan1\) has: 2\.00 GiB/,
    );
    await assert.rejects(resolveRunDevices({ devices: 'gpu:2' }, NO_OVERHEAD), /GPU 2 does not exist \(GPUs: 0 Vulkan0, 1 Vulkan1\)/);
    await assert.rejects(resolveRunDevices({ devices: 'gpu:1', maxMemory: '0=1GiB' }, NO_OVERHEAD), /names device 0, which --devices does not open \(1\)/);
    await assert.rejects(
      resolveRunDevices({ devices: 'gpu', backend: 'cuda' }, NO_OVERHEAD),
      /no GPU package is installed: npm install --save-exact @node-llama-cpp\/linux-x64-cuda/,
    );
  });

  it('a backend that refuses an allocation the cap allows gives OutOfDeviceMemory with true numbers', () => {
    const g = loadGgml();
    const { gpus } = listEngineGpus();
    const buft = g.raw.ggml_backend_dev_buffer_type(gpus[0]!.handle) as BufferType;
    const before = liveResources.buffers;
    // More than the device has, under a cap that allows it (a cap above the device is refused before this).
    const allocator = new CappedAllocator(g, '0', 8 * gpus[0]!.totalBytes, buft, () => ({ free: gpus[0]!.freeBytes, total: gpus[0]!.totalBytes }));
    const err = (() => {
      try {
        allocator.allocate(2 * gpus[0]!.totalBytes, 'weights');
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    assert.ok(err instanceof OutOfDeviceMemory);
    assert.equal(err.requested, 2 * gpus[0]!.totalBytes);
    assert.equal(err.inUse, 0);
    assert.ok(err.backendRefused);
    assert.match(
      err.message,
      /device 0: weights needs 4\.00 GiB \(4294967296 B\) on top of 0 B already in use or reserved; the cap \(16\.00 GiB\) allows it, but the backend refused the allocation; the device reports 2\.00 GiB free of 2\.00 GiB/,
    );
    assert.doesNotMatch(err.message, /by -/);
    assert.equal(liveResources.buffers, before);
  });

  it('a load over a GPU cap is refused before any weight is read, with the cap and overshoot in the message', async () => {
    const dir = tempDir();
    try {
      writeTinyFamilyCheckpoint(dir, 'llama2');
      const before = { ...liveResources };
      await assert.rejects(loadModel(dir, { devices: 'gpu:1', maxMemory: '1=64KiB', ctx: 16, threads: 1 }), (e: unknown) => {
        assert.ok(e instanceof Error);
        assert.match(e.message, /GPU 1|device 1/);
        assert.doesNotMatch(e.message, /by -/);
        return true;
      });
      assert.deepEqual({ ...liveResources }, before);
    } finally {
      cleanup(dir);
    }
  });

  it('an installed Vulkan package with no usable device says so, naming what it looked for', () => {
    const r = spawnSync(
      process.execPath,
      ['--import', 'tsx', '--input-type=module', '-e', "import { main } from './src/cli/main.ts'; process.exitCode = await main(['devices']);"],
      { cwd: ROOT, encoding: 'utf8', env: { ...process.env, GGML_VK_VISIBLE_DEVICES: '' } },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /GPU backends: cuda not installed, vulkan installed, no usable device/);
    assert.match(r.stdout, /found no usable device .*it looked for the Vulkan loader/);
    const dir = tempDir();
    try {
      writeTinyFamilyCheckpoint(dir, 'llama2');
      const run = spawnSync(
        process.execPath,
        [
          '--import',
          'tsx',
          '--input-type=module',
          '-e',
          `import { main } from './src/cli/main.ts'; process.exitCode = await main(['run', ${JSON.stringify(dir)}, '--input-ids', '1', '--devices', 'gpu']);`,
        ],
        { cwd: ROOT, encoding: 'utf8', env: { ...process.env, GGML_VK_VISIBLE_DEVICES: '' } },
      );
      assert.equal(run.status, 2);
      assert.match(run.stderr, /^vramfit: --devices: no usable GPU: @node-llama-cpp\/linux-x64-vulkan is installed but found no usable device/);
      assert.equal(run.stderr.trim().split('\n').length, 1, run.stderr);
    } finally {
      cleanup(dir);
    }
  });
});

describe('workspace measurement', () => {
  it('measures one layer of each kind: an MoE model whose dense layer is not the first still has it measured', async () => {
    const { representativeLayers } = await import('../src/engine/workspace.js');
    const { moeArchitecture } = await import('../src/engine/architectures/moe.js');
    const { ConfigReader } = await import('../src/reader/config.js');
    const { TINY_MOE_CONFIGS } = await import('./helpers/tiny-moe.js');
    const cfg = TINY_MOE_CONFIGS['qwen3-moe'];
    const h = moeArchitecture.hyper(new ConfigReader({ ...cfg }, 'config.json'), 'qwen3-moe');
    // Layer 1 is dense (mlp_only_layers [1]), the others sparse: both kinds are measured.
    assert.deepEqual(representativeLayers(moeArchitecture, h), [0, 1]);
    // Only the last layer dense: layers 0 and 1 (what was measured before) are both sparse.
    const last = moeArchitecture.hyper(new ConfigReader({ ...cfg, mlp_only_layers: [2] }, 'config.json'), 'qwen3-moe');
    assert.deepEqual(representativeLayers(moeArchitecture, last), [0, 2]);
  });
});

describe("GPU backends' own scratch memory (memory model)", async () => {
  const { vulkanScratchBytes, cudaScratchBytes } = await import('../src/planner/memory-model.js');
  const MiB = 1024 ** 2;
  // A 7B-like shape: hidden 4096, FFN 11008, vocab 32000, 8 KV heads of 128.
  const matrices = (stored: 'f32' | 'f16' | 'quantized') => [
    { k: 4096, m: 4096, stored },
    { k: 4096, m: 11008, stored },
    { k: 11008, m: 4096, stored },
    { k: 4096, m: 32000, stored },
  ];
  const base = { ubatch: 512, ctx: 4096, kvDim: 1024, queryDim: 4096 };

  it('Vulkan: F16 weights with an F16 cache (flash attention) need only split-k partials and the fixed 1 KiB', () => {
    const bytes = vulkanScratchBytes({ ...base, matrices: matrices('f16'), kvBytesPerElement: 2 });
    // Split-k: ≤ 8 F32 partials of at most 88 tiles of 128×128 outputs (K ≥ 2048 everywhere here).
    assert.equal(bytes, 8 * 4 * 88 * 128 * 128 + 1024);
  });

  it('Vulkan: an F32 cache adds nothing (its operands are handed over contiguous); quantized weights add their q8_1 activations', () => {
    const f32 = vulkanScratchBytes({ ...base, matrices: matrices('f16'), kvBytesPerElement: 4 });
    assert.equal(f32, 8 * 4 * 88 * 128 * 128 + 1024);
    const q = vulkanScratchBytes({ ...base, matrices: matrices('quantized'), kvBytesPerElement: 2 });
    assert.equal(q, Math.ceil(1.125 * 512 * 11008) + 8 * 4 * 88 * 128 * 128 + 1024);
    // Small matrices (K < 2048) are never split.
    assert.equal(vulkanScratchBytes({ ...base, ubatch: 1, matrices: [{ k: 64, m: 256, stored: 'f16' }], kvBytesPerElement: 2 }), 1024);
  });

  it('CUDA: F16 weights over a prompt convert the largest matrix to F32 for cuBLAS; decode-sized batches do not', () => {
    assert.equal(cudaScratchBytes({ ...base, matrices: matrices('f16'), kvBytesPerElement: 2 }), 4 * 4096 * 32000 + 32 * MiB);
    assert.equal(cudaScratchBytes({ ...base, ubatch: 16, matrices: matrices('f16'), kvBytesPerElement: 2 }), 32 * MiB);
    const q = cudaScratchBytes({ ...base, matrices: matrices('quantized'), kvBytesPerElement: 2 });
    assert.equal(q, Math.ceil(1.125 * 512 * 11264) + 132 * 64 * 1024);
  });

  it('a run leaves room for the backend scratch on each GPU and reports it', { skip: vulkanSkip() }, async () => {
    const dir = tempDir();
    try {
      writeTinyFamilyCheckpoint(dir, 'llama2');
      const model = await loadModel(dir, { devices: 'gpu:0', ctx: 32, ubatch: 8, threads: 1, kvDtype: 'float32' });
      try {
        const [d] = model.report();
        const planned = model.plan.devices.find((x) => x.id === '0')!;
        assert.equal(d!.overhead, planned.overhead);
        // Small F32 matrices, contiguous attention operands: only the fixed 1 KiB.
        assert.equal(d!.overhead, 1024);
        assert.ok(planned.used === planned.weights + planned.kv + planned.workspace + planned.overhead);
      } finally {
        model.dispose();
      }
    } finally {
      cleanup(dir);
    }
  });
});

describe('devices, plan and run see the same GPUs', { skip: vulkanSkip() }, () => {
  const cli = (args: string[]) =>
    spawnSync(
      process.execPath,
      ['--import', 'tsx', '--input-type=module', '-e', `import { main } from './src/cli/main.ts'; process.exitCode = await main(${JSON.stringify(args)});`],
      { cwd: ROOT, encoding: 'utf8', env: { ...process.env, GGML_VK_VISIBLE_DEVICES: '0,0' } },
    );

  it('vramfit devices lists the emulated GPUs with their ggml device and the active backend', () => {
    const r = cli(['devices']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /GPUs \(from ggml's GPU backends\)/);
    assert.match(r.stdout, /\n {2}0 +- +llvmpipe[^\n]*\[Vulkan0 via vulkan\]/);
    assert.match(r.stdout, /\n {2}1 +- +llvmpipe[^\n]*\[Vulkan1 via vulkan\]/);
    assert.match(r.stdout, /GPU backends: cuda not installed, vulkan active/);
    assert.doesNotMatch(r.stdout, /nvidia-smi was not found, so no GPUs are used/);
  });

  it("vramfit plan places on GPU 1 what vramfit run then puts on GPU 1, with the Vulkan backend's overhead", async () => {
    const dir = tempDir();
    try {
      writeTinyFamilyCheckpoint(dir, 'llama2');
      const r = cli(['plan', dir, '--max-memory', '1=50%', '--ctx', '64', '--format', 'json']);
      assert.equal(r.status, 0, r.stderr);
      const plan = JSON.parse(r.stdout) as { devices: { id: string; modules: string[]; overhead: number; name?: string }[] };
      const gpu1 = plan.devices.find((d) => d.id === '1')!;
      assert.ok(gpu1.modules.length > 0 && gpu1.name?.includes('llvmpipe'), 'the plan uses GPU 1, the emulated device');
      assert.ok(gpu1.overhead < 1024 ** 2, `a Vulkan GPU's overhead is its scratch, not a CUDA context (${gpu1.overhead} B)`);
      const model = await loadModel(dir, { devices: 'gpu:1', maxMemory: '1=50%', ctx: 64, threads: 1 });
      try {
        assert.deepEqual(model.plan.devices.find((d) => d.id === '1')!.modules, gpu1.modules, 'run places the same modules on GPU 1');
        assert.equal(model.report()[0]!.name, 'Vulkan1');
      } finally {
        model.dispose();
      }
    } finally {
      cleanup(dir);
    }
  });
});

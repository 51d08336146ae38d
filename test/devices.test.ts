import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

import { InputError } from '../src/util/errors.js';
import { KNOWN_CARDS, closestCards, findCard, parseDeviceSpec, parseGpuMemoryList } from '../src/planner/devices/cards.js';
import { formatGiB, renderInventory } from '../src/planner/devices/format.js';
import { parseCgroupLimit, parseMemAvailable, readDiskSpace } from '../src/planner/devices/host.js';
import { detectInventory, simulatedInventory, type Inventory } from '../src/planner/devices/inventory.js';
import {
  GPU_QUERY_ARGS,
  LIST_ARGS,
  PROCESS_QUERY_ARGS,
  mergeNvidiaSmi,
  migProfileBytes,
  parseGpuList,
  parseGpuQuery,
  parseProcessQuery,
  readNvidiaSmi,
  type GpuInfo,
  type NvidiaSmiRunner,
} from '../src/planner/devices/nvidia-smi.js';
import { applyCudaVisibleDevices, selectGpus, type GpuIdentity } from '../src/planner/devices/visible.js';

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

// ---- canned nvidia-smi outputs -------------------------------------------------------------

const U0 = 'GPU-5fa9c1a8-7b6e-4c7d-9f10-3f4f1a2b3c01';
const U1 = 'GPU-5fb0d2e4-1111-2222-3333-444455556666';
const U2 = 'GPU-9e8d35e3-a134-0fdd-0e01-23811fdbd293';
const U3 = 'GPU-e429a63e-aaaa-bbbb-cccc-ddddeeeeffff';

const FOUR_GPUS_QUERY = [
  `0, ${U0}, NVIDIA A100-SXM4-80GB, 81920, 20480, 60927, 00000000:07:00.0`,
  `1, ${U1}, NVIDIA A100-SXM4-80GB, 81920, 4, 81403, 00000000:0F:00.0`,
  `2, ${U2}, NVIDIA A100-SXM4-80GB, 81920, 4, 81403, 00000000:47:00.0`,
  `3, ${U3}, NVIDIA A100-SXM4-80GB, 81920, 4, 81403, 00000000:4E:00.0`,
  '',
].join('\n');

const FOUR_GPUS_PROCS = [`${U0}, 4242, /usr/bin/python3, 19456`, `${U0}, 4343, /opt/serve, with comma/bin/server, 512`, `${U2}, 5151, [Not Found], [N/A]`].join(
  '\n',
);

const FOUR_GPUS_LIST = [
  `GPU 0: NVIDIA A100-SXM4-80GB (UUID: ${U0})`,
  `GPU 1: NVIDIA A100-SXM4-80GB (UUID: ${U1})`,
  `GPU 2: NVIDIA A100-SXM4-80GB (UUID: ${U2})`,
  `GPU 3: NVIDIA A100-SXM4-80GB (UUID: ${U3})`,
].join('\n');

const M0 = 'MIG-4b1b9e5e-0f5c-5a53-a6a2-0a1b2c3d4e5f';
const M1 = 'MIG-4c2aa7d1-1e6d-5b64-b7b3-1b2c3d4e5f60';
const M2 = 'MIG-8f00aa11-2f7e-5c75-c8c4-2c3d4e5f6071';
const MIG_QUERY = [
  `0, ${U0}, NVIDIA A100-SXM4-80GB, 81920, 13, 81088, 00000000:07:00.0`,
  `1, ${U1}, NVIDIA A100-SXM4-80GB, 81920, 13, 81088, 00000000:0F:00.0`,
  `2, ${U2}, NVIDIA H100 80GB HBM3, 81559, 0, 81008, 00000000:47:00.0`,
].join('\n');
const MIG_LIST = [
  `GPU 0: NVIDIA A100-SXM4-80GB (UUID: ${U0})`,
  `  MIG 3g.40gb     Device  0: (UUID: ${M0})`,
  `  MIG 1g.10gb     Device  1: (UUID: ${M1})`,
  `GPU 1: NVIDIA A100-SXM4-80GB (UUID: ${U1})`,
  `  MIG 7g.80gb     Device  0: (UUID: ${M2})`,
  `GPU 2: NVIDIA H100 80GB HBM3 (UUID: ${U2})`,
].join('\n');

/** A runner answering each nvidia-smi call from canned text; records the calls. */
function fakeSmi(answers: { gpus: string; procs?: string | Error; list?: string | Error }): NvidiaSmiRunner & {
  calls: string[][];
} {
  const calls: string[][] = [];
  const run = async (args: readonly string[]): Promise<string | null> => {
    calls.push([...args]);
    const a = args.join(' ');
    const answer = a === GPU_QUERY_ARGS.join(' ') ? answers.gpus : a === PROCESS_QUERY_ARGS.join(' ') ? answers.procs : answers.list;
    if (answer instanceof Error) throw answer;
    return answer ?? '';
  };
  return Object.assign(run, { calls });
}

function physical(query: string, procs = '', list = ''): GpuInfo[] {
  return mergeNvidiaSmi(parseGpuQuery(query).gpus, parseProcessQuery(procs).processes, parseGpuList(list));
}

const FOUR = physical(FOUR_GPUS_QUERY, FOUR_GPUS_PROCS, FOUR_GPUS_LIST);
const MIG = physical(MIG_QUERY, '', MIG_LIST);

function order(vis: { gpus: { physicalIndex: number; logicalIndex: number }[] }): number[] {
  vis.gpus.forEach((g, i) => assert.equal(g.logicalIndex, i));
  return vis.gpus.map((g) => g.physicalIndex);
}

function inputError(where: string, ...parts: (string | RegExp)[]) {
  return (e: unknown): boolean => {
    assert.ok(e instanceof InputError, `expected InputError, got ${String(e)}`);
    assert.equal(e.where, where);
    for (const p of parts) {
      if (typeof p === 'string') assert.ok(e.reason.includes(p), `"${e.reason}" should contain "${p}"`);
      else assert.match(e.reason, p);
    }
    return true;
  };
}

// ---- nvidia-smi parsing --------------------------------------------------------------------

describe('nvidia-smi parsing', () => {
  it('reads a multi-GPU query, MiB to bytes', () => {
    const { gpus, notes } = parseGpuQuery(FOUR_GPUS_QUERY);
    assert.deepEqual(notes, []);
    assert.equal(gpus.length, 4);
    assert.deepEqual(gpus[0], {
      index: 0,
      uuid: U0,
      name: 'NVIDIA A100-SXM4-80GB',
      totalBytes: 81920 * MIB,
      usedBytes: 20480 * MIB,
      freeBytes: 60927 * MIB,
      pciBusId: '00000000:07:00.0',
      processes: [],
      mig: [],
    });
    assert.equal(gpus[3]!.pciBusId, '00000000:4E:00.0');
  });

  it('sorts by index and skips unreadable rows with a note', () => {
    const text = `1, ${U1}, T4, 15360, 0, 14930, 00000000:02:00.0\ngarbage\n0, ${U0}, T4, [N/A], 0, 0, x\n2, ${U2}, T4, 15360, [N/A], 15000, b\n`;
    const { gpus, notes } = parseGpuQuery(text);
    assert.deepEqual(
      gpus.map((g) => g.index),
      [1, 2],
    );
    assert.equal(gpus[1]!.usedBytes, 360 * MIB, 'used follows from total - free');
    assert.equal(notes.length, 2);
    assert.match(notes[0]!, /garbage/);
    assert.match(notes[1]!, /GPU 0 .*no memory total/);
  });

  it('reads processes, names with commas and [N/A] memory', () => {
    const { processes, notes } = parseProcessQuery(FOUR_GPUS_PROCS + '\nNo running processes found\n');
    assert.deepEqual(notes, []);
    assert.deepEqual(processes, [
      { gpuUuid: U0, pid: 4242, name: '/usr/bin/python3', usedBytes: 19456 * MIB },
      { gpuUuid: U0, pid: 4343, name: '/opt/serve, with comma/bin/server', usedBytes: 512 * MIB },
      { gpuUuid: U2, pid: 5151, name: '[Not Found]', usedBytes: null },
    ]);
    assert.deepEqual(parseProcessQuery('').processes, []);
  });

  it('reads nvidia-smi -L with MIG instances, current and R450 formats', () => {
    const listed = parseGpuList(MIG_LIST);
    assert.deepEqual(
      listed.map((g) => [g.index, g.uuid, g.mig.length]),
      [
        [0, U0, 2],
        [1, U1, 1],
        [2, U2, 0],
      ],
    );
    assert.equal(listed[0]!.name, 'NVIDIA A100-SXM4-80GB');
    assert.deepEqual(listed[0]!.mig[1], { uuid: M1, profile: '1g.10gb', migIndex: 1, parentUuid: U0, totalBytes: 10e9 });
    const old = parseGpuList(
      'GPU 0: A100-SXM4-40GB (UUID: GPU-e86cb44c-6756-fd30-cd4a-1e6da3caf9b0)\n' +
        '  MIG 1g.5gb Device 0: (UUID: MIG-GPU-e86cb44c-6756-fd30-cd4a-1e6da3caf9b0/7/0)\n',
    );
    assert.equal(old[0]!.mig[0]!.uuid, 'MIG-GPU-e86cb44c-6756-fd30-cd4a-1e6da3caf9b0/7/0');
    assert.equal(old[0]!.mig[0]!.totalBytes, 5e9);
  });

  it('estimates MIG memory from the profile name', () => {
    assert.equal(migProfileBytes('1g.10gb'), 10e9);
    assert.equal(migProfileBytes('1g.10gb+me'), 10e9);
    assert.equal(migProfileBytes('1c.3g.40gb'), 40e9);
    assert.equal(migProfileBytes('weird'), null);
  });

  it('merges processes and MIG by UUID', () => {
    assert.deepEqual(
      FOUR.map((g) => g.processes.map((p) => p.pid)),
      [[4242, 4343], [], [5151], []],
    );
    assert.deepEqual(
      MIG.map((g) => g.mig.map((m) => m.uuid)),
      [[M0, M1], [M2], []],
    );
  });

  it('readNvidiaSmi: the three commands, missing nvidia-smi, failures', async () => {
    const smi = fakeSmi({ gpus: FOUR_GPUS_QUERY, procs: FOUR_GPUS_PROCS, list: FOUR_GPUS_LIST });
    const r = await readNvidiaSmi(smi);
    assert.equal(r.status, 'ok');
    assert.equal(r.gpus.length, 4);
    assert.deepEqual(smi.calls.map((c) => c.join(' ')).sort(), [GPU_QUERY_ARGS, LIST_ARGS, PROCESS_QUERY_ARGS].map((a) => a.join(' ')).sort());

    assert.deepEqual(await readNvidiaSmi(async () => null), { status: 'missing', gpus: [], notes: [] });

    const failed = await readNvidiaSmi(async () => {
      throw new Error("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver");
    });
    assert.equal(failed.status, 'failed');
    assert.match(failed.notes[0]!, /couldn't communicate/);

    const partial = await readNvidiaSmi(fakeSmi({ gpus: FOUR_GPUS_QUERY, procs: new Error('timed out after 5 s') }));
    assert.equal(partial.gpus.length, 4, 'a failing process query keeps the GPUs');
    assert.match(partial.notes.join('\n'), /could not list GPU processes \(timed out/);
  });
});

// ---- CUDA_VISIBLE_DEVICES ------------------------------------------------------------------

describe('applyCudaVisibleDevices', () => {
  const cvd = (value: string | undefined, gpus: readonly GpuIdentity[] = FOUR) => applyCudaVisibleDevices(gpus, value);

  it('unset: every GPU in order, no notes', () => {
    const v = cvd(undefined);
    assert.deepEqual(order(v), [0, 1, 2, 3]);
    assert.deepEqual(v.notes, []);
    assert.equal(v.gpus[2]!.uuid, U2);
  });

  it('empty: no GPUs', () => {
    const v = cvd('');
    assert.deepEqual(v.gpus, []);
    assert.match(v.notes[0]!, /empty/);
  });

  it('indices remap in the given order', () => {
    const v = cvd('2,0');
    assert.deepEqual(order(v), [2, 0]);
    assert.deepEqual(
      v.gpus.map((g) => g.uuid),
      [U2, U0],
    );
    assert.deepEqual(v.notes, []);
  });

  it('an index past the last GPU ends the list', () => {
    const v = cvd('1,7,0');
    assert.deepEqual(order(v), [1]);
    assert.deepEqual(v.notes, ['entry "7" does not name a GPU (GPUs are 0-3); CUDA ignores it and everything after it']);
  });

  it('a negative or non-numeric entry ends the list', () => {
    assert.deepEqual(order(cvd('0,2,-1,1')), [0, 2]);
    assert.deepEqual(order(cvd('-1')), []);
    const v = cvd('3,two,1');
    assert.deepEqual(order(v), [3]);
    assert.match(v.notes[0]!, /entry "two" is not a GPU index; CUDA ignores it and everything after it/);
    assert.deepEqual(order(cvd('one,two,3')), []);
    assert.deepEqual(order(cvd('0,,1')), [0], 'an empty entry is invalid');
    assert.deepEqual(order(cvd('0,1,')), [0, 1]);
  });

  it('reads indices like strtoul: spaces, signs, trailing junk', () => {
    assert.deepEqual(order(cvd(' 1 , 0 ')), [1, 0]);
    assert.deepEqual(order(cvd('2, +3, -0, 1')), [2, 3, 0, 1]);
    const v = cvd('1gpu2,2ampere');
    assert.deepEqual(order(v), [1, 2]);
    assert.match(v.notes[0]!, /"1gpu2" is read as 1/);
  });

  it('a repeated index hides all GPUs, even after an out-of-range one', () => {
    const v = cvd('0,1,0');
    assert.deepEqual(v.gpus, []);
    assert.match(v.notes[0]!, /repeats GPU 0; CUDA then hides all GPUs/);
    assert.deepEqual(cvd('0,9,0').gpus, []);
    assert.deepEqual(order(cvd('0,x,0')), [0], 'a repeat after the end of the list does not count');
  });

  it('full UUIDs and unique prefixes', () => {
    assert.deepEqual(order(cvd(`${U3},${U1}`)), [3, 1]);
    assert.deepEqual(order(cvd('GPU-9e8d,GPU-e4')), [2, 3]);
    assert.deepEqual(order(cvd('GPU-5fb')), [1]);
  });

  it('an ambiguous or unknown UUID prefix ends the list', () => {
    const v = cvd('GPU-9e8d,GPU-5f,GPU-e4');
    assert.deepEqual(order(v), [2]);
    assert.match(v.notes[0]!, /entry "GPU-5f" matches GPU 0 and GPU 1; CUDA ignores it and everything after it/);
    assert.deepEqual(order(cvd('GPU-5,GPU-9e8d')), []);
    const u = cvd('GPU-e4,GPU-123,GPU-9e8d');
    assert.deepEqual(order(u), [3]);
    assert.match(u.notes[0]!, /"GPU-123" does not name a GPU/);
  });

  it('UUIDs naming the same GPU twice hide all GPUs', () => {
    assert.deepEqual(cvd('GPU-9e8d,GPU-e4,GPU-9e8d').gpus, []);
    const v = cvd('GPU-9e8d35e3,GPU-9e8');
    assert.deepEqual(v.gpus, []);
    assert.match(v.notes[0]!, /names GPU 2 again; CUDA then hides all GPUs/);
  });

  it('the first entry fixes the form; the other form ends the list', () => {
    assert.deepEqual(order(cvd('GPU-e4,1')), [3]);
    assert.deepEqual(order(cvd('GPU-e4, GPU-9e8d')), [3], 'a leading space is not a UUID');
    assert.deepEqual(order(cvd('1,GPU-e4')), [1]);
    assert.deepEqual(order(cvd(' GPU-e4')), [], 'a leading space makes the list numeric');
  });

  it('MIG ids: exact and prefix, only one instance per process', () => {
    const v = cvd(M1, MIG);
    assert.deepEqual(v.gpus, [{ logicalIndex: 0, physicalIndex: 0, uuid: M1, mig: MIG[0]!.mig[1]! }]);
    const two = cvd(`MIG-8f,${M0}`, MIG);
    assert.deepEqual(
      two.gpus.map((g) => g.uuid),
      [M2],
    );
    assert.match(two.notes[0]!, /only one MIG instance/);
    assert.deepEqual(cvd('MIG-4,MIG-8f', MIG).gpus, [], 'MIG-4 is ambiguous');
    assert.deepEqual(cvd('MIG-nope', MIG).gpus, []);
  });

  it('a GPU in MIG mode is seen as its first MIG instance, and only one MIG instance is enumerated', () => {
    const v = cvd(undefined, MIG);
    assert.deepEqual(
      v.gpus.map((g) => [g.logicalIndex, g.physicalIndex, g.uuid]),
      [
        [0, 0, M0],
        [1, 2, U2],
      ],
    );
    assert.match(v.notes[0]!, /GPU 0 is in MIG mode: CUDA sees its MIG instance 3g\.40gb/);
    assert.match(v.notes.join('\n'), /MIG 7g\.80gb .* is left out: a CUDA process enumerates only one MIG instance/);
    assert.deepEqual(
      cvd('2,1', MIG).gpus.map((g) => g.uuid),
      [U2, M2],
    );
  });

  it('no physical GPUs', () => {
    assert.deepEqual(cvd(undefined, []).gpus, []);
    const v = cvd('0', []);
    assert.deepEqual(v.gpus, []);
    assert.match(v.notes[0]!, /no GPUs were detected/);
  });
});

// ---- --gpus --------------------------------------------------------------------------------

describe('selectGpus (--gpus)', () => {
  it('selects and remaps, and says how to launch', () => {
    const v = selectGpus(FOUR, '2,0');
    assert.deepEqual(order(v), [2, 0]);
    assert.deepEqual(v.notes, ['--gpus: run the model with CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=2,0 so that cuda:0.. are these GPUs']);
    assert.deepEqual(order(selectGpus(FOUR, ' 3 , GPU-5fb ')), [3, 1], 'forms may be mixed');
  });

  it('unknown, ambiguous, repeated and malformed entries are InputErrors naming --gpus', () => {
    assert.throws(() => selectGpus(FOUR, '1,7'), inputError('--gpus', '"7" does not name a GPU', `available: 0 (${U0})`));
    assert.throws(() => selectGpus(FOUR, '0,-1'), inputError('--gpus', '"-1" is not a GPU index'));
    assert.throws(() => selectGpus(FOUR, '1gpu2'), inputError('--gpus', 'is not a GPU index'));
    assert.throws(() => selectGpus(FOUR, '1,1'), inputError('--gpus', 'names GPU 1 a second time'));
    assert.throws(() => selectGpus(FOUR, `1,${U1}`), inputError('--gpus', 'a second time'));
    assert.throws(() => selectGpus(FOUR, 'GPU-5f'), inputError('--gpus', 'matches GPU 0 and GPU 1'));
    assert.throws(() => selectGpus(FOUR, 'GPU-zz'), inputError('--gpus', 'does not name a GPU'));
    assert.throws(() => selectGpus(FOUR, ''), inputError('--gpus', 'is empty'));
    assert.throws(() => selectGpus(FOUR, '0,'), inputError('--gpus', '"" is not a GPU index'));
    assert.throws(() => selectGpus([], '0'), inputError('--gpus', 'no GPUs were detected'));
  });

  it('MIG: one instance, not a MIG-mode card, not mixed', () => {
    const v = selectGpus(MIG, 'MIG-4c');
    assert.deepEqual(
      v.gpus.map((g) => [g.physicalIndex, g.uuid]),
      [[0, M1]],
    );
    assert.match(v.notes[0]!, new RegExp(`CUDA_VISIBLE_DEVICES=${M1} `));
    assert.throws(() => selectGpus(MIG, '0'), inputError('--gpus', 'GPU 0 is in MIG mode', M0));
    assert.throws(() => selectGpus(MIG, `${M0},${M2}`), inputError('--gpus', 'only one'));
    assert.throws(() => selectGpus(MIG, `2,${M0}`), inputError('--gpus', 'mixes a MIG instance'));
    assert.throws(() => selectGpus(MIG, 'MIG-4'), inputError('--gpus', 'matches MIG 3g.40gb'));
  });
});

// ---- cards ---------------------------------------------------------------------------------

describe('device specs', () => {
  it('every spelling names one card', () => {
    const seen = new Map<string, string>();
    for (const c of KNOWN_CARDS) {
      for (const n of [c.name, ...c.aliases]) {
        const key = n
          .toLowerCase()
          .replace(/\b(nvidia|geforce|tesla|amd|instinct)\b/g, '')
          .replace(/[\s\-_.]/g, '');
        assert.ok(!seen.has(key) || seen.get(key) === c.name, `${n} collides with ${seen.get(key)}`);
        seen.set(key, c.name);
      }
    }
  });

  it('has the totals the drivers report', () => {
    const mib = (n: string) => findCard(n).totalBytes / MIB;
    assert.equal(mib('A100-80GB'), 81920);
    assert.equal(mib('A100-40GB'), 40960);
    assert.equal(mib('H100-80GB'), 81559);
    assert.equal(mib('H200'), 143771);
    assert.equal(mib('L40S'), 46068);
    assert.equal(mib('A10'), 23028);
    assert.equal(mib('A6000'), 49140);
    assert.equal(mib('RTX-3090'), 24576);
    assert.equal(mib('RTX-4090'), 24564);
    assert.equal(mib('RTX-4080'), 16376);
    assert.equal(mib('T4'), 15360);
    assert.equal(mib('L4'), 23034);
    assert.equal(mib('RTX-3060'), 12288);
    assert.equal(mib('MI300X'), 196608);
  });

  it('parses counts and lists, forgiving of case, dashes and spaces', () => {
    const four = parseDeviceSpec('4xA100-80GB');
    assert.equal(four.length, 4);
    assert.ok(four.every((c) => c.name === 'A100-80GB' && c.totalBytes === 81920 * MIB));
    assert.deepEqual(
      parseDeviceSpec('2xRTX-4090,1xA6000').map((c) => c.name),
      ['RTX-4090', 'RTX-4090', 'A6000'],
    );
    assert.deepEqual(
      parseDeviceSpec(' 2 X rtx 4090 , a6000 ').map((c) => c.name),
      ['RTX-4090', 'RTX-4090', 'A6000'],
    );
    assert.deepEqual(
      parseDeviceSpec('2×h100,1*rtx_3090,2x4090').map((c) => c.name),
      ['H100-80GB', 'H100-80GB', 'RTX-3090', 'RTX-4090', 'RTX-4090'],
    );
    assert.equal(findCard('NVIDIA GeForce RTX 4090').name, 'RTX-4090');
    assert.equal(findCard('NVIDIA A100-SXM4-80GB').name, 'A100-80GB');
    assert.equal(findCard('a100sxm480gb').name, 'A100-80GB');
    assert.equal(parseDeviceSpec('1xMI300X')[0]!.name, 'MI300X');
  });

  it('unknown cards name the closest known ones', () => {
    assert.throws(() => parseDeviceSpec('4xA100'), inputError('--device-spec', 'unknown card "A100"', /closest known: A100-(80|40)GB, A100-(40|80)GB/));
    assert.throws(() => parseDeviceSpec('RTX-4900'), inputError('--device-spec', 'RTX-4090'));
    assert.throws(() => parseDeviceSpec('2xZZZZZZZZZZZZ'), inputError('--device-spec', 'known cards: B200, H200'));
    assert.deepEqual(closestCards('H10'), ['H100-NVL', 'H100-80GB', 'A10'], 'names containing it first, then near spellings');
    assert.throws(() => findCard('nope', '--x'), inputError('--x', 'unknown card'));
  });

  it('rejects bad counts and empty entries', () => {
    assert.throws(() => parseDeviceSpec('0xA100-80GB'), inputError('--device-spec', 'between 1 and 1024'));
    assert.throws(() => parseDeviceSpec('5000xT4'), inputError('--device-spec', 'between 1 and 1024'));
    assert.throws(() => parseDeviceSpec(''), inputError('--device-spec', 'is empty'));
    assert.throws(() => parseDeviceSpec('T4,,L4'), inputError('--device-spec', 'empty entry'));
  });

  it('parses --gpu-memory lists', () => {
    assert.deepEqual(parseGpuMemoryList('24GiB,24GiB'), [24 * GIB, 24 * GIB]);
    assert.deepEqual(parseGpuMemoryList('80GB, 20000MiB ,1.5gib'), [80e9, 20000 * MIB, 1.5 * GIB]);
    assert.deepEqual(parseGpuMemoryList('2x16GiB,1024'), [16 * GIB, 16 * GIB, 1024]);
    assert.throws(() => parseGpuMemoryList('24 parsecs'), inputError('--gpu-memory', 'not a size'));
    assert.throws(() => parseGpuMemoryList('1.5'), inputError('--gpu-memory', 'not a size'));
    assert.throws(() => parseGpuMemoryList('0GiB'), inputError('--gpu-memory', 'more than 0'));
    assert.throws(() => parseGpuMemoryList(' '), inputError('--gpu-memory', 'is empty'));
  });
});

// ---- host ----------------------------------------------------------------------------------

describe('host', () => {
  it('parses /proc/meminfo and cgroup limits', () => {
    assert.equal(parseMemAvailable('MemTotal:       24684084 kB\nMemFree: 1 kB\nMemAvailable:   24429008 kB\n'), 24429008 * 1024);
    assert.equal(parseMemAvailable('MemTotal: 1 kB\n'), null);
    assert.equal(parseCgroupLimit('max\n'), null);
    assert.equal(parseCgroupLimit('9223372036854771712\n'), null);
    assert.equal(parseCgroupLimit('17179869184\n'), 16 * GIB);
  });

  it('measures the nearest existing folder of an offload folder not yet made', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'vramfit-'));
    try {
      const d = await readDiskSpace(path.join(dir, 'not', 'yet'));
      assert.equal(d.path, dir);
      assert.ok(d.freeBytes > 0);
    } finally {
      await rm(dir, { recursive: true });
    }
  });
});

// ---- inventory -----------------------------------------------------------------------------

describe('inventory', () => {
  const full = () => fakeSmi({ gpus: FOUR_GPUS_QUERY, procs: FOUR_GPUS_PROCS, list: FOUR_GPUS_LIST });

  it('no nvidia-smi: no GPUs, not an error', async () => {
    const inv = await detectInventory({ env: {}, runNvidiaSmi: async () => null });
    assert.equal(inv.source, 'none');
    assert.deepEqual(inv.gpus, []);
    assert.match(inv.notes.join('\n'), /nvidia-smi was not found/);
    assert.ok(inv.cpu.totalBytes > 0 && inv.cpu.availableBytes > 0);
    assert.ok(inv.cpu.availableBytes <= inv.cpu.totalBytes);
    assert.equal(inv.disk.path, process.cwd());
  });

  it('a failing nvidia-smi: no GPUs and a note', async () => {
    const inv = await detectInventory({
      env: {},
      runNvidiaSmi: async () => {
        throw new Error('No devices were found');
      },
    });
    assert.equal(inv.source, 'none');
    assert.match(inv.notes[0]!, /nvidia-smi failed \(No devices were found\)/);
  });

  it('applies CUDA_VISIBLE_DEVICES and carries memory and processes', async () => {
    const inv = await detectInventory({ env: { CUDA_VISIBLE_DEVICES: '2,0' }, runNvidiaSmi: full() });
    assert.equal(inv.source, 'nvidia-smi');
    assert.deepEqual(
      inv.gpus.map((g) => [g.logicalIndex, g.physicalIndex, g.uuid]),
      [
        [0, 2, U2],
        [1, 0, U0],
      ],
    );
    const g = inv.gpus[1]!;
    assert.equal(g.name, 'NVIDIA A100-SXM4-80GB');
    assert.equal(g.totalBytes, 81920 * MIB);
    assert.equal(g.usedBytes, 20480 * MIB);
    assert.equal(g.freeBytes, 60927 * MIB);
    assert.equal(g.processes.length, 2);
    assert.equal(g.migProfile, null);
    assert.deepEqual(inv.notes, []);
  });

  it('--gpus replaces CUDA_VISIBLE_DEVICES, and its errors say why', async () => {
    const inv = await detectInventory({ gpus: '3', env: { CUDA_VISIBLE_DEVICES: '0' }, runNvidiaSmi: full() });
    assert.deepEqual(
      inv.gpus.map((g) => g.physicalIndex),
      [3],
    );
    assert.match(inv.notes.join('\n'), /CUDA_VISIBLE_DEVICES=0 is ignored because --gpus was given/);
    await assert.rejects(detectInventory({ gpus: '4', env: {}, runNvidiaSmi: full() }), inputError('--gpus', '"4" does not name a GPU'));
    await assert.rejects(
      detectInventory({ gpus: '0', env: {}, runNvidiaSmi: async () => null }),
      inputError('--gpus', 'no GPUs were detected (nvidia-smi was not found)'),
    );
  });

  it('warns when CUDA may number mixed models differently from nvidia-smi', async () => {
    const mixed = FOUR_GPUS_QUERY.replace(/(3, GPU-\S+) NVIDIA A100-SXM4-80GB, 81920/, '$1 NVIDIA RTX A6000, 49140');
    const a = await detectInventory({ env: {}, runNvidiaSmi: fakeSmi({ gpus: mixed }) });
    assert.equal(a.gpus[3]!.name, 'NVIDIA RTX A6000');
    assert.match(a.notes.join('\n'), /CUDA_DEVICE_ORDER=PCI_BUS_ID/);
    const b = await detectInventory({ env: { CUDA_DEVICE_ORDER: 'PCI_BUS_ID' }, runNvidiaSmi: fakeSmi({ gpus: mixed }) });
    assert.deepEqual(b.notes, []);
    const c = await detectInventory({ env: { CUDA_VISIBLE_DEVICES: 'GPU-e4' }, runNvidiaSmi: fakeSmi({ gpus: mixed }) });
    assert.deepEqual(c.notes, [], 'UUIDs do not depend on the order');
  });

  it('MIG instances become GPUs with estimated memory', async () => {
    const inv = await detectInventory({ env: { CUDA_VISIBLE_DEVICES: M1 }, runNvidiaSmi: fakeSmi({ gpus: MIG_QUERY, list: MIG_LIST }) });
    assert.deepEqual(inv.gpus, [
      {
        logicalIndex: 0,
        physicalIndex: 0,
        uuid: M1,
        name: 'NVIDIA A100-SXM4-80GB MIG 1g.10gb',
        totalBytes: 10e9,
        usedBytes: 0,
        freeBytes: 10e9,
        processes: [],
        migProfile: '1g.10gb',
      },
    ]);
    assert.match(inv.notes.join('\n'), /estimated from its profile name/);
  });

  it('an offload folder that cannot be read is an InputError', async () => {
    const file = path.join(os.tmpdir(), `vramfit-file-${process.pid}`);
    const { writeFile } = await import('node:fs/promises');
    await writeFile(file, 'x');
    try {
      // statfs on a path below a regular file fails with ENOTDIR.
      await assert.rejects(
        detectInventory({ env: {}, runNvidiaSmi: async () => null, offloadFolder: path.join(file, 'sub') }),
        inputError('--offload-folder', 'cannot read free space'),
      );
    } finally {
      await rm(file);
    }
  });

  it('simulated: empty cards from a device spec or sizes', async () => {
    const inv = await simulatedInventory({ deviceSpec: '2xA100-80GB,1xT4' });
    assert.equal(inv.source, 'simulated');
    assert.deepEqual(
      inv.gpus.map((g) => [g.logicalIndex, g.physicalIndex, g.name, g.totalBytes / MIB, g.usedBytes, g.freeBytes === g.totalBytes]),
      [
        [0, 0, 'A100-80GB', 81920, 0, true],
        [1, 1, 'A100-80GB', 81920, 0, true],
        [2, 2, 'T4', 15360, 0, true],
      ],
    );
    const sized = await simulatedInventory({ gpuMemory: '24GiB,12GiB' });
    assert.deepEqual(
      sized.gpus.map((g) => g.freeBytes),
      [24 * GIB, 12 * GIB],
    );
    await assert.rejects(simulatedInventory({ deviceSpec: 'A100' }), inputError('--device-spec', 'unknown card'));
    await assert.rejects(simulatedInventory({ deviceSpec: 'T4', gpuMemory: '1GiB' }), inputError('--gpu-memory', 'not both'));
  });
});

// ---- rendering -----------------------------------------------------------------------------

describe('renderInventory', () => {
  const host = { cpu: { totalBytes: 251.7 * GIB, availableBytes: 240.25 * GIB }, disk: { path: '/data/offload', freeBytes: 1843.21 * GIB } };

  it('formats GiB with two decimals below 100 and one from 100', () => {
    assert.equal(formatGiB(81920 * MIB), '80.00 GiB');
    assert.equal(formatGiB(1.256 * GIB), '1.26 GiB');
    assert.equal(formatGiB(143771 * MIB), '140.4 GiB');
    assert.equal(formatGiB(0), '0.00 GiB');
  });

  it('renders a remapped nvidia-smi inventory', async () => {
    const inv = await detectInventory({ env: { CUDA_VISIBLE_DEVICES: '2,0' }, runNvidiaSmi: full4() });
    const text = renderInventory({ ...inv, ...host, notes: ['something to know'] });
    assert.equal(
      text,
      [
        'GPUs (from nvidia-smi)',
        '  id  nvidia-smi  name                       total       used       free  processes',
        '  0   2           NVIDIA A100-SXM4-80GB  80.00 GiB   0.00 GiB  79.50 GiB  5151 [Not Found]',
        '  1   0           NVIDIA A100-SXM4-80GB  80.00 GiB  20.00 GiB  59.50 GiB  4242 python3 19.00 GiB, 4343 server 0.50 GiB',
        'CPU RAM: 251.7 GiB total, 240.3 GiB available',
        'Disk: 1843.2 GiB free at /data/offload',
        'Notes:',
        '  - something to know',
        '',
      ].join('\n'),
    );
  });

  it('renders simulated and empty inventories', () => {
    const sim: Inventory = {
      ...host,
      source: 'simulated',
      notes: [],
      gpus: [0, 1, 2, 3, 4].map((i) => ({
        logicalIndex: i,
        physicalIndex: i,
        uuid: `SIM-${i}`,
        name: 'H200',
        totalBytes: 143771 * MIB,
        usedBytes: 0,
        freeBytes: 143771 * MIB,
        processes: i === 0 ? [1, 2, 3, 4, 5].map((pid) => ({ pid, name: 'p', usedBytes: null })) : [],
        migProfile: null,
      })),
    };
    const lines = renderInventory(sim).split('\n');
    assert.equal(lines[0], 'GPUs (simulated)');
    assert.equal(lines[1], '  id  name      total      used       free  processes');
    assert.equal(lines[2], '  0   H200  140.4 GiB  0.00 GiB  140.4 GiB  1 p, 2 p, 3 p, +2 more');
    assert.equal(lines[3], '  1   H200  140.4 GiB  0.00 GiB  140.4 GiB  -');
    const none = renderInventory({ ...host, source: 'none', gpus: [], notes: ['nvidia-smi was not found'] });
    assert.equal(
      none,
      'GPUs: none (none detected)\nCPU RAM: 251.7 GiB total, 240.3 GiB available\nDisk: 1843.2 GiB free at /data/offload\nNotes:\n  - nvidia-smi was not found\n',
    );
  });

  function full4() {
    return fakeSmi({ gpus: FOUR_GPUS_QUERY, procs: FOUR_GPUS_PROCS, list: FOUR_GPUS_LIST });
  }
});

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { type BudgetSpecs, type DeviceInventory, parseAccelerateSize, parseDeviceKey, parseMaxMemory, resolveBudgets } from '../src/planner/budgets.js';
import { GB, GiB, KB, KiB, MB, MiB, TB, TiB, accelerateSizeOutcome, formatBytes, parseByteSize, pythonFloat } from '../src/planner/units.js';
import { InputError } from '../src/util/errors.js';

/** Asserts an InputError at `where` whose reason matches. */
function throwsInput(fn: () => unknown, where: string | RegExp, reason?: RegExp | string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof InputError, `expected InputError, got ${String(e)}`);
    if (typeof where === 'string') assert.equal(e.where, where);
    else assert.match(e.where, where);
    if (typeof reason === 'string') assert.equal(e.reason, reason);
    else if (reason) assert.match(e.reason, reason);
    return true;
  });
}

describe('unit values', () => {
  it('are powers of 10 and of 2', () => {
    assert.deepEqual([KB, MB, GB, TB], [1e3, 1e6, 1e9, 1e12]);
    assert.deepEqual([KiB, MiB, GiB, TiB], [2 ** 10, 2 ** 20, 2 ** 30, 2 ** 40]);
  });
});

describe('parseByteSize (our units)', () => {
  it('reads integers as bytes and units case-insensitively', () => {
    assert.equal(parseByteSize(0), 0);
    assert.equal(parseByteSize(5_000_000_000), 5e9);
    assert.equal(parseByteSize('1234'), 1234);
    assert.equal(parseByteSize('5B'), 5);
    assert.equal(parseByteSize('5b'), 5);
    assert.equal(parseByteSize('5KB'), 5000);
    assert.equal(parseByteSize('5GB'), 5e9);
    assert.equal(parseByteSize('5gB'), 5e9);
    assert.equal(parseByteSize('2TB'), 2e12);
    assert.equal(parseByteSize('5GiB'), 5 * 2 ** 30);
    assert.equal(parseByteSize('5gib'), 5 * 2 ** 30);
    assert.equal(parseByteSize('5GIB'), 5 * 2 ** 30);
    assert.equal(parseByteSize('3MiB'), 3 * 2 ** 20);
    assert.equal(parseByteSize('1TiB'), 2 ** 40);
    assert.equal(parseByteSize(' 5 GB '), 5e9);
  });

  it('takes decimals exactly and rounds a fractional byte down', () => {
    assert.equal(parseByteSize('1.5GB'), 1_500_000_000);
    assert.equal(parseByteSize('1.1GB'), 1_100_000_000);
    assert.equal(parseByteSize('0.5KiB'), 512);
    assert.equal(parseByteSize('1.1KiB'), 1126);
    assert.equal(parseByteSize('.25MiB'), 262144);
  });

  it('refuses a lower-case b after K/M/G/T, spelling out both readings', () => {
    throwsInput(
      () => parseByteSize('5gb', '--max-memory 0'),
      '--max-memory 0',
      "'5gb' is ambiguous: accelerate reads a lower-case b as bits (625,000,000 bytes); write 5GB for 5,000,000,000 bytes or 625MB for bits",
    );
    throwsInput(() => parseByteSize('2400Mb'), 'size', /2400Mb.*300,000,000 bytes.*2400MB for 2,400,000,000 bytes or 300MB for bits/);
    throwsInput(() => parseByteSize('3kb'), 'size', /375 bytes.*3KB for 3,000 bytes or 375B for bits/);
    throwsInput(() => parseByteSize('1Tb'), 'size', /125,000,000,000 bytes/);
    assert.throws(
      () => parseByteSize('5gb'),
      (e: unknown) => e instanceof InputError && e.code === 'AMBIGUOUS_UNIT',
    );
  });

  it('refuses everything else that is not a size', () => {
    throwsInput(() => parseByteSize('5G'), 'size', /unknown unit 'G'/);
    throwsInput(() => parseByteSize('5 bytes'), 'size', /unknown unit/);
    throwsInput(() => parseByteSize('-5GB'), 'size', /not a size/);
    throwsInput(() => parseByteSize('abc'), 'size', /not a size/);
    throwsInput(() => parseByteSize(''), 'size', /not a size/);
    throwsInput(() => parseByteSize('1e9'), 'size', /not a size|unknown unit/);
    throwsInput(() => parseByteSize('1.5'), 'size', /not a whole number of bytes/);
    throwsInput(() => parseByteSize('99999TiB'), 'size', /too large/);
    throwsInput(() => parseByteSize('99999999999999999'), 'size', /too large/);
    throwsInput(() => parseByteSize(-1), 'size', /not a byte count/);
    throwsInput(() => parseByteSize(1.5), 'size', /not a byte count/);
    throwsInput(() => parseByteSize(Number.NaN), 'size', /not a byte count/);
    throwsInput(() => parseByteSize(2 ** 53), 'size', /not a byte count/);
  });
});

describe('formatBytes', () => {
  it('shows the largest binary unit reached, with 2 decimals', () => {
    assert.equal(formatBytes(0), '0 B');
    assert.equal(formatBytes(512), '512 B');
    assert.equal(formatBytes(1023), '1023 B');
    assert.equal(formatBytes(1024), '1.00 KiB');
    assert.equal(formatBytes(1536), '1.50 KiB');
    assert.equal(formatBytes(5 * MiB), '5.00 MiB');
    assert.equal(formatBytes(13_476_839_424), '12.55 GiB');
    assert.equal(formatBytes(5 * TiB), '5.00 TiB');
    assert.equal(formatBytes(-2 * GiB), '-2.00 GiB');
    assert.equal(formatBytes(0.125), '0.125 B');
    assert.equal(formatBytes(Infinity), 'Infinity B');
  });
});

describe('formatBytes then parseByteSize (property)', () => {
  const unitShown = (n: number): number => [TiB, GiB, MiB, KiB].find((u) => n >= u) ?? 1;

  it('round-trips exactly when two decimals hold the value, and within rounding otherwise', () => {
    fc.assert(
      // Up to 2^52: formatting just below 2^53 rounds up past what a safe integer holds.
      fc.property(fc.integer({ min: 0, max: 2 ** 52 }), (n) => {
        const parsed = parseByteSize(formatBytes(n));
        const unit = unitShown(n);
        if ((BigInt(n) * 100n) % BigInt(unit) === 0n) return parsed === n;
        return Math.abs(parsed - n) <= unit / 200 + 1;
      }),
      { numRuns: 2000 },
    );
  });

  it('round-trips exactly below 1 KiB and on quarter units', () => {
    fc.assert(
      fc.property(fc.nat({ max: 1023 }), fc.nat({ max: 4095 }), fc.constantFrom(KiB, MiB, GiB, TiB), (small, quarters, unit) => {
        assert.equal(parseByteSize(formatBytes(small)), small);
        const n = (quarters * unit) / 4;
        if (n >= unit && Number.isSafeInteger(n)) assert.equal(parseByteSize(formatBytes(n)), n);
      }),
    );
  });

  it('reads back integers and integer multiples of every unit', () => {
    const units: Array<[string, number]> = [
      ['B', 1],
      ['KB', KB],
      ['MB', MB],
      ['GB', GB],
      ['TB', TB],
      ['KiB', KiB],
      ['MiB', MiB],
      ['GiB', GiB],
      ['TiB', TiB],
    ];
    fc.assert(
      fc.property(fc.nat({ max: 4096 }), fc.constantFrom(...units), fc.maxSafeNat(), (k, [name, size], n) => {
        assert.equal(parseByteSize(String(n)), n);
        assert.equal(parseByteSize(`${k}${name}`), k * size);
        assert.equal(parseByteSize(`${k} ${name.toLowerCase().replace(/b$/, 'B')}`), k * size);
      }),
    );
  });
});

describe('parseAccelerateSize (compat: convert_file_size_to_int)', () => {
  const msg = (v: string): string => `ValueError: \`size\` ${v} is not in a valid format. Use an integer for bytes, or a string with an unit (like '5.0GB').`;

  it('reads a lower-case b as bits and accepts decimals and spaces', () => {
    assert.equal(parseAccelerateSize('5gb'), 625_000_000);
    assert.equal(parseAccelerateSize('5Gb'), 625_000_000);
    assert.equal(parseAccelerateSize('5gB'), 5_000_000_000);
    assert.equal(parseAccelerateSize('5GB'), 5_000_000_000);
    assert.equal(parseAccelerateSize('2400Mb'), 300_000_000);
    assert.equal(parseAccelerateSize('3kb'), 375);
    assert.equal(parseAccelerateSize('1.5GB'), 1_500_000_000);
    assert.equal(parseAccelerateSize('5 GB'), 5_000_000_000);
    assert.equal(parseAccelerateSize('1MiB'), 1_048_576);
    assert.equal(parseAccelerateSize('1.5gib'), 1_610_612_736);
    assert.equal(parseAccelerateSize('2KiB'), 2048);
    assert.equal(parseAccelerateSize('1_0KB'), 10_000);
    assert.equal(parseAccelerateSize('1e3KB'), 1_000_000);
    assert.equal(parseAccelerateSize('0.0000001GB'), 100);
    assert.equal(parseAccelerateSize(5), 5);
    assert.equal(parseAccelerateSize(0), 0);
  });

  it('refuses what accelerate refuses, with its message', () => {
    throwsInput(() => parseAccelerateSize('5G'), 'max_memory', msg('5G'));
    throwsInput(() => parseAccelerateSize('5TB'), 'max_memory', msg('5TB'));
    throwsInput(() => parseAccelerateSize('5000'), 'max_memory', msg('5000'));
    throwsInput(() => parseAccelerateSize('5B'), 'max_memory', msg('5B'));
    throwsInput(() => parseAccelerateSize('-5GB'), 'max_memory', msg('-5GB'));
    throwsInput(() => parseAccelerateSize('abcGB', 'x'), 'x', msg('abcGB'));
    throwsInput(() => parseAccelerateSize('nanGB'), 'max_memory', msg('nanGB'));
    throwsInput(() => parseAccelerateSize(-5), 'max_memory', msg('-5'));
    throwsInput(() => parseAccelerateSize('infGB'), 'max_memory', 'OverflowError: cannot convert float infinity to integer');
    throwsInput(() => parseAccelerateSize(1.5), 'max_memory', "AttributeError: 'float' object has no attribute 'upper'");
    assert.deepEqual(accelerateSizeOutcome('5G'), { ok: false, pythonType: 'ValueError', message: msg('5G').slice('ValueError: '.length) });
  });

  it('parses numbers the way Python float() does', () => {
    assert.equal(pythonFloat(' 1.5 '), 1.5);
    assert.equal(pythonFloat('1_000'), 1000);
    assert.equal(pythonFloat('.5'), 0.5);
    assert.equal(pythonFloat('5.'), 5);
    assert.equal(pythonFloat('-Infinity'), -Infinity);
    assert.ok(Number.isNaN(pythonFloat('NaN')));
    for (const bad of ['', ' ', '0x10', '1__0', '_1', '1_', 'Infinit', '1e', '--1']) assert.equal(pythonFloat(bad), undefined, bad);
  });

  it('agrees with our parser on upper-case units (property)', () => {
    fc.assert(
      fc.property(fc.nat({ max: 100_000 }), fc.constantFrom('KB', 'MB', 'GB', 'KiB', 'MiB', 'GiB'), (k, unit) => {
        assert.equal(parseAccelerateSize(`${k}${unit}`), parseByteSize(`${k}${unit}`));
      }),
    );
  });
});

describe('parseMaxMemory', () => {
  it('reads the comma form into specs in device order', () => {
    const specs = parseMaxMemory('cpu=30GiB,1=10GB, 0 = 5GiB ,disk=200GiB');
    assert.deepEqual(Object.keys(specs), ['0', '1', 'cpu', 'disk']);
    assert.deepEqual(specs, {
      '0': { kind: 'bytes', bytes: 5 * GiB },
      '1': { kind: 'bytes', bytes: 10 * GB },
      cpu: { kind: 'bytes', bytes: 30 * GiB },
      disk: { kind: 'bytes', bytes: 200 * GiB },
    });
    assert.deepEqual(Object.keys(parseMaxMemory('disk=1GB,cpu=1GB,mps=1GB,2=1GB,10=1GB')), ['2', '10', 'mps', 'cpu', 'disk']);
  });

  it('reads a JSON dict, as text or as an object', () => {
    const expected: BudgetSpecs = { '0': { kind: 'bytes', bytes: 5 * GiB }, '1': { kind: 'bytes', bytes: 1e10 }, cpu: { kind: 'bytes', bytes: 3e10 } };
    assert.deepEqual(parseMaxMemory('{"0": "5GiB", "1": 10000000000, "cpu": "30GB"}'), expected);
    assert.deepEqual(parseMaxMemory({ 0: '5GiB', 1: 10_000_000_000, CPU: '30GB' }), expected);
  });

  it('reads our extensions: percent of total, free minus, total minus', () => {
    assert.deepEqual(parseMaxMemory('0=40%,1=100%,2=0.5 %'), {
      '0': { kind: 'fraction', fraction: 0.4 },
      '1': { kind: 'fraction', fraction: 1 },
      '2': { kind: 'fraction', fraction: 0.005 },
    });
    assert.deepEqual(parseMaxMemory('0=free-2GiB,1=total - 1GB,cpu=free,mps=Total'), {
      '0': { kind: 'free-minus', bytes: 2 * GiB },
      '1': { kind: 'total-minus', bytes: 1e9 },
      mps: { kind: 'total-minus', bytes: 0 },
      cpu: { kind: 'free-minus', bytes: 0 },
    });
  });

  it('reads sizes the accelerate way under compat', () => {
    const compat = { compat: 'accelerate' as const };
    assert.deepEqual(parseMaxMemory('0=5gb,1=5GB,cpu=5000', compat), {
      '0': { kind: 'bytes', bytes: 625_000_000 },
      '1': { kind: 'bytes', bytes: 5e9 },
      cpu: { kind: 'bytes', bytes: 5000 },
    });
    assert.deepEqual(parseMaxMemory('0=free-8gb', compat), { '0': { kind: 'free-minus', bytes: 1e9 } });
    // In JSON, accelerate's int and string are distinct: a bare-number string is refused as accelerate does.
    throwsInput(() => parseMaxMemory('{"0": "5000"}', compat), '--max-memory 0', /ValueError: `size` 5000 is not in a valid format/);
    throwsInput(() => parseMaxMemory('0=5G', compat), '--max-memory 0', /ValueError/);
    throwsInput(() => parseMaxMemory('0=5gb'), '--max-memory 0', /ambiguous/);
  });

  it('refuses every malformed input', () => {
    const W = '--max-memory';
    throwsInput(() => parseMaxMemory(''), W, /empty/);
    throwsInput(() => parseMaxMemory('   '), W, /empty/);
    throwsInput(() => parseMaxMemory('0=1GB,,cpu=2GB'), W, /empty entry/);
    throwsInput(() => parseMaxMemory('0=1GB,'), W, /empty entry/);
    throwsInput(() => parseMaxMemory('0:1GB'), W, /no '='/);
    throwsInput(() => parseMaxMemory('=1GB'), W, /names no device/);
    throwsInput(() => parseMaxMemory('0='), W, /gives no size/);
    throwsInput(() => parseMaxMemory('gpu0=1GB'), W, /unknown device 'gpu0'/);
    throwsInput(() => parseMaxMemory('cuda:0=1GB'), W, /unknown device/);
    throwsInput(() => parseMaxMemory('-1=1GB'), W, /unknown device/);
    throwsInput(() => parseMaxMemory('0=1GB,0=2GB'), W, /device 0 is given twice/);
    throwsInput(() => parseMaxMemory('0=1GB,00=2GB'), W, /device 0 is given twice/);
    throwsInput(() => parseMaxMemory('cpu=1GB,CPU=2GB'), W, /device cpu is given twice/);
    throwsInput(() => parseMaxMemory('0=0%'), `${W} 0`, /outside \(0%, 100%\]/);
    throwsInput(() => parseMaxMemory('0=150%'), `${W} 0`, /outside/);
    throwsInput(() => parseMaxMemory('0=abc%'), `${W} 0`, /not a percentage/);
    throwsInput(() => parseMaxMemory('0=free-'), `${W} 0`, /no size after/);
    throwsInput(() => parseMaxMemory('0=free-2gb'), `${W} 0`, /ambiguous/);
    throwsInput(() => parseMaxMemory('0=5G'), `${W} 0`, /unknown unit/);
    throwsInput(() => parseMaxMemory('{"0": '), W, /not valid JSON/);
    throwsInput(() => parseMaxMemory('{}'), W, /names no device/);
    throwsInput(() => parseMaxMemory({}), W, /names no device/);
    throwsInput(() => parseMaxMemory('[1, 2]'), W, /must be an object/);
    throwsInput(() => parseMaxMemory('{"0": null}'), `${W} 0`, /expected a size/);
    throwsInput(() => parseMaxMemory('{"0": true}'), `${W} 0`, /expected a size/);
    throwsInput(() => parseMaxMemory('{"0": -5}'), `${W} 0`, /not a byte count/);
    throwsInput(() => parseMaxMemory('{"0": 1.5}'), `${W} 0`, /not a byte count/);
    throwsInput(() => parseMaxMemory('{"0": ""}'), `${W} 0`, /gives no size/);
  });

  it('knows device keys', () => {
    assert.equal(parseDeviceKey('0'), 0);
    assert.equal(parseDeviceKey(' 12 '), 12);
    assert.equal(parseDeviceKey(3), 3);
    assert.equal(parseDeviceKey('MPS'), 'mps');
    assert.equal(parseDeviceKey('cuda'), undefined);
    assert.equal(parseDeviceKey(-1), undefined);
    assert.equal(parseDeviceKey(1.5), undefined);
  });
});

describe('resolveBudgets', () => {
  const inventory: DeviceInventory = {
    gpus: [
      { index: 0, totalBytes: 80 * GB, freeBytes: 79 * GB },
      { index: 1, totalBytes: 24 * GiB, freeBytes: 20 * GiB },
    ],
    cpu: { totalBytes: 128 * GiB, availableBytes: 100 * GiB },
  };

  it('turns specs into bytes against the inventory', () => {
    const specs = parseMaxMemory('disk=1TB,cpu=free-4GiB,1=total-2GiB,0=40%');
    const resolved = resolveBudgets(specs, inventory);
    assert.deepEqual(Object.keys(resolved), ['0', '1', 'cpu', 'disk']);
    assert.deepEqual(resolved, {
      '0': 32 * GB,
      '1': 22 * GiB,
      cpu: 96 * GiB,
      disk: 1e12,
    });
    assert.deepEqual(resolveBudgets(parseMaxMemory('0=free,1=33.3%,mps=50%'), inventory), {
      '0': 79 * GB,
      '1': Math.floor(24 * GiB * 0.333),
      mps: 64 * GiB,
    });
    assert.deepEqual(resolveBudgets(parseMaxMemory('0=0'), inventory), { '0': 0 });
  });

  it('refuses a bare number (no unit) with a hint, except 0; --compat accelerate reads it as bytes', () => {
    for (const v of ['0=5', '0=5.5', 'cpu=30', '1=free-2']) {
      assert.throws(
        () => parseMaxMemory(v),
        (e: unknown) =>
          e instanceof InputError &&
          /has no unit: write [\d.]+GiB or [\d.]+GB \([\d.]+B if you mean bytes; --compat accelerate reads a bare number as bytes\)/.test(e.reason),
        v,
      );
    }
    assert.deepEqual(parseMaxMemory('0=0,cpu=1000B'), { '0': { kind: 'bytes', bytes: 0 }, cpu: { kind: 'bytes', bytes: 1000 } });
    assert.deepEqual(parseMaxMemory('0=5', { compat: 'accelerate' }), { '0': { kind: 'bytes', bytes: 5 } });
    // accelerate's own dict form: an integer is bytes there
    assert.deepEqual(parseMaxMemory('{"0": 5000000000}'), { '0': { kind: 'bytes', bytes: 5e9 } });
  });

  it('refuses what cannot be resolved', () => {
    const W = '--max-memory';
    throwsInput(() => resolveBudgets(parseMaxMemory('2=1GB'), inventory), `${W} 2`, /GPU 2 is not on this machine \(GPUs: 0, 1\)/);
    throwsInput(() => resolveBudgets(parseMaxMemory('0=1GB'), { gpus: [] }), `${W} 0`, /GPUs: none/);
    throwsInput(() => resolveBudgets({ gpu: { kind: 'bytes', bytes: 1 } }, inventory), W, /unknown device 'gpu'/);
    throwsInput(() => resolveBudgets({ '00': { kind: 'bytes', bytes: 1 } }, inventory), W, /unknown device '00'/);
    throwsInput(() => resolveBudgets({}, inventory), W, /names no device/);
    throwsInput(
      () => resolveBudgets(parseMaxMemory('1=free-21GiB'), inventory),
      `${W} 1`,
      /GPU 1 has 20\.00 GiB free; leaving 21\.00 GiB of it leaves nothing/,
    );
    throwsInput(() => resolveBudgets(parseMaxMemory('0=total-81GB'), inventory), `${W} 0`, /total; leaving .* leaves nothing/);
    throwsInput(() => resolveBudgets({ '0': { kind: 'fraction', fraction: 1.5 } }, inventory), `${W} 0`, /outside/);
    throwsInput(() => resolveBudgets({ '0': { kind: 'fraction', fraction: 0 } }, inventory), `${W} 0`, /outside/);
    throwsInput(() => resolveBudgets({ '0': { kind: 'bytes', bytes: -1 } }, inventory), `${W} 0`, /not a byte count/);
    throwsInput(() => resolveBudgets({ '0': { kind: 'free-minus', bytes: -1 } }, inventory), `${W} 0`, /not a byte count/);
    throwsInput(() => resolveBudgets(parseMaxMemory('disk=50%'), inventory), `${W} disk`, /needs the memory of disk/);
    throwsInput(() => resolveBudgets(parseMaxMemory('cpu=free-1GB'), { gpus: [] }), `${W} cpu`, /needs the memory of cpu/);
  });
});

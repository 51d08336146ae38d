/**
 * Parity with Hugging Face accelerate: every case in test/fixtures/accelerate-oracle (the real library's answers)
 * must give the same device map (as a dictionary), module sizes, budgets, errors, and warning/log information.
 */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  type AcceleratePlanInput,
  AcceleratePlannerError,
  accelerateModelFacts,
  accelerateModuleSizes,
  planAccelerate,
} from '../src/planner/accelerate/index.js';
import { fromFixture } from './helpers/python-repr.js';

const repoRootDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ORACLE_DIR = path.resolve(repoRootDir, 'test/fixtures/accelerate-oracle');

interface OracleCase {
  id: string;
  name: string;
  input: AcceleratePlanInput;
  expected: Record<string, unknown>;
}

function loadCases(): OracleCase[] {
  return readdirSync(ORACLE_DIR)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => JSON.parse(readFileSync(path.join(ORACLE_DIR, f), 'utf8')) as OracleCase);
}

/** A fixture field, parsed from Python repr when it was written as one. */
function field(c: OracleCase, key: string): unknown {
  return fromFixture(c.expected[key]);
}

/** Dictionary equality regardless of order; keys as strings, values compared as numbers/strings. */
function sortedEntries(dict: unknown): Array<[string, unknown]> {
  assert.ok(dict !== null && typeof dict === 'object' && !Array.isArray(dict), `expected a dict, got ${JSON.stringify(dict)}`);
  return Object.entries(dict as Record<string, unknown>)
    .map(([k, v]): [string, unknown] => [k, v])
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

function assertSameDict(actual: unknown, expected: unknown, what: string): void {
  const a = sortedEntries(actual);
  const e = sortedEntries(expected);
  const aKeys = new Set(a.map(([k]) => k));
  const eKeys = new Set(e.map(([k]) => k));
  const missing = [...eKeys].filter((k) => !aKeys.has(k));
  const extra = [...aKeys].filter((k) => !eKeys.has(k));
  assert.deepEqual({ missing, extra }, { missing: [], extra: [] }, `${what}: keys differ`);
  const eMap = new Map(e);
  for (const [k, v] of a) assert.deepEqual(v, eMap.get(k), `${what}[${JSON.stringify(k)}]`);
}

/** accelerate devices print as `0` or `cpu`; JSON gives 0 or "cpu". */
function deviceOf(text: string): number | string {
  return /^\d+$/.test(text) ? Number(text) : text;
}

/** The information in accelerate's warnings, whatever their wording. */
function warningInfo(text: string): { kind: string; bytes?: number; text?: string } {
  const m = /requires (\S+) bytes of buffer for offloaded layers/.exec(text);
  if (m) return { kind: 'offloaded-buffers-do-not-fit', bytes: Number(m[1]) };
  return { kind: 'unrecognised', text };
}

function infoLogInfo(text: string): { kind: string; devices?: Array<{ device: number | string; bytesRequired: number }>; text?: string } {
  if (!text.includes('no modules could be assigned to the following devices')) return { kind: 'unrecognised', text };
  const devices = [...text.matchAll(/^\s*- (\S+): (\S+) bytes required$/gm)].map((m) => ({
    device: deviceOf(m[1] ?? ''),
    bytesRequired: Number(m[2]),
  }));
  return { kind: 'devices-left-empty', devices };
}

function normaliseGroups(groups: unknown): string[] {
  assert.ok(Array.isArray(groups));
  return (groups as unknown[]).map((g) => JSON.stringify([...(g as string[])].sort())).sort();
}

function normaliseMaxLayer(v: unknown): { size: number; names: string[] } {
  if (Array.isArray(v)) return { size: Number(v[0]), names: [...(v[1] as string[])] };
  const o = v as { size: number; names: string[] };
  return { size: Number(o.size), names: [...o.names] };
}

const cases = loadCases();

describe('python repr helper', () => {
  it('reads the repr forms accelerate results print as', () => {
    assert.deepEqual(fromFixture("{'model.embed_tokens': 0, 'lm_head': 'cpu', '': 1.5}"), {
      'model.embed_tokens': 0,
      lm_head: 'cpu',
      '': 1.5,
    });
    assert.deepEqual(fromFixture("OrderedDict([('a', 0), ('b', 'disk')])"), { a: 0, b: 'disk' });
    assert.deepEqual(fromFixture("OrderedDict({'a': 0})"), { a: 0 });
    assert.deepEqual(fromFixture("defaultdict(<class 'int'>, {'': 12, 'x.w': 0.125})"), { '': 12, 'x.w': 0.125 });
    assert.deepEqual(fromFixture("{0: 7244374144, 'cpu': 3.0e10}"), { '0': 7244374144, cpu: 30000000000 });
    assert.deepEqual(fromFixture("[['lm_head.weight', \"it's\"], (1, None, True)]"), [
      ['lm_head.weight', "it's"],
      [1, null, true],
    ]);
    assert.deepEqual(fromFixture({ a: 1 }), { a: 1 });
    assert.equal(fromFixture('plain text'), 'plain text');
  });
});

describe('accelerate oracle parity', () => {
  it('finds the oracle cases', () => {
    assert.ok(cases.length > 0, `no cases in ${ORACLE_DIR}`);
  });

  for (const c of cases) {
    it(`${c.id} ${c.name}`, () => {
      assertSameDict(accelerateModuleSizes(c.input), field(c, 'module_sizes'), 'module_sizes');

      const facts = accelerateModelFacts(c.input);
      if (c.expected.tied_parameters !== undefined) {
        assert.deepEqual(normaliseGroups(facts.tied_parameters), normaliseGroups(field(c, 'tied_parameters')), 'tied_parameters');
      }
      if (c.expected.initial_max_layer !== undefined) {
        assert.deepEqual(facts.initial_max_layer, normaliseMaxLayer(field(c, 'initial_max_layer')), 'initial_max_layer');
      }

      const error = field(c, 'error') as { type: string; message: string } | undefined;
      if (error !== undefined && error !== null) {
        assert.throws(
          () => planAccelerate(c.input),
          (e: unknown) => {
            assert.ok(e instanceof AcceleratePlannerError, `expected AcceleratePlannerError, got ${String(e)}`);
            assert.equal(e.pythonType, error.type);
            assert.equal(e.pythonMessage, String(error.message));
            return true;
          },
        );
        return;
      }

      const plan = planAccelerate(c.input);
      assertSameDict(plan.device_map.dict, field(c, 'device_map'), 'device_map');
      assert.deepEqual(Object.fromEntries(plan.device_map.entries), plan.device_map.dict, 'device_map entries vs dict');

      const balanced = field(c, 'balanced_max_memory');
      if (balanced === undefined) assert.equal(plan.balanced_max_memory, undefined, 'balanced_max_memory should be absent');
      else assertSameDict(plan.balanced_max_memory, balanced, 'balanced_max_memory');
      assertSameDict(plan.max_memory_used, field(c, 'max_memory_used'), 'max_memory_used');
      if (c.expected.device_totals !== undefined) assertSameDict(plan.device_totals, field(c, 'device_totals'), 'device_totals');

      const expectedWarnings = (field(c, 'warnings') as string[] | undefined) ?? [];
      assert.deepEqual(
        plan.warnings.map((w) => ({ kind: w.kind, bytes: w.bufferBytes })),
        expectedWarnings.map(warningInfo),
        'warnings',
      );
      const expectedLogs = (field(c, 'info_logs') as string[] | undefined) ?? [];
      assert.deepEqual(
        plan.info_logs.map((l) => ({ kind: l.kind, devices: l.devices })),
        expectedLogs.map(infoLogInfo),
        'info_logs',
      );

      const trace = field(c, 'trace');
      if (trace !== undefined) assert.deepEqual(plan.trace ?? [], trace, 'verbose trace');
    });
  }
});

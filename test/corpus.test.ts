import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { readWeightIndex } from '../src/reader/index-file.js';
import { readModel } from '../src/reader/read-model.js';
import { storedBytes } from '../src/reader/reconcile.js';
import type { Skeleton } from '../src/reader/skeleton.js';
import { summarize } from '../src/reader/summary.js';
import { InputError } from '../src/util/errors.js';
import { realModelsDir } from './helpers/paths.js';

/** The corpus README's table: folder → estimated parameter count (the real models' published counts). */
function readmeParams(): Map<string, number> {
  const text = readFileSync(join(realModelsDir, 'README.md'), 'utf8');
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const cells = line.split('|').map((c) => c.trim());
    if (cells.length < 12 || !/^\d+$/.test(cells[1] ?? '')) continue;
    const params = cells[10]!.replace(/,/g, '');
    if (/^\d+$/.test(params)) out.set(cells[2]!, Number(params));
  }
  return out;
}

function indexOf(dir: string): string | undefined {
  for (const f of ['model.safetensors.index.json', 'pytorch_model.bin.index.json']) {
    if (existsSync(join(dir, f))) return join(dir, f);
  }
  return undefined;
}

/** Names a checkpoint must store: persistent tensors, minus tied aliases it may leave out. */
function storedNamesExpected(s: Skeleton, stored: Set<string>): Set<string> {
  const names = new Set<string>();
  for (const t of s.tensors) {
    if (t.kind === 'buffer' && t.persistent === false) continue;
    // Of a tie group, the checkpoint holds at least one name; it may hold several (Falcon's lm_head copy).
    const group = s.tied.find((g) => g.includes(t.name));
    if (group && !stored.has(t.name) && group.some((n) => stored.has(n))) continue;
    names.add(t.name);
  }
  return names;
}

const params = readmeParams();
const dirs = readdirSync(realModelsDir, { withFileTypes: true })
  .filter((d) => d.isDirectory())
  .map((d) => d.name)
  .sort();

describe('real-model corpus', () => {
  it('has the models the README lists', () => {
    assert.ok(dirs.length >= 40, `found ${dirs.length} model folders`);
  });

  for (const name of dirs) {
    const dir = join(realModelsDir, name);
    it(`${name}: skeleton matches its index and published size`, async () => {
      let skeleton: Skeleton;
      try {
        skeleton = await readModel(dir);
      } catch (e) {
        // An architecture without a spec must say so clearly, never crash.
        assert.ok(e instanceof InputError, `unexpected ${String(e)}`);
        assert.equal(e.code, 'UNKNOWN_ARCHITECTURE', e.message);
        return;
      }
      const summary = summarize(skeleton);
      const expectedParams = params.get(name);
      const indexPath = indexOf(dir);
      if (indexPath) {
        const index = readWeightIndex(indexPath);
        // Checkpoints saved from the base model (bloom) lack its prefix; transformers adds it on load.
        const names = new Set(skeleton.tensors.map((t) => t.name));
        const base = skeleton.modules[0]!.name;
        const stored = new Set([...index.weightMap.keys()].map((n) => (names.has(n) || !names.has(`${base}.${n}`) ? n : `${base}.${n}`)));
        if (skeleton.quantization) {
          assert.equal(skeleton.quantization.sizesModelled, false, 'index-only quantized sizes must be reported as not modelled');
          assert.ok(
            skeleton.warnings.some((w) => w.includes('quantized')),
            'quantized checkpoint must be reported',
          );
        } else {
          const expected = storedNamesExpected(skeleton, stored);
          const extra = [...expected].filter((n) => !stored.has(n));
          const missing = [...stored].filter((n) => !expected.has(n));
          assert.deepEqual({ extra: extra.slice(0, 5), missing: missing.slice(0, 5) }, { extra: [], missing: [] });
          if (index.totalSize !== undefined) {
            assert.equal(
              storedBytes(skeleton.tensors, skeleton.source.storedTiedCopies ?? [], skeleton.tied),
              index.totalSize,
              'bytes equal metadata.total_size',
            );
          }
        }
      }
      if (expectedParams !== undefined) assert.equal(summary.parameters, expectedParams, 'parameter count');
      assert.ok(skeleton.blocks && skeleton.blocks.count > 0, 'blocks found');
      assert.ok(skeleton.attention && skeleton.attention.kvElementsPerToken > 0, 'KV facts present');
    });
  }
});

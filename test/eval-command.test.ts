/**
 * `vramfit eval MODEL --compare-to BASE`: the command's KL divergence, top-1 agreement and perplexities against a
 * float64 reference computed here with plain loops from the engine's own logits (loadModel + the harness's greedy run
 * over each chunk), a model against itself (KL 0, 100 % top-1), BASE's rows through the temp file, and the errors.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadModel, type LoadOptions } from '../src/engine/load.js';
import { chunkStream, compareModels, LogitRows } from '../src/engine/eval/compare.js';
import { greedy } from './helpers/engine-harness.js';
import { writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { cli } from './helpers/run-cli.js';

let root = '';
let dir = ''; // tiny Llama 2, float32, vocabulary 128
let other = ''; // tiny Mistral, vocabulary 112

/** 150 ids spread over the vocabulary of 128, deterministic. */
const IDS = Array.from({ length: 150 }, (_, i) => (i * 37 + 11 + ((i * i) % 7)) % 128);
const CTX = 32;

interface EvalJson {
  positions: number;
  chunks: number;
  ctx: number;
  scored_per_chunk: number;
  vocab: number;
  kl_divergence: { mean: number; mean_stderr: number; median: number; p99: number; max: number };
  top1_agreement_percent: number;
  top1_same: number;
  perplexity: { base: number; model: number };
  base_logits: { kept: string; bytes: number };
}

async function evalJson(args: string[]): Promise<EvalJson> {
  const r = await cli(['eval', ...args, '--json']);
  assert.equal(r.code, 0, r.err);
  return JSON.parse(r.out) as EvalJson;
}

/**
 * The logits a model gives at each scored position, llama-perplexity's way: every chunk of CTX tokens from an
 * empty cache (the harness's greedy run resets it), positions CTX/2 … CTX − 2 kept with the token that follows each.
 */
async function scoredRows(model: string, opts: LoadOptions): Promise<{ rows: Float32Array[]; targets: number[] }> {
  const m = await loadModel(model, opts);
  const rows: Float32Array[] = [];
  const targets: number[] = [];
  try {
    for (let c = 0; (c + 1) * CTX <= IDS.length; c++) {
      const chunk = IDS.slice(c * CTX, (c + 1) * CTX);
      const run = await greedy(m, chunk.slice(0, CTX - 1), 0);
      for (let j = Math.floor(CTX / 2); j <= CTX - 2; j++) {
        rows.push(run.prompt[j]!);
        targets.push(chunk[j + 1]!);
      }
    }
  } finally {
    m.dispose();
  }
  return { rows, targets };
}

/** Plain float64 loops: log-softmax of a row. */
function logSoftmax(row: Float32Array): number[] {
  let max = -Infinity;
  for (const x of row) max = Math.max(max, x);
  let s = 0;
  for (const x of row) s += Math.exp(x - max);
  const lse = max + Math.log(s);
  return Array.from(row, (x) => x - lse);
}

function top(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
  return best;
}

/** Linear interpolation between closest ranks. */
function quantile(values: number[], q: number): number {
  const s = [...values].sort((a, b) => a - b);
  const h = (s.length - 1) * q;
  const lo = Math.floor(h);
  return s[lo]! + (h - lo) * (s[Math.min(lo + 1, s.length - 1)]! - s[lo]!);
}

function reference(base: { rows: Float32Array[]; targets: number[] }, model: { rows: Float32Array[] }) {
  const kls: number[] = [];
  let same = 0;
  let nllB = 0;
  let nllM = 0;
  base.rows.forEach((b, i) => {
    const m = model.rows[i]!;
    const lp = logSoftmax(b);
    const lq = logSoftmax(m);
    let kl = 0;
    for (let v = 0; v < lp.length; v++) kl += Math.exp(lp[v]!) * (lp[v]! - lq[v]!);
    kls.push(kl);
    if (top(b) === top(m)) same++;
    nllB -= lp[base.targets[i]!]!;
    nllM -= lq[base.targets[i]!]!;
  });
  const n = kls.length;
  return {
    n,
    mean: kls.reduce((a, b) => a + b, 0) / n,
    median: quantile(kls, 0.5),
    p99: quantile(kls, 0.99),
    max: Math.max(...kls),
    top1: (100 * same) / n,
    pplBase: Math.exp(nllB / n),
    pplModel: Math.exp(nllM / n),
  };
}

/** The command and the reference see the same float32 logits, so only float64 summation order could tell them apart. */
function close(got: number, want: number, what: string, rel = 1e-6, abs = 1e-12): void {
  assert.ok(Math.abs(got - want) <= abs + rel * Math.abs(want), `${what}: got ${got}, want ${want}`);
}

before(() => {
  root = tempDir('vramfit-eval-');
  dir = join(root, 'llama2');
  writeTinyFamilyCheckpoint(dir, 'llama2');
  other = join(root, 'mistral');
  writeTinyFamilyCheckpoint(other, 'mistral');
});
after(() => cleanup(root));

describe('vramfit eval', () => {
  const ids = IDS.join(',');

  for (const [flag, value] of [
    ['--quantize', 'q4_0'],
    ['--dtype', 'float16'],
  ] as const) {
    it(`${flag} ${value} against float32: KL, top-1 and perplexities equal a float64 reference from the engine's logits`, async () => {
      const got = await evalJson([dir, flag, value, '--compare-to', dir, '--input-ids', ids, '--ctx', String(CTX)]);
      const opts: LoadOptions = { ctx: CTX };
      const base = await scoredRows(dir, opts);
      const model = await scoredRows(dir, { ...opts, ...(flag === '--quantize' ? { quantize: value } : { dtype: value }) });
      const ref = reference(base, model);
      const chunks = Math.floor(IDS.length / CTX);
      assert.equal(got.chunks, chunks);
      assert.equal(got.scored_per_chunk, CTX - 1 - CTX / 2);
      assert.equal(got.positions, ref.n);
      assert.equal(got.positions, chunks * (CTX - 1 - CTX / 2));
      assert.equal(got.vocab, 128);
      assert.ok(ref.mean > 0, 'the model really differs from its base');
      close(got.kl_divergence.mean, ref.mean, 'mean KL');
      close(got.kl_divergence.median, ref.median, 'median KL');
      close(got.kl_divergence.p99, ref.p99, 'p99 KL');
      close(got.kl_divergence.max, ref.max, 'max KL');
      close(got.top1_agreement_percent, ref.top1, 'top-1 agreement', 0, 1e-9);
      close(got.perplexity.base, ref.pplBase, 'BASE perplexity');
      close(got.perplexity.model, ref.pplModel, 'MODEL perplexity');
      assert.ok(got.kl_divergence.median <= got.kl_divergence.p99 && got.kl_divergence.p99 <= got.kl_divergence.max);
      assert.equal(got.base_logits.kept, 'memory');
      assert.equal(got.base_logits.bytes, got.positions * 128 * 4);
    });
  }

  it('a model compared with itself: KL 0, 100 % top-1, equal perplexities; the table says so', async () => {
    const got = await evalJson([dir, '--compare-to', dir, '--input-ids', ids, '--ctx', String(CTX), '--chunks', '2']);
    assert.equal(got.chunks, 2);
    assert.ok(Math.abs(got.kl_divergence.mean) < 1e-9, `mean KL ${got.kl_divergence.mean}`);
    assert.ok(Math.abs(got.kl_divergence.max) < 1e-9, `max KL ${got.kl_divergence.max}`);
    assert.equal(got.top1_agreement_percent, 100);
    assert.equal(got.top1_same, got.positions);
    assert.equal(got.perplexity.model, got.perplexity.base);
    const table = await cli(['eval', dir, '--compare-to', dir, '--input-ids', ids, '--ctx', String(CTX)]);
    assert.equal(table.code, 0, table.err);
    assert.match(table.out, /^KL divergence\s+mean 0 ± 0 · median 0 · p99 0 · max 0$/m);
    assert.match(table.out, /^top-1 agreement\s+100\.00 % \(\d+ of \d+ positions\)$/m);
    assert.match(table.out, /^perplexity\s+[\d.]+\s+[\d.]+$/m);
  });

  it("BASE's rows kept in a temp file past the memory bound give the same figures", async () => {
    const chunks = chunkStream(IDS, CTX);
    const run = (memoryLimitBytes: number) =>
      compareModels({
        loadBase: () => loadModel(dir, { ctx: CTX }),
        loadModel: () => loadModel(dir, { ctx: CTX, quantize: 'q4_0' }),
        baseName: dir,
        modelName: dir,
        chunks,
        memoryLimitBytes,
      });
    const inMemory = await run(Number.MAX_SAFE_INTEGER);
    const onDisk = await run(0);
    assert.equal(inMemory.baseLogits, 'memory');
    assert.equal(onDisk.baseLogits, 'file');
    assert.deepEqual(onDisk.kl, inMemory.kl);
    assert.deepEqual(onDisk.top1, inMemory.top1);
    assert.deepEqual(onDisk.perplexity, inMemory.perplexity);
  });

  it('the loaded models are checked too: a vocabulary mismatch past the headers is an InputError naming both sizes', async () => {
    let modelLoaded = false;
    await assert.rejects(
      compareModels({
        loadBase: () => loadModel(dir, { ctx: CTX }),
        loadModel: async () => {
          modelLoaded = true;
          return loadModel(other, { ctx: CTX });
        },
        baseName: 'B',
        modelName: 'M',
        chunks: chunkStream(
          IDS.map((id) => id % 112),
          CTX,
          { maxChunks: 1 },
        ),
      }),
      (e: Error & { exitCode?: number }) => e.exitCode === 2 && /^--compare-to: MODEL M has a vocabulary of 112 tokens and BASE B one of 128;/.test(e.message),
    );
    assert.ok(modelLoaded, 'BASE ran and was disposed before MODEL loaded');
  });

  it('LogitRows: rows read back as written from the temp file, which dispose removes', () => {
    const store = new LogitRows(5, 3, 0);
    const file = store.file;
    assert.ok(file !== undefined && existsSync(file), 'a temp file past the bound');
    const rows = [0, 1, 2].map((r) => Float32Array.from({ length: 5 }, (_, i) => r * 10 + i + 0.25));
    for (const r of rows) store.push(r);
    for (const [i, r] of rows.entries()) assert.deepEqual(Array.from(store.row(i)), Array.from(r));
    store.dispose();
    assert.ok(!existsSync(file), 'the temp file is removed');
    const small = new LogitRows(5, 3);
    assert.equal(small.file, undefined, 'in memory under the bound');
    small.dispose();
  });

  it('chunks: whole chunks only, BOS in front of each when the tokenizer adds one', () => {
    const c = chunkStream([5, 6, 7, 8, 9, 10, 11, 12, 13], 4, { bos: 1 });
    assert.deepEqual(c, [
      [1, 6, 7, 8],
      [1, 10, 11, 12],
    ]);
    assert.deepEqual(chunkStream([5, 6, 7, 8, 9, 10, 11, 12], 4, { maxChunks: 1 }), [[5, 6, 7, 8]]);
  });

  describe('errors: one line naming the flag, exit 2', () => {
    const cases: [string, string[], RegExp][] = [
      [
        'vocabulary mismatch',
        ['OTHER', '--compare-to', 'DIR', '--input-ids', '1,2,3,4,5,6,7,8'],
        /^vramfit: --compare-to: MODEL .* 112 tokens and BASE .* 128; /,
      ],
      ['missing --compare-to', ['DIR', '--input-ids', '1,2,3,4,5,6,7,8'], /^vramfit: --compare-to: give the reference model/],
      ['--ctx 0', ['DIR', '--compare-to', 'DIR', '--ctx', '0', '--input-ids', '1,2,3,4,5,6,7,8'], /^vramfit: --ctx: expected an integer ≥ 4, got "0"/],
      ['--ctx abc', ['DIR', '--compare-to', 'DIR', '--ctx', 'abc', '--input-ids', '1,2,3,4,5,6,7,8'], /^vramfit: --ctx: expected an integer ≥ 4, got "abc"/],
      ['--ctx 3', ['DIR', '--compare-to', 'DIR', '--ctx', '3', '--input-ids', '1,2,3,4,5,6,7,8'], /^vramfit: --ctx: expected an integer ≥ 4/],
      [
        '--ctx past the stream',
        ['DIR', '--compare-to', 'DIR', '--ctx', '16', '--input-ids', '1,2,3,4,5,6,7,8'],
        /^vramfit: --ctx: 16 tokens per chunk, but the stream is only 8 tokens/,
      ],
      ['--chunks 0', ['DIR', '--compare-to', 'DIR', '--chunks', '0', '--input-ids', '1,2,3,4,5,6,7,8'], /^vramfit: --chunks: expected an integer ≥ 1/],
      [
        'two streams',
        ['DIR', '--compare-to', 'DIR', '--text', 'hi', '--input-ids', '1,2,3,4'],
        /^vramfit: --text: give at most one of --text, --file or --input-ids/,
      ],
      ['bad ids', ['DIR', '--compare-to', 'DIR', '--input-ids', '1,x'], /^vramfit: --input-ids: expected comma-separated token ids/],
      [
        'an id past the vocabulary',
        ['DIR', '--compare-to', 'DIR', '--input-ids', '1,2,3,400,5,6,7,8'],
        /^vramfit: --input-ids: token id 400 is outside the vocabulary of 128 tokens/,
      ],
      ['too short a stream', ['DIR', '--compare-to', 'DIR', '--input-ids', '1,2,3'], /^vramfit: --input-ids: the stream is 3 tokens; eval needs at least 4/],
      ['text without a tokenizer', ['DIR', '--compare-to', 'DIR', '--text', 'hello there'], /^vramfit: --text: BASE .* has no tokenizer/],
      ['missing --file', ['DIR', '--compare-to', 'DIR', '--file', '/nonexistent/eval.txt'], /^vramfit: --file: \/nonexistent\/eval.txt is not a readable file/],
      ['bad --quantize', ['DIR', '--compare-to', 'DIR', '--quantize', 'q3', '--input-ids', '1,2,3,4'], /^vramfit: --quantize: /],
    ];
    for (const [name, args, message] of cases) {
      it(name, async () => {
        const r = await cli(['eval', ...args.map((a) => (a === 'DIR' ? dir : a === 'OTHER' ? other : a))]);
        assert.equal(r.code, 2, `${name}: exit ${r.code}: ${r.err}`);
        assert.match(r.err, message);
        assert.equal(r.err.trimEnd().split('\n').length, 1, `one line: ${r.err}`);
        assert.equal(r.out, '');
      });
    }
  });
});

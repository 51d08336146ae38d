/**
 * Several sequences in one forward pass (the server's continuous batching) give each sequence what it
 * gets alone: the unified KV cache's mask keeps every token to its own slot's rows, positions restart
 * per slot, and only the rows asked for reach the head. Checked for every architecture the engine runs,
 * split over two devices, with prompts read in chunks between other sequences' decode steps.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ContinuousBatcher } from '../src/engine/batcher.js';
import { loadModel } from '../src/engine/load.js';
import type { LoadedModel } from '../src/engine/model.js';
import { argmax } from '../src/engine/text/sampling.js';
import { writeTinyBaichuanCheckpoint } from './helpers/tiny-baichuan.js';
import { writeTinyChatglmCheckpoint } from './helpers/tiny-chatglm.js';
import { writeTinyGpt2Checkpoint } from './helpers/tiny-gpt2.js';
import { writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { writeTinyMoeCheckpoint } from './helpers/tiny-moe.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { vulkanSkip } from './helpers/vulkan.js';

const root = tempDir('vramfit-batching-');
after(() => cleanup(root));

const MODELS: [string, () => string][] = [
  ['llama3 (float16 cache, flash attention)', () => writeTinyFamilyCheckpoint(join(root, 'llama3'), 'llama3', { dtype: 'float16', seed: 3 }).dir],
  ['qwen3 (float32)', () => writeTinyFamilyCheckpoint(join(root, 'qwen3'), 'qwen3', { seed: 3 }).dir],
  ['mixtral', () => writeTinyMoeCheckpoint(join(root, 'mixtral'), 'mixtral', { seed: 3 }).dir],
  ['gpt2 (learned positions)', () => writeTinyGpt2Checkpoint(join(root, 'gpt2'), 'gpt2', { seed: 3 }).dir],
  ['chatglm2', () => writeTinyChatglmCheckpoint(join(root, 'chatglm2'), 'chatglm2', { seed: 3 }).dir],
  ['baichuan2-13b (ALiBi)', () => writeTinyBaichuanCheckpoint(join(root, 'baichuan'), 'baichuan2-13b', { seed: 3 }).dir],
];

const PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], Array.from({ length: 21 }, (_, i) => (i * 5 + 2) % 60), [11]];
const NEW_TOKENS = 8;

/** Greedy tokens and every step's logits of one prompt alone. */
function alone(m: LoadedModel, prompt: number[]): { ids: number[]; logits: Float32Array[] } {
  m.reset();
  let l = m.forward(prompt).at(-1)!;
  const ids: number[] = [];
  const logits: Float32Array[] = [];
  for (let i = 0; i < NEW_TOKENS; i++) {
    logits.push(l);
    ids.push(argmax(l));
    l = m.forward([ids.at(-1)!])[0]!;
  }
  return { ids, logits };
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
  return d;
}

describe('engine: sequences batched together equal each one alone', () => {
  const cases: [string, () => string, string, string | false][] = [
    ...MODELS.map(([name, write]) => [name, write, 'virtual:2', false] as [string, () => string, string, false]),
    // The same over two Vulkan GPUs (lavapipe in CI): each slot's cache rows on its layer's GPU.
    ['llama3 over two Vulkan GPUs', MODELS[0]![1], 'gpu:0,1', vulkanSkip(2)],
  ];
  for (const [name, write, devices, skip] of cases) {
    it(name, { skip }, async () => {
      const m = await loadModel(write(), { devices, ctx: 48, ubatch: 8, parallel: 4, threads: 1 });
      try {
        const expected = PROMPTS.map((p) => alone(m, p));
        m.reset();
        // Through the batcher: prompts read in chunks of the 8-token micro-batch while others decode.
        const b = new ContinuousBatcher(m);
        const got: number[][] = PROMPTS.map(() => []);
        PROMPTS.forEach((p, i) => b.submit({ id: i, promptIds: p, maxTokens: NEW_TOKENS, sampling: { greedy: true }, eosTokenIds: [] }));
        let steps = 0;
        while (b.hasWork()) {
          for (const e of b.step()) if (e.kind === 'token') got[e.id]!.push(e.token);
          steps++;
        }
        assert.deepEqual(
          got,
          expected.map((e) => e.ids),
        );
        assert.ok(steps < PROMPTS.length * NEW_TOKENS, `${steps} steps for ${PROMPTS.length} sequences: they ran together`);

        // Logits of one batched decode step against each sequence's own.
        m.reset();
        const first = m.forwardBatch(PROMPTS.slice(0, 2).map((p, slot) => ({ slot, tokens: p, logits: 'last' as const })));
        const rest = m.forwardBatch([
          { slot: 2, tokens: PROMPTS[2]!.slice(0, 7), logits: 'last' },
          { slot: 3, tokens: PROMPTS[3]!, logits: 'last' },
        ]);
        m.forwardBatch([{ slot: 2, tokens: PROMPTS[2]!.slice(7, 15), logits: 'last' }]);
        const tail = m.forwardBatch([{ slot: 2, tokens: PROMPTS[2]!.slice(15), logits: 'last' }]);
        const lasts = [first[0]![0]!, first[1]![0]!, tail[0]![0]!, rest[1]![0]!];
        lasts.forEach((l, i) => assert.ok(maxDiff(l, expected[i]!.logits[0]!) < 1e-4, `prompt ${i}: prefill logits`));
        const step = m.forwardBatch(lasts.map((l, slot) => ({ slot, tokens: [argmax(l)], logits: 'last' as const })));
        step.forEach((rows, i) => assert.ok(maxDiff(rows[0]!, expected[i]!.logits[1]!) < 1e-4, `prompt ${i}: decode logits`));
      } finally {
        m.dispose();
      }
    });
  }

  it('refuses a batch past the micro-batch, a slot twice, or a slot past its context, before any native call', async () => {
    const m = await loadModel(writeTinyFamilyCheckpoint(join(root, 'errors'), 'llama2', { seed: 1 }).dir, {
      devices: 'virtual:1',
      ctx: 16,
      ubatch: 8,
      parallel: 2,
      threads: 1,
    });
    try {
      assert.throws(() => m.forwardBatch([{ slot: 0, tokens: Array.from({ length: 9 }, () => 1), logits: 'last' }]), /exceed the micro-batch of 8/);
      assert.throws(
        () =>
          m.forwardBatch([
            { slot: 1, tokens: [1], logits: 'last' },
            { slot: 1, tokens: [2], logits: 'last' },
          ]),
        /slot 1 appears twice/,
      );
      assert.throws(() => m.forwardBatch([{ slot: 2, tokens: [1], logits: 'last' }]), /slot 2 is not one of the 2 slots/);
      m.forwardBatch([{ slot: 1, tokens: [1, 2, 3, 4, 5, 6, 7, 8], logits: 'last' }]);
      m.forwardBatch([{ slot: 1, tokens: [1, 2, 3, 4, 5, 6, 7, 8], logits: 'last' }]);
      assert.throws(() => m.forwardBatch([{ slot: 1, tokens: [1], logits: 'last' }]), /17 tokens do not fit the 16-token context/);
      assert.equal(m.positionOf(0), 0, 'the other slot is untouched');
      const b = new ContinuousBatcher(m);
      assert.throws(() => b.submit({ id: 1, promptIds: Array.from({ length: 16 }, () => 1), maxTokens: 1, sampling: {}, eosTokenIds: [] }), /leave no room/);
    } finally {
      m.dispose();
    }
  });
});

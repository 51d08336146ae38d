import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { main } from '../src/cli/main.js';
import { loadModel, type LoadOptions } from '../src/engine/load.js';
import { chatglmCosSin, chatglmTheta, parseChatglmConfig } from './helpers/reference-chatglm.js';
import {
  createChatglmReference,
  TINY_CHATGLM_NAMES,
  writeTinyChatglmCheckpoint,
  type TinyChatglmCheckpoint,
  type TinyChatglmName,
} from './helpers/tiny-chatglm.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import {
  assertAgreesWithReference,
  assertSplitsAgree,
  assertUnderCapsAsPredicted,
  greedy,
  maxAbsDiff,
  NEW_TOKENS,
  PROMPT,
  SPLIT_OPTIONS,
  type GreedyRun as Run,
} from './helpers/engine-harness.js';

const root = tempDir('vramfit-engine-chatglm-');
after(() => cleanup(root));

const BASE: LoadOptions = SPLIT_OPTIONS;

const written = new Map<string, TinyChatglmCheckpoint>();
function checkpoint(name: TinyChatglmName): TinyChatglmCheckpoint {
  let ck = written.get(name);
  if (!ck) {
    ck = writeTinyChatglmCheckpoint(join(root, name), name, { seed: 11 });
    written.set(name, ck);
  }
  return ck;
}

describe('engine, ChatGLM: one device against the plain-TypeScript reference', () => {
  for (const name of TINY_CHATGLM_NAMES) {
    it(`${name}: prompt and step logits within 1e-4, same greedy tokens`, async () => {
      const ck = checkpoint(name);
      const model = await loadModel(ck.dir, { ...BASE, devices: 'virtual:1' });
      try {
        const got = await greedy(model);
        const { promptRef, stepRef } = assertAgreesWithReference(got, createChatglmReference(ck), name);
        const argmax = (r: ArrayLike<number>): number => Array.from(r).reduce((best, v, i, all) => (v > all[best]! ? i : best), 0);
        assert.deepEqual(got.ids, [promptRef.at(-1)!, ...stepRef].map(argmax), `${name}: the reference picks the same greedy tokens`);
      } finally {
        model.dispose();
      }
    });
  }

  it('the rotary conventions are the ones the tests can tell apart', () => {
    // rope_ratio as a base multiplier (ChatGLM3-32K) and as a position divisor (ChatGLM2-32K) rotate differently,
    // and both differ from no ratio: a reference that confused them would not match the engine above.
    const c = parseChatglmConfig(checkpoint('chatglm3-32k').config);
    const base = chatglmCosSin(c, chatglmTheta(c), 7);
    const positions = chatglmCosSin({ ...c, ropeRatioStyle: 'positions' }, chatglmTheta({ ...c, ropeRatioStyle: 'positions' }), 7);
    const plain = chatglmCosSin({ ...c, ropeRatio: 1 }, chatglmTheta({ ...c, ropeRatio: 1 }), 7);
    assert.equal(base.cos.length, c.headDim / 4, 'one frequency per rotated pair: kv_channels / 4');
    assert.ok(Math.abs(base.sin[1]! - positions.sin[1]!) > 1e-3, 'the two rope_ratio styles differ');
    assert.ok(Math.abs(base.sin[1]! - plain.sin[1]!) > 1e-3, 'rope_ratio changes the rotation');
    assert.equal(base.sin[0], plain.sin[0], 'the first pair rotates by the position itself whatever the base');
  });

  it('the checkpoint stores the persistent rotary inv_freq buffer the engine never needs', async () => {
    const ck = checkpoint('chatglm2');
    assert.ok(ck.names.includes('transformer.rotary_pos_emb.inv_freq'), 'inv_freq is written');
    const model = await loadModel(ck.dir, { ...BASE, devices: 'virtual:1' });
    try {
      assert.ok(model.plan.devices[0]!.modules.includes('transformer.rotary_pos_emb'), 'the plan places the rotary module');
    } finally {
      model.dispose();
    }
  });
});

describe('engine, ChatGLM: half-precision checkpoints', () => {
  for (const dtype of ['float16', 'bfloat16'] as const) {
    it(`${dtype} weights run split over two devices and stay close to the reference`, async () => {
      const ck = writeTinyChatglmCheckpoint(join(root, `chatglm2-${dtype}`), 'chatglm2', { seed: 11, dtype });
      const model = await loadModel(ck.dir, { ...BASE, devices: 'virtual:2' });
      try {
        const d = maxAbsDiff(model.forward(PROMPT, true), createChatglmReference(ck).forward(PROMPT, 0));
        // ggml rounds activations to the weights' precision (and keeps the rotary table in float32, where the
        // remote code rounds it to the model's dtype): a looser bound than float32's.
        assert.ok(d < 0.05, `${dtype}: differs from the reference by ${d}`);
      } finally {
        model.dispose();
      }
    });
  }
});

describe('engine, ChatGLM: the same model split over 1, 2 and 4 virtual devices', () => {
  for (const name of ['chatglm2', 'chatglm3-32k', 'glm-mha'] as const) {
    it(`${name}: identical greedy tokens, logits within 1e-5, every device under its cap`, async () => {
      await assertSplitsAgree(checkpoint(name).dir, BASE, {
        assertSplit: (model, devices) =>
          assert.ok(model.plan.devices.filter((d) => d.modules.some((m) => m.includes('.layers.'))).length > 1, `${devices}: blocks on more than one device`),
      });
    });
  }
});

describe('engine, ChatGLM2 across two devices capped 5 : 10', () => {
  /**
   * Caps X and 2X from the model's own single-device need P, with X = 0.4·P: together they hold it (3X = 1.2P),
   * neither could alone (2X = 0.8P), and the blocks divide between them. Each layer's KV cache stays on its
   * layer's device; nothing concatenates caches across devices.
   */
  async function scenario(): Promise<{ ck: TinyChatglmCheckpoint; X: number; single: Run; need: number }> {
    const ck = checkpoint('chatglm2');
    const one = await loadModel(ck.dir, { ...BASE, devices: 'virtual:1' });
    try {
      const need = one.report()[0]!.predicted;
      return { ck, X: Math.round(0.4 * need), single: await greedy(one), need };
    } finally {
      one.dispose();
    }
  }

  it('prefill and generation run, tokens equal the single-device run, each device under its cap and within 2 % of the plan', async () => {
    const { ck, X, single, need } = await scenario();
    assert.ok(2 * X < need, 'neither device could hold the model alone');
    const model = await loadModel(ck.dir, { ...BASE, devices: 'virtual:2', maxMemory: `0=${X}B,1=${2 * X}B` });
    try {
      const blocks = model.plan.devices.map((d) => d.modules.filter((m) => m.startsWith('transformer.encoder.layers.')).length);
      assert.ok(blocks[0]! > 0 && blocks[1]! > blocks[0]!, `the blocks divide between the devices, more on the larger (${blocks.join(' / ')})`);
      assert.equal(blocks[0]! + blocks[1]!, 6, 'every block is placed on a device');
      assert.ok(model.plan.devices[0]!.modules.includes('transformer.embedding.word_embeddings'), 'the embedding is on device 0');
      assert.ok(model.plan.devices[1]!.modules.includes('transformer.output_layer'), 'the head is on device 1');
      const run = await greedy(model);
      assert.deepEqual(run.ids, single.ids, 'the same greedy tokens as one uncapped device');
      assert.ok(maxAbsDiff(run.prompt, single.prompt) <= 1e-5, 'prompt logits as on one device');
      assert.ok(maxAbsDiff(run.steps, single.steps) <= 1e-5, 'step logits as on one device');
      const report = model.report();
      assert.deepEqual(
        report.map((d) => d.cap),
        [X, 2 * X],
        'caps in a 5 : 10 ratio',
      );
      assertUnderCapsAsPredicted(report);
      for (const d of report) assert.ok((d.breakdown['kv'] ?? 0) > 0, `device ${d.id} holds its own layers' KV cache`);
      assert.ok(report[1]!.bytesIn > 0, 'hidden states crossed to device 1');
    } finally {
      model.dispose();
    }
  });

  it('through the CLI: vramfit run … --devices virtual:2 --max-memory 0=X,1=2X --json', async () => {
    const { ck, X, single } = await scenario();
    let out = '';
    let err = '';
    const code = await main(
      [
        'run',
        ck.dir,
        '--input-ids',
        PROMPT.join(','),
        '--max-new-tokens',
        String(NEW_TOKENS),
        '--devices',
        'virtual:2',
        '--max-memory',
        `0=${X}B,1=${2 * X}B`,
        '--json',
        '--ctx',
        '64',
        '--ubatch',
        '4',
        '--kv-dtype',
        'float32',
        '--threads',
        '1',
      ],
      { stdout: (s) => (out += s), stderr: (s) => (err += s) },
    );
    assert.equal(code, 0, err);
    const j = JSON.parse(out) as {
      prompt_ids: number[];
      generated_ids: number[];
      devices: { id: string; cap: number; predicted_peak: number; measured_peak: number }[];
    };
    assert.deepEqual(j.prompt_ids, PROMPT, 'the prompt ids echoed');
    assert.deepEqual(j.generated_ids, single.ids, 'the CLI generates the single-device tokens');
    assert.deepEqual(
      j.devices.map((d) => d.cap),
      [X, 2 * X],
      'the CLI opened both capped devices',
    );
    for (const d of j.devices) {
      assert.ok(d.measured_peak > 0 && d.measured_peak <= d.cap, `device ${d.id}: measured ${d.measured_peak} within its cap ${d.cap}`);
      assert.ok(Math.abs(d.measured_peak - d.predicted_peak) <= 0.02 * d.predicted_peak, `device ${d.id}: within 2 % of the prediction`);
    }
  });

  it('a context past seq_length is refused, as the remote code has no rotary table there', async () => {
    const ck = checkpoint('glm-mha');
    await assert.rejects(loadModel(ck.dir, { ...BASE, ctx: 257 }), /257 tokens exceed the 256 positions/);
  });
});

/**
 * The pipeline that quantizes at load: never more than `width` runs in flight, a failed run fails the load
 * (at the next start or at drain), and after `abandon` no run is still going, so a buffer may be freed.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { QuantizePipeline } from '../src/engine/quantize-pipeline.js';

const tick = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('QuantizePipeline', () => {
  it('keeps at most width runs in flight and finishes all of them', async () => {
    for (const width of [1, 2, 3, 8]) {
      const pipe = new QuantizePipeline(width);
      let inFlight = 0;
      let most = 0;
      const done: number[] = [];
      for (let i = 0; i < 20; i++) {
        await pipe.start(async () => {
          most = Math.max(most, ++inFlight);
          await tick((i * 7) % 5);
          inFlight--;
          done.push(i);
        });
      }
      await pipe.drain();
      assert.equal(most, Math.min(width, 20));
      assert.deepEqual(
        [...done].sort((a, b) => a - b),
        [...Array(20).keys()],
      );
    }
  });

  it('a failed run fails the next start and drain with its own error; later runs are not started', async () => {
    const pipe = new QuantizePipeline(2);
    let started = 0;
    const boom = new Error('run 1 failed');
    await assert.rejects(async () => {
      for (let i = 0; i < 10; i++) {
        await pipe.start(async () => {
          started++;
          await tick(1);
          if (i === 1) throw boom;
        });
      }
      await pipe.drain();
    }, boom);
    assert.ok(started < 10, `${started} runs started after the failure`);
    await assert.rejects(pipe.drain(), boom);
  });

  it('abandon waits for the runs in flight and tells them not to write', async () => {
    const pipe = new QuantizePipeline(4);
    const wrote: number[] = [];
    for (let i = 0; i < 4; i++) {
      await pipe.start(async () => {
        await tick(5);
        if (!pipe.abandoned) wrote.push(i);
      });
    }
    await pipe.abandon();
    assert.deepEqual(wrote, []);
    let running = false;
    await pipe.start(async () => {
      running = true;
    });
    assert.ok(running);
  });

  it('follow runs after its runs without holding a slot, and not at all after a failure', async () => {
    const pipe = new QuantizePipeline(1);
    const order: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    pipe.follow([gate], () => order.push('set'));
    // Were the follower holding the one slot, this start would wait for ever.
    await pipe.start(async () => {
      order.push('run');
    });
    release();
    await pipe.drain();
    assert.deepEqual(order, ['run', 'set']);

    const failing = new QuantizePipeline(2);
    const boom = new Error('quantize failed');
    const r1 = await failing.start(async () => {
      await tick(2);
      throw boom;
    });
    let set = false;
    failing.follow([r1.settled], () => (set = true));
    await assert.rejects(failing.drain(), boom);
    assert.equal(set, false);
  });

  it('refuses a width below one', () => {
    assert.throws(() => new QuantizePipeline(0), /at least one run/);
    assert.throws(() => new QuantizePipeline(1.5), /at least one run/);
  });
});

/**
 * The server's engine thread: loads the model as planned, then steps the continuous batcher while
 * any sequence is running, taking submissions and cancellations between steps. The HTTP side never
 * waits on a step, so it keeps answering (health, streams) while one computes.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ContinuousBatcher } from '../engine/batcher.js';
import { liveResources } from '../engine/device.js';
import { loadGgml } from '../engine/ggml/binding.js';
import { loadModel } from '../engine/load.js';
import type { LoadedModel } from '../engine/model.js';
import { isVramfitError } from '../util/errors.js';
import type { EngineStats, FromWorker, ToWorker, WorkerInit } from './protocol.js';

const port = parentPort!;
const init = workerData as WorkerInit;
const post = (m: FromWorker): void => port.postMessage(m);

function statsOf(model: LoadedModel, batcher: ContinuousBatcher): EngineStats {
  return {
    devices: model.devices.map((d) => ({
      id: d.id,
      name: d.name,
      cap: d.allocator.cap >= Number.MAX_SAFE_INTEGER ? null : d.allocator.cap,
      used: d.allocator.used,
      peak: d.allocator.peak,
    })),
    busySlots: batcher.busySlots,
    cachedGraphs: model.cachedGraphs,
    native: { buffers: liveResources.buffers, backends: liveResources.backends, graphAllocators: liveResources.graphAllocators },
  };
}

async function main(): Promise<void> {
  let model: LoadedModel;
  try {
    model = await loadModel(init.model, init.load);
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    post({
      type: 'load-error',
      message: err.message,
      code: isVramfitError(e) ? e.code : 'INTERNAL',
      exitCode: isVramfitError(e) ? e.exitCode : 1,
      ...(err.stack ? { stack: err.stack } : {}),
    });
    releaseAndClose();
    return;
  }
  const batcher = new ContinuousBatcher(model);
  const s = model.skeleton;
  const dtypes = Object.entries(s.tensors.reduce<Record<string, number>>((acc, t) => ((acc[t.dtype] = (acc[t.dtype] ?? 0) + 1), acc), {})).sort(
    (a, b) => b[1] - a[1],
  );
  post({
    type: 'ready',
    info: {
      family: s.family,
      modelDir: model.modelDir,
      ...(model.ggufFile !== undefined ? { ggufFile: model.ggufFile } : {}),
      ctx: model.ctx,
      slots: model.slots,
      ubatch: model.ubatch,
      vocab: model.hyper.vocab,
      parameters: s.tensors.reduce((sum, t) => sum + t.shape.reduce((a, b) => a * b, 1), 0),
      weightBytes: model.plan.devices.reduce((sum, d) => sum + d.weights, 0),
      format: s.source.kind,
      dtype: dtypes[0]?.[0] ?? 'unknown',
      plan: model.plan,
      stats: statsOf(model, batcher),
    },
  });

  let pumping = false;
  let closing = false;
  const pump = async (): Promise<void> => {
    if (pumping) return;
    pumping = true;
    try {
      while (batcher.hasWork() && !closing) {
        const events = batcher.step();
        post({ type: 'events', events, stats: statsOf(model, batcher) });
        // Submissions and cancellations arrive between steps.
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
    } finally {
      pumping = false;
    }
  };

  port.on('message', (msg: ToWorker) => {
    if (closing) return;
    if (msg.type === 'submit') {
      try {
        batcher.submit(msg.req);
      } catch (e) {
        post({
          type: 'events',
          events: [{ kind: 'error', id: msg.req.id, message: e instanceof Error ? e.message : String(e) }],
          stats: statsOf(model, batcher),
        });
        return;
      }
      void pump();
    } else if (msg.type === 'cancel') {
      const ev = batcher.cancel(msg.id);
      if (ev) post({ type: 'events', events: [ev], stats: statsOf(model, batcher) });
    } else if (msg.type === 'shutdown') {
      closing = true;
      const events = batcher.cancelAll();
      if (events.length) post({ type: 'events', events, stats: statsOf(model, batcher) });
      const last = statsOf(model, batcher);
      model.dispose();
      post({
        type: 'closed',
        stats: { ...last, native: { buffers: liveResources.buffers, backends: liveResources.backends, graphAllocators: liveResources.graphAllocators } },
      });
      releaseAndClose();
    }
  });
}

/** ggml's hooks point into this thread, which ends once the port closes: hand them back first. */
function releaseAndClose(): void {
  try {
    loadGgml().releaseCallbacks();
  } catch {
    // The engine never loaded; there is nothing of ours installed.
  }
  port.close();
}

void main();

/**
 * The main thread's side of the engine worker: admission by free slots, a bounded queue behind them,
 * and each request's events routed back to whoever asked. A request is either running (it holds a
 * slot), queued, or finished; cancelling works in every state.
 */
import { Worker } from 'node:worker_threads';
import type { BatcherEvent, FinishReason, SequenceRequest } from '../engine/batcher.js';
import { VramfitError } from '../util/errors.js';
import type { EngineStats, FromWorker, ModelInfo, ToWorker, WorkerInit } from './protocol.js';

export interface SequenceListener {
  /** Called once, when the sequence gets its slot (after any queueing). */
  started?: () => void;
  token: (token: number) => void;
  done: (reason: FinishReason, usage: { promptTokens: number; completionTokens: number }) => void;
  error: (message: string) => void;
}

export class QueueFullError extends VramfitError {
  constructor(readonly retryAfterSeconds: number) {
    super('QUEUE_FULL', 'every slot is busy and the queue is full; retry later', 1);
  }
}

interface Pending {
  req: SequenceRequest;
  listener: SequenceListener;
}

/**
 * The worker file next to this one. Built, it is plain JS; run from source (tests, benchmarks under
 * tsx), a worker does not inherit tsx's loader on Node 20, so a two-line bootstrap registers it first.
 */
function spawnWorker(init: WorkerInit): Worker {
  if (!import.meta.url.endsWith('.ts')) return new Worker(new URL('./engine-worker.js', import.meta.url), { workerData: init });
  const file = new URL('./engine-worker.ts', import.meta.url).href;
  const boot = `import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(file)}); });`;
  return new Worker(boot, { eval: true, workerData: init });
}

export class EngineHost {
  readonly ready: Promise<ModelInfo>;
  private info: ModelInfo | undefined;
  private statsNow: EngineStats | undefined;
  private readonly worker: Worker;
  private readonly running = new Map<number, SequenceListener>();
  private readonly queue: Pending[] = [];
  private nextId = 1;
  private closed: Promise<EngineStats> | undefined;
  private resolveClosed: ((s: EngineStats) => void) | undefined;
  private stopping = false;

  constructor(
    init: WorkerInit,
    private readonly maxQueue: number,
  ) {
    this.worker = spawnWorker(init);
    this.ready = new Promise<ModelInfo>((resolve, reject) => {
      const onMessage = (m: FromWorker): void => {
        if (m.type === 'ready') {
          this.info = m.info;
          this.statsNow = m.info.stats;
          resolve(m.info);
        } else if (m.type === 'load-error') {
          const err = new VramfitError(m.code, m.message, m.exitCode);
          if (m.stack) err.stack = m.stack;
          reject(err);
        } else this.onMessage(m);
      };
      this.worker.on('message', onMessage);
      this.worker.on('error', (e) => {
        reject(e);
        this.failAll(`the engine stopped: ${e.message}`);
      });
      this.worker.on('exit', () => {
        reject(new VramfitError('WORKER_EXIT', 'the engine worker exited while loading', 1));
        this.failAll('the engine worker exited');
        this.resolveClosed?.(this.statsNow ?? emptyStats());
      });
    });
  }

  get model(): ModelInfo | undefined {
    return this.info;
  }

  get stats(): EngineStats | undefined {
    return this.statsNow;
  }

  get busySlots(): number {
    return this.running.size;
  }

  get queueDepth(): number {
    return this.queue.length;
  }

  /** Starts the sequence now if a slot is free, else queues it; throws QueueFullError past the queue's bound. Returns its id. */
  submit(req: Omit<SequenceRequest, 'id'>, listener: SequenceListener): number {
    const info = this.info;
    if (!info || this.stopping) throw new VramfitError('NOT_READY', this.stopping ? 'the server is shutting down' : 'the model is still loading', 1);
    const full: SequenceRequest = { ...req, id: this.nextId++ };
    if (this.running.size < info.slots) this.start({ req: full, listener });
    else if (this.queue.length < this.maxQueue) this.queue.push({ req: full, listener });
    else throw new QueueFullError(1);
    return full.id;
  }

  /** Ends a running or queued sequence; its listener hears nothing more. */
  cancel(id: number): void {
    const q = this.queue.findIndex((p) => p.req.id === id);
    if (q >= 0) {
      this.queue.splice(q, 1);
      return;
    }
    if (this.running.delete(id)) {
      this.post({ type: 'cancel', id });
      this.admit();
    }
  }

  /** Refuses new work and drops the queue (each queued listener hears `error`). */
  stopAccepting(): void {
    this.stopping = true;
    for (const p of this.queue.splice(0)) p.listener.error('the server is shutting down');
  }

  /** Cancels everything, frees every device buffer in the worker and ends it; resolves with its last stats. */
  shutdown(): Promise<EngineStats> {
    if (this.closed) return this.closed;
    this.stopAccepting();
    this.closed = new Promise<EngineStats>((resolve) => (this.resolveClosed = resolve));
    if (!this.info) {
      void this.worker.terminate();
      return this.closed;
    }
    for (const [, l] of this.running) l.error('the server is shutting down');
    this.running.clear();
    this.post({ type: 'shutdown' });
    return this.closed;
  }

  private start(p: Pending): void {
    this.running.set(p.req.id, p.listener);
    p.listener.started?.();
    this.post({ type: 'submit', req: p.req });
  }

  private admit(): void {
    while (this.info && this.queue.length > 0 && this.running.size < this.info.slots) this.start(this.queue.shift()!);
  }

  private post(m: ToWorker): void {
    this.worker.postMessage(m);
  }

  private onMessage(m: FromWorker): void {
    if (m.type === 'events') {
      this.statsNow = m.stats;
      for (const e of m.events) this.route(e);
      this.admit();
    } else if (m.type === 'closed') {
      this.statsNow = m.stats;
      this.resolveClosed?.(m.stats);
    }
  }

  private route(e: BatcherEvent): void {
    const l = this.running.get(e.id);
    if (!l) return;
    if (e.kind === 'token') l.token(e.token);
    else if (e.kind === 'done') {
      this.running.delete(e.id);
      l.done(e.reason, { promptTokens: e.promptTokens, completionTokens: e.completionTokens });
    } else {
      this.running.delete(e.id);
      l.error(e.message);
    }
  }

  private failAll(message: string): void {
    for (const [, l] of this.running) l.error(message);
    this.running.clear();
    for (const p of this.queue.splice(0)) p.listener.error(message);
  }
}

function emptyStats(): EngineStats {
  return { devices: [], busySlots: 0, cachedGraphs: 0, native: { buffers: 0, backends: 0, graphAllocators: 0 } };
}

/**
 * Continuous batching over a LoadedModel's slots: every step is one forward pass carrying the next
 * token of every decoding sequence and, in what is left of the micro-batch, chunks of the prompts
 * waiting to be read. A sequence joins between steps and leaves (freeing its slot) the step it ends.
 * Synchronous and single-threaded: the caller decides when to step (the server's worker does so in a
 * loop, taking requests in between).
 */
import { InputError, VramfitError } from '../util/errors.js';
import type { BatchEntry, LoadedModel } from './model.js';
import { createSampler, validateSamplerOptions, type Sampler, type SamplerOptions } from './text/sampling.js';

export interface SequenceRequest {
  id: number;
  promptIds: readonly number[];
  /** Tokens to generate at most (the slot's context may end it sooner). */
  maxTokens: number;
  sampling: SamplerOptions;
  /** Ids that end the sequence; the EOS token is reported and not fed back. */
  eosTokenIds: readonly number[];
}

export type FinishReason = 'eos' | 'length' | 'context-full' | 'cancelled';

export type BatcherEvent =
  | { kind: 'token'; id: number; token: number }
  | { kind: 'done'; id: number; reason: FinishReason; promptTokens: number; completionTokens: number }
  | { kind: 'error'; id: number; message: string };

interface Sequence {
  req: SequenceRequest;
  slot: number;
  /** Prompt tokens already in the cache. */
  read: number;
  generated: number;
  /** The last sampled token, fed in next step; undefined while the prompt is being read. */
  next?: number;
  sample: Sampler;
  eos: ReadonlySet<number>;
}

export class ContinuousBatcher {
  private readonly free: number[];
  /** In the order they arrived: prompt chunks go to the oldest first. */
  private readonly active: Sequence[] = [];

  constructor(private readonly model: LoadedModel) {
    this.free = Array.from({ length: model.slots }, (_, i) => i);
  }

  get freeSlots(): number {
    return this.free.length;
  }

  get busySlots(): number {
    return this.active.length;
  }

  hasWork(): boolean {
    return this.active.length > 0;
  }

  /** Checks a request without admitting it: the reasons a server answers 400 for. */
  check(req: SequenceRequest): void {
    if (req.promptIds.length === 0) throw new InputError('prompt', 'the prompt encodes to no tokens');
    // The prompt and at least one generated token must fit the slot.
    if (req.promptIds.length >= this.model.ctx)
      throw new InputError('prompt', `${req.promptIds.length} prompt tokens leave no room in the ${this.model.ctx}-token context of a slot`, 'CONTEXT_LENGTH');
    for (const id of req.promptIds)
      if (!Number.isSafeInteger(id) || id < 0 || id >= this.model.hyper.vocab) throw new InputError('prompt', `token id ${id} is outside the vocabulary`);
    if (!Number.isSafeInteger(req.maxTokens) || req.maxTokens < 1) throw new InputError('max_tokens', `expected an integer ≥ 1, got ${req.maxTokens}`);
    validateSamplerOptions(req.sampling);
  }

  /** Takes a free slot for the request; its first token comes with a later step. */
  submit(req: SequenceRequest): void {
    this.check(req);
    if (this.active.some((s) => s.req.id === req.id)) throw new VramfitError('BATCHER', `sequence ${req.id} is already running`, 1);
    const slot = this.free.shift();
    if (slot === undefined) throw new VramfitError('BATCHER', 'no free slot', 1);
    this.model.resetSlot(slot);
    this.active.push({ req, slot, read: 0, generated: 0, sample: createSampler(req.sampling), eos: new Set(req.eosTokenIds) });
  }

  /** Ends a sequence now and frees its slot; false when it is not running. */
  cancel(id: number): BatcherEvent | undefined {
    const s = this.active.find((x) => x.req.id === id);
    if (!s) return undefined;
    this.release(s);
    return this.done(s, 'cancelled');
  }

  /** Cancels every sequence (shutdown). */
  cancelAll(): BatcherEvent[] {
    return [...this.active].map((s) => this.cancel(s.req.id)!);
  }

  /** One forward pass; returns what it produced. Does nothing without work. */
  step(): BatcherEvent[] {
    if (this.active.length === 0) return [];
    const budget = this.model.ubatch;
    const entries: BatchEntry[] = [];
    const carried: Sequence[] = [];
    let used = 0;
    // Decoding sequences first: one token each, so no stream waits on another's prompt.
    for (const s of this.active) {
      if (s.next === undefined || used >= budget) continue;
      entries.push({ slot: s.slot, tokens: [s.next], logits: 'last' });
      carried.push(s);
      used++;
    }
    for (const s of this.active) {
      if (s.next !== undefined || used >= budget) continue;
      const take = Math.min(budget - used, s.req.promptIds.length - s.read);
      entries.push({ slot: s.slot, tokens: s.req.promptIds.slice(s.read, s.read + take), logits: 'last' });
      carried.push(s);
      used += take;
    }
    let rows: Float32Array[][];
    try {
      rows = this.model.forwardBatch(entries);
    } catch (e) {
      // The pass wrote nothing usable for any of its sequences: each ends with the error.
      const message = e instanceof Error ? e.message : String(e);
      return carried.map((s) => {
        this.release(s);
        return { kind: 'error', id: s.req.id, message } as const;
      });
    }
    const events: BatcherEvent[] = [];
    carried.forEach((s, i) => {
      const entry = entries[i]!;
      if (s.next === undefined) {
        s.read += entry.tokens.length;
        if (s.read < s.req.promptIds.length) return;
      }
      const token = s.sample(rows[i]![0]!);
      s.generated++;
      events.push({ kind: 'token', id: s.req.id, token });
      let reason: FinishReason | undefined;
      if (s.eos.has(token)) reason = 'eos';
      else if (s.generated >= s.req.maxTokens) reason = 'length';
      else if (this.model.positionOf(s.slot) >= this.model.ctx) reason = 'context-full';
      if (reason) {
        this.release(s);
        events.push(this.done(s, reason));
      } else s.next = token;
    });
    return events;
  }

  private release(s: Sequence): void {
    const at = this.active.indexOf(s);
    if (at < 0) return;
    this.active.splice(at, 1);
    this.model.resetSlot(s.slot);
    // Lowest slots first: the padded KV length a step attends over ends at the highest busy slot.
    this.free.push(s.slot);
    this.free.sort((a, b) => a - b);
  }

  private done(s: Sequence, reason: FinishReason): BatcherEvent {
    return { kind: 'done', id: s.req.id, reason, promptTokens: s.req.promptIds.length, completionTokens: s.generated };
  }
}

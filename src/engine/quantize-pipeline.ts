/**
 * At most `width` quantization runs in flight on libuv's pool while the main thread reads the next. A run that
 * fails fails the load at the next `start` or `drain`; `abandon` waits for every run still in flight (each holds
 * its bytes and writes into a device buffer) and tells the rest not to write, so the caller may free the buffer.
 */
export class QuantizePipeline {
  private readonly running = new Set<Promise<void>>();
  /** Work waiting on runs (setting a whole repacked tensor): tracked, but holding no slot. */
  private readonly following = new Set<Promise<void>>();
  private failure: { error: unknown } | undefined;
  abandoned = false;

  constructor(readonly width: number) {
    if (!Number.isSafeInteger(width) || width < 1) throw new RangeError(`a pipeline needs at least one run in flight, got ${width}`);
  }

  /** Waits for a free slot, then starts `run`; `settled` resolves when it has finished (or failed). */
  async start(run: () => Promise<void>): Promise<{ settled: Promise<void> }> {
    while (this.running.size >= this.width && !this.failure) await Promise.race(this.running);
    this.throwIfFailed();
    const p: Promise<void> = run()
      .catch((error: unknown) => {
        this.failure ??= { error };
      })
      .finally(() => this.running.delete(p));
    this.running.add(p);
    return { settled: p };
  }

  /** Runs `then` on this thread once `runs` have settled, unless a run failed or the pipeline was abandoned. */
  follow(runs: Promise<void>[], then: () => void): void {
    const p: Promise<void> = Promise.all(runs)
      .then(() => {
        if (!this.abandoned && !this.failure) then();
      })
      .catch((error: unknown) => {
        this.failure ??= { error };
      })
      .finally(() => this.following.delete(p));
    this.following.add(p);
  }

  /** Waits for every run started so far and what follows them; the first failure, if any, is thrown. */
  async drain(): Promise<void> {
    await Promise.all(this.running);
    await Promise.all(this.following);
    this.throwIfFailed();
  }

  /** Nothing writes after this resolves. */
  async abandon(): Promise<void> {
    this.abandoned = true;
    await Promise.all(this.running);
    await Promise.all(this.following);
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure.error;
  }
}

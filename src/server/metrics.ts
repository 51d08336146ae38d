/** The server's counters and histograms, and their Prometheus text exposition (format 0.0.4). */
import type { EngineStats } from './protocol.js';

/** Latency buckets in seconds, from a fast CPU token to a slow prompt on a loaded machine. */
const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

class Histogram {
  readonly counts = new Array<number>(BUCKETS.length).fill(0);
  sum = 0;
  count = 0;

  observe(seconds: number): void {
    this.sum += seconds;
    this.count++;
    for (let i = 0; i < BUCKETS.length; i++) if (seconds <= BUCKETS[i]!) this.counts[i]!++;
  }

  render(name: string, help: string): string[] {
    const lines = [`# HELP ${name} ${help}`, `# TYPE ${name} histogram`];
    BUCKETS.forEach((b, i) => lines.push(`${name}_bucket{le="${b}"} ${this.counts[i]}`));
    lines.push(`${name}_bucket{le="+Inf"} ${this.count}`, `${name}_sum ${this.sum}`, `${name}_count ${this.count}`);
    return lines;
  }
}

/** Routes counted by name; anything else is "other", so a scan of random paths cannot grow the label set. */
export const ROUTES = new Set([
  '/v1/chat/completions',
  '/v1/completions',
  '/v1/models',
  '/api/chat',
  '/api/generate',
  '/api/tags',
  '/api/ps',
  '/api/version',
  '/health',
  '/metrics',
]);

const label = (v: string): string => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');

export class ServerMetrics {
  private readonly requests = new Map<string, number>();
  promptTokens = 0;
  completionTokens = 0;
  /** Sequences ended because their client went away. */
  cancelled = 0;
  readonly timeToFirstToken = new Histogram();
  readonly interTokenLatency = new Histogram();

  countRequest(route: string, status: number): void {
    const key = `${ROUTES.has(route) ? route : 'other'}\u0000${status}`;
    this.requests.set(key, (this.requests.get(key) ?? 0) + 1);
  }

  /** All requests answered with this status (tests and health checks). */
  requestsWithStatus(status: number): number {
    let n = 0;
    for (const [k, v] of this.requests) if (k.endsWith(`\u0000${status}`)) n += v;
    return n;
  }

  render(live: { queueDepth: number; busySlots: number; slots: number; stats: EngineStats | undefined }): string {
    const lines: string[] = ['# HELP vramfit_requests_total Requests answered, by route and HTTP status.', '# TYPE vramfit_requests_total counter'];
    for (const [k, v] of this.requests) {
      const [route, status] = k.split('\u0000') as [string, string];
      lines.push(`vramfit_requests_total{route="${label(route)}",status="${status}"} ${v}`);
    }
    const scalar = (name: string, type: 'counter' | 'gauge', help: string, value: number): void => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, `${name} ${value}`);
    };
    scalar('vramfit_prompt_tokens_total', 'counter', 'Prompt tokens read.', this.promptTokens);
    scalar('vramfit_completion_tokens_total', 'counter', 'Tokens generated.', this.completionTokens);
    scalar('vramfit_cancelled_total', 'counter', 'Sequences cancelled because their client disconnected.', this.cancelled);
    scalar('vramfit_queue_depth', 'gauge', 'Requests waiting for a slot.', live.queueDepth);
    scalar('vramfit_slots_busy', 'gauge', 'Slots running a sequence.', live.busySlots);
    scalar('vramfit_slots_total', 'gauge', 'Sequences the KV cache holds at once (--parallel).', live.slots);
    lines.push(...this.timeToFirstToken.render('vramfit_time_to_first_token_seconds', 'From a request arriving to its first generated token.'));
    lines.push(...this.interTokenLatency.render('vramfit_inter_token_latency_seconds', 'Between consecutive tokens of one sequence.'));
    const s = live.stats;
    if (s) {
      const perDevice = (name: string, help: string, value: (d: EngineStats['devices'][number]) => number | null): void => {
        lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} gauge`);
        for (const d of s.devices) {
          const v = value(d);
          if (v !== null) lines.push(`${name}{device="${label(d.id)}",name="${label(d.name)}"} ${v}`);
        }
      };
      perDevice('vramfit_device_cap_bytes', "The device's cap (absent when uncapped).", (d) => d.cap);
      perDevice('vramfit_device_used_bytes', "Bytes the device's capped allocator has out now.", (d) => d.used);
      perDevice('vramfit_device_peak_bytes', "The most the device's capped allocator ever had out.", (d) => d.peak);
      scalar('vramfit_native_buffers', 'gauge', 'Native device buffers alive in the engine.', s.native.buffers);
      scalar('vramfit_cached_graphs', 'gauge', 'Compute graphs kept built for reuse (bounded).', s.cachedGraphs);
    }
    return `${lines.join('\n')}\n`;
  }
}

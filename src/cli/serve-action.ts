/** What `vramfit serve` does; loaded only when it runs. */
import { isIP } from 'node:net';
import type { LoadOptions } from '../engine/load.js';
import { renderPlanTable } from '../planner/export/table.js';
import { formatBytes } from '../planner/units.js';
import { startServer } from '../server/server.js';
import { InputError } from '../util/errors.js';
import type { Io } from './main.js';

export interface ServeFlags {
  host: string;
  port: string;
  parallel: string;
  apiKey?: string;
  name?: string;
  queue: string;
  devices?: string;
  backend?: string;
  maxMemory?: string;
  ctx?: string;
  ubatch?: string;
  kvDtype?: string;
  dtype?: string;
  threads?: string;
  showPlan?: boolean;
}

function int(value: string | undefined, flag: string, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < min || n > max)
    throw new InputError(flag, `expected an integer from ${min} to ${max}, got ${JSON.stringify(value)}`);
  return n;
}

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

export async function serveModel(model: string, f: ServeFlags, io: Io): Promise<void> {
  const port = int(f.port, '--port', 0, 65535)!;
  const parallel = f.parallel === 'auto' ? 'auto' : int(f.parallel, '--parallel', 1, 256)!;
  const maxQueue = int(f.queue, '--queue', 0, 1_000_000)!;
  if (f.host !== 'localhost' && isIP(f.host) === 0) throw new InputError('--host', `expected an IP address or localhost, got ${JSON.stringify(f.host)}`);
  if (f.kvDtype !== undefined && f.kvDtype !== 'float16' && f.kvDtype !== 'float32')
    throw new InputError('--kv-dtype', `the engine keeps the KV cache in float16 or float32, not ${f.kvDtype}`);
  if (f.dtype !== undefined && !['float32', 'float16', 'bfloat16'].includes(f.dtype))
    throw new InputError('--dtype', `expected float32, float16 or bfloat16, got ${f.dtype}`);
  if (f.backend !== undefined && f.backend !== 'cuda' && f.backend !== 'vulkan')
    throw new InputError('--backend', `expected cuda or vulkan, got ${JSON.stringify(f.backend)}`);
  const apiKey = f.apiKey ?? process.env['VRAMFIT_API_KEY'];
  if (apiKey !== undefined && apiKey.length === 0)
    throw new InputError(f.apiKey !== undefined ? '--api-key' : 'VRAMFIT_API_KEY', 'an empty key would let anyone in');
  const ctx = int(f.ctx, '--ctx', 1);
  const ubatch = int(f.ubatch, '--ubatch', 1);
  const threads = int(f.threads, '--threads', 1);
  const load: Omit<LoadOptions, 'onProgress'> = {
    parallel,
    ...(f.devices !== undefined ? { devices: f.devices } : {}),
    ...(f.backend !== undefined ? { backend: f.backend as 'cuda' } : {}),
    ...(f.maxMemory !== undefined ? { maxMemory: f.maxMemory } : {}),
    ...(ctx !== undefined ? { ctx } : {}),
    ...(ubatch !== undefined ? { ubatch } : {}),
    ...(f.kvDtype !== undefined ? { kvDtype: f.kvDtype as 'float16' } : {}),
    ...(f.dtype !== undefined ? { dtype: f.dtype as 'float32' } : {}),
    ...(threads !== undefined ? { threads } : {}),
  };
  if (!LOOPBACK.has(f.host) && !apiKey)
    io.stderr(`warning: listening on ${f.host} without an API key: anyone who can reach this port can use the model (--api-key or VRAMFIT_API_KEY)\n`);
  const server = await startServer({
    model,
    load,
    host: f.host,
    port,
    maxQueue,
    ...(apiKey ? { apiKey } : {}),
    ...(f.name !== undefined ? { name: f.name } : {}),
    log: (line) => io.stderr(`${line}\n`),
  });
  io.stderr(`loading ${model} (health: ${server.url}/health)\n`);
  let stop!: () => void;
  const stopRequested = new Promise<void>((resolve) => (stop = resolve));
  const onSignal = (): void => stop();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const info = await Promise.race([server.ready, stopRequested]);
    if (info) {
      if (f.showPlan) io.stderr(`${renderPlanTable(info.plan)}\n\n`);
      const devices = info.stats.devices.map((d) => `${d.id} ${formatBytes(d.used)}${d.cap === null ? '' : ` of ${formatBytes(d.cap)}`}`).join(', ');
      io.stdout(`serving ${model} at ${server.url} (${info.slots} slot${info.slots === 1 ? '' : 's'} × ${info.ctx} tokens; devices: ${devices})\n`);
      await stopRequested;
      io.stderr('shutting down: finishing running requests, then freeing the devices\n');
    }
    const stats = await server.close();
    io.stderr(`stopped; native buffers left: ${stats.native.buffers}\n`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** What `vramfit serve` does; loaded only when it runs. */
import { isIP } from 'node:net';
import type { LoadOptions } from '../engine/load.js';
import { renderPlanTable } from '../planner/export/table.js';
import { formatBytes } from '../planner/units.js';
import { startServer } from '../server/server.js';
import { InputError } from '../util/errors.js';
import type { Io } from './main.js';
import { intFlag, loadOptionsFrom, type LoadFlags } from './load-flags.js';

export interface ServeFlags extends LoadFlags {
  host: string;
  port: string;
  parallel: string;
  apiKey?: string;
  name?: string;
  queue: string;
}

const int = intFlag;

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

export async function serveModel(model: string, f: ServeFlags, io: Io): Promise<void> {
  const port = int(f.port, '--port', 0, 65535)!;
  const parallel = f.parallel === 'auto' ? 'auto' : int(f.parallel, '--parallel', 1, 256)!;
  const maxQueue = int(f.queue, '--queue', 0, 1_000_000)!;
  if (f.host !== 'localhost' && isIP(f.host) === 0) throw new InputError('--host', `expected an IP address or localhost, got ${JSON.stringify(f.host)}`);
  const apiKey = f.apiKey ?? process.env['VRAMFIT_API_KEY'];
  if (apiKey !== undefined && apiKey.length === 0)
    throw new InputError(f.apiKey !== undefined ? '--api-key' : 'VRAMFIT_API_KEY', 'an empty key would let anyone in');
  const load: Omit<LoadOptions, 'onProgress'> = { ...loadOptionsFrom(f), parallel };
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

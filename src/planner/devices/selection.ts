/**
 * `vramfit run --devices`: which devices a run opens. Pure parsing; the engine resolves GPU ids
 * against the devices ggml registered (matched to nvidia-smi's numbering, gpu-match.ts).
 *
 *   cpu           one host device (id 0)
 *   virtual:N     N independent CPU backends (ids 0…N-1), each capped like a GPU
 *   gpu           every GPU the process sees
 *   gpu:1,3       those GPUs, by id (as `vramfit devices` and `vramfit plan` number them)
 *   …,cpu         after a GPU list: host RAM joins the plan too (it also joins when --max-memory names cpu)
 */
import { InputError } from '../../util/errors.js';

export type DeviceSelection = { kind: 'virtual'; count: number } | { kind: 'gpu'; gpus: 'all' | number[]; cpu: boolean };

const WHERE = '--devices';
const USAGE = 'expected cpu, virtual:N (1–64), gpu, gpu:ID[,ID…] or either GPU form followed by ,cpu';
/** More virtual devices than this is a mistake, not a plan (each is a full CPU backend). */
export const MAX_VIRTUAL_DEVICES = 64;

export function parseDeviceSelection(spec: string | undefined): DeviceSelection {
  const text = (spec ?? 'cpu').trim().toLowerCase();
  if (text === 'cpu') return { kind: 'virtual', count: 1 };
  const virtual = /^virtual:(\d+)$/.exec(text);
  if (virtual) {
    const count = Number(virtual[1]);
    if (count < 1 || count > MAX_VIRTUAL_DEVICES) throw new InputError(WHERE, `virtual:${virtual[1]} is outside 1–${MAX_VIRTUAL_DEVICES}`);
    return { kind: 'virtual', count };
  }
  const items = text.split(',').map((s) => s.trim());
  let cpu = false;
  if (items.at(-1) === 'cpu') {
    cpu = true;
    items.pop();
  }
  const [head, ...rest] = items;
  if (head === 'gpu' && rest.length === 0) return { kind: 'gpu', gpus: 'all', cpu };
  const first = head === undefined ? null : /^gpu:(\d+)$/.exec(head);
  if (!first || rest.some((r) => !/^\d+$/.test(r))) throw new InputError(WHERE, `${USAGE}, got ${JSON.stringify(spec)}`);
  const ids = [Number(first[1]), ...rest.map(Number)];
  const dup = ids.find((id, i) => ids.indexOf(id) !== i);
  if (dup !== undefined) throw new InputError(WHERE, `names GPU ${dup} twice`);
  return { kind: 'gpu', gpus: ids, cpu };
}

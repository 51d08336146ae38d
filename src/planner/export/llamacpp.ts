import { InputError } from '../../util/errors.js';
import type { Skeleton } from '../../reader/skeleton.js';
import type { Plan } from '../plan.js';
import { decodeBoundNote } from './pipeline.js';
import { shellWord } from './shell.js';

const GGML_KV_TYPES: Record<string, string> = {
  float16: 'f16',
  float32: 'f32',
  bfloat16: 'bf16',
  q8_0: 'q8_0',
  q4_0: 'q4_0',
  q4_1: 'q4_1',
  q5_0: 'q5_0',
  q5_1: 'q5_1',
  iq4_nl: 'iq4_nl',
};

/**
 * llama.cpp flags that realise the plan. All layers are offloaded (-ngl) and split by layer counts
 * (--tensor-split: layer il goes to the first GPU whose cumulative count exceeds il, the output layer
 * counting as layer n); blocks the plan keeps in RAM are moved back to the CPU with -ot overrides.
 */
export function renderLlamaCpp(p: Plan, s: Skeleton, modelPath: string): string {
  if (s.source.kind !== 'gguf') {
    throw new InputError(
      '--format',
      'llama.cpp flags need a GGUF model (llama.cpp cannot load safetensors directly); convert it with convert_hf_to_gguf.py and plan the .gguf',
    );
  }
  const b = s.blocks;
  if (!b) throw new InputError('--format', "llama.cpp flags need the model's repeated blocks, which this skeleton does not name");
  const gpus = p.devices.filter((d) => d.kind === 'gpu' || d.kind === 'virtual');
  const blockOf = (m: string): number | undefined =>
    m.startsWith(`${b.prefix}.`) && /^\d+$/.test(m.slice(b.prefix.length + 1)) ? Number(m.slice(b.prefix.length + 1)) : undefined;
  const counts = gpus.map((d) => d.modules.filter((m) => blockOf(m) !== undefined).length);
  const hostBlocks = p.devices
    .filter((d) => d.kind === 'cpu' || d.kind === 'disk')
    .flatMap((d) => d.modules.map(blockOf).filter((i): i is number => i !== undefined));
  const headOnHost = p.devices.some((d) => (d.kind === 'cpu' || d.kind === 'disk') && d.modules.some((m) => /(^|\.)lm_head$|(^|\.)output$/.test(m)));
  const args: string[] = ['-m', shellWord(modelPath)];
  const env: string[] = [];
  if (gpus.length > 0 && counts.some((c) => c > 0)) {
    const split = [...counts];
    split[split.length - 1] = split[split.length - 1]! + hostBlocks.length + 1;
    args.push('-ngl', String(b.count + 1), '--split-mode', 'layer', '--tensor-split', split.join(','));
    if (hostBlocks.length) args.push('-ot', shellWord(`blk\\.(${hostBlocks.join('|')})\\.=CPU`));
    if (headOnHost) args.push('-ot', shellWord('^output\\.=CPU'));
    // Other hosts' GPUs join through llama.cpp's RPC backend; one host alone runs as any single machine.
    if (p.cluster && gpus.some((d, i) => counts[i]! > 0 && d.host !== p.cluster!.hosts[0]!.name)) return renderRpc(p, gpus, args);
    const physical = gpus.map((d) => String(d.physical ?? d.id));
    env.push(`CUDA_VISIBLE_DEVICES=${physical.join(',')}`);
  } else {
    args.push('-ngl', '0');
  }
  args.push(...workloadArgs(p));
  return `${[...env, 'llama-server', ...args].join(' ')}\n`;
}

function workloadArgs(p: Plan): string[] {
  const w = p.workload;
  const args = ['-c', String(w.ctx * w.batch), '-ub', String(w.ubatch), '-b', String(Math.max(w.ubatch, 2048))];
  if (w.batch > 1) args.push('-np', String(w.batch));
  const kv = GGML_KV_TYPES[w.kvDtype];
  if (kv && kv !== 'f16') args.push('-ctk', kv, '-ctv', kv, ...(kv.startsWith('q') || kv.startsWith('iq') ? ['-fa', 'on'] : []));
  return args;
}

/** The port of the first rpc-server on a worker host; one server per GPU, on consecutive ports. */
const RPC_PORT = 50052;

/**
 * Across hosts (--cluster): an `rpc-server` per GPU of every other host (each sees one GPU, so llama.cpp names it
 * `RPC0[host:port]`), then the serving host's `llama-server` with `--rpc` listing them and `-dev` putting every
 * device in the plan's pipeline order, so `--tensor-split` counts match it. llama.cpp's README calls RPC a proof of
 * concept without authentication: keep it on a trusted network.
 */
function renderRpc(p: Plan, gpus: Plan['devices'], args: string[]): string {
  const c = p.cluster!;
  const main = c.hosts[0]!;
  const lines: string[] = [];
  const devs: string[] = [];
  const endpoints: string[] = [];
  for (const h of c.hosts) {
    const mine = gpus.filter((d) => d.host === h.name);
    if (mine.length === 0) continue;
    // GPU numbers on each host start at 0 there, in the order --cluster lists its cards.
    const first = Number(h.gpus[0]);
    if (h.name === main.name) {
      mine.forEach((d) => devs.push(`CUDA${Number(d.id) - first}`));
      continue;
    }
    lines.push(`# on host ${h.name}:`);
    mine.forEach((d, i) => {
      const endpoint = `${h.address}:${RPC_PORT + i}`;
      endpoints.push(endpoint);
      devs.push(`RPC0[${endpoint}]`);
      lines.push(`CUDA_VISIBLE_DEVICES=${Number(d.id) - first} rpc-server -H 0.0.0.0 -p ${RPC_PORT + i} &`);
    });
  }
  const mainGpus = gpus.filter((d) => d.host === main.name).map((d) => Number(d.id) - Number(main.gpus[0]));
  const env = mainGpus.length ? [`CUDA_VISIBLE_DEVICES=${mainGpus.join(',')}`] : [];
  lines.push(
    `# on host ${main.name} (serves the model):`,
    [...env, 'llama-server', ...args, '--rpc', endpoints.join(','), '-dev', shellWord(devs.join(',')), ...workloadArgs(p)].join(' '),
  );
  const bound = decodeBoundNote(p);
  if (bound) lines.push(`# ${bound}`);
  lines.push('# llama.cpp RPC has no authentication or encryption: run it on a trusted network only');
  return `${lines.join('\n')}\n`;
}

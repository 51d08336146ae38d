/** What pipeline-parallel exports share: a stage per GPU that holds blocks, and the engines' fixed ends. */
import { InputError } from '../../util/errors.js';
import type { Skeleton } from '../../reader/skeleton.js';
import { tensorBytes } from '../../reader/dtypes.js';
import type { Plan } from '../plan.js';
import { deviceOfModule } from '../plan-builder.js';
import { tensorRoles } from '../quantize.js';
import { formatBytes } from '../units.js';
import { shellWord } from './shell.js';

/** The decoder layers each pipeline stage runs, and the bytes of them the plan keeps in CPU RAM. */
export function pipelineStages(p: Plan, s: Skeleton): { gpus: Plan['devices']; layers: number[]; offloaded: number[] } {
  const b = s.blocks;
  if (!b) throw new InputError('--format', "a pipeline split needs the model's repeated blocks, which this skeleton does not name");
  const blockBytes = (i: number): number =>
    s.tensors.filter((t) => t.name.startsWith(`${b.prefix}.${i}.`)).reduce((n, t) => n + tensorBytes(t.shape, t.dtype), 0);
  const gpuIds = p.devices.filter((d) => d.kind === 'gpu' && d.modules.some((m) => m.startsWith(`${b.prefix}.`))).map((d) => d.id);
  if (gpuIds.length === 0) throw new InputError('--format', 'the plan puts no decoder block on a GPU; the engine would have no stage to run');
  const layers = gpuIds.map(() => 0);
  const offloaded = gpuIds.map(() => 0);
  let stage = 0;
  for (let i = 0; i < b.count; i++) {
    const dev = deviceOfModule(p.deviceMap, `${b.prefix}.${i}`) ?? 'cpu';
    const at = gpuIds.indexOf(dev);
    if (at >= 0) {
      if (at < stage) throw new InputError('--format', `block ${i} goes back to GPU ${dev}: pipeline stages are contiguous`);
      stage = at;
      layers[stage]!++;
    } else {
      // A block the plan keeps in RAM runs in the stage around it, its weights streamed from the CPU.
      layers[stage]!++;
      offloaded[stage]! += blockBytes(i);
    }
  }
  return { gpus: gpuIds.map((id) => p.devices.find((d) => d.id === id)!), layers, offloaded };
}

/**
 * Pipeline-parallel engines (vLLM, SGLang: make_layers with PPMissingLayer) keep the embedding on the first stage
 * and the final norm and head on the last. Where the plan put them elsewhere, the bytes move: refused when a GPU
 * would then pass `capOf(gpu)`, else said.
 */
export function checkEndsLayout(
  p: Plan,
  s: Skeleton,
  gpus: Plan['devices'],
  engine: string,
  capOf: (d: Plan['devices'][number]) => number = (d) => d.cap,
): string[] {
  const roles = tensorRoles(s);
  const deviceOf = (tensor: string): string | undefined => deviceOfModule(p.deviceMap, tensor);
  const extra = new Map<string, number>();
  const moved: string[] = [];
  for (const t of s.tensors) {
    const role = roles.get(t.name);
    if (role !== 'embedding' && role !== 'head') continue;
    const want = role === 'embedding' ? gpus[0]! : gpus[gpus.length - 1]!;
    const now = deviceOf(t.name);
    if (now === want.id) continue;
    const bytes = tensorBytes(t.shape, t.dtype);
    extra.set(want.id, (extra.get(want.id) ?? 0) + bytes);
    if (now !== undefined) extra.set(now, (extra.get(now) ?? 0) - bytes);
    moved.push(`${t.name} (${formatBytes(bytes)}) to GPU ${want.id}`);
  }
  for (const d of gpus) {
    const used = d.used + (extra.get(d.id) ?? 0);
    if (used > capOf(d))
      throw new InputError(
        '--format',
        `${engine} keeps the embedding on the first stage and the head on the last; with ${moved.join(', ')} GPU ${d.id} would need ${formatBytes(used)} of its ${formatBytes(capOf(d))}`,
      );
  }
  return moved.length ? [`${engine}'s layout moves ${moved.join(', ')}; every GPU stays within its share`] : [];
}

/** CUDA_VISIBLE_DEVICES for the stages, and the engine's partition variable when there is more than one. */
export function stageEnv(gpus: Plan['devices'], layers: readonly number[], partitionVar: string): string[] {
  const env = [`CUDA_VISIBLE_DEVICES=${gpus.map((d) => String(d.physical ?? d.id)).join(',')}`];
  if (gpus.length > 1) env.push(`${partitionVar}=${layers.join(',')}`);
  return env;
}

/** What the engine loads: a Hugging Face repo id when the plan knows a real one (it downloads or finds it cached), else the path given. */
export function servedModel(p: Plan, model: string): string {
  return shellWord(p.model.repo_id !== undefined && /^[\w.-]+\/[\w.-]+$/.test(p.model.repo_id) ? p.model.repo_id : model);
}

/** The command line, then each note as a shell comment. */
export function commandWithNotes(words: readonly string[], notes: readonly string[]): string {
  return `${words.join(' ')}\n${notes.map((n) => `# ${n}`).join('\n')}\n`;
}

/** One host's share of a pipeline across hosts: its stages' GPUs as that host numbers them, and their stage numbers. */
export interface HostStages {
  name: string;
  address: string;
  localGpus: number[];
  stages: number[];
}

/**
 * The hosts the stages run on, in stage order (--cluster plans). GPU numbers start at 0 on each host, in the order
 * --cluster lists its cards. A host that comes back later in the pipeline, or a first stage away from the serving
 * host, is refused: the engines start their pipeline on the host that serves.
 */
export function stagesByHost(p: Plan, gpus: Plan['devices'], engine: string): HostStages[] {
  const c = p.cluster;
  if (!c) throw new InputError('--cluster', 'this plan was not made across hosts');
  const out: HostStages[] = [];
  gpus.forEach((d, stage) => {
    const host = c.hosts.find((h) => h.name === d.host);
    if (!host) throw new InputError('--cluster', `GPU ${d.id} is on no host of the cluster`);
    let at = out.at(-1);
    if (at?.name !== host.name) {
      if (out.some((h) => h.name === host.name))
        throw new InputError('--cluster', `${engine} runs each host's stages together; host ${host.name} comes back later in the pipeline`);
      at = { name: host.name, address: host.address, localGpus: [], stages: [] };
      out.push(at);
    }
    at.localGpus.push(Number(d.id) - Number(host.gpus[0]));
    at.stages.push(stage);
  });
  if (out[0]?.name !== c.hosts[0]!.name)
    throw new InputError('--cluster', `${engine} starts the pipeline on the host that serves (${c.hosts[0]!.name}), and this plan puts no stage there`);
  return out;
}

/** "GPU 0 20 layers, GPU 1 20 layers": the layers each stage runs. */
export function describeStages(gpus: Plan['devices'], layers: readonly number[]): string {
  return gpus.map((d, i) => `GPU ${d.id} ${layers[i]} layers`).join(', ');
}

/** The decode rate the links alone allow, as a note; undefined when the plan crosses no host boundary. */
export function decodeBoundNote(p: Plan): string | undefined {
  const c = p.cluster;
  if (!c || c.decode_bound_tps === null) return undefined;
  return `${c.boundaries} host boundar${c.boundaries === 1 ? 'y' : 'ies'} over ${c.link_gbps} Gbit/s, ${c.link_latency_ms} ms: decode ≤ ${Math.floor(c.decode_bound_tps)} tokens/s from the links alone`;
}

/** The stage layout per host and the decode bound the links set, as comment lines. */
export function clusterNotes(p: Plan, hosts: readonly HostStages[]): string[] {
  const bound = decodeBoundNote(p);
  return [`stages per host: ${hosts.map((h) => `${h.name} ${h.stages.length} (GPU ${h.localGpus.join(',')})`).join(', ')}`, ...(bound ? [bound] : [])];
}

/** A host's stages' GPUs, as that host numbers them. */
export function visibleOn(h: HostStages): string {
  return `CUDA_VISIBLE_DEVICES=${h.localGpus.join(',')}`;
}

/**
 * One launch line per host for engines that number nodes (`--nnodes N --node-rank k`): the host's GPUs, the same
 * partition everywhere, the engine's command, then `rankFlags(k)` (where the others find node 0, …).
 */
export function nnodesLaunch(
  hosts: readonly HostStages[],
  partition: string,
  args: readonly string[],
  rankFlags: (rank: number) => string[],
): { host: string; role?: string; lines: string[] }[] {
  return hosts.map((h, rank) => ({
    host: h.name,
    ...(rank === 0 ? { role: 'serves the API' } : {}),
    lines: [[visibleOn(h), partition, ...args, '--nnodes', String(hosts.length), '--node-rank', String(rank), ...rankFlags(rank)].join(' ')],
  }));
}

/** Commands per host: a `# on host X:` line before each host's lines, then the notes as comments. */
export function perHostCommands(sections: readonly { host: string; role?: string; lines: readonly string[] }[], notes: readonly string[]): string {
  const out: string[] = [];
  for (const s of sections) out.push(`# on host ${s.host}${s.role ? ` (${s.role})` : ''}:`, ...s.lines);
  out.push(...notes.map((n) => `# ${n}`));
  return `${out.join('\n')}\n`;
}

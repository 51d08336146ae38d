/** What pipeline-parallel exports share: a stage per GPU that holds blocks, and the engines' fixed ends. */
import { InputError } from '../../util/errors.js';
import type { Skeleton } from '../../reader/skeleton.js';
import { tensorBytes } from '../../reader/dtypes.js';
import type { Plan } from '../plan.js';
import { tensorRoles } from '../quantize.js';
import { formatBytes } from '../units.js';
import { shellWord } from './shell.js';

/** The decoder layers each pipeline stage runs, and the bytes of them the plan keeps in CPU RAM. */
export function pipelineStages(p: Plan, s: Skeleton): { gpus: Plan['devices']; layers: number[]; offloaded: number[] } {
  const b = s.blocks;
  if (!b) throw new InputError('--format', "a pipeline split needs the model's repeated blocks, which this skeleton does not name");
  const deviceOf = new Map(p.deviceMap);
  const blockBytes = (i: number): number =>
    s.tensors.filter((t) => t.name.startsWith(`${b.prefix}.${i}.`)).reduce((n, t) => n + tensorBytes(t.shape, t.dtype), 0);
  const gpuIds = p.devices.filter((d) => d.kind === 'gpu' && d.modules.some((m) => m.startsWith(`${b.prefix}.`))).map((d) => d.id);
  if (gpuIds.length === 0) throw new InputError('--format', 'the plan puts no decoder block on a GPU; the engine would have no stage to run');
  const layers = gpuIds.map(() => 0);
  const offloaded = gpuIds.map(() => 0);
  let stage = 0;
  for (let i = 0; i < b.count; i++) {
    const dev = deviceOf.get(`${b.prefix}.${i}`) ?? 'cpu';
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
  const deviceOf = (tensor: string): string | undefined => p.deviceMap.find(([m]) => tensor === m || tensor.startsWith(`${m}.`))?.[1];
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

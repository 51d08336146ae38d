import { InputError } from '../../util/errors.js';
import type { Skeleton } from '../../reader/skeleton.js';
import type { Plan } from '../plan.js';
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
    const physical = gpus.map((d) => String(d.physical ?? d.id));
    env.push(`CUDA_VISIBLE_DEVICES=${physical.join(',')}`);
  } else {
    args.push('-ngl', '0');
  }
  const w = p.workload;
  args.push('-c', String(w.ctx * w.batch), '-ub', String(w.ubatch), '-b', String(Math.max(w.ubatch, 2048)));
  if (w.batch > 1) args.push('-np', String(w.batch));
  const kv = GGML_KV_TYPES[w.kvDtype];
  if (kv && kv !== 'f16') args.push('-ctk', kv, '-ctv', kv, ...(kv.startsWith('q') || kv.startsWith('iq') ? ['-fa', 'on'] : []));
  return `${[...env, 'llama-server', ...args].join(' ')}\n`;
}

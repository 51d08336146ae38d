/**
 * `--quantize TYPE`: which ggml block type each weight is converted to at load, as llama.cpp's quantizer chooses
 * (llama-quant.cpp, llama_tensor_get_type): the matrices take TYPE; the output head keeps at least Q6_K (its error
 * shows in every logit); the token embedding takes TYPE (a lookup reads one row per token); vectors (norms,
 * biases), an MoE router and anything not floating point stay as they are. A matrix whose rows are not whole
 * blocks of a type falls back as llama.cpp's does (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0; rows not whole 32-value
 * blocks become F16). Pure: a skeleton in, a skeleton with the chosen dtypes (what the planner sizes)
 * and the list of choices out.
 */
import { dtypeInfo, isFloatDType } from '../reader/dtypes.js';
import type { Skeleton } from '../reader/skeleton.js';
import { InputError } from '../util/errors.js';

/** The types `--quantize` accepts, best first. */
export const QUANTIZE_TYPES = ['q8_0', 'q6_k', 'q5_k', 'q4_k', 'q4_0'] as const;
export type QuantizeType = (typeof QUANTIZE_TYPES)[number];

/** KV cache types the engine keeps (the block types through flash attention, as llama.cpp's -ctk/-ctv with -fa). */
export const KV_DTYPES = ['float32', 'float16', 'q8_0', 'q4_0'] as const;
export type KvDtype = (typeof KV_DTYPES)[number];

/** llama.cpp's fallbacks for rows that are not whole 256-value super-blocks. */
const FALLBACK: Record<string, string> = { q4_k: 'q5_0', q5_k: 'q5_1', q6_k: 'q8_0' };

/** Bits per weight of a block type (its bytes per block over its values per block). */
export function bitsPerWeight(dtype: string): number {
  const info = dtypeInfo(dtype);
  return (info.blockBytes * 8) / info.blockSize;
}

/** `--quantize` of plan, run and serve: a type, or auto (src/planner/quantize-auto.ts). */
export function parseQuantizeMode(value: string, flag = '--quantize'): QuantizeType | 'auto' {
  return value.toLowerCase() === 'auto' ? 'auto' : parseQuantizeType(value, flag);
}

export function parseQuantizeType(value: string, flag = '--quantize'): QuantizeType {
  const v = value.toLowerCase();
  if (v === 'auto') throw new InputError(flag, "auto (the planner choosing each block's type) is not available yet; give one of " + QUANTIZE_TYPES.join(', '));
  if (!(QUANTIZE_TYPES as readonly string[]).includes(v)) throw new InputError(flag, `expected one of ${QUANTIZE_TYPES.join(', ')}, got ${value}`);
  return v as QuantizeType;
}

export type TensorRole = 'matrix' | 'embedding' | 'head' | 'router' | 'keep';

export interface QuantizeChoice {
  name: string;
  role: TensorRole;
  from: string;
  to: string;
  /** Why `to` is not the role's type: the rows are not whole blocks of it. */
  fallback?: string;
}

/**
 * A tensor's role: 2-D floating tensors outside the blocks are the head when they come after the last block or are
 * tied to another tensor (the head then reads the embedding), else embeddings; inside the blocks, an MoE router
 * (`….gate.weight`, a few rows read at full precision by llama.cpp too) stays, every other 2-D one is a matrix.
 */
export function tensorRoles(skeleton: Skeleton): Map<string, TensorRole> {
  const roles = new Map<string, TensorRole>();
  const prefix = skeleton.blocks ? `${skeleton.blocks.prefix}.` : undefined;
  const lastBlock = prefix ? skeleton.tensors.reduce((at, t, i) => (t.name.startsWith(prefix) ? i : at), -1) : -1;
  const tied = new Set(skeleton.tied.flat());
  skeleton.tensors.forEach((t, i) => {
    if (t.kind !== 'param' || t.shape.length !== 2 || !isFloatDType(t.dtype)) roles.set(t.name, 'keep');
    else if (prefix && t.name.startsWith(prefix)) roles.set(t.name, /\.gate\.weight$/.test(t.name) ? 'router' : 'matrix');
    else if (tied.has(t.name) || (lastBlock >= 0 && i > lastBlock)) roles.set(t.name, 'head');
    else roles.set(t.name, 'embedding');
  });
  return roles;
}

/** The type a tensor of `role` with rows of `rowLength` values gets under `type`; undefined: it stays as stored. */
export function chooseType(role: TensorRole, rowLength: number, type: QuantizeType): { to: string; fallback?: string } | undefined {
  if (role === 'keep' || role === 'router') return undefined;
  const wanted: string = role === 'head' && bitsPerWeight(type) < bitsPerWeight('q6_k') ? 'q6_k' : type;
  let to: string = wanted;
  if (rowLength % dtypeInfo(to).blockSize !== 0) to = FALLBACK[to] ?? to;
  if (rowLength % dtypeInfo(to).blockSize !== 0) return { to: 'float16', fallback: `rows of ${rowLength} values are not whole 32-value blocks` };
  return to === wanted ? { to } : { to, fallback: `rows of ${rowLength} values are not whole ${dtypeInfo(wanted).blockSize}-value blocks of ${wanted}` };
}

/**
 * The skeleton as it will be loaded under `--quantize type` (each converted tensor's dtype replaced, so every size
 * the planner computes is the quantized one), and the choices made. Tensors already stored in a block type (a GGUF's)
 * keep theirs.
 */
export function quantizeSkeleton(skeleton: Skeleton, type: QuantizeType): { skeleton: Skeleton; choices: QuantizeChoice[] } {
  const roles = tensorRoles(skeleton);
  const choices: QuantizeChoice[] = [];
  const tensors = skeleton.tensors.map((t) => {
    const role = roles.get(t.name) ?? 'keep';
    const c = chooseType(role, t.shape[t.shape.length - 1] ?? 0, type);
    if (!c) return t;
    const choice: QuantizeChoice = { name: t.name, role, from: t.dtype, to: c.to };
    if (c.fallback) choice.fallback = c.fallback;
    choices.push(choice);
    return { ...t, dtype: c.to };
  });
  const fallbacks = choices.filter((c) => c.fallback);
  const warnings = [...skeleton.warnings];
  if (fallbacks.length > 0) {
    const first = fallbacks[0]!;
    warnings.push(`--quantize ${type}: ${fallbacks.length} tensor(s) take another type because ${first.fallback} (first: ${first.name} → ${first.to})`);
  }
  return { skeleton: { ...skeleton, tensors, warnings }, choices };
}

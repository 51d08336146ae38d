import { bytesPerElement, numel, tensorBytes } from './dtypes.js';
import { moduleSizes, tensorMemory } from './sizes.js';
import type { Skeleton } from './skeleton.js';

/** The facts `vramfit inspect` prints, each with where it came from. */
export interface ModelSummary {
  architecture: string;
  family: string;
  source: Skeleton['source'];
  /** Parameters, tied groups once. */
  parameters: number;
  /** Loaded bytes by dtype (params and buffers, tied groups once). */
  bytesByDtype: Record<string, number>;
  totalBytes: number;
  /** Where parameter count and bytes come from. */
  sizesFrom: string;
  blocks?: { prefix: string; count: number; class: string; bytesEach: number[] };
  noSplit: string[];
  tied: string[][];
  kv?: {
    dtype: string;
    bytesPerTokenPerLayer: number;
    bytesPerToken: number;
    /** For the 4096-token context people usually plan for. */
    bytesAt4k: number;
    attention: string;
    latentBytesPerToken?: number;
    slidingWindow?: number;
  };
  largest: { name: string; bytes: number };
  quantization?: Skeleton['quantization'];
  warnings: string[];
}

export function summarize(s: Skeleton, opts: { kvDtype?: string } = {}): ModelSummary {
  const mem = tensorMemory(s);
  const sizes = moduleSizes(s, mem);
  let parameters = 0;
  const bytesByDtype: Record<string, number> = {};
  for (const t of s.tensors) {
    const bytes = mem.get(t.name)!;
    if (bytes === 0 && tensorBytes(t.shape, t.dtype) !== 0) continue;
    if (t.kind === 'param') parameters += numel(t.shape);
    bytesByDtype[t.dtype] = (bytesByDtype[t.dtype] ?? 0) + bytes;
  }
  const summary: ModelSummary = {
    architecture: s.root_class,
    family: s.family,
    source: s.source,
    parameters,
    bytesByDtype,
    totalBytes: sizes.get('') ?? 0,
    sizesFrom: sizesFrom(s),
    noSplit: s.no_split_module_classes,
    tied: s.tied,
    largest: largestLayer(s, sizes),
    warnings: s.warnings,
  };
  if (s.blocks) {
    const b = s.blocks;
    summary.blocks = { ...b, bytesEach: Array.from({ length: b.count }, (_, i) => sizes.get(`${b.prefix}.${i}`) ?? 0) };
  }
  if (s.attention) {
    const a = s.attention;
    const dtype = opts.kvDtype ?? kvDefaultDtype(s);
    const per = a.kvElementsPerToken * bytesPerElement(dtype);
    summary.kv = {
      dtype,
      bytesPerTokenPerLayer: per,
      bytesPerToken: per * a.kvLayers,
      bytesAt4k: per * a.kvLayers * 4096,
      attention: a.attention,
    };
    if (a.kvLatentElementsPerToken !== undefined) summary.kv.latentBytesPerToken = a.kvLatentElementsPerToken * bytesPerElement(dtype) * a.kvLayers;
    if (a.slidingWindow !== undefined) summary.kv.slidingWindow = a.slidingWindow;
  }
  if (s.quantization) summary.quantization = s.quantization;
  return summary;
}

/** The KV cache is kept in the model's compute dtype: the config's 16-bit type, else float16. */
export function kvDefaultDtype(s: Skeleton): string {
  const d = s.config_dtype;
  return d === 'float32' || d === 'bfloat16' || d === 'float16' ? d : 'float16';
}

function sizesFrom(s: Skeleton): string {
  switch (s.source.kind) {
    case 'safetensors':
    case 'gguf':
      return 'tensor headers';
    case 'safetensors-index':
      return s.source.shapes === 'headers' ? 'tensor headers of every shard' : 'index names + architecture spec (shards not present)';
    case 'bin':
      return 'tensor headers (.bin pickle)';
    case 'bin-index':
      return s.source.shapes === 'headers' ? 'tensor headers of every .bin shard (pickles)' : 'index names + architecture spec (shards not present)';
    case 'config':
      return 'config only (architecture spec)';
    default:
      return 'skeleton file';
  }
}

/** The largest unit the planner cannot divide: a no-split module, or a leaf module outside them. */
function largestLayer(s: Skeleton, sizes: Map<string, number>): { name: string; bytes: number } {
  const noSplit = new Set(s.no_split_module_classes);
  const hasChild = new Set(s.modules.map((m) => m.name.slice(0, Math.max(0, m.name.lastIndexOf('.')))));
  let best = { name: '', bytes: 0 };
  let insideNoSplit = '';
  for (const m of s.modules) {
    if (insideNoSplit && m.name.startsWith(`${insideNoSplit}.`)) continue;
    const atomic = noSplit.has(m.class) || !hasChild.has(m.name);
    if (!atomic) continue;
    if (noSplit.has(m.class)) insideNoSplit = m.name;
    const bytes = sizes.get(m.name) ?? 0;
    if (bytes > best.bytes) best = { name: m.name, bytes };
  }
  return best;
}

import { FormatError } from '../util/errors.js';
import { ConfigReader } from './config.js';
import { readGgufHeader } from './formats/gguf.js';
import type { StoredTensor } from './reconcile.js';
import type { Skeleton, SkeletonSource } from './skeleton.js';
import { buildSkeleton } from './build-skeleton.js';

/**
 * GGUF files carry llama.cpp's own tensor names (`blk.N.attn_q.weight`) and hyper-parameters under
 * `<arch>.*` keys. For the families vramfit has specs for, both are translated to their Hugging Face
 * form so a GGUF model gets the same module structure as its safetensors original.
 */
interface GgufFamily {
  hfArchitecture: string;
  modelType: string;
}

const FAMILIES: Record<string, GgufFamily> = {
  llama: { hfArchitecture: 'LlamaForCausalLM', modelType: 'llama' },
  mistral: { hfArchitecture: 'MistralForCausalLM', modelType: 'mistral' },
  qwen2: { hfArchitecture: 'Qwen2ForCausalLM', modelType: 'qwen2' },
  qwen3: { hfArchitecture: 'Qwen3ForCausalLM', modelType: 'qwen3' },
  qwen3moe: { hfArchitecture: 'Qwen3MoeForCausalLM', modelType: 'qwen3_moe' },
};

/** llama.cpp writes Mixtral as architecture `llama` with experts. */
const MIXTRAL: GgufFamily = { hfArchitecture: 'MixtralForCausalLM', modelType: 'mixtral' };

/** Where each MoE family keeps its router and experts, and its experts' projection names (gate, up, down). */
const MOE_NAMES: Record<string, { block: string; proj: [string, string, string] }> = {
  mixtral: { block: 'block_sparse_moe', proj: ['w1', 'w3', 'w2'] },
  qwen3_moe: { block: 'mlp', proj: ['gate_proj', 'up_proj', 'down_proj'] },
};
const EXPERT_PROJ = { ffn_gate: 0, ffn_up: 1, ffn_down: 2 } as const;

/** llama.cpp tensor name pieces → transformers names inside one decoder layer (llama-style families). */
const LAYER_NAMES: Record<string, string> = {
  attn_norm: 'input_layernorm',
  attn_q: 'self_attn.q_proj',
  attn_k: 'self_attn.k_proj',
  attn_v: 'self_attn.v_proj',
  attn_output: 'self_attn.o_proj',
  attn_q_norm: 'self_attn.q_norm',
  attn_k_norm: 'self_attn.k_norm',
  ffn_norm: 'post_attention_layernorm',
  ffn_gate: 'mlp.gate_proj',
  ffn_up: 'mlp.up_proj',
  ffn_down: 'mlp.down_proj',
};

const GLOBAL_NAMES: Record<string, string> = {
  'token_embd.weight': 'model.embed_tokens.weight',
  'output_norm.weight': 'model.norm.weight',
  'output.weight': 'lm_head.weight',
};

/**
 * Maps a GGUF tensor name to its transformers name; undefined when there is no counterpart. `modelType` names the
 * MoE family whose router and per-expert tensors (`blk.N.ffn_gate_inp`, older files' `blk.N.ffn_gate.E`) to map.
 */
export function hfNameForGguf(name: string, modelType?: string): string | undefined {
  const global = GLOBAL_NAMES[name];
  if (global) return global;
  const moe = modelType ? MOE_NAMES[modelType] : undefined;
  const expert = /^blk\.(\d+)\.(ffn_gate|ffn_up|ffn_down)\.(\d+)\.weight$/.exec(name);
  if (expert && moe)
    return `model.layers.${expert[1]}.${moe.block}.experts.${expert[3]}.${moe.proj[EXPERT_PROJ[expert[2] as keyof typeof EXPERT_PROJ]]}.weight`;
  const m = /^blk\.(\d+)\.([a-z_0-9]+)\.(weight|bias)$/.exec(name);
  if (!m) return undefined;
  if (moe && m[2] === 'ffn_gate_inp') return `model.layers.${m[1]}.${moe.block}.gate.${m[3]}`;
  const piece = LAYER_NAMES[m[2]!];
  return piece ? `model.layers.${m[1]}.${piece}.${m[3]}` : undefined;
}

/**
 * llama.cpp stores a layer's experts as one 3-D tensor (`blk.N.ffn_gate_exps.weight`, [experts, rows, cols]),
 * expert-major, so expert e is one contiguous byte range: each becomes the per-expert tensor transformers names,
 * and the engine stacks them back as it does a safetensors checkpoint's.
 */
function splitExperts(
  t: StoredTensor & { shape: number[]; location: { file: string; range: [number, number] } },
  modelType: string,
  file: string,
): StoredTensor[] | undefined {
  const m = /^blk\.(\d+)\.(ffn_gate|ffn_up|ffn_down)_exps\.weight$/.exec(t.name);
  const moe = MOE_NAMES[modelType];
  if (!m || !moe) return undefined;
  if (t.shape.length !== 3) throw new FormatError(file, `${t.name} has shape [${t.shape.join(', ')}], expected [experts, rows, columns]`);
  const [experts, ...shape] = t.shape as [number, number, number];
  const [start, end] = t.location.range;
  if (experts < 1 || (end - start) % experts !== 0) throw new FormatError(file, `${t.name}: ${end - start} bytes do not split into ${experts} experts`);
  const each = (end - start) / experts;
  const proj = moe.proj[EXPERT_PROJ[m[2] as keyof typeof EXPERT_PROJ]];
  return Array.from({ length: experts }, (_, e) => ({
    name: `model.layers.${m[1]}.${moe.block}.experts.${e}.${proj}.weight`,
    shape,
    dtype: t.dtype,
    location: { file: t.location.file, range: [start + e * each, start + (e + 1) * each] as [number, number] },
  }));
}

type Meta = Record<string, unknown>;

/** A numeric metadata value; a key present with another type is refused rather than ignored. */
function num(meta: Meta, key: string, file: string): number | undefined {
  const v = meta[key];
  if (v === undefined) return undefined;
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  throw new FormatError(
    file,
    `GGUF key ${key} holds ${Array.isArray(v) ? 'an array' : `a ${typeof v} (${JSON.stringify(v).slice(0, 40)})`}, expected a number`,
  );
}

/** What the engine needs beyond the skeleton to run a GGUF model. */
export interface GgufModelFacts {
  config: ConfigReader;
  /** The transformers model_type the file maps to. */
  modelType: string;
  /** llama.cpp's converter permutes q/k rows of Llama-architecture weights for its NORMAL rope mode. */
  permutedQK: boolean;
  /** `rope_freqs.weight` (Llama 3 rope scaling as per-dimension factors), when the file has it. */
  ropeFreqs?: { file: string; range: [number, number] };
}

function ggufFacts(path: string, header: ReturnType<typeof readGgufHeader>): GgufModelFacts | undefined {
  const meta = header.metadata as Meta;
  const arch = typeof meta['general.architecture'] === 'string' ? (meta['general.architecture'] as string) : undefined;
  const experts = arch ? num(meta, `${arch}.expert_count`, path) : undefined;
  const family = arch === 'llama' && experts !== undefined && experts > 0 ? MIXTRAL : arch ? FAMILIES[arch] : undefined;
  if (!family || !arch) return undefined;
  const embd = header.tensors.find((t) => t.name === 'token_embd.weight');
  const floatTypes = header.tensors.filter((t) => /^(float|bfloat)/.test(t.dtype) && t.shape.length === 2);
  const config: Meta = {
    architectures: [family.hfArchitecture],
    model_type: family.modelType,
    hidden_size: num(meta, `${arch}.embedding_length`, path),
    num_hidden_layers: num(meta, `${arch}.block_count`, path),
    num_attention_heads: num(meta, `${arch}.attention.head_count`, path),
    num_key_value_heads: num(meta, `${arch}.attention.head_count_kv`, path) ?? num(meta, `${arch}.attention.head_count`, path),
    intermediate_size: num(meta, `${arch}.feed_forward_length`, path),
    max_position_embeddings: num(meta, `${arch}.context_length`, path),
    vocab_size: embd?.shape[0] ?? num(meta, `${arch}.vocab_size`, path),
    tie_word_embeddings: !header.tensors.some((t) => t.name === 'output.weight'),
    torch_dtype: floatTypes[0]?.dtype ?? 'float16',
  };
  if (family.modelType === 'mixtral') {
    config['num_local_experts'] = experts;
    config['num_experts_per_tok'] = num(meta, `${arch}.expert_used_count`, path);
  } else if (family.modelType === 'qwen3_moe') {
    config['num_experts'] = experts;
    config['num_experts_per_tok'] = num(meta, `${arch}.expert_used_count`, path);
    config['moe_intermediate_size'] = num(meta, `${arch}.expert_feed_forward_length`, path);
    // llama.cpp renormalises Qwen3-MoE's top-k weights (norm_w) unless the file says otherwise; the released
    // models all set norm_topk_prob.
    config['norm_topk_prob'] = meta[`${arch}.expert_weights_norm`] !== false;
    config['decoder_sparse_step'] = 1;
    config['mlp_only_layers'] = [];
  }
  const headDim = num(meta, `${arch}.attention.key_length`, path);
  if (headDim !== undefined) config['head_dim'] = headDim;
  const eps = num(meta, `${arch}.attention.layer_norm_rms_epsilon`, path);
  if (eps !== undefined) config['rms_norm_eps'] = eps;
  const theta = num(meta, `${arch}.rope.freq_base`, path);
  if (theta !== undefined) config['rope_theta'] = theta;
  const linear =
    num(meta, `${arch}.rope.scale_linear`, path) ??
    (meta[`${arch}.rope.scaling.type`] === 'linear' ? num(meta, `${arch}.rope.scaling.factor`, path) : undefined);
  if (linear !== undefined && linear !== 1) config['rope_scaling'] = { rope_type: 'linear', factor: linear };
  const facts: GgufModelFacts = { config: new ConfigReader(config, `${path} (GGUF metadata)`), modelType: family.modelType, permutedQK: arch === 'llama' };
  const freqs = header.tensors.find((t) => t.name === 'rope_freqs.weight');
  if (freqs) facts.ropeFreqs = { file: path, range: freqs.range };
  return facts;
}

/** The config and rope facts of a GGUF model of a mapped family; undefined for other architectures. */
export function readGgufFacts(path: string): GgufModelFacts | undefined {
  return ggufFacts(path, readGgufHeader(path));
}

export function readGgufModel(path: string, shown: string): Skeleton {
  const header = readGgufHeader(path);
  const meta = header.metadata as Meta;
  const arch = typeof meta['general.architecture'] === 'string' ? (meta['general.architecture'] as string) : undefined;
  const facts = ggufFacts(path, header);
  const source: SkeletonSource = { kind: 'gguf', path: shown, shapes: 'headers', files: [path], bytesRead: header.bytesRead };
  const file = path.split('/').pop() ?? path;
  const raw = header.tensors.map((t) => ({ name: t.name, shape: t.shape, dtype: t.dtype, location: { file, range: t.range } }));
  if (!facts) {
    const warnings = [`GGUF architecture ${JSON.stringify(arch ?? '(none)')} has no name mapping in vramfit; llama.cpp tensor names are kept`];
    return buildSkeleton(undefined, source, raw, warnings);
  }
  // rope_freqs.weight is Llama 3's rope scaling as data (transformers computes it): a fact, not a module.
  const stored: StoredTensor[] = raw
    .filter((t) => t.name !== 'rope_freqs.weight')
    .flatMap((t) => {
      const split = splitExperts(t, facts.modelType, path);
      if (split) return split;
      const hf = hfNameForGguf(t.name, facts.modelType);
      return [hf ? { ...t, name: hf } : t];
    });
  return buildSkeleton(facts.config, source, stored, []);
}

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
};

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

/** Maps a GGUF tensor name to its transformers name; undefined when there is no counterpart. */
export function hfNameForGguf(name: string): string | undefined {
  const global = GLOBAL_NAMES[name];
  if (global) return global;
  const m = /^blk\.(\d+)\.([a-z_0-9]+)\.(weight|bias)$/.exec(name);
  if (!m) return undefined;
  const piece = LAYER_NAMES[m[2]!];
  return piece ? `model.layers.${m[1]}.${piece}.${m[3]}` : undefined;
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
  /** llama.cpp's converter permutes q/k rows of Llama-architecture weights for its NORMAL rope mode. */
  permutedQK: boolean;
  /** `rope_freqs.weight` (Llama 3 rope scaling as per-dimension factors), when the file has it. */
  ropeFreqs?: { file: string; range: [number, number] };
}

function ggufFacts(path: string, header: ReturnType<typeof readGgufHeader>): GgufModelFacts | undefined {
  const meta = header.metadata as Meta;
  const arch = typeof meta['general.architecture'] === 'string' ? (meta['general.architecture'] as string) : undefined;
  const family = arch ? FAMILIES[arch] : undefined;
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
  const facts: GgufModelFacts = { config: new ConfigReader(config, `${path} (GGUF metadata)`), permutedQK: arch === 'llama' };
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
    .map((t) => {
      const hf = hfNameForGguf(t.name);
      return hf ? { ...t, name: hf } : t;
    });
  return buildSkeleton(facts.config, source, stored, []);
}

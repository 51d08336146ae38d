import { InputError } from '../util/errors.js';
import { lookupDType } from './dtypes.js';

/**
 * Typed access to a Hugging Face config.json, with the key aliases the families use
 * (`num_hidden_layers`/`n_layer`/`num_layers`, ...). Errors name the file and every key tried.
 */
export class ConfigReader {
  constructor(
    readonly raw: Record<string, unknown>,
    /** Where the config came from, for error messages. */
    readonly file: string,
  ) {}

  has(...keys: string[]): boolean {
    return keys.some((k) => this.raw[k] !== undefined && this.raw[k] !== null);
  }

  private find(keys: readonly string[]): [string, unknown] | undefined {
    for (const k of keys) {
      const v = this.raw[k];
      if (v !== undefined && v !== null) return [k, v];
    }
    return undefined;
  }

  private missing(keys: readonly string[], what: string): InputError {
    const tried = keys.length > 1 ? ` (tried ${keys.join(', ')})` : '';
    return new InputError(this.file, `missing ${what}: ${keys[0]}${tried}`, 'BAD_CONFIG');
  }

  /** A required positive integer. */
  int(keys: string | readonly string[], what?: string): number {
    const list = typeof keys === 'string' ? [keys] : keys;
    const found = this.find(list);
    if (!found) throw this.missing(list, what ?? list[0]!);
    return this.checkInt(found[0], found[1]);
  }

  optInt(keys: string | readonly string[], fallback: number): number;
  optInt(keys: string | readonly string[]): number | undefined;
  optInt(keys: string | readonly string[], fallback?: number): number | undefined {
    const list = typeof keys === 'string' ? [keys] : keys;
    const found = this.find(list);
    return found ? this.checkInt(found[0], found[1]) : fallback;
  }

  private checkInt(key: string, v: unknown): number {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
      throw new InputError(this.file, `${key} must be a non-negative integer, got ${JSON.stringify(v)}`, 'BAD_CONFIG');
    }
    const bound = SHAPE_BOUNDS.get(key);
    if (bound && (v < 1 || v > bound)) {
      throw new InputError(this.file, `${key} must be between 1 and ${bound.toLocaleString('en-US')}, got ${v.toLocaleString('en-US')}`, 'BAD_CONFIG');
    }
    return v;
  }

  optNumber(keys: string | readonly string[]): number | undefined {
    const list = typeof keys === 'string' ? [keys] : keys;
    const found = this.find(list);
    if (!found) return undefined;
    if (typeof found[1] !== 'number' || !Number.isFinite(found[1])) {
      throw new InputError(this.file, `${found[0]} must be a number, got ${JSON.stringify(found[1])}`, 'BAD_CONFIG');
    }
    const bound = NUMBER_BOUNDS.get(found[0]);
    if (bound && !bound.ok(found[1])) throw new InputError(this.file, `${found[0]} must be ${bound.says}, got ${found[1]}`, 'BAD_CONFIG');
    return found[1];
  }

  bool(keys: string | readonly string[], fallback: boolean): boolean {
    const list = typeof keys === 'string' ? [keys] : keys;
    const found = this.find(list);
    if (!found) return fallback;
    if (typeof found[1] !== 'boolean') {
      throw new InputError(this.file, `${found[0]} must be true or false, got ${JSON.stringify(found[1])}`, 'BAD_CONFIG');
    }
    return found[1];
  }

  optString(keys: string | readonly string[]): string | undefined {
    const list = typeof keys === 'string' ? [keys] : keys;
    const found = this.find(list);
    if (!found) return undefined;
    if (typeof found[1] !== 'string') {
      throw new InputError(this.file, `${found[0]} must be a string, got ${JSON.stringify(found[1])}`, 'BAD_CONFIG');
    }
    return found[1];
  }

  /** The sub-config of a composite model (`text_config`) or a quantization block. */
  optObject(key: string): Record<string, unknown> | undefined {
    const v = this.raw[key];
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  }

  /**
   * The dtype the checkpoint was saved in: `torch_dtype` (or `dtype` in newer re-saves); Qwen v1's
   * `bf16`/`fp16`/`fp32` flags; undefined for `auto` or when nothing says.
   */
  dtype(): string | undefined {
    const found = this.find(['torch_dtype', 'dtype']);
    if (found && typeof found[1] === 'string' && found[1] !== 'auto') {
      const info = lookupDType(found[1]);
      if (!info) throw new InputError(this.file, `${found[0]} names an unknown dtype ${JSON.stringify(found[1])}`, 'BAD_CONFIG');
      return info.name;
    }
    if (this.raw['bf16'] === true) return 'bfloat16';
    if (this.raw['fp16'] === true) return 'float16';
    if (this.raw['fp32'] === true) return 'float32';
    return undefined;
  }

  architectures(): string[] {
    const a = this.raw['architectures'];
    return Array.isArray(a) ? a.filter((x): x is string => typeof x === 'string') : [];
  }

  modelType(): string | undefined {
    const t = this.raw['model_type'];
    return typeof t === 'string' ? t : undefined;
  }
}

/** Common aliases, in the order the families use them. */
export const KEYS = {
  layers: ['num_hidden_layers', 'n_layer', 'num_layers'],
  hidden: ['hidden_size', 'n_embd', 'n_embed', 'd_model'],
  heads: ['num_attention_heads', 'n_head', 'num_heads'],
  kvHeads: ['num_key_value_heads', 'multi_query_group_num', 'num_kv_heads', 'n_head_kv'],
  vocab: ['vocab_size', 'padded_vocab_size', 'n_vocab'],
  intermediate: ['intermediate_size', 'ffn_hidden_size', 'n_inner'],
  maxPositions: ['max_position_embeddings', 'n_positions', 'seq_length', 'max_sequence_length'],
} as const;

/**
 * The largest value each shape key can physically mean (at least 1): far past any real model, yet small
 * enough that a hostile config cannot make the reader build 10⁹ modules or the engine a 0-head attention.
 */
/**
 * Values ggml asserts on or computes nonsense from: a norm's epsilon below 0 aborts the process; a
 * rope base of 0 or below makes every rotation NaN.
 */
const EPSILON = { ok: (v: number) => v >= 0 && v < 1, says: 'at least 0 and below 1' };
const POSITIVE = { ok: (v: number) => v > 0, says: 'above 0' };
const NUMBER_BOUNDS = new Map<string, { ok: (v: number) => boolean; says: string }>([
  ...['rms_norm_eps', 'layer_norm_eps', 'layer_norm_epsilon', 'layernorm_epsilon'].map((k) => [k, EPSILON] as const),
  ...['rope_theta', 'rope_ratio', 'rotary_emb_base'].map((k) => [k, POSITIVE] as const),
]);

const SHAPE_BOUNDS = new Map<string, number>([
  ...KEYS.layers.map((k) => [k, 10_000] as const),
  ...KEYS.hidden.map((k) => [k, 1 << 20] as const),
  ...KEYS.heads.map((k) => [k, 1 << 16] as const),
  ...KEYS.kvHeads.map((k) => [k, 1 << 16] as const),
  ...KEYS.vocab.map((k) => [k, 1 << 24] as const),
  ...KEYS.intermediate.map((k) => [k, 1 << 22] as const),
  ['head_dim', 1 << 16],
  // A model with no positions has nothing to run; 2^24 is far past any trained context.
  ...KEYS.maxPositions.map((k) => [k, 1 << 24] as const),
]);

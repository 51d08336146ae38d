import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { findArchitecture } from '../reader/architectures/index.js';
import { ConfigReader } from '../reader/config.js';
import { writeSafetensors } from '../reader/formats/safetensors-writer.js';

/** A small Llama-architecture model with random weights: enough to see a plan run end to end. */
export const DEMO_CONFIG = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_size: 256,
  intermediate_size: 704,
  num_hidden_layers: 8,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  vocab_size: 2048,
  max_position_embeddings: 2048,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  tie_word_embeddings: false,
  torch_dtype: 'float32',
};

/** mulberry32: a tiny deterministic generator, so a demo checkpoint is the same on every machine. */
function uniform(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** float32 → IEEE half bits, rounding to nearest even (subnormals included). */
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
function toHalf(v: number): number {
  f32[0] = v;
  const x = u32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let m = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (m ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    m |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rem = m & ((1 << shift) - 1);
    let r = m >>> shift;
    if (rem > half || (rem === half && r & 1)) r++;
    return sign | r;
  }
  let r = (e << 10) | (m >>> 13);
  const rem = m & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent (and overflows to infinity).
  if (rem > 0x1000 || (rem === 0x1000 && r & 1)) r++;
  return sign | r;
}

/**
 * Writes config.json and model.safetensors with normal(0, 0.5/√fan_in) matrices and unit norm
 * weights, the scale at which activations stay finite through every layer. `dtype` float16 stores
 * every tensor rounded to half precision (the same draws as float32 for one seed); it follows the
 * config's torch_dtype unless given.
 */
export function writeDemoCheckpoint(
  dir: string,
  config: Record<string, unknown> = DEMO_CONFIG,
  seed = 7,
  dtype: 'float32' | 'float16' = config['torch_dtype'] === 'float16' ? 'float16' : 'float32',
): void {
  mkdirSync(dir, { recursive: true });
  const cfg = new ConfigReader(config, 'demo config');
  const spec = findArchitecture(cfg)!;
  const layout = spec.build(cfg, 'float32');
  const aliases = new Set(layout.tied.flatMap((g) => g.slice(1)));
  const next = uniform(seed);
  const normal = (): number => Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
  const tensors = layout.tree.tensors
    .filter((t) => !(t.kind === 'buffer' && t.persistent === false) && !aliases.has(t.name))
    .map((t) => {
      const n = t.shape.reduce((a, b) => a * b, 1);
      const values = new Float32Array(n);
      if (t.shape.length === 1) values.fill(1);
      else {
        const scale = 0.5 / Math.sqrt(t.shape[1]!);
        for (let i = 0; i < n; i++) values[i] = normal() * scale;
      }
      if (dtype === 'float32') return { name: t.name, dtype, shape: t.shape, data: new Uint8Array(values.buffer) };
      const half = new Uint16Array(n);
      for (let i = 0; i < n; i++) half[i] = toHalf(values[i]!);
      return { name: t.name, dtype, shape: t.shape, data: new Uint8Array(half.buffer) };
    });
  writeFileSync(join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
}

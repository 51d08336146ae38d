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

/**
 * Writes config.json and model.safetensors with normal(0, 0.02·√(256/fan_in)) matrices and unit norm
 * weights, the scale at which activations stay finite through every layer.
 */
export function writeDemoCheckpoint(dir: string, config: Record<string, unknown> = DEMO_CONFIG, seed = 7): void {
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
      return { name: t.name, dtype: 'float32', shape: t.shape, data: new Uint8Array(values.buffer) };
    });
  writeFileSync(join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
}

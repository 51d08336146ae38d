import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findArchitecture } from '../../src/reader/architectures/index.js';
import { ConfigReader } from '../../src/reader/config.js';
import { tensorBytes } from '../../src/reader/dtypes.js';
import { writeSafetensors } from '../../src/reader/formats/safetensors-writer.js';

export const TINY_LLAMA_CONFIG = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 256,
  max_position_embeddings: 512,
  rms_norm_eps: 1e-5,
  tie_word_embeddings: false,
  torch_dtype: 'float32',
};

export function tempDir(prefix = 'vramfit-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function cleanup(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/** The tensors a config's architecture stores (persistent ones, tied groups once), in registration order. */
export function storedTensorsFor(config: Record<string, unknown>): { name: string; shape: number[]; dtype: string }[] {
  const cfg = new ConfigReader(config, 'config.json');
  const spec = findArchitecture(cfg);
  if (!spec) throw new Error('no spec for test config');
  const layout = spec.build(cfg, cfg.dtype() ?? 'float32');
  const aliases = new Set(layout.tied.flatMap((g) => g.slice(1)));
  return layout.tree.tensors
    .filter((t) => !(t.kind === 'buffer' && t.persistent === false) && !aliases.has(t.name))
    .map((t) => ({ name: t.name, shape: t.shape, dtype: t.dtype }));
}

/**
 * Writes config.json plus weights: one `model.safetensors`, or `shards` files with an index
 * (`writeShards: false` leaves only the index, as a config-and-index download would).
 */
export function writeTinyCheckpoint(
  dir: string,
  config: Record<string, unknown> = TINY_LLAMA_CONFIG,
  opts: { shards?: number; writeShards?: boolean; fill?: 'zero' | 'random' } = {},
): { names: string[]; totalSize: number } {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  const tensors = storedTensorsFor(config);
  const shards = opts.shards ?? 1;
  let totalSize = 0;
  if (shards === 1) {
    const r = writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' }, { fill: opts.fill ?? 'zero' });
    totalSize = r.fileSize - r.headerBytes;
    return { names: tensors.map((t) => t.name), totalSize };
  }
  const per = Math.ceil(tensors.length / shards);
  const weightMap: Record<string, string> = {};
  const width = String(shards).padStart(5, '0').length;
  for (let i = 0; i < shards; i++) {
    const file = `model-${String(i + 1).padStart(width, '0')}-of-${String(shards).padStart(width, '0')}.safetensors`;
    const part = tensors.slice(i * per, (i + 1) * per);
    for (const t of part) weightMap[t.name] = file;
    if (opts.writeShards !== false && part.length > 0) {
      const r = writeSafetensors(join(dir, file), part, { format: 'pt' }, { fill: opts.fill ?? 'zero' });
      totalSize += r.fileSize - r.headerBytes;
    }
  }
  if (opts.writeShards === false) totalSize = tensors.reduce((sum, t) => sum + tensorBytes(t.shape, t.dtype), 0);
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2));
  return { names: tensors.map((t) => t.name), totalSize };
}

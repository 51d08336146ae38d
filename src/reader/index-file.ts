import { readFileSync } from 'node:fs';
import { isAbsolute, join, normalize, sep } from 'node:path';
import { FormatError } from '../util/errors.js';

/** A sharded checkpoint's index (`model.safetensors.index.json`, `pytorch_model.bin.index.json`). */
export interface WeightIndex {
  file: string;
  /** Tensor name → shard file name, in the index's order. */
  weightMap: Map<string, string>;
  /** Shard file names in first-seen order. */
  shards: string[];
  totalSize?: number;
  bytesRead: number;
}

export function readWeightIndex(path: string): WeightIndex {
  const text = readFileSync(path, 'utf8');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new FormatError(path, `not valid JSON (${(e as Error).message})`);
  }
  if (!json || typeof json !== 'object' || Array.isArray(json)) throw new FormatError(path, 'expected a JSON object');
  const obj = json as Record<string, unknown>;
  const map = obj['weight_map'];
  if (!map || typeof map !== 'object' || Array.isArray(map)) throw new FormatError(path, 'missing "weight_map" object');
  const weightMap = new Map<string, string>();
  const shards: string[] = [];
  const seen = new Set<string>();
  for (const [name, shard] of Object.entries(map as Record<string, unknown>)) {
    if (typeof shard !== 'string' || shard === '') {
      throw new FormatError(path, `weight_map["${name}"] must be a shard file name, got ${JSON.stringify(shard)}`);
    }
    weightMap.set(name, shard);
    if (!seen.has(shard)) {
      // Checked once per shard (the first tensor naming a bad one is reported, as before).
      checkShardName(path, name, shard);
      seen.add(shard);
      shards.push(shard);
    }
  }
  if (weightMap.size === 0) throw new FormatError(path, 'weight_map is empty');
  const index: WeightIndex = { file: path, weightMap, shards, bytesRead: Buffer.byteLength(text) };
  const meta = obj['metadata'];
  if (meta && typeof meta === 'object') {
    const total = (meta as Record<string, unknown>)['total_size'];
    if (total !== undefined) {
      if (typeof total !== 'number' || !Number.isSafeInteger(total) || total < 0) {
        throw new FormatError(path, `metadata.total_size must be a non-negative integer, got ${JSON.stringify(total)}`);
      }
      index.totalSize = total;
    }
  }
  return index;
}

/** A shard must be a plain relative path inside the model folder: no `..`, no absolute path. */
function checkShardName(indexPath: string, tensor: string, shard: string): void {
  const norm = normalize(shard);
  if (isAbsolute(shard) || /^[A-Za-z]:/.test(shard) || norm.split(/[\\/]/).includes('..') || shard.includes('\\') || shard.includes('\0')) {
    throw new FormatError(indexPath, `weight_map["${tensor}"] points outside the model folder: ${JSON.stringify(shard)}`);
  }
}

export function shardPath(dir: string, shard: string): string {
  const p = join(dir, shard);
  if (!p.startsWith(dir.endsWith(sep) ? dir : dir + sep)) throw new FormatError(dir, `shard ${shard} is outside the model folder`);
  return p;
}

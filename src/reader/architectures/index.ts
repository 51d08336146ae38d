import type { ConfigReader } from '../config.js';
import { llama } from './llama.js';
import type { ArchitectureSpec } from './spec.js';

/** Every architecture vramfit knows, one spec per family. Add a family by adding its file here. */
export const ARCHITECTURES: readonly ArchitectureSpec[] = [
  llama,
];

/** The spec for a config: by `architectures[0]` first, then by `model_type`. */
export function findArchitecture(cfg: ConfigReader): ArchitectureSpec | undefined {
  for (const arch of cfg.architectures()) {
    const spec = ARCHITECTURES.find((s) => s.architectures.includes(arch));
    if (spec) return spec;
  }
  const type = cfg.modelType();
  return type === undefined ? undefined : ARCHITECTURES.find((s) => s.modelTypes.includes(type));
}

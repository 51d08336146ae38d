import type { ConfigReader } from '../config.js';
import { baichuan } from './baichuan.js';
import { bloom } from './bloom.js';
import { chatglm } from './chatglm.js';
import { deepseekV3 } from './deepseek-v3.js';
import { falcon } from './falcon.js';
import { gemma, gemma2 } from './gemma.js';
import { gpt2 } from './gpt2.js';
import { gptj } from './gptj.js';
import { llama } from './llama.js';
import { mistral } from './mistral.js';
import { mixtral } from './mixtral.js';
import { phiMixformer } from './phi-mixformer.js';
import { qwen } from './qwen.js';
import { qwen2 } from './qwen2.js';
import { qwen3 } from './qwen3.js';
import { qwen3Moe } from './qwen3-moe.js';
import type { ArchitectureSpec } from './spec.js';

/** Every architecture vramfit knows, one spec per family. Add a family by adding its file here. */
export const ARCHITECTURES: readonly ArchitectureSpec[] = [
  llama,
  mistral,
  mixtral,
  qwen,
  qwen2,
  qwen3,
  qwen3Moe,
  gemma,
  gemma2,
  deepseekV3,
  gpt2,
  gptj,
  chatglm,
  baichuan,
  falcon,
  bloom,
  phiMixformer,
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

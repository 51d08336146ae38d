import { makePlan, type PlanFlags } from '../cli/plan-command.js';
import { renderAccelerate, accelerateArgs } from '../planner/export/accelerate.js';
import { renderLlamaCpp } from '../planner/export/llamacpp.js';
import { renderSglang } from '../planner/export/sglang.js';
import { renderExllamav3, renderTabby } from '../planner/export/exllamav3.js';
import { renderVllm } from '../planner/export/vllm.js';
import { renderPython } from '../planner/export/python.js';
import { renderPlanTable } from '../planner/export/table.js';
import type { Plan, Target } from '../planner/plan.js';
import type { Skeleton } from '../reader/skeleton.js';

/** `vramfit plan`'s options as values; sizes and device lists are written as on the command line. */
export interface PlanOptions {
  /** Per-device caps: '0=5GiB,1=10GB,cpu=30GiB', or accelerate's dict. */
  maxMemory?: string | Record<string, number | string>;
  /** Simulated GPUs ('24GiB,24GiB') or known cards ('4xA100-80GB'); otherwise this machine's. */
  gpuMemory?: string;
  deviceSpec?: string;
  /** Physical GPUs as CUDA_VISIBLE_DEVICES takes them. */
  gpus?: string;
  /** 'virtual:N'. */
  devices?: string;
  offloadFolder?: string;
  ctx?: number | 'auto';
  batch?: number;
  ubatch?: number;
  kvDtype?: string;
  dtype?: string;
  /** The runtime that will run the plan (default vramfit's engine). */
  target?: Target;
  overhead?: string;
  gpuWeights?: string;
  /** GPUs across hosts: 'a=2xRTX-4090,b@10.0.0.2=1xA100-80GB', or a JSON/YAML cluster file (as `plan --cluster`). */
  cluster?: string;
  /** The link between cluster hosts: 'GBPS[,MS]'. */
  link?: string;
}

/**
 * Plans a model (a folder, file, catalog name or cached repo id) exactly as `vramfit plan` does: the
 * same inventory, caps, memory model and runtime pins (ChatGLM under transformers). Throws
 * InfeasiblePlanError (with verified remedies) when it does not fit, InputError for bad options.
 */
export async function plan(model: string, options: PlanOptions = {}): Promise<Plan> {
  return (await planWithSkeleton(model, options)).plan;
}

/** The plan and the skeleton it was made from (the llama.cpp export needs both). */
export async function planWithSkeleton(model: string, options: PlanOptions = {}): Promise<{ plan: Plan; skeleton: Skeleton }> {
  const flags: PlanFlags = {
    strategy: 'fit',
    format: 'table',
    ctx: String(options.ctx ?? 4096),
    batch: String(options.batch ?? 1),
    ubatch: String(options.ubatch ?? 512),
  };
  if (options.maxMemory !== undefined) flags.maxMemory = typeof options.maxMemory === 'string' ? options.maxMemory : JSON.stringify(options.maxMemory);
  for (const k of [
    'gpuMemory',
    'deviceSpec',
    'gpus',
    'devices',
    'offloadFolder',
    'kvDtype',
    'dtype',
    'target',
    'overhead',
    'gpuWeights',
    'cluster',
    'link',
  ] as const) {
    const v = options[k];
    if (v !== undefined) (flags as unknown as Record<string, unknown>)[k] = v;
  }
  const { plan: p, skeleton } = await makePlan(model, flags);
  return { plan: p, skeleton };
}

/** The plan's exports, as `vramfit plan --format …` prints them. */
export const exporters = {
  table: renderPlanTable,
  /** `{ device_map, max_memory }` for from_pretrained, as an object. */
  accelerate: accelerateArgs,
  accelerateJson: renderAccelerate,
  /** A complete transformers script; `model` is what from_pretrained loads (default: the repo id, else the source). */
  python: (p: Plan, model?: string): string => renderPython(p, model),
  /** llama.cpp flags for a GGUF model. */
  llamaCpp: (p: Plan, skeleton: Skeleton, modelPath: string): string => renderLlamaCpp(p, skeleton, modelPath),
  /** A `vllm serve` line with its notes, for a plan made with `target: 'vllm'`. */
  vllm: (p: Plan, skeleton: Skeleton, model: string): string => renderVllm(p, skeleton, model),
  /** An `sglang.launch_server` line with its notes, for a plan made with `target: 'sglang'`. */
  sglang: (p: Plan, skeleton: Skeleton, model: string): string => renderSglang(p, skeleton, model),
  /** A Python script loading the model with exllamav3 (use_per_device per GPU), for a plan made with `target: 'exllamav3'`. */
  exllamav3: (p: Plan, skeleton: Skeleton, model: string): string => renderExllamav3(p, skeleton, model),
  /** TabbyAPI's config.yml `model:` keys (gpu_split, cache_size, …), for a plan made with `target: 'exllamav3'`. */
  tabbyapi: (p: Plan, skeleton: Skeleton, model: string): string => renderTabby(p, skeleton, model),
};

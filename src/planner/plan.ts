/** A placement plan: a device for every module, and for every device what it will hold. */
export const PLAN_FORMAT = 'vramfit-plan';
/** 2: snake_case field names (device_map, kv_dtype, tied_duplicates, …) and accelerate's main device (`hosts`). */
export const PLAN_VERSION = 2;

export type DeviceKind = 'gpu' | 'virtual' | 'cpu' | 'disk';

/** A device the planner may use, with the cap the user allows on it. */
export interface PlanDeviceSpec {
  /** How plans and device maps name it: logical GPU index ('0', '1', …), 'cpu' or 'disk'. */
  id: string;
  kind: DeviceKind;
  /** Bytes this process may use there; Infinity for an unlimited disk. */
  cap: number;
  /** Runtime overhead (CUDA context, library workspaces) charged when the device is used. */
  overhead: number;
  name?: string;
  /** Physical GPU index when it differs from the logical one (CUDA_VISIBLE_DEVICES). */
  physical?: number;
  uuid?: string;
  /** Total memory of the device, for fractions (`set_per_process_memory_fraction`). */
  totalBytes?: number;
  /** Relative share for balancing (`--gpu-weights`); defaults to the cap. */
  weight?: number;
  /** The cap as the user typed it (`5GB`, `90%`, `free-2GiB`), when it was given. */
  capTyped?: string;
  /** --cluster: the host the GPU is in. */
  host?: string;
}

export interface Workload {
  /** Tokens of context the KV cache must hold, per sequence. */
  ctx: number;
  batch: number;
  /** Tokens computed in one forward pass (micro-batch): sizes activations and logits. */
  ubatch: number;
  kvDtype: string;
  /** dtype floating weights are loaded in; undefined keeps the checkpoint's. */
  dtype?: string;
}

export type Target = 'vramfit' | 'transformers' | 'llama.cpp' | 'vllm' | 'sglang' | 'exllamav3';

export interface DevicePlan {
  id: string;
  kind: DeviceKind;
  name?: string;
  physical?: number;
  uuid?: string;
  totalBytes?: number;
  cap: number;
  /** The cap as typed in --max-memory, when it was. */
  capTyped?: string;
  /** --cluster: the host the GPU is in. */
  host?: string;
  weights: number;
  kv: number;
  workspace: number;
  overhead: number;
  /** weights + kv + workspace + overhead (+ hosts.transit). */
  used: number;
  /**
   * transformers target, on accelerate's main device: the cpu/disk modules it executes (their KV cache
   * lives here and is part of kv; one module's weights at a time are copied in, `transit`).
   */
  hosts?: { kv: number; transit: number; modules: string[]; ranges: string[] };
  /** Modules placed here, in forward order. */
  modules: string[];
  /** Human ranges such as "layers 0–9". */
  ranges: string[];
  /** Tied tensors counted here although they also live on another device. */
  tiedDuplicates: string[];
}

export interface PlanQuantization {
  /** The --quantize value: a type, or auto. */
  mode: string;
  kvDtype: string;
  /** Each unit (a block's module, an embedding, the head): the type holding most of its bytes, its bytes as loaded and as stored. */
  units: { name: string; type: string; params: number; bytes: number; storedBytes: number }[];
  /** --quantize auto: what ranked the types — the error model, or each tensor's error measured on its weights (--measure). */
  ranking?: { by: 'model' } | { by: 'measured'; tensors: number; cache?: string; fromCache: boolean };
}

export interface Plan {
  format: typeof PLAN_FORMAT;
  version: number;
  /** `repo_id`: the Hugging Face repository it is published as, when known (catalog models, the HF cache). */
  model: { root_class: string; family: string; source: string; repo_id?: string };
  target: Target;
  strategy: string;
  workload: Workload;
  devices: DevicePlan[];
  /** Module → device id, in forward order; compact (a parent key when all its children share a device). */
  deviceMap: [string, string][];
  /** Device changes along one forward pass. */
  handoffs: number;
  warnings: string[];
  /** --quantize: each unit's weight type as loaded (auto: chosen by the planner) and the KV cache's. */
  quantization?: PlanQuantization;
  /** --cluster: the hosts in order, the link between them, the host boundaries the plan crosses and the decode bound they set. */
  cluster?: {
    hosts: { name: string; address: string; gpus: string[] }[];
    link_gbps: number;
    link_latency_ms: number;
    boundaries: number;
    decode_bound_tps: number | null;
  };
  /** --format vllm: the one memory fraction every GPU runs under, and what it costs the GPUs with larger caps. */
  vllm?: { gpu_memory_utilization: number; notes: string[] };
  /** --format sglang: the one static fraction, the bytes each GPU keeps outside it (activations, CUDA graphs), notes. */
  sglang?: { mem_fraction_static: number; dynamic_bytes: number; notes: string[] };
  /**
   * --format exllamav3|tabbyapi: the GiB each GPU gives exllamav3's loader (use_per_device, TabbyAPI's gpu_split:
   * the cap less what the CUDA context holds outside torch's allocator), the GPUs in that order, the cache in tokens,
   * the prefill chunk, and notes.
   */
  exllamav3?: { use_per_device: number[]; gpus: string[]; cache_tokens: number; chunk_size: number; notes: string[] };
  /** --compat accelerate only: accelerate's own numbers for this plan. */
  accelerate?: {
    module_sizes: Record<string, number>;
    max_memory_used: Record<string, number>;
    balanced_max_memory?: Record<string, number>;
    info_logs: string[];
  };
}

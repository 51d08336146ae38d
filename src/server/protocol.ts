/** Messages between the server's HTTP side (main thread) and its engine worker. Plain data only. */
import type { BatcherEvent, SequenceRequest } from '../engine/batcher.js';
import type { LoadOptions } from '../engine/load.js';
import type { Plan } from '../planner/plan.js';

export interface WorkerInit {
  model: string;
  load: Omit<LoadOptions, 'onProgress'>;
}

export interface DeviceStat {
  id: string;
  name: string;
  /** Bytes; null when uncapped. */
  cap: number | null;
  /** What the capped allocator has out now, and the most it ever had. */
  used: number;
  peak: number;
}

export interface EngineStats {
  devices: DeviceStat[];
  busySlots: number;
  /** Graphs kept built (host memory; bounded). */
  cachedGraphs: number;
  /** Native buffers, backends and graph allocators alive in the worker. */
  native: { buffers: number; backends: number; graphAllocators: number };
}

export interface ModelInfo {
  family: string;
  /** Folder of config.json / the GGUF, where the tokenizer files are looked for. */
  modelDir: string;
  /** The GGUF the weights come from, whose metadata holds a tokenizer when no files lie beside it. */
  ggufFile?: string;
  ctx: number;
  slots: number;
  ubatch: number;
  vocab: number;
  parameters: number;
  weightBytes: number;
  format: string;
  dtype: string;
  plan: Plan;
  stats: EngineStats;
}

export type ToWorker = { type: 'submit'; req: SequenceRequest } | { type: 'cancel'; id: number } | { type: 'shutdown' };

export type FromWorker =
  | { type: 'ready'; info: ModelInfo }
  | { type: 'load-error'; message: string; code: string; exitCode: 1 | 2; stack?: string }
  | { type: 'events'; events: BatcherEvent[]; stats: EngineStats }
  | { type: 'closed'; stats: EngineStats };

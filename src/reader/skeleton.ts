/**
 * The skeleton: a model's structure without its weights, what PyTorch users get from building a model
 * under `init_empty_weights()`. Its JSON form is a superset of the `input` object of the accelerate
 * oracle cases (`root_class`, `modules`, `tensors`, `tied`), so one file feeds the planner and parity tests.
 */
export const SKELETON_FORMAT = 'vramfit-skeleton';
export const SKELETON_VERSION = 1;

export interface SkeletonModule {
  /** Dotted path from the root; the root itself is not listed. */
  name: string;
  class: string;
}

export interface TensorLocation {
  /** Path of the file holding the data, relative to the model directory (absolute for a lone file). */
  file: string;
  /** Absolute byte range [start, end) inside that file, when the header tells. */
  range?: [number, number];
  /** Why a stored tensor has no range (a non-contiguous view in a PyTorch .bin): its data is not one byte range. */
  noRange?: string;
}

export interface SkeletonTensor {
  name: string;
  shape: number[];
  dtype: string;
  kind: 'param' | 'buffer';
  /** Buffers only: false for non-persistent buffers (rotary `inv_freq`), which no checkpoint stores. */
  persistent?: boolean;
  location?: TensorLocation;
  /**
   * Its bytes are the transpose of `shape` (row-major [shape[1], shape[0]]): llama.cpp's converter writes GPT-2's
   * Conv1D weights ([in, out]) the way a Linear stores them. Same size; only a loader cares.
   */
  transposed?: true;
}

/** What the planner needs to budget generation. */
export interface AttentionFacts {
  numLayers: number;
  hiddenSize: number;
  vocabSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Elements of K plus V stored per token per layer (MHA/GQA/MQA: 2 × kvHeads × headDim). */
  kvElementsPerToken: number;
  /** How the KV elements were counted: 'mha' | 'gqa' | 'mqa' | 'mla'. */
  attention: 'mha' | 'gqa' | 'mqa' | 'mla';
  /** Layers that keep a KV cache (all of them for the models here). */
  kvLayers: number;
  /** Sliding-window size where some layers only cache that many tokens. */
  slidingWindow?: number;
  /** MLA only: elements per token per layer when the latent (compressed) cache is kept, as llama.cpp does. */
  kvLatentElementsPerToken?: number;
  intermediateSize?: number;
  maxPositionEmbeddings?: number;
  numExperts?: number;
  expertsPerToken?: number;
}

/** The repeated decoder blocks: where pipeline stages are cut. */
export interface BlockFacts {
  /** Module holding the numbered blocks, e.g. `model.layers`. */
  prefix: string;
  count: number;
  class: string;
}

export type SourceKind = 'safetensors' | 'safetensors-index' | 'bin' | 'bin-index' | 'gguf' | 'config' | 'skeleton' | 'oracle-case';

/** Where the numbers came from, so `inspect` can say so. */
export interface SkeletonSource {
  kind: SourceKind;
  /** What the user pointed at (a directory, a file, a repo id). */
  path: string;
  /** The Hugging Face repository the model is published as, when known (catalog models, the HF cache). */
  repoId?: string;
  /** The skeleton JSON this was read from: its file paths and ranges are claims, checked before use. */
  skeletonFile?: string;
  /** Shapes and dtypes: read from headers, or synthesized from the architecture spec and config. */
  shapes: 'headers' | 'synthesized';
  files: string[];
  /** Bytes read from disk to build this skeleton (headers only). */
  bytesRead: number;
  /** `metadata.total_size` of an index, when present. */
  indexTotalSize?: number;
  /** Tensors stored in the checkpoint that the model ties to another (Falcon's `lm_head.weight`). */
  storedTiedCopies?: string[];
  /** The local model store a name was resolved in (`files[0]` is then the store's GGUF blob or file). */
  store?: SkeletonStore;
}

/** A model named as Ollama or LM Studio holds it, with what Ollama's manifest adds to the weights. */
export interface SkeletonStore {
  kind: 'ollama' | 'lmstudio';
  /** Canonical name in that store (`llama3.2:latest`, `publisher/repo`). */
  name: string;
  /** Ollama: the manifest file. */
  manifest?: string;
  /** Ollama: the Go template that formats prompts. */
  template?: string;
  /** Ollama: the default system prompt. */
  system?: string;
  /** Ollama: default sampling and context options (stop, temperature, num_ctx, …). */
  params?: Record<string, unknown>;
}

export interface QuantizationInfo {
  method: string;
  bits?: number;
  groupSize?: number;
  /** False when tensor sizes follow the quantized layout that vramfit does not model yet. */
  sizesModelled: boolean;
}

export interface Skeleton {
  format: typeof SKELETON_FORMAT;
  version: number;
  root_class: string;
  modules: SkeletonModule[];
  tensors: SkeletonTensor[];
  tied: string[][];
  no_split_module_classes: string[];
  /** Architecture family that built it (`llama`, `chatglm`, ...) or `unknown`. */
  family: string;
  model_type?: string;
  /** dtype the config asks for (`torch_dtype`/`dtype`), when it says. */
  config_dtype?: string;
  blocks?: BlockFacts;
  attention?: AttentionFacts;
  quantization?: QuantizationInfo;
  source: SkeletonSource;
  warnings: string[];
}

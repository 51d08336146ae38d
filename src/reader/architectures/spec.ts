import type { LlamaStyleOptions } from './llama-style.js';
import type { ConfigReader } from '../config.js';
import type { ModuleTree } from '../module-builder.js';
import type { AttentionFacts, BlockFacts } from '../skeleton.js';

/** A model's structure as its architecture's constructor builds it, from the config alone. */
export interface ModelLayout {
  rootClass: string;
  tree: ModuleTree;
  /** Groups of tensor names that share one Parameter; the first name is the owner. */
  tied: string[][];
  /** transformers' `_no_split_modules` for this class. */
  noSplit: string[];
  blocks: BlockFacts;
  attention: AttentionFacts;
}

/**
 * A tensor an older version of the modelling code registered (and so saved) that the current code
 * does not: Llama's per-layer `rotary_emb.inv_freq`, GPT-J's `attn.bias`. When a checkpoint carries
 * one, the reader adds it to the skeleton as a persistent buffer so sizes match the checkpoint.
 */
export interface LegacyTensor {
  /** Module that owns it (created if the layout lacks it) and that module's class. */
  module: string;
  moduleClass: string;
  shape: number[];
  /** Candidate dtypes, most likely first; an index without headers does not say which was saved. */
  dtypes: string[];
}

export interface ArchitectureSpec {
  /** Short family name shown by `inspect` (`llama`, `chatglm`, ...). */
  family: string;
  /** `config.architectures[0]` values this spec builds. */
  architectures: readonly string[];
  /** `config.model_type` values, used when `architectures` is absent. */
  modelTypes: readonly string[];
  /** Builds the layout; `dtype` is the dtype floating params are synthesized in. */
  build(cfg: ConfigReader, dtype: string): ModelLayout;
  legacyTensor?(name: string, cfg: ConfigReader, dtype: string): LegacyTensor | undefined;
  /** Stored tensors the runtime skips on load (DeepSeek's MTP layer): returns why, or undefined. */
  ignoredStored?(name: string, cfg: ConfigReader): string | undefined;
  /** Config values when the config does not name a dtype (`float32`, as PretrainedConfig does). */
  defaultDtype?: string;
  /**
   * Llama-shaped families: the config as the family's transformers class reads it (its own defaults
   * applied) and how it differs from Llama. The reader builds the layout from it and the engine its
   * hyper-parameters, so the two cannot disagree.
   */
  llamaStyle?(cfg: ConfigReader): { cfg: ConfigReader; options: LlamaStyleOptions };
}

/**
 * The layout every decoder's build ends with: blocks that are its no-split class, an optional tie of
 * the input embedding and the head, and standard attention over its blocks.
 */
export function decoderLayout(o: {
  rootClass: string;
  tree: ModuleTree;
  /** Embedding and head weight names when the config ties them. */
  tie?: [string, string] | undefined;
  blocks: BlockFacts;
  attention: Omit<Parameters<typeof standardAttention>[0], 'numLayers'>;
}): ModelLayout {
  return {
    rootClass: o.rootClass,
    tree: o.tree,
    tied: o.tie ? [[...o.tie]] : [],
    noSplit: [o.blocks.class],
    blocks: o.blocks,
    attention: standardAttention({ numLayers: o.blocks.count, ...o.attention }),
  };
}

/** K and V elements for one token in one layer of multi-head, grouped-query or multi-query attention. */
export function standardAttention(opts: {
  numLayers: number;
  hiddenSize: number;
  vocabSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize?: number;
  maxPositionEmbeddings?: number;
  slidingWindow?: number;
  numExperts?: number;
  expertsPerToken?: number;
}): AttentionFacts {
  const kind = opts.numKvHeads === opts.numHeads ? 'mha' : opts.numKvHeads === 1 ? 'mqa' : 'gqa';
  const facts: AttentionFacts = {
    numLayers: opts.numLayers,
    hiddenSize: opts.hiddenSize,
    vocabSize: opts.vocabSize,
    numHeads: opts.numHeads,
    numKvHeads: opts.numKvHeads,
    headDim: opts.headDim,
    kvElementsPerToken: 2 * opts.numKvHeads * opts.headDim,
    attention: kind,
    kvLayers: opts.numLayers,
  };
  for (const k of ['intermediateSize', 'maxPositionEmbeddings', 'slidingWindow', 'numExperts', 'expertsPerToken'] as const) {
    if (opts[k] !== undefined) facts[k] = opts[k];
  }
  return facts;
}

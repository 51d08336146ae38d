import { InputError } from '../util/errors.js';
import { ARCHITECTURES, findArchitecture } from './architectures/index.js';
import { standardAttention, type ArchitectureSpec } from './architectures/spec.js';
import { KEYS, type ConfigReader } from './config.js';
import { guessStructure } from './guess-structure.js';
import { reconcile, storedBytes, type StoredTensor } from './reconcile.js';
import {
  SKELETON_FORMAT,
  SKELETON_VERSION,
  type AttentionFacts,
  type QuantizationInfo,
  type Skeleton,
  type SkeletonSource,
  type SkeletonTensor,
} from './skeleton.js';

/**
 * Turns what was read (a config, stored tensor names with or without shapes) into a skeleton: the
 * architecture spec synthesizes the model, the checkpoint's own facts override it where known.
 */
/**
 * The dtype floating tensors were saved in: the config's, else (no dtype in config, index only) the one
 * that makes the synthesized total equal the index's `total_size`, else float32 as PretrainedConfig assumes.
 */
function chooseDtype(cfg: ConfigReader, spec: ArchitectureSpec, source: SkeletonSource, stored: StoredTensor[] | undefined, warnings: string[]): string {
  const fromConfig = cfg.dtype();
  if (fromConfig) return fromConfig;
  const headerFloat = stored?.find((s) => s.dtype && /^(float|bfloat)/.test(s.dtype))?.dtype;
  if (headerFloat) return headerFloat;
  if (source.indexTotalSize !== undefined && stored) {
    for (const dtype of ['float32', 'bfloat16']) {
      const r = reconcileWith(cfg, spec, dtype, stored, source.indexTotalSize);
      if (r.total() === source.indexTotalSize) {
        warnings.push(
          `config.json names no dtype; the index's total_size says ${dtype === 'float32' ? 'float32' : '16-bit (bfloat16 assumed; float16 has the same size)'}`,
        );
        return dtype;
      }
    }
  }
  const fallback = spec.defaultDtype ?? 'float32';
  warnings.push(`config.json names no dtype; assuming ${fallback}`);
  return fallback;
}

function reconcileWith(
  cfg: ConfigReader,
  spec: ArchitectureSpec,
  dtype: string,
  storedRaw: StoredTensor[],
  total: number | undefined,
  recomputed?: (name: string) => boolean,
) {
  const layout = spec.build(cfg, dtype);
  const stored = addBasePrefix(
    storedRaw,
    layout.tree.tensors.map((t) => t.name),
  );
  const r = reconcile({
    modules: layout.tree.modules,
    tensors: layout.tree.tensors,
    tied: layout.tied,
    stored,
    legacy: spec.legacyTensor ? (n) => spec.legacyTensor!(n, cfg, dtype) : undefined,
    ignored: spec.ignoredStored ? (n) => spec.ignoredStored!(n, cfg) : undefined,
    indexTotalSize: total,
    ...(recomputed ? { recomputed } : {}),
  });
  return { layout, r, total: (): number => storedBytes(r.tensors, r.storedTiedCopies, layout.tied) };
}

/**
 * A checkpoint saved from the base model (`BloomModel` rather than `BloomForCausalLM`) lacks the
 * `transformer.` prefix; transformers adds it on load, and so does the reader.
 */
function addBasePrefix(stored: StoredTensor[], names: string[]): StoredTensor[] {
  if (stored.length === 0) return stored;
  const known = new Set(names);
  if (stored.some((s) => known.has(s.name))) return stored;
  const bases = [...new Set(names.filter((n) => n.includes('.')).map((n) => n.slice(0, n.indexOf('.'))))];
  for (const base of bases) {
    const renamed = stored.map((s) => (known.has(`${base}.${s.name}`) ? { ...s, name: `${base}.${s.name}` } : s));
    if (renamed.filter((s) => known.has(s.name)).length > stored.length / 2) return renamed;
  }
  return stored;
}

function quantizationOf(cfg: ConfigReader | undefined): QuantizationInfo | undefined {
  // ChatGLM's own int4/int8 layout, which its spec synthesizes exactly.
  const chatglmBits = cfg?.optInt('quantization_bit');
  if (chatglmBits) return { method: 'chatglm', bits: chatglmBits, sizesModelled: true };
  const q = cfg?.optObject('quantization_config') ?? cfg?.optObject('quantization');
  if (!q) return undefined;
  const method = typeof q['quant_method'] === 'string' ? (q['quant_method'] as string) : q['bits'] !== undefined ? 'mlx' : 'unknown';
  const info: QuantizationInfo = { method, sizesModelled: false };
  const bits = q['bits'] ?? (q['load_in_4bit'] === true ? 4 : q['load_in_8bit'] === true ? 8 : undefined);
  if (typeof bits === 'number') info.bits = bits;
  const group = q['group_size'];
  if (typeof group === 'number') info.groupSize = group;
  return info;
}

/** `recomputed`: buffers the source format never stores because the runtime recomputes them (see ReconcileInput). */
export function buildSkeleton(
  cfg: ConfigReader | undefined,
  source: SkeletonSource,
  stored: StoredTensor[] | undefined,
  warnings: string[] = [],
  recomputed?: (name: string) => boolean,
): Skeleton {
  const spec = cfg ? findArchitecture(cfg) : undefined;
  const quantization = quantizationOf(cfg);
  if (!spec) return buildUnknown(cfg, source, stored, warnings, quantization);

  const dtype = chooseDtype(cfg!, spec, source, stored, warnings);
  const { layout, r } = reconcileWith(cfg!, spec, dtype, stored ?? [], source.indexTotalSize, recomputed);
  const tensors = stored ? r.tensors : layout.tree.tensors;
  const modules = stored ? r.modules : layout.tree.modules;
  const extraWarnings: string[] = [];
  if (stored) {
    if (quantization && !quantization.sizesModelled) {
      // A quantized checkpoint stores other tensors (qweight, scales, ...) in place of the float weights.
      quantization.sizesModelled = source.shapes === 'headers';
      if (source.shapes === 'headers') {
        dropReplaced(tensors, r.missing);
        for (const u of r.unexpected) insertStored(modules, tensors, u);
      } else {
        extraWarnings.push(
          `quantized checkpoint (${describeQuant(quantization)}): its tensor layout is not modelled without headers, so sizes are those of the unquantized model` +
            (source.indexTotalSize !== undefined ? `; the checkpoint itself holds ${source.indexTotalSize} bytes` : ''),
        );
      }
    } else {
      extraWarnings.push(...r.warnings);
      if (source.shapes === 'headers') for (const u of r.unexpected) insertStored(modules, tensors, u);
    }
    if (r.storedTiedCopies.length > 0) source.storedTiedCopies = r.storedTiedCopies;
  } else if (quantization && !quantization.sizesModelled) {
    extraWarnings.push(`quantized model (${describeQuant(quantization)}): sizes are those of the unquantized model`);
  }

  const skeleton: Skeleton = {
    format: SKELETON_FORMAT,
    version: SKELETON_VERSION,
    root_class: layout.rootClass,
    modules,
    tensors,
    tied: layout.tied,
    no_split_module_classes: layout.noSplit,
    family: spec.family,
    blocks: layout.blocks,
    attention: layout.attention,
    source,
    warnings: [...warnings, ...extraWarnings],
  };
  const modelType = cfg!.modelType();
  if (modelType) skeleton.model_type = modelType;
  const cd = cfg!.dtype();
  if (cd) skeleton.config_dtype = cd;
  if (quantization) skeleton.quantization = quantization;
  return skeleton;
}

function describeQuant(q: QuantizationInfo): string {
  return [q.method, q.bits !== undefined ? `${q.bits}-bit` : undefined, q.groupSize !== undefined ? `group ${q.groupSize}` : undefined]
    .filter(Boolean)
    .join(', ');
}

/** Float weights a quantized layout replaced (GPTQ's `weight` → `qweight`, ...). */
function dropReplaced(tensors: SkeletonTensor[], missing: readonly string[]): void {
  const gone = new Set(missing);
  for (let i = tensors.length - 1; i >= 0; i--) if (gone.has(tensors[i]!.name)) tensors.splice(i, 1);
}

/** A stored tensor the spec does not define still occupies memory: put it under its module. */
function insertStored(modules: Skeleton['modules'], tensors: SkeletonTensor[], s: StoredTensor): void {
  if (!s.shape || !s.dtype) return;
  const t: SkeletonTensor = { name: s.name, shape: s.shape, dtype: s.dtype, kind: 'param' };
  if (s.location) t.location = s.location;
  const parts = s.name.split('.');
  for (let i = 1; i < parts.length; i++) {
    const path = parts.slice(0, i).join('.');
    if (!modules.some((m) => m.name === path)) modules.push({ name: path, class: 'Module' });
  }
  const owner = parts.slice(0, -1).join('.');
  let at = -1;
  tensors.forEach((x, i) => {
    if (owner === '' || x.name.startsWith(`${owner}.`)) at = i;
  });
  tensors.splice(at < 0 ? tensors.length : at + 1, 0, t);
}

function buildUnknown(
  cfg: ConfigReader | undefined,
  source: SkeletonSource,
  stored: StoredTensor[] | undefined,
  warnings: string[],
  quantization: QuantizationInfo | undefined,
): Skeleton {
  const arch = cfg?.architectures()[0] ?? cfg?.modelType();
  const where = cfg?.file ?? source.path;
  const withShapes = stored?.filter((s) => s.shape && s.dtype);
  if (!stored || !withShapes || withShapes.length !== stored.length) {
    const why = arch ? `unknown architecture ${arch}` : 'no config.json to tell the architecture';
    throw new InputError(where, `${why}, and no safetensors headers to read shapes from; vramfit knows ${knownList()}`, 'UNKNOWN_ARCHITECTURE');
  }
  const tensors: SkeletonTensor[] = withShapes.map((s) => {
    const t: SkeletonTensor = { name: s.name, shape: s.shape!, dtype: s.dtype!, kind: 'param' };
    if (s.location) t.location = s.location;
    return t;
  });
  const guess = guessStructure(tensors);
  const skeleton: Skeleton = {
    format: SKELETON_FORMAT,
    version: SKELETON_VERSION,
    root_class: arch ?? 'UnknownModel',
    modules: guess.modules,
    tensors: guess.tensors,
    tied: [],
    no_split_module_classes: guess.noSplit,
    family: 'unknown',
    source,
    warnings: [...warnings, ...(arch ? [`${arch} has no architecture spec in vramfit`] : []), ...guess.warnings],
  };
  if (guess.blocks) skeleton.blocks = guess.blocks;
  const attention = cfg ? genericAttention(cfg) : undefined;
  if (attention) skeleton.attention = attention;
  if (quantization) skeleton.quantization = { ...quantization, sizesModelled: true };
  const mt = cfg?.modelType();
  if (mt) skeleton.model_type = mt;
  return skeleton;
}

/** KV facts from the common config keys, for an architecture without a spec. */
function genericAttention(cfg: ConfigReader): AttentionFacts | undefined {
  if (!cfg.has(...KEYS.layers) || !cfg.has(...KEYS.hidden) || !cfg.has(...KEYS.heads)) return undefined;
  const hidden = cfg.int(KEYS.hidden);
  const heads = cfg.int(KEYS.heads);
  return standardAttention({
    numLayers: cfg.int(KEYS.layers),
    hiddenSize: hidden,
    vocabSize: cfg.optInt(KEYS.vocab, 0),
    numHeads: heads,
    numKvHeads: cfg.optInt(KEYS.kvHeads, heads),
    headDim: cfg.optInt(['head_dim', 'kv_channels'], Math.floor(hidden / heads)),
  });
}

function knownList(): string {
  return ARCHITECTURES.map((a) => a.family).join(', ');
}

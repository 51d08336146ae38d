/**
 * The compute workspace a plan needs, measured rather than estimated: the real stage graphs at a full
 * micro-batch and the full context are reserved without allocating, over weight and cache tensors that
 * hold placeholder pointers. This is the engine's calibration of the memory model, done before the plan.
 */
import { ONE_BLOCK, rolesKey, type MeasuredWorkspace } from '../planner/fit.js';
import type { EngineArchitecture, EngineHyper } from './architectures/types.js';
import type { BufferType, Gallocr, GgmlType, Ggml, Graph, Tensor } from './ggml/binding.js';
import { buildStageGraph, type Lookups, type StagePlan } from './stages.js';

/**
 * What to reserve for a compute buffer measured at the worst-case shape. ggml's graph allocator packs
 * tensors best-fit, and a graph of smaller tensors can pack worse: a decode step over 32 cached rows
 * has measured 1,728 B where the full 64 rows took 1,536 B. The reservation keeps room for that: 2 %
 * and 64 alignment units over the worst case.
 */
export function withPackingMargin(bytes: number, alignment: number): number {
  return bytes === 0 ? 0 : Math.ceil(bytes * 1.02) + 64 * alignment;
}

/** Compute buffer a graph needs, from a no-allocation reservation on `buft`. */
export function measureGraph(g: Ggml, buft: BufferType, graph: Graph): number {
  const probe = g.raw.ggml_gallocr_new(buft) as Gallocr;
  try {
    const sizes = [0];
    g.raw.ggml_gallocr_reserve_n_size(probe, graph, null, null, sizes);
    return Number(sizes[0]);
  } finally {
    g.raw.ggml_gallocr_free(probe);
  }
}

/**
 * Layers that stand for all the others: the first layer of each distinct kind (a kind is the list of
 * its tensors' roles and shapes: an MoE model's dense `mlp_only_layers` differ from its sparse ones),
 * and at least two layers so a tensor living from one layer into the next is counted.
 */
export function representativeLayers(arch: EngineArchitecture, h: EngineHyper): number[] {
  const kinds = new Map<string, number>();
  const t = arch.tensors(h);
  for (let i = 0; i < h.layers; i++) {
    const kind = t
      .layer(i)
      .map((t) => `${t.name.replace(/\.\d+\./, '.#.')}:${t.ne.join('x')}:${t.stack?.length ?? 0}`)
      .join('|');
    if (!kinds.has(kind)) kinds.set(kind, i);
  }
  const picked = [...kinds.values()];
  if (picked.length === 1 && h.layers > 1) picked.push(1);
  return picked;
}

/**
 * Measures every combination of roles (embedding, blocks, head) a device can hold, on each buffer type
 * the run uses (a GPU backend may align or pad differently from the CPU), keeping the largest.
 */
export function measureWorkspace(
  g: Ggml,
  arch: EngineArchitecture,
  h: EngineHyper,
  typeOf: (name: string, ne: number[]) => GgmlType,
  ctx: number,
  ubatch: number,
  kvType: GgmlType,
  bufts: readonly { buft: BufferType; gpu: boolean; alignment: number }[],
): MeasuredWorkspace {
  const t = arch.tensors(h);
  const layers = representativeLayers(arch, h);
  const specs = [...t.embed, ...t.norm, ...t.head, ...layers.flatMap((i) => t.layer(i))];
  const c = g.init(g.tensorOverhead() * (specs.length + 2 * layers.length + 4), true);
  const tensors = new Map<string, Tensor>();
  const made: Tensor[] = [];
  const make = (name: string, ne: number[], type: GgmlType): Tensor => {
    const x = g.newTensor(c, type, ne);
    g.setPlaceholderData(x, true);
    made.push(x);
    tensors.set(name, x);
    return x;
  };
  try {
    for (const spec of specs) {
      if (!tensors.has(spec.name)) make(spec.name, spec.ne, typeOf(spec.stack?.[0] ?? spec.name, spec.ne));
    }
    const caches = new Map(layers.map((i) => [i, { k: make(`k${i}`, [h.kvDim, ctx], kvType), v: make(`v${i}`, [h.kvDim, ctx], kvType) }]));
    const look: Lookups = { weight: (name) => tensors.get(name)!, cache: (i) => caches.get(i)! };
    const out: MeasuredWorkspace = {};
    for (const embed of [false, true]) {
      for (const block of [false, true]) {
        for (const head of [false, true]) {
          // 'none': a device that only applies the final norm and hands the state on. The embedding and
          // a (tied) head with no block on the device are two stages, the blocks running elsewhere in
          // between: the device needs the larger of the two graphs, not one graph holding both.
          const parts: StagePlan[] =
            embed && head && !block
              ? [
                  { embed: true, layers: [], norm: false, head: false },
                  { embed: false, layers: [], norm: false, head: true },
                ]
              : [{ embed, layers: block ? layers : [], norm: head || (!embed && !block), head }];
          // A GPU stage's graph differs (contiguous attention operands): GPUs get their own keys.
          for (const { buft, gpu, alignment } of bufts) {
            const measure = (stageParts: StagePlan[]): number => {
              let most = 0;
              for (const part of stageParts) {
                const b = buildStageGraph(g, arch, h, { ...part, gpu }, look, ubatch, ctx);
                try {
                  most = Math.max(most, measureGraph(g, buft, b.graph));
                } finally {
                  b.gb.free();
                }
              }
              return withPackingMargin(most, alignment);
            };
            const key = `${gpu ? 'gpu:' : ''}${rolesKey({ embed, block, head })}`;
            out[key] = Math.max(out[key] ?? 0, measure(parts));
            // A device holding a single block needs less than one holding two (nothing lives from one
            // layer into the next): measured alone, for each kind of layer.
            if (block && layers.length > 1) {
              for (const i of layers) out[`${key}${ONE_BLOCK}`] = Math.max(out[`${key}${ONE_BLOCK}`] ?? 0, measure(parts.map((p) => ({ ...p, layers: [i] }))));
            }
          }
        }
      }
    }
    return out;
  } finally {
    for (const x of made) g.setPlaceholderData(x, false);
    g.free(c);
  }
}

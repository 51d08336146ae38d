/**
 * The planner's work queue and the two rules that read it: the reserve (largest layer still queued) and the split
 * (a module replaced by its pieces).
 */
import type { AccelerateModel, ModuleNode, TensorNode } from './model.js';
import { type PyNum, PY_ZERO } from './pynum.js';
import type { ModuleSizes } from './sizes.js';

/** A queued `(name, module)` pair: a module, or a bare tensor (root tensors, a split module's direct params). */
export type QueueItem =
  | { readonly name: string; readonly kind: 'module'; readonly module: ModuleNode }
  | { readonly name: string; readonly kind: 'tensor'; readonly tensor: TensorNode };

export const moduleItem = (module: ModuleNode): QueueItem => ({ name: module.name, kind: 'module', module });
export const tensorItem = (tensor: TensorNode): QueueItem => ({ name: tensor.name, kind: 'tensor', tensor });

/** The starting queue: the root's own parameters, its children, then its own buffers. */
export function initialQueue(model: AccelerateModel): QueueItem[] {
  const root = model.root;
  return [...root.params.map(tensorItem), ...root.children.map(moduleItem), ...root.buffers.map(tensorItem)];
}

/** A bare tensor has no children; so a module with none is a layer too. */
export function childrenOf(item: QueueItem): readonly ModuleNode[] {
  return item.kind === 'module' ? item.module.children : [];
}

/** Leaves and no-split modules cannot be divided across devices. */
export function isUnsplittable(item: QueueItem, model: AccelerateModel): boolean {
  return item.kind === 'tensor' || item.module.children.length === 0 || model.noSplit.has(item.module.className);
}

/**
 * Split rule: what replaces a module that is split. Its direct parameters, then its children.
 * QUIRK: its direct buffers are not re-queued, so they end up in no device_map entry at all.
 */
export function splitPieces(module: ModuleNode): QueueItem[] {
  return [...module.params.map(tensorItem), ...module.children.map(moduleItem)];
}

export interface MaxLayer {
  size: PyNum;
  names: string[];
}

/**
 * Reserve rule, accelerate's `get_max_layer_size`: the largest *layer* among the given queue entries, where a layer
 * is an entry with no children or of a no-split class; other modules are looked into through their children only
 * (QUIRK: a module's own direct parameters are not looked at). Ties keep every name reaching the maximum.
 */
export function maxLayer(items: readonly QueueItem[], sizes: ModuleSizes, model: AccelerateModel): MaxLayer {
  let size: PyNum = PY_ZERO;
  let names: string[] = [];
  const todo = [...items];
  while (todo.length > 0) {
    const item = todo.shift() as QueueItem;
    const children = childrenOf(item);
    if (children.length === 0 || (item.kind === 'module' && model.noSplit.has(item.module.className))) {
      const s = sizes.get(item.name);
      if (s.value > size.value) {
        size = s;
        names = [item.name];
      } else if (s.value === size.value) {
        names.push(item.name);
      }
    } else {
      todo.unshift(...children.map(moduleItem));
    }
  }
  return { size, names };
}

/** QUIRK: after the first pass, the reserve is recomputed over queued *modules* only; bare tensors drop out. */
export function maxLayerOfModules(queue: readonly QueueItem[], sizes: ModuleSizes, model: AccelerateModel): MaxLayer {
  return maxLayer(
    queue.filter((q) => q.kind === 'module'),
    sizes,
    model,
  );
}

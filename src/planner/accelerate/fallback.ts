/**
 * accelerate's `fallback_allocate` (infer_auto_device_map(fallback_allocation=True)): when a device would stay empty,
 * look through the queue for anything that fits and place it first.
 */
import { AcceleratePlannerError } from './errors.js';
import type { AccelerateModel } from './model.js';
import type { PyNum } from './pynum.js';
import { type QueueItem, isUnsplittable, splitPieces } from './queue.js';
import type { ModuleSizes } from './sizes.js';
import { sizeWithTies, tiesOutside } from './ties.js';

export interface FallbackFound {
  item: QueueItem;
  /** The queue without it, its enclosing queued modules split open. */
  remaining: QueueItem[];
}

/**
 * Searches depth-first (children go to the front of the search list) for the first entry whose size with ties
 * fits `sizeLimit`. QUIRKS kept: the limit first goes through `convert_file_size_to_int`, so a negative int means
 * "no fallback" and a float (any bool tensor involved) raises AttributeError; a candidate tied to an entry already
 * searched raises IndexError.
 */
export function fallbackAllocate(
  queue: readonly QueueItem[],
  sizes: ModuleSizes,
  sizeLimit: PyNum,
  model: AccelerateModel,
  tiedParameters: readonly (readonly string[])[],
): FallbackFound | undefined {
  if (sizeLimit.isFloat) {
    throw new AcceleratePlannerError('AttributeError', "'float' object has no attribute 'upper'", 'fallback_allocate');
  }
  if (sizeLimit.value < 0) return undefined;

  let search = [...queue];
  let found: QueueItem | undefined;
  while (search.length > 0) {
    const item = search.shift() as QueueItem;
    const { params } = tiesOutside(item.name, tiedParameters);
    const { size } = sizeWithTies(params, sizes.get(item.name), sizes, search, 'fallback_allocate');
    if (size.value <= sizeLimit.value) {
      found = item;
      break;
    }
    if (isUnsplittable(item, model) || item.kind !== 'module') continue;
    search = [...splitPieces(item.module), ...search];
  }
  if (!found) return undefined;

  // Open every queued ancestor of the found entry (shortest first) so that it sits in the queue by itself.
  let modules = [...queue];
  const name = found.name;
  for (let i = 0; i < name.length; i++) {
    if (name[i] !== '.') continue;
    const parentIdx = modules.findIndex((q) => q.name === name.slice(0, i));
    const parent = modules[parentIdx];
    if (parent === undefined || parent.kind !== 'module') continue;
    modules = [...modules.slice(0, parentIdx), ...splitPieces(parent.module), ...modules.slice(parentIdx + 1)];
  }
  const targetIdx = modules.findIndex((q) => q.name === name);
  if (targetIdx < 0) throw new AcceleratePlannerError('ValueError', `'${name}' is not in list`, 'fallback_allocate');
  const [item] = modules.splice(targetIdx, 1);
  return { item: item as QueueItem, remaining: modules };
}

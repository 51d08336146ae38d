/**
 * Tie rule: tensors that share one Parameter must land together, so a module is charged for the queued modules that
 * hold its tie partners, and those modules go wherever it goes.
 */
import { AcceleratePlannerError, type AccelerateStage } from './errors.js';
import type { AccelerateModel } from './model.js';
import { type PyNum, pyAdd, pySub } from './pynum.js';
import type { QueueItem } from './queue.js';
import type { ModuleSizes } from './sizes.js';

/**
 * `find_tied_parameters`: parameter tie groups, each sorted. Groups holding buffers only are not ties to accelerate.
 * (accelerate's group order follows a Python set, i.e. string hashing; here it is the input order.)
 */
export function findTiedParameters(model: AccelerateModel): string[][] {
  const groups: string[][] = [];
  for (const group of model.tieGroups) {
    const params = group.filter((n) => model.tensors.get(n)?.kind === 'param');
    if (params.length >= 2) groups.push([...params].sort());
  }
  return groups;
}

/**
 * The tie partners of `name` that live outside it: from each group with a name inside `name` and one outside, the
 * names outside. QUIRK: "inside" is accelerate's substring test `name + "." in k + "."`, not a prefix test.
 */
export function tiesOutside(name: string, tiedParameters: readonly (readonly string[])[]): { groups: string[][]; params: string[] } {
  const inside = (k: string): boolean => `${k}.`.includes(`${name}.`);
  const groups = tiedParameters.filter((g) => g.some(inside) && !g.every(inside)).map((g) => [...g]);
  const params = groups.flatMap((g) => g.filter((p) => !inside(p)));
  return { groups, params };
}

export interface SizeWithTies {
  size: PyNum;
  /** For each tied param, the queued entry holding it (repeats when two partners share one entry). */
  tiedItems: QueueItem[];
}

/**
 * accelerate's `get_module_size_with_ties`: the module's size plus, for each outside partner, the size of the queued
 * entry holding it minus the partner itself (a tied alias has no size of its own, so it reads 0).
 * QUIRK: an entry holding two partners is charged twice; a partner held by no queued entry raises IndexError.
 */
export function sizeWithTies(
  tiedParams: readonly string[],
  moduleSize: PyNum,
  sizes: ModuleSizes,
  queue: readonly QueueItem[],
  stage: AccelerateStage,
): SizeWithTies {
  if (tiedParams.length === 0) return { size: moduleSize, tiedItems: [] };
  const tiedItems = tiedParams.map((p) => {
    const holder = queue.find((q) => p.startsWith(`${q.name}.`));
    if (!holder) throw new AcceleratePlannerError('IndexError', 'list index out of range', stage);
    return holder;
  });
  let size = moduleSize;
  tiedParams.forEach((p, i) => {
    size = pyAdd(size, pySub(sizes.get((tiedItems[i] as QueueItem).name), sizes.get(p)));
  });
  return { size, tiedItems };
}

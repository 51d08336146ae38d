import { appendTo } from '../util/append.js';
import type { Skeleton } from '../reader/skeleton.js';
import { InputError } from '../util/errors.js';
import { alignedKvBytesPerLayer, blockWorkspace, dominantDtype, headWorkspace, passWorkspace, TARGETS } from './memory-model.js';
import { alignUp, linearize, loadedTensorBytes, type LoadedLayout, type PlacementUnit } from './placement-units.js';
import { buildPlan, label, type Placement } from './plan-builder.js';
import type { Plan, PlanDeviceSpec, Target, Workload } from './plan.js';
import { pinsFor } from './pins.js';
import { findRemedies, PLAN_KNOBS, type Remedy, type RemedyKnobs } from './remedies.js';
import { formatBytes } from './units.js';

/**
 * vramfit's own strategy. Every cap holds after counting weights, KV cache, compute workspace and
 * runtime overhead. No-split blocks stay whole, tie groups stay together, stages are contiguous;
 * accelerators fill first (balanced by utilisation or --gpu-weights), then CPU RAM, then disk.
 */
export interface FitInput {
  skeleton: Skeleton;
  /** Accelerators in the order stages should follow, then at most one cpu and one disk. */
  devices: PlanDeviceSpec[];
  workload: Workload;
  target: Target;
  /** Modules that must sit on the first accelerator (ChatGLM's chat code moves inputs there). */
  pins?: string[];
  /**
   * How the accelerators fill: `balanced` (default) evens their utilisation; `in-order` fills each to its cap before
   * the next, as a runtime that places layers greedily does (exllamav3's autosplit).
   */
  fill?: 'balanced' | 'in-order';
  /**
   * Compute workspace measured by the runtime (a no-allocation reservation of its real graphs) in place
   * of the memory model's formula: for a device running blocks only, the head only, or both.
   */
  measuredWorkspace?: MeasuredWorkspace;
  /**
   * The runtime's allocation alignment: each weight tensor and each layer's K and V are padded to it
   * (ggml's buffers). Default 1 (exact sizes).
   */
  alignment?: number;
  /**
   * When the model does not fit: the flags the calling command accepts, to suggest changes (each
   * checked by planning again); false to skip that search (callers that probe many plans).
   */
  remedies?: RemedyKnobs | false;
}

/**
 * Workspace measured per role combination: keys are the roles a device plays, e.g. 'embed+block+head',
 * optionally prefixed by a device kind ('gpu:embed+block') where that kind runs a different graph; a
 * device of that kind reads its own key first. A key ending in ONE_BLOCK is for a device holding a
 * single block, whose graph is smaller than that of two or more.
 */
export type MeasuredWorkspace = Record<string, number>;

/** What a device computes: the embedding lookup, decoder blocks, the head (logits). */
export interface Roles {
  embed: boolean;
  block: boolean;
  head: boolean;
}

/** Suffix of a measured-workspace key for a device that holds exactly one block. */
export const ONE_BLOCK = '#1';

/** A device's measured workspace: its own kind's key first, the one-block key when it holds one block. */
export function measuredWorkspaceOf(measured: MeasuredWorkspace, kind: string | undefined, r: Roles, blocks: number): number | undefined {
  const key = rolesKey(r);
  const keys = [...(blocks === 1 ? [`${kind}:${key}${ONE_BLOCK}`, `${key}${ONE_BLOCK}`] : []), `${kind}:${key}`, key];
  for (const k of keys) if (measured[k] !== undefined) return measured[k];
  return undefined;
}

export function rolesKey(r: Roles): string {
  return [r.embed ? 'embed' : '', r.block ? 'block' : '', r.head ? 'head' : ''].filter(Boolean).join('+') || 'none';
}

/** A run of units that must share a device: a chain unit plus the tied or pinned units riding with it. */
interface Group {
  units: PlacementUnit[];
  weights: number;
  kv: number;
  hasEmbed: boolean;
  hasBlock: boolean;
  hasHead: boolean;
  /** Largest module (with direct tensors) inside: accelerate's offload hooks copy one at a time. */
  transit: number;
  /** Decoder blocks inside. */
  blocks: number;
  /** Tensor names counted on this device although their memory is owned elsewhere. */
  duplicates: string[];
}

/** Devices listed one a line; past this many, the rest are summarised in one line. */
const MAX_DEVICE_LINES = 8;

export class InfeasiblePlanError extends InputError {
  constructor(
    readonly headline: string,
    readonly shortfalls: { device: string; label: string; short: number; note?: string }[],
    /** Changes that each alone make the plan fit, checked by planning again. */
    readonly remedies: Remedy[] = [],
  ) {
    super('plan', InfeasiblePlanError.render(headline, shortfalls, remedies), 'INFEASIBLE');
  }

  get suggestions(): string[] {
    return this.remedies.map((r) => r.text);
  }

  /** The headline, one short line per short device (the rest summarised), then what would make it fit. */
  static render(headline: string, shortfalls: readonly { label: string; short: number; note?: string }[], remedies: readonly Remedy[]): string {
    const short = shortfalls.filter((x) => x.short > 0);
    const lines = [headline];
    for (const x of short.slice(0, MAX_DEVICE_LINES)) lines.push(`  ${x.label} is short by ${formatBytes(x.short)}${x.note ? ` (${x.note})` : ''}`);
    const rest = short.slice(MAX_DEVICE_LINES);
    if (rest.length > 0) {
      const amounts = rest.map((x) => x.short);
      lines.push(`  … and ${rest.length} more devices, each short by ${formatBytes(Math.min(...amounts))} to ${formatBytes(Math.max(...amounts))}`);
    }
    if (remedies.length > 0) {
      lines.push('any one of these makes it fit (each was planned again):');
      for (const r of remedies) lines.push(`  ${r.text}`);
    }
    return lines.join('\n');
  }
}

const HOST: PlanDeviceSpec = { id: 'cpu', kind: 'cpu', cap: 0, overhead: 0 };

interface Costs {
  kvPerBlock: number;
  blockWs: number;
  headWs: number;
  /** A device that only passes the hidden state on (an embedding lookup) still holds it. */
  passWs: number;
  measured?: MeasuredWorkspace;
  /**
   * transformers target: groups mapped to cpu/disk that accelerate executes on the main device
   * (`dispatch_model` gives every "cpu"/"disk" module `execution_device = main_device`): their KV cache
   * is created there, their largest module's weights are copied in for each forward, and their
   * activations are computed there.
   */
  hosted?: { device: string; groups: readonly Group[] };
}

/** The same costs with `groups` executed on `device` (accelerate's main device). */
function hostedOn(c: Costs, device: string, groups: readonly Group[]): Costs {
  return groups.length === 0 ? { ...c, hosted: undefined } : { ...c, hosted: { device, groups } };
}

function workspaceFor(c: Costs, groups: readonly Group[], kind?: PlanDeviceSpec['kind']): number {
  if (groups.length === 0) return 0;
  const r: Roles = { embed: groups.some((g) => g.hasEmbed), block: groups.some((g) => g.hasBlock), head: groups.some((g) => g.hasHead) };
  return workspaceOfRoles(
    c,
    r,
    groups.reduce((n, g) => n + g.blocks, 0),
    kind,
  );
}

function workspaceOfRoles(c: Costs, r: Roles, blocks: number, kind?: PlanDeviceSpec['kind']): number {
  const measured = c.measured ? measuredWorkspaceOf(c.measured, kind, r, blocks) : undefined;
  if (measured !== undefined) return measured;
  if (!r.block && !r.head) return c.passWs;
  return (r.block ? c.blockWs : 0) + (r.head ? c.headWs : 0);
}

function costsFor(input: FitInput): Costs {
  const a = input.skeleton.attention;
  if (!a) return { kvPerBlock: 0, blockWs: 0, headWs: 0, passWs: 0 };
  const profile = TARGETS[input.target];
  const dtype = dominantDtype(input.skeleton, input.workload.dtype);
  const kvPerBlock = alignedKvBytesPerLayer(a, input.workload, input.alignment ?? 1) * (a.kvLayers / Math.max(1, input.skeleton.blocks?.count ?? a.kvLayers));
  const costs: Costs = {
    kvPerBlock,
    blockWs: blockWorkspace(a, input.workload, profile, dtype),
    headWs: headWorkspace(a, input.workload, profile, dtype),
    passWs: passWorkspace(a, input.workload, profile, dtype),
  };
  if (input.measuredWorkspace) costs.measured = input.measuredWorkspace;
  return costs;
}

function makeGroups(units: PlacementUnit[], s: Skeleton, pins: readonly string[], attachTies: boolean, c: Costs, layout: LoadedLayout): Group[] {
  const owner = new Map<number, number>();
  if (attachTies) {
    for (const g of s.tied) {
      const members = units.map((u, i) => (u.tensors.some((t) => g.includes(t)) ? i : -1)).filter((i) => i >= 0);
      for (const i of members.slice(1)) if (!owner.has(i)) owner.set(i, owner.get(members[0]!) ?? members[0]!);
    }
  }
  const pinned = units.map((u, i) => (pins.some((p) => u.name === p || u.name.startsWith(`${p}.`)) ? i : -1)).filter((i) => i >= 0);
  if (pinned.length > 0) {
    const anchor = pinned[0]!;
    for (const i of pinned.slice(1)) owner.set(i, anchor);
  }
  const groups: Group[] = [];
  const groupOf = new Map<number, Group>();
  units.forEach((u, i) => {
    const o = owner.get(i);
    const target = o === undefined ? undefined : groupOf.get(o);
    const g = target ?? { units: [], weights: 0, kv: 0, hasEmbed: false, hasBlock: false, hasHead: false, transit: 0, blocks: 0, duplicates: [] };
    if (!target) groups.push(g);
    groupOf.set(i, g);
    g.units.push(u);
    g.weights += u.weights;
    g.transit = Math.max(g.transit, u.transit);
    if (u.block !== undefined) {
      g.kv += c.kvPerBlock;
      g.hasBlock = true;
      g.blocks++;
    }
    if (u.head) g.hasHead = true;
    if (i === 0) g.hasEmbed = true;
  });
  if (!attachTies) chargeTiedDuplicates(groups, s, layout);
  return groups;
}

/** Without attachment a tied tensor is loaded on every device that uses it: charge its bytes there too. */
function chargeTiedDuplicates(groups: Group[], s: Skeleton, layout: LoadedLayout): void {
  const tensorOf = new Map(s.tensors.map((t) => [t.name, t]));
  for (const tie of s.tied) {
    const holders = groups.filter((g) => g.units.some((u) => u.tensors.some((t) => tie.includes(t))));
    const owner = tensorOf.get(tie[0]!);
    if (!owner) continue;
    for (const g of holders.slice(1)) {
      g.weights += alignUp(loadedTensorBytes(owner, layout), layout.alignment ?? 1);
      g.duplicates.push(g.units.flatMap((u) => u.tensors).find((t) => tie.includes(t))!);
    }
  }
}

/** What a device holds: its own units, and on accelerate's main device the offloaded units it executes. */
interface Need {
  weights: number;
  kv: number;
  workspace: number;
  overhead: number;
  /** Of kv: the cache of offloaded layers, created on the main device. */
  hostedKv: number;
  /** Offloaded weights copied in for one module's forward (the largest such module). */
  transit: number;
  /** accelerate's main device, running the offloaded groups. */
  hosting: boolean;
  total: number;
}

const NOTHING: Need = { weights: 0, kv: 0, workspace: 0, overhead: 0, hostedKv: 0, transit: 0, hosting: false, total: 0 };

/** Memory a device needs to hold `groups`: their weights and KV, the workspace their roles need, overhead. */
function deviceNeed(groups: readonly Group[], d: PlanDeviceSpec, c: Costs): Need {
  return new Runs(groups, c).breakdown(0, groups.length, d);
}

/**
 * The need of any contiguous run of groups in O(1), from prefix sums: the searches over placements
 * stay linear (or n log n) in the number of groups, however many modules a model lists.
 */
class Runs {
  private readonly weights: Float64Array;
  private readonly kv: Float64Array;
  private readonly embed: Int32Array;
  private readonly block: Int32Array;
  private readonly head: Int32Array;
  private readonly blocks: Int32Array;
  private readonly hosted?: { device: string; kv: number; transit: number; roles: Roles; blocks: number };

  constructor(
    readonly groups: readonly Group[],
    private readonly c: Costs,
  ) {
    const n = groups.length;
    [this.weights, this.kv] = [new Float64Array(n + 1), new Float64Array(n + 1)];
    [this.embed, this.block, this.head, this.blocks] = [new Int32Array(n + 1), new Int32Array(n + 1), new Int32Array(n + 1), new Int32Array(n + 1)];
    groups.forEach((g, i) => {
      this.weights[i + 1] = this.weights[i]! + g.weights;
      this.kv[i + 1] = this.kv[i]! + g.kv;
      this.embed[i + 1] = this.embed[i]! + (g.hasEmbed ? 1 : 0);
      this.block[i + 1] = this.block[i]! + (g.hasBlock ? 1 : 0);
      this.head[i + 1] = this.head[i]! + (g.hasHead ? 1 : 0);
      this.blocks[i + 1] = this.blocks[i]! + g.blocks;
    });
    const h = c.hosted?.groups;
    if (c.hosted && h && h.length > 0) {
      this.hosted = {
        device: c.hosted.device,
        kv: h.reduce((s, g) => s + g.kv, 0),
        transit: Math.max(0, ...h.map((g) => g.transit)),
        roles: { embed: h.some((g) => g.hasEmbed), block: h.some((g) => g.hasBlock), head: h.some((g) => g.hasHead) },
        blocks: h.reduce((s, g) => s + g.blocks, 0),
      };
    }
  }

  /** Total need of groups [i, j) on `d`. */
  need(i: number, j: number, d: PlanDeviceSpec): number {
    return this.breakdown(i, j, d).total;
  }

  /** What groups [i, j) need on `d`, part by part; on the hosting device, the offloaded groups too. */
  breakdown(i: number, j: number, d: PlanDeviceSpec): Need {
    if (j <= i) return NOTHING;
    const weights = this.weights[j]! - this.weights[i]!;
    let kv = this.kv[j]! - this.kv[i]!;
    let blocks = this.blocks[j]! - this.blocks[i]!;
    const r: Roles = { embed: this.embed[j]! > this.embed[i]!, block: this.block[j]! > this.block[i]!, head: this.head[j]! > this.head[i]! };
    const h = this.hosted?.device === d.id ? this.hosted : undefined;
    if (h) {
      kv += h.kv;
      blocks += h.blocks;
      r.embed ||= h.roles.embed;
      r.block ||= h.roles.block;
      r.head ||= h.roles.head;
    }
    const workspace = workspaceOfRoles(this.c, r, blocks, d.kind);
    const transit = h?.transit ?? 0;
    const total = weights + kv + workspace + d.overhead + transit;
    return { weights, kv, workspace, overhead: d.overhead, hostedKv: h?.kv ?? 0, transit, hosting: h !== undefined, total };
  }

  /** The furthest end j ≥ i (at most `to`) with [i, j) within `room` on `d`. */
  extend(i: number, d: PlanDeviceSpec, room: number, to = this.groups.length): number {
    let j = i;
    while (j < to && this.need(i, j + 1, d) <= room) j++;
    return j;
  }
}

/**
 * Fills accelerators in order, each up to min(cap, limit(device)); returns how many groups were placed
 * and where each accelerator's run ends.
 */
function fillAccelerators(
  groups: Group[],
  accs: PlanDeviceSpec[],
  c: Costs,
  limit: (d: PlanDeviceSpec) => number,
  runs = new Runs(groups, c),
): { placed: number; ends: number[] } {
  let next = 0;
  const ends: number[] = [];
  for (const d of accs) {
    next = runs.extend(next, d, Math.min(d.cap, limit(d)));
    ends.push(next);
  }
  return { placed: next, ends };
}

export function planFit(given: FitInput): Plan {
  // A runtime's own pins (ChatGLM under transformers) apply unless the caller chose pins itself.
  const input = given.pins === undefined ? { ...given, pins: pinsFor(given.skeleton, given.target) } : given;
  const warnings: string[] = input.pins?.length ? [`pinned to the first GPU for ${input.target}: ${input.pins.join(', ')}`] : [];
  const s = input.skeleton;
  if (!s.attention) warnings.push('the model has no attention facts (unknown architecture): KV cache and workspace are not budgeted');
  const c = costsFor(input);
  const units = linearize(s, layoutOf(input));
  let attempt = tryFit(input, units, c, true);
  if ('failure' in attempt && s.tied.length > 0) {
    const detached = tryFit(input, units, c, false);
    if (!('failure' in detached)) {
      warnings.push('tied weights could not stay on one device; each device that uses them holds a copy (counted on both)');
      attempt = detached;
    }
  }
  if ('failure' in attempt) {
    const knobs = input.remedies ?? PLAN_KNOBS;
    if (knobs === false) throw attempt.failure;
    const short = attempt.failure.shortfalls
      .filter((x) => x.short > 0)
      .sort((x, y) => x.short - y.short)
      .map((x) => x.device);
    const f = attempt.failure;
    throw new InfeasiblePlanError(f.headline, f.shortfalls, findRemedies(input, short, knobs, fitsWithout));
  }
  return buildPlan({ ...input, placement: attempt.placement, units, warnings: [...warnings, ...attempt.warnings], strategy: 'fit' });
}

/** How the target runtime holds the weights: ggml runtimes keep vectors in F32 and pad to their alignment. */
function layoutOf(input: FitInput): LoadedLayout {
  const layout: LoadedLayout = { ggml: input.target === 'vramfit' || input.target === 'llama.cpp', alignment: input.alignment ?? 1 };
  if (input.workload.dtype !== undefined) layout.dtype = input.workload.dtype;
  return layout;
}

/** Whether a plan exists for `input`, without searching for remedies. */
function fitsWithout(input: FitInput): boolean {
  try {
    planFit({ ...input, remedies: false });
    return true;
  } catch (e) {
    if (e instanceof InfeasiblePlanError) return false;
    throw e;
  }
}

type Attempt = { placement: Placement; warnings: string[] } | { failure: InfeasiblePlanError };

function tryFit(input: FitInput, units: PlacementUnit[], c: Costs, attachTies: boolean): Attempt {
  const groups = makeGroups(units, input.skeleton, input.pins ?? [], attachTies, c, layoutOf(input));
  const accs = input.devices.filter((d) => d.kind === 'gpu' || d.kind === 'virtual');
  const plain = place(input, groups, c, accs);
  if (input.target !== 'transformers' || accs.length === 0) return plain;
  // Without hosting, the most groups the GPUs could keep; everything on them, or nothing, hosts nothing.
  const upper = fillAccelerators(groups, accs, c, () => Infinity).placed;
  if (upper === groups.length || upper === 0) return plain;
  // accelerate runs what is offloaded on its main device, the first GPU in the map (dispatch_model picks
  // the lowest index). The most groups the GPUs keep while that GPU also hosts the rest: hosting fewer
  // groups costs less, so a fill that keeps more than p groups stays within its caps. Among the GPUs
  // that could be first, the most even utilisation, then the fewest stages.
  for (let p = upper; p >= 1; p--) {
    let best: { placed: Extract<Placed, { placement: Placement }>; util: number; stages: number } | undefined;
    for (let k = 0; k < accs.length; k++) {
      const use = accs.slice(k);
      const hc = hostedOn(c, use[0]!.id, groups.slice(p));
      const fill = fillAccelerators(groups, use, hc, () => Infinity);
      if (fill.placed < p || fill.ends[0] === 0) continue;
      const hosted = place(input, groups, hc, use);
      if ('failure' in hosted || hosted.ends[0] === 0) continue;
      const util = Math.max(
        ...use.map((d) => {
          const used = hosted.placement.usage.get(d.id)?.total ?? 0;
          return used === 0 ? 0 : used / (d.weight ?? d.cap);
        }),
      );
      const stages = use.filter((d) => (hosted.placement.usage.get(d.id)?.total ?? 0) > 0).length;
      if (!best || util < best.util * (1 - 1e-12) || (util <= best.util * (1 + 1e-12) && stages < best.stages)) best = { placed: hosted, util, stages };
    }
    if (best) return best.placed;
  }
  // Nothing fits beside the hosted load: with no GPU in the map, accelerate computes everything on the CPU.
  const cpuOnly = place(input, groups, c, []);
  if (!('failure' in cpuOnly)) return cpuOnly;
  // Report against the closest attempt: the first GPU hosting what the others leave.
  const hc = hostedOn(c, accs[0]!.id, groups.slice(upper));
  const fill = fillAccelerators(groups, accs, hc, () => Infinity);
  const cpu = input.devices.find((d) => d.kind === 'cpu');
  const rest = groups.slice(fill.placed).reduce((sum, g) => sum + g.weights, 0) + (cpu?.overhead ?? 0);
  return { failure: diagnose(input, groups, hc, fill.ends, fill.placed, rest, cpu?.cap ?? 0) };
}

type Placed = { placement: Placement; warnings: string[]; placed: number; ends: number[] } | { failure: InfeasiblePlanError };

/** Places groups on `accs` (then cpu, then disk); with `c.hosted`, offloaded groups are executed on its device. */
function place(input: FitInput, groups: Group[], c: Costs, accs: PlanDeviceSpec[]): Placed {
  const cpu = input.devices.find((d) => d.kind === 'cpu');
  const disk = input.devices.find((d) => d.kind === 'disk');
  const warnings: string[] = [];

  // 1. As many groups as possible on the accelerators, then the most even utilisation that keeps them
  //    (and keeps the pinned group on the first accelerator when the greedy fill could put it there).
  const runs = new Runs(groups, c);
  const most = fillAccelerators(groups, accs, c, () => Infinity, runs);
  const pinnedGroup = pinnedGroupIndex(groups, input.pins ?? []);
  const keepsPins = (e: number[]): boolean => pinnedGroup === undefined || pinnedGroup < (e[0] ?? 0);
  // The device hosting offloaded groups must hold some of its own, or accelerate would pick another.
  const mustStart = c.hosted ? 1 : 0;
  let ends = most.ends;
  if (input.fill !== 'in-order' && most.placed > 0 && accs.length > 1) {
    const weight = (d: PlanDeviceSpec): number => d.weight ?? d.cap;
    const keeps = (r: { placed: number; ends: number[] }): boolean =>
      r.placed >= most.placed && (r.ends[0] ?? 0) >= mustStart && (!keepsPins(most.ends) || keepsPins(r.ends));
    let lo = 0;
    // A zero cap with no --gpu-weights gives 0/0: leave such devices out of the bound.
    let hi = Math.max(0, ...accs.map((d) => d.cap / weight(d)).filter((r) => !Number.isNaN(r)));
    for (let i = 0; i < 64 && hi - lo > 1e-9 * hi; i++) {
      const mid = (lo + hi) / 2;
      if (keeps(fillAccelerators(groups, accs, c, (d) => mid * weight(d), runs))) hi = mid;
      else lo = mid;
    }
    const balanced = fillAccelerators(groups, accs, c, (d) => hi * weight(d), runs);
    if (keeps(balanced)) {
      // At that balance, the fewest stages (hand-offs): greedy filling may start a stage on a device it could skip.
      const firstEnd = Math.max(mustStart, keepsPins(most.ends) && pinnedGroup !== undefined ? pinnedGroup + 1 : 0);
      ends = fewestStages(groups, accs, c, most.placed, (d) => hi * weight(d), firstEnd, runs) ?? balanced.ends;
    }
  }
  const placed = most.placed;

  // Pinned modules must land on the first accelerator.
  if (input.pins?.length && accs.length > 0 && !keepsPins(ends)) {
    const short = Math.max(0, deviceNeed(groups.slice(0, (pinnedGroup ?? 0) + 1), accs[0]!, c).total - accs[0]!.cap);
    return {
      failure: new InfeasiblePlanError(`pinned modules (${input.pins.join(', ')}) do not fit on the first GPU (${label(accs[0]!)})`, [
        { device: accs[0]!.id, label: label(accs[0]!), short },
      ]),
    };
  }

  // 2. The rest on CPU RAM, then disk. Blocks on disk run on the CPU from the mapped file, so CPU RAM
  //    holds the KV cache and the compute workspace of everything past the accelerators either way.
  //    Under accelerate with a GPU in the map, cpu and disk only store weights: the GPU computes.
  const hostComputes = !(c.hosted && placed > 0);
  const hostNeed = (end: number): Need => {
    const host = groups.slice(placed);
    if (host.length === 0) return deviceNeed([], cpu ?? HOST, c);
    const weights = groups.slice(placed, end).reduce((sum, g) => sum + g.weights, 0);
    const kv = hostComputes ? host.reduce((sum, g) => sum + g.kv, 0) : 0;
    const workspace = hostComputes ? workspaceFor(c, host, 'cpu') : 0;
    const overhead = cpu?.overhead ?? 0;
    return { ...NOTHING, weights, kv, workspace, overhead, total: weights + kv + workspace + overhead };
  };
  const cpuCap = cpu?.cap ?? 0;
  let cpuEnd = placed;
  if (placed < groups.length) {
    if (disk) {
      while (cpuEnd < groups.length && hostNeed(cpuEnd + 1).total <= cpuCap) cpuEnd++;
    } else if (hostNeed(groups.length).total <= cpuCap) {
      cpuEnd = groups.length;
    }
  }
  const diskWeights = groups.slice(cpuEnd).reduce((sum, g) => sum + g.weights, 0);
  // Hosting costs were counted for the groups past p: a fill that keeps fewer leaves the host short.
  const hostedAsPlanned = !c.hosted || placed >= groups.length - c.hosted.groups.length;
  const fits =
    hostedAsPlanned &&
    (placed === groups.length || (hostNeed(cpuEnd).total <= cpuCap && (cpuEnd === groups.length || (disk !== undefined && diskWeights <= disk.cap))));
  // Shortfalls are judged against the fullest fill, not the balanced one: that is how close each device came.
  if (!fits) return { failure: diagnose(input, groups, c, most.ends, placed, hostNeed(groups.length).total, cpuCap) };

  const assignment: string[] = [];
  let start = 0;
  accs.forEach((d, i) => {
    for (let g = start; g < ends[i]!; g++) assignment[g] = d.id;
    start = ends[i]!;
  });
  for (let g = placed; g < cpuEnd; g++) assignment[g] = 'cpu';
  for (let g = cpuEnd; g < groups.length; g++) assignment[g] = 'disk';
  if (placed < groups.length) {
    const off = groups.slice(placed).reduce((sum, g) => sum + g.weights, 0);
    warnings.push(
      `${formatShare(off, groups)} of the weights are offloaded (${cpuEnd - placed} unit(s) to cpu, ${groups.length - cpuEnd} to disk): generation will be slower`,
    );
  }
  const unitDevice = new Map<string, string>();
  const duplicates = new Map<string, string[]>();
  groups.forEach((g, i) => {
    for (const u of g.units) unitDevice.set(u.name, assignment[i]!);
    if (g.duplicates.length) appendTo(duplicates, assignment[i]!, ...g.duplicates);
  });
  const perDevice = new Map<string, Group[]>();
  groups.forEach((g, i) => appendTo(perDevice, assignment[i]!, g));
  // What the main device really hosts: the groups left off the GPUs (at most those planned for).
  const final = c.hosted ? hostedOn(c, c.hosted.device, groups.slice(placed)) : c;
  const usage = new Map<string, Need>();
  for (const d of input.devices) {
    if (d.kind === 'cpu') usage.set(d.id, hostNeed(cpuEnd));
    else if (d.kind === 'disk') usage.set(d.id, { ...NOTHING, weights: diskWeights, total: diskWeights });
    else usage.set(d.id, deviceNeed(perDevice.get(d.id) ?? [], d, final));
  }
  return { placement: { unitDevice, usage, duplicates }, warnings, placed, ends };
}

/**
 * Ends of each accelerator's run placing groups [0, placed) with every device within min(cap, limit(d)),
 * using the fewest non-empty devices (earlier devices fuller on ties); the first run ends at or after
 * `firstEnd`. Undefined when no such placement exists.
 */
function fewestStages(
  groups: Group[],
  accs: PlanDeviceSpec[],
  c: Costs,
  placed: number,
  limit: (d: PlanDeviceSpec) => number,
  firstEnd: number,
  runs = new Runs(groups, c),
): number[] | undefined {
  const k = accs.length;
  // best[a][i]: fewest stages holding groups [i, placed) on accelerators a…; end[a][i]: where a's run ends.
  // From i a device may end anywhere in (i, ext(i)]: the best such end is a range minimum over the
  // next device's row (the rightmost on ties: earlier devices fuller), found in O(1) by a sparse table.
  const best = Array.from({ length: k + 1 }, () => new Float64Array(placed + 1).fill(Infinity));
  const end = Array.from({ length: k }, () => new Int32Array(placed + 1).fill(-1));
  best[k]![placed] = 0;
  for (let a = k - 1; a >= 0; a--) {
    const d = accs[a]!;
    const room = Math.min(d.cap, limit(d));
    const next = best[a + 1]!;
    const table = new RightmostMin(next);
    let reach = 0;
    for (let i = a === 0 ? 0 : placed; i >= 0; i--) {
      // ext(i) never grows as i falls: the pointer only moves left, re-extended from its last place.
      if (i === (a === 0 ? 0 : placed)) reach = runs.extend(i, d, room, placed);
      else {
        reach = Math.max(reach, i);
        while (reach > i && runs.need(i, reach, d) > room) reach--;
      }
      let stages = Infinity;
      let at = -1;
      if (!(a === 0 && i < firstEnd)) [stages, at] = [next[i]!, i];
      const lo = Math.max(i + 1, a === 0 ? firstEnd : 0);
      if (lo <= reach) {
        const j = table.query(lo, reach);
        if (next[j]! + 1 <= stages) [stages, at] = [next[j]! + 1, j];
      }
      best[a]![i] = stages;
      end[a]![i] = at;
    }
  }
  if (!Number.isFinite(best[0]![0]!)) return undefined;
  const ends: number[] = [];
  let i = 0;
  for (let a = 0; a < k; a++) {
    i = end[a]![i]!;
    ends.push(i);
  }
  return ends;
}

/** Range minimum queries over a fixed array, answering the rightmost index of the minimum, in O(1) after O(n log n). */
class RightmostMin {
  private readonly levels: Int32Array[];

  constructor(private readonly values: Float64Array) {
    const n = values.length;
    const better = (x: number, y: number): number => (values[y]! <= values[x]! ? y : x);
    this.levels = [Int32Array.from({ length: n }, (_, i) => i)];
    for (let w = 1; 2 * w <= n; w *= 2) {
      const prev = this.levels[this.levels.length - 1]!;
      const cur = new Int32Array(n - 2 * w + 1);
      for (let i = 0; i < cur.length; i++) cur[i] = better(prev[i]!, prev[i + w]!);
      this.levels.push(cur);
    }
  }

  /** Index of the minimum of values[lo..hi] (inclusive), the rightmost among equals. */
  query(lo: number, hi: number): number {
    const level = 31 - Math.clz32(hi - lo + 1);
    const row = this.levels[level]!;
    const x = row[lo]!;
    const y = row[hi - (1 << level) + 1]!;
    return this.values[y]! <= this.values[x]! ? y : x;
  }
}

/** Index of the group holding the pinned modules (pinned units ride with the first of them). */
function pinnedGroupIndex(groups: readonly Group[], pins: readonly string[]): number | undefined {
  if (pins.length === 0) return undefined;
  const i = groups.findIndex((g) => g.units.some((u) => pins.some((p) => u.name === p || u.name.startsWith(`${p}.`))));
  return i < 0 ? undefined : i;
}

function formatShare(bytes: number, groups: Group[]): string {
  const total = groups.reduce((s, g) => s + g.weights, 0);
  return `${((100 * bytes) / Math.max(1, total)).toFixed(1)} %`;
}

/** Names each short device, by how much, and what would make the model fit. */
function diagnose(input: FitInput, groups: Group[], c: Costs, ends: number[], placed: number, hostTotal: number, cpuCap: number): InfeasiblePlanError {
  const left = groups.slice(placed);
  const leftWeights = left.reduce((s, g) => s + g.weights, 0);
  const leftKv = left.reduce((s, g) => s + g.kv, 0);
  const shortfalls: InfeasiblePlanError['shortfalls'] = [];
  const accs = input.devices.filter((d) => d.kind === 'gpu' || d.kind === 'virtual');
  const next = groups[placed]!;
  let start = 0;
  accs.forEach((d, i) => {
    const need = deviceNeed([...groups.slice(start, ends[i]), next], d, c).total;
    shortfalls.push({ device: d.id, label: label(d), short: Math.max(0, need - d.cap) });
    start = ends[i]!;
  });
  const cpu = input.devices.find((d) => d.kind === 'cpu');
  const disk = input.devices.find((d) => d.kind === 'disk');
  const hostShort = disk ? Math.max(0, hostTotal - leftWeights - cpuCap) : Math.max(0, hostTotal - cpuCap);
  // A runtime that cannot offload (its knobs say so) has no cpu to fall short of.
  const offloads = input.remedies === undefined || input.remedies === false || input.remedies.offload;
  if (hostShort > 0 && offloads) shortfalls.push({ device: 'cpu', label: 'cpu', short: hostShort, ...(cpu ? {} : { note: 'no cpu budget was given' }) });
  return new InfeasiblePlanError(
    `the model does not fit: ${formatBytes(leftWeights)} of weights and ${formatBytes(leftKv)} of KV cache have no room`,
    shortfalls,
  );
}

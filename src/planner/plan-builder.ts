import { appendTo } from '../util/append.js';
import type { Skeleton } from '../reader/skeleton.js';
import type { PlacementUnit } from './placement-units.js';
import { PLAN_FORMAT, PLAN_VERSION, type DevicePlan, type Plan, type PlanDeviceSpec, type Target, type Workload } from './plan.js';

export interface DeviceUsage {
  weights: number;
  kv: number;
  workspace: number;
  overhead: number;
  /** Of kv: the cache of offloaded layers accelerate creates on its main device. */
  hostedKv?: number;
  /** Offloaded weights copied in for one module's forward (accelerate's main device). */
  transit?: number;
  /** accelerate's main device: it runs the units mapped to cpu/disk. */
  hosting?: boolean;
  total: number;
}

/** Where each unit went and what each device holds, as a strategy decided it. */
export interface Placement {
  unitDevice: Map<string, string>;
  usage: Map<string, DeviceUsage>;
  /** Device → tied tensor names counted there as well as on their owner's device. */
  duplicates: Map<string, string[]>;
}

export interface BuildPlanInput {
  skeleton: Skeleton;
  devices: PlanDeviceSpec[];
  workload: Workload;
  target: Target;
  strategy: string;
  units: PlacementUnit[];
  placement: Placement;
  warnings: string[];
}

export function buildPlan(input: BuildPlanInput): Plan {
  const { skeleton: s, placement } = input;
  const devices: DevicePlan[] = input.devices.map((d) => {
    const u = placement.usage.get(d.id) ?? { weights: 0, kv: 0, workspace: 0, overhead: 0, total: 0 };
    const modules = input.units.filter((x) => placement.unitDevice.get(x.name) === d.id).map((x) => x.name);
    const plan: DevicePlan = {
      id: d.id,
      kind: d.kind,
      cap: d.cap,
      weights: u.weights,
      kv: u.kv,
      workspace: u.workspace,
      overhead: u.overhead,
      used: u.total,
      modules,
      ranges: describeRanges(modules, s),
      tiedDuplicates: placement.duplicates.get(d.id) ?? [],
    };
    if (u.hosting) {
      const hosted = hostedModules(input.units, placement.unitDevice);
      plan.hosts = { kv: u.hostedKv ?? 0, transit: u.transit ?? 0, modules: hosted, ranges: describeRanges(hosted, s) };
    }
    if (d.name !== undefined) plan.name = d.name;
    if (d.physical !== undefined) plan.physical = d.physical;
    if (d.uuid !== undefined) plan.uuid = d.uuid;
    if (d.totalBytes !== undefined) plan.totalBytes = d.totalBytes;
    if (d.capTyped !== undefined) plan.capTyped = d.capTyped;
    if (d.host !== undefined) plan.host = d.host;
    return plan;
  });
  const warnings = [...input.warnings];
  for (const d of devices) {
    if (d.tiedDuplicates.length) warnings.push(`${label(d)} also holds a copy of tied ${d.tiedDuplicates.join(', ')} (counted on both devices)`);
  }
  return {
    format: PLAN_FORMAT,
    version: PLAN_VERSION,
    model: { root_class: s.root_class, family: s.family, source: s.source.path, ...(s.source.repoId ? { repo_id: s.source.repoId } : {}) },
    target: input.target,
    strategy: input.strategy,
    workload: input.workload,
    devices,
    deviceMap: compactDeviceMap(s, input.units, placement.unitDevice),
    handoffs: countHandoffs(input.units, placement.unitDevice),
    warnings,
  };
}

/** Modules accelerate maps to cpu/disk and runs on its main device. */
function hostedModules(units: readonly PlacementUnit[], where: Map<string, string>): string[] {
  return units.filter((u) => ['cpu', 'disk'].includes(where.get(u.name) ?? '')).map((u) => u.name);
}

export function label(d: { id: string; kind: string }): string {
  return d.kind === 'gpu' ? `GPU ${d.id}` : d.kind === 'virtual' ? `device ${d.id}` : d.id;
}

/** Device changes along one forward pass, counting only units that hold something. */
export function countHandoffs(units: readonly PlacementUnit[], where: Map<string, string>): number {
  let last: string | undefined;
  let n = 0;
  for (const u of units) {
    if (u.weights === 0 && u.block === undefined) continue;
    const d = where.get(u.name);
    if (d === undefined) continue;
    if (last !== undefined && d !== last) n++;
    last = d;
  }
  return n;
}

/** The device a compact device map gives `name`: its own key or its nearest ancestor's ("" covers everything). */
export function deviceOfModule(map: readonly (readonly [string, string])[], name: string): string | undefined {
  let best: readonly [string, string] | undefined;
  for (const e of map) {
    const k = e[0];
    if ((k === '' || name === k || name.startsWith(`${k}.`)) && (best === undefined || k.length > best[0].length)) best = e;
  }
  return best?.[1];
}

/**
 * accelerate-style compact map: a module whose every unit shares one device appears as one key;
 * a model on one device is `{"": device}`. Linear in modules and units (each unit marks its ancestors).
 */
export function compactDeviceMap(s: Skeleton, units: readonly PlacementUnit[], where: Map<string, string>): [string, string][] {
  const parentOf = (name: string): string => {
    const cut = name.lastIndexOf('.');
    return cut < 0 ? '' : name.slice(0, cut);
  };
  // For every module (and the root ''): the devices of the units at or under it, and how many units.
  const devicesUnder = new Map<string, Set<string>>();
  const modules = new Set(s.modules.map((m) => m.name));
  for (const u of units) {
    const d = where.get(u.name)!;
    for (let m: string | undefined = u.name; m !== undefined; m = m === '' ? undefined : parentOf(m)) {
      let set = devicesUnder.get(m);
      if (!set) devicesUnder.set(m, (set = new Set()));
      // An ancestor that already has this device passed it all the way up when it got it.
      if (set.has(d)) break;
      set.add(d);
    }
  }
  const single = (m: string): string | undefined => {
    const ds = devicesUnder.get(m);
    return ds && ds.size === 1 ? [...ds][0] : undefined;
  };
  const whole = single('');
  if (whole !== undefined) return [['', whole]];
  const children = new Map<string, string[]>();
  for (const m of s.modules) {
    const parent = parentOf(m.name);
    appendTo(children, parent, m.name);
  }
  // Tensors owned directly by a container (the root included) are units of their own.
  const directUnits = new Map<string, PlacementUnit[]>();
  for (const u of units) {
    if (children.has(u.name) || modules.has(u.name)) continue;
    const parent = parentOf(u.name);
    appendTo(directUnits, parent, u);
  }
  const unitNames = new Set(units.map((u) => u.name));
  const out: [string, string][] = [];
  const walk = (m: string): void => {
    for (const u of directUnits.get(m) ?? []) out.push([u.name, where.get(u.name)!]);
    for (const c of children.get(m) ?? []) {
      if (!devicesUnder.has(c)) continue;
      const d = single(c);
      if (d !== undefined || unitNames.has(c)) out.push([c, d ?? where.get(c)!]);
      else walk(c);
    }
  };
  walk('');
  return out;
}

/** "layers 0–9", "embed_tokens", "lm_head": what a person reads in the table. */
export function describeRanges(modules: readonly string[], s: Skeleton): string[] {
  const out: string[] = [];
  const b = s.blocks;
  const short = b ? b.prefix.split('.').pop()! : '';
  let run: [number, number] | undefined;
  const flush = (): void => {
    if (run) out.push(run[0] === run[1] ? `${short} ${run[0]}` : `${short} ${run[0]}–${run[1]}`);
    run = undefined;
  };
  for (const m of modules) {
    const idx = b && m.startsWith(`${b.prefix}.`) && /^\d+$/.test(m.slice(b.prefix.length + 1)) ? Number(m.slice(b.prefix.length + 1)) : undefined;
    if (idx !== undefined) {
      if (run && idx === run[1] + 1) run[1] = idx;
      else {
        flush();
        run = [idx, idx];
      }
      continue;
    }
    flush();
    out.push(m.split('.').slice(-1)[0] === 'weight' || m.split('.').slice(-1)[0] === 'bias' ? m : m.split('.').pop()!);
  }
  flush();
  return out;
}

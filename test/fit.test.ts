/**
 * The `fit` strategy: property tests over random skeletons, devices and workloads (caps hold after
 * weights + KV + workspace + overhead, no-split blocks whole, every tensor mapped once, contiguous stages,
 * most bytes on GPUs, balanced utilisation), behaviour tests on catalog models, and the `plan` CLI.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';

import { main } from '../src/cli/main.js';
import { largestContext } from '../src/planner/ctx-auto.js';
import { InfeasiblePlanError, planFit, type FitInput } from '../src/planner/fit.js';
import { blockWorkspace, dominantDtype, headWorkspace, kvBytesPerLayer, passWorkspace, TARGETS } from '../src/planner/memory-model.js';
import { pinsFor } from '../src/planner/pins.js';
import type { DevicePlan, Plan, PlanDeviceSpec, Target, Workload } from '../src/planner/plan.js';
import { GiB, MiB } from '../src/planner/units.js';
import { readModel } from '../src/reader/read-model.js';
import { SKELETON_FORMAT, SKELETON_VERSION, type Skeleton, type SkeletonModule, type SkeletonTensor } from '../src/reader/skeleton.js';

// ---------------------------------------------------------------------------------------------------------------
// Random skeletons
// ---------------------------------------------------------------------------------------------------------------

type FloatDtype = 'float16' | 'float32';

interface LinearSpec {
  out: number;
  in: number;
  bias: boolean;
  dtype: FloatDtype;
}

interface BlockSpec {
  linears: LinearSpec[];
  /** Linears inside an `attn` container (one level deeper) rather than directly in the block. */
  nested: boolean;
  normDtype: FloatDtype;
}

interface ModelSpec {
  hidden: number;
  vocab: number;
  /** dtype of the embedding, and of the head when tied (tied tensors share storage). */
  embedDtype: FloatDtype;
  headDtype: FloatDtype;
  finalNormDtype: FloatDtype;
  blocks: BlockSpec[];
  tied: boolean;
  /** List the tie group head-first (the owner is still the embedding: first in registration order). */
  tieReversed: boolean;
  /** A rotary module: with a non-persistent buffer, or with no tensors at all. */
  rotary: 'none' | 'buffer' | 'empty';
  /** A parameter owned directly by the root (CLIP-style `logit_scale`). */
  rootTensor: boolean;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediate: number;
}

const EMBED = 'model.embed_tokens.weight';
const HEAD = 'lm_head.weight';

/** The planner's atoms as this test expects them, in forward order. */
interface ExpectedUnit {
  name: string;
  tensors: string[];
  block?: number;
  head: boolean;
}

interface Built {
  skeleton: Skeleton;
  units: ExpectedUnit[];
}

function buildSkeleton(spec: ModelSpec): Built {
  const modules: SkeletonModule[] = [];
  const tensors: SkeletonTensor[] = [];
  const units: ExpectedUnit[] = [];
  const param = (name: string, shape: number[], dtype: string): string => {
    tensors.push({ name, shape, dtype, kind: 'param' });
    return name;
  };
  const H = spec.hidden;
  if (spec.rootTensor) units.push({ name: 'logit_scale', tensors: [param('logit_scale', [1], 'float32')], head: false });
  modules.push({ name: 'model', class: 'RandModel' });
  modules.push({ name: 'model.embed_tokens', class: 'Embedding' });
  units.push({ name: 'model.embed_tokens', tensors: [param(EMBED, [spec.vocab, H], spec.embedDtype)], head: false });
  modules.push({ name: 'model.layers', class: 'ModuleList' });
  spec.blocks.forEach((b, i) => {
    const prefix = `model.layers.${i}`;
    const names: string[] = [];
    modules.push({ name: prefix, class: 'RandDecoderLayer' });
    const holder = b.nested ? `${prefix}.attn` : prefix;
    if (b.nested) modules.push({ name: holder, class: 'RandAttention' });
    b.linears.forEach((l, j) => {
      modules.push({ name: `${holder}.proj${j}`, class: 'Linear' });
      names.push(param(`${holder}.proj${j}.weight`, [l.out, l.in], l.dtype));
      if (l.bias) names.push(param(`${holder}.proj${j}.bias`, [l.out], l.dtype));
    });
    modules.push({ name: `${prefix}.norm`, class: 'RMSNorm' });
    names.push(param(`${prefix}.norm.weight`, [H], b.normDtype));
    units.push({ name: prefix, tensors: names, block: i, head: false });
  });
  modules.push({ name: 'model.norm', class: 'RMSNorm' });
  units.push({ name: 'model.norm', tensors: [param('model.norm.weight', [H], spec.finalNormDtype)], head: false });
  if (spec.rotary !== 'none') {
    modules.push({ name: 'model.rotary_emb', class: 'RotaryEmbedding' });
    const rot: string[] = [];
    if (spec.rotary === 'buffer') {
      tensors.push({ name: 'model.rotary_emb.inv_freq', shape: [Math.max(1, spec.headDim >> 1)], dtype: 'float32', kind: 'buffer', persistent: false });
      rot.push('model.rotary_emb.inv_freq');
    }
    units.push({ name: 'model.rotary_emb', tensors: rot, head: false });
  }
  modules.push({ name: 'lm_head', class: 'Linear' });
  units.push({ name: 'lm_head', tensors: [param(HEAD, [spec.vocab, H], spec.tied ? spec.embedDtype : spec.headDtype)], head: true });

  const n = spec.blocks.length;
  const skeleton: Skeleton = {
    format: SKELETON_FORMAT,
    version: SKELETON_VERSION,
    root_class: 'RandForCausalLM',
    modules,
    tensors,
    tied: spec.tied ? [spec.tieReversed ? [HEAD, EMBED] : [EMBED, HEAD]] : [],
    no_split_module_classes: ['RandDecoderLayer'],
    family: 'random',
    blocks: { prefix: 'model.layers', count: n, class: 'RandDecoderLayer' },
    attention: {
      numLayers: n,
      hiddenSize: H,
      vocabSize: spec.vocab,
      numHeads: spec.numHeads,
      numKvHeads: spec.numKvHeads,
      headDim: spec.headDim,
      kvElementsPerToken: 2 * spec.numKvHeads * spec.headDim,
      attention: spec.numKvHeads === spec.numHeads ? 'mha' : 'gqa',
      kvLayers: n,
      intermediateSize: spec.intermediate,
      maxPositionEmbeddings: 8192,
    },
    source: { kind: 'skeleton', path: 'random', shapes: 'synthesized', files: [], bytesRead: 0 },
    warnings: [],
  };
  return { skeleton, units };
}

const floatDtype = fc.constantFrom<FloatDtype>('float16', 'float32');

const blockArb = (vocab: number): fc.Arbitrary<BlockSpec> =>
  fc.record({
    linears: fc.array(
      fc.record({
        // now and then a vocab-sized linear inside a block, which must not make the block a head
        out: fc.oneof({ weight: 19, arbitrary: fc.integer({ min: 4, max: 768 }) }, { weight: 1, arbitrary: fc.constant(vocab) }),
        in: fc.integer({ min: 4, max: 768 }),
        bias: fc.boolean(),
        dtype: floatDtype,
      }),
      { minLength: 1, maxLength: 4 },
    ),
    nested: fc.boolean(),
    normDtype: floatDtype,
  });

const modelArb: fc.Arbitrary<ModelSpec> = fc
  .record({
    hidden: fc.integer({ min: 8, max: 512 }),
    vocab: fc.integer({ min: 16, max: 4096 }),
    numBlocks: fc.integer({ min: 1, max: 10 }),
    numHeads: fc.integer({ min: 1, max: 16 }),
    kvDiv: fc.integer({ min: 1, max: 16 }),
    headDim: fc.integer({ min: 4, max: 128 }),
    intermediate: fc.integer({ min: 8, max: 2048 }),
  })
  .chain((m) =>
    fc.record({
      hidden: fc.constant(m.hidden),
      vocab: fc.constant(m.vocab),
      embedDtype: floatDtype,
      headDtype: floatDtype,
      finalNormDtype: floatDtype,
      blocks: fc.array(blockArb(m.vocab), { minLength: m.numBlocks, maxLength: m.numBlocks }),
      tied: fc.boolean(),
      tieReversed: fc.boolean(),
      rotary: fc.constantFrom<ModelSpec['rotary']>('none', 'buffer', 'empty'),
      rootTensor: fc.oneof({ weight: 4, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
      numHeads: fc.constant(m.numHeads),
      numKvHeads: fc.constant(Math.max(1, Math.floor(m.numHeads / m.kvDiv))),
      headDim: fc.constant(m.headDim),
      intermediate: fc.constant(m.intermediate),
    }),
  );

interface WorkloadSpec {
  ctx: number;
  batch: number;
  ubatch: number;
  kvDtype: string;
  dtype: string | undefined;
  target: Target;
}

const workloadArb: fc.Arbitrary<WorkloadSpec> = fc.record({
  ctx: fc.integer({ min: 1, max: 8192 }),
  batch: fc.integer({ min: 1, max: 4 }),
  ubatch: fc.integer({ min: 1, max: 512 }),
  kvDtype: fc.constantFrom('float16', 'bfloat16', 'float32', 'q8_0'),
  dtype: fc.constantFrom(undefined, 'float16', 'bfloat16', 'float32'),
  target: fc.constantFrom<Target>('vramfit', 'transformers', 'llama.cpp'),
});

/**
 * A cap: none, a fraction of what the whole model needs on one device, or a breakpoint — exactly what a
 * run of units needs there (± a byte), drawn as fractions of the chain — so edges are hit every run.
 */
type CapSpec = { zero: true } | { fraction: number } | { from: number; to: number; jitter: -1 | 0 | 1; detached: boolean };

const capArb = (max: number): fc.Arbitrary<CapSpec> =>
  fc.oneof(
    { weight: 1, arbitrary: fc.constant({ zero: true as const }) },
    { weight: 6, arbitrary: fc.record({ fraction: fc.double({ min: 0, max, noNaN: true }) }) },
    {
      weight: 6,
      arbitrary: fc.record({
        from: fc.double({ min: 0, max: 1, noNaN: true }),
        to: fc.double({ min: 0, max: 1, noNaN: true }),
        jitter: fc.constantFrom<-1 | 0 | 1>(-1, 0, 1),
        detached: fc.boolean(),
      }),
    },
  );

interface DevicesSpec {
  caps: CapSpec[];
  overheadFractions: number[];
  weights: number[] | undefined;
  virtual: boolean;
  cpu: CapSpec | undefined;
  disk: CapSpec | 'unlimited' | undefined;
  /** Index (among accelerators, then cpu) of a device at least a tenth of the whole: ×10 caps must fit. */
  big: number;
  bigFraction: number;
}

const devicesArb: fc.Arbitrary<DevicesSpec> = fc.integer({ min: 1, max: 4 }).chain((k) =>
  fc.record({
    caps: fc.array(capArb(1.2), { minLength: k, maxLength: k }),
    overheadFractions: fc.array(fc.oneof(fc.constant(0), fc.double({ min: 0, max: 0.3, noNaN: true })), { minLength: k, maxLength: k }),
    weights: fc.option(fc.array(fc.double({ min: 0.1, max: 10, noNaN: true }), { minLength: k, maxLength: k }), { nil: undefined }),
    virtual: fc.boolean(),
    cpu: fc.option(capArb(1.5), { nil: undefined, freq: 4 }),
    disk: fc.option(fc.oneof(fc.constant<'unlimited'>('unlimited'), capArb(1.5)), { nil: undefined, freq: 2 }),
    big: fc.integer({ min: 0, max: k }),
    bigFraction: fc.double({ min: 0.11, max: 1.5, noNaN: true }),
  }),
);

// ---------------------------------------------------------------------------------------------------------------
// Independent accounting
// ---------------------------------------------------------------------------------------------------------------

const BPE: Record<string, number> = { float16: 2, bfloat16: 2, float32: 4 };

function elements(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** What one tensor costs once loaded: floating params convert to the load dtype, buffers keep theirs. */
function loaded(t: SkeletonTensor, dtype: string | undefined, target: Target): number {
  // ggml runtimes compute non-persistent buffers (rotary inv_freq) in their kernels; PyTorch holds them
  if (target !== 'transformers' && t.kind === 'buffer' && t.persistent === false) return 0;
  // ggml runtimes keep norms and biases (1-D weights) in F32
  if (target !== 'transformers' && t.shape.length === 1) return elements(t.shape) * 4;
  const d = t.kind === 'param' && dtype !== undefined ? dtype : t.dtype;
  return elements(t.shape) * BPE[d]!;
}

interface Costs {
  kvL: number;
  bws: number;
  hws: number;
  /** A device that runs neither blocks nor the head still holds the hidden state it passes on. */
  pws: number;
  target: Target;
}

/** Workspace of a device by the roles it plays (none when it holds nothing). */
function workspaceOf(c: Costs, units: number, blocks: number, head: boolean): number {
  if (units === 0) return 0;
  if (blocks === 0 && !head) return c.pws;
  return (blocks > 0 ? c.bws : 0) + (head ? c.hws : 0);
}

function costsOf(s: Skeleton, w: Workload, target: Target): Costs {
  const a = s.attention!;
  const dtype = dominantDtype(s, w.dtype);
  const profile = TARGETS[target];
  return {
    kvL: kvBytesPerLayer(a, w),
    bws: blockWorkspace(a, w, profile, dtype),
    hws: headWorkspace(a, w, profile, dtype),
    pws: passWorkspace(a, w, profile, dtype),
    target,
  };
}

/** Bytes of a set of tensors on one device: a tie group once when any member is there. */
function bytesOnDevice(names: Iterable<string>, s: Skeleton, dtype: string | undefined, target: Target): number {
  const byName = new Map(s.tensors.map((t) => [t.name, t]));
  const tieOf = new Map<string, number>();
  s.tied.forEach((g, i) => g.forEach((n) => tieOf.set(n, i)));
  const seenTies = new Set<number>();
  let sum = 0;
  for (const n of names) {
    const tie = tieOf.get(n);
    if (tie !== undefined) {
      if (seenTies.has(tie)) continue;
      seenTies.add(tie);
      // the group's storage is its first member in registration order
      const owner = s.tensors.find((t) => s.tied[tie]!.includes(t.name))!;
      sum += loaded(owner, dtype, target);
      continue;
    }
    sum += loaded(byName.get(n)!, dtype, target);
  }
  return sum;
}

/**
 * transformers target: accelerate copies an offloaded module's direct tensors to its main device for
 * each forward, one module at a time; tied aliases reuse the copy already there.
 */
function largestModule(names: Iterable<string>, s: Skeleton, dtype: string | undefined, target: Target): number {
  const byName = new Map(s.tensors.map((t) => [t.name, t]));
  const alias = new Set(
    s.tied.flatMap((g) => {
      const owner = s.tensors.find((t) => g.includes(t.name))!.name;
      return g.filter((n) => n !== owner);
    }),
  );
  const byOwner = new Map<string, number>();
  for (const n of names) {
    if (alias.has(n)) continue;
    const owner = n.slice(0, Math.max(0, n.lastIndexOf('.')));
    byOwner.set(owner, (byOwner.get(owner) ?? 0) + loaded(byName.get(n)!, dtype, target));
  }
  return Math.max(0, ...byOwner.values());
}

const covers = (key: string, name: string): boolean => key === '' || name === key || name.startsWith(`${key}.`);

/** The device the compact map gives a tensor; asserts exactly one key covers it. */
function mapDevice(plan: Plan, tensor: string): string {
  const keys = plan.deviceMap.filter(([k]) => covers(k, tensor));
  assert.equal(keys.length, 1, `${tensor} is covered by ${keys.length} device-map keys (${keys.map(([k]) => JSON.stringify(k)).join(', ')})`);
  return keys[0]![1];
}

function close(actual: number, expected: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= 1e-9 * Math.max(1, Math.abs(expected)), `${what}: ${actual} ≠ ${expected}`);
}

const isAcc = (d: { kind: string }): boolean => d.kind === 'gpu' || d.kind === 'virtual';

interface Chain {
  /** Groups in chain order: a unit, or the embedding with the tied head riding along. */
  groups: { units: ExpectedUnit[]; tensors: string[]; blocks: number; head: boolean }[];
}

function chainOf(units: ExpectedUnit[], attach: boolean, tied: boolean): Chain {
  const groups: Chain['groups'] = [];
  for (const u of units) {
    if (attach && tied && u.name === 'lm_head') {
      const g = groups.find((x) => x.units.some((y) => y.name === 'model.embed_tokens'))!;
      g.units.push(u);
      g.tensors.push(...u.tensors);
      g.head = true;
      continue;
    }
    groups.push({ units: [u], tensors: [...u.tensors], blocks: u.block === undefined ? 0 : 1, head: u.head });
  }
  return { groups };
}

/** What a run of chain groups costs where it lands, from the tensors themselves. */
function accounting(chain: Chain, s: Skeleton, w: Workload, c: Costs) {
  const gs = chain.groups;
  const weightsOf = (i: number, j: number): number =>
    bytesOnDevice(
      gs.slice(i, j).flatMap((g) => g.tensors),
      s,
      w.dtype,
      c.target,
    );
  const blocksOf = (i: number, j: number): number => gs.slice(i, j).reduce((sum, g) => sum + g.blocks, 0);
  const headIn = (i: number, j: number): boolean => gs.slice(i, j).some((g) => g.head);
  return {
    n: gs.length,
    weightsOf,
    /**
     * An accelerator holding groups [i, j); with `hostFrom`, it is accelerate's main device and also runs
     * the offloaded groups [hostFrom, n): their KV, their largest module in transit, their activations.
     */
    accNeed: (overhead: number, i: number, j: number, hostFrom = gs.length): number => {
      if (j <= i) return 0;
      const n = gs.length;
      const b = blocksOf(i, j) + blocksOf(hostFrom, n);
      const transit =
        hostFrom < n
          ? largestModule(
              gs.slice(hostFrom).flatMap((g) => g.tensors),
              s,
              w.dtype,
              c.target,
            )
          : 0;
      return weightsOf(i, j) + b * c.kvL + workspaceOf(c, j - i, b, headIn(i, j) || headIn(hostFrom, n)) + overhead + transit;
    },
    /**
     * CPU RAM when the accelerators end at p and the cpu holds the weights of [p, e): it runs all of
     * [p, n), unless `hosted` (accelerate with a GPU in the map: the GPU runs them).
     */
    hostNeed: (overhead: number, p: number, e: number, hosted = false): number => {
      const n = gs.length;
      if (p >= n) return 0;
      if (hosted) return weightsOf(p, e) + overhead;
      const b = blocksOf(p, n);
      return weightsOf(p, e) + b * c.kvL + workspaceOf(c, n - p, b, headIn(p, n)) + overhead;
    },
  };
}

/**
 * Brute-force reference over every contiguous placement of a chain (accelerators in order, then cpu,
 * then disk): the longest accelerator prefix whose rest fits the host, what the cpu then holds, and for
 * that prefix the least possible max utilisation and the fewest accelerator stages at a given utilisation.
 */
function reference(chain: Chain, s: Skeleton, input: FitInput, c: Costs) {
  const { n, weightsOf, accNeed: need, hostNeed } = accounting(chain, s, input.workload, c);
  const accs = input.devices.filter(isAcc);
  const cpu = input.devices.find((d) => d.kind === 'cpu');
  const disk = input.devices.find((d) => d.kind === 'disk');
  const weight = (d: PlanDeviceSpec): number => d.weight ?? d.cap;
  /**
   * The ways [0, p) can sit on the accelerators: every accelerator in order, or — transformers target
   * with something offloaded — the accelerators from the k-th on, the k-th non-empty and hosting [p, n).
   */
  const configs = (p: number): { accs: PlanDeviceSpec[]; hostFrom: number; hosted: boolean }[] => {
    if (input.target !== 'transformers' || p === 0 || p === n) return [{ accs, hostFrom: n, hosted: false }];
    return accs.map((_, k) => ({ accs: accs.slice(k), hostFrom: p, hosted: true }));
  };
  const host = (p: number, hosted: boolean): { cpuEnd: number } | undefined => {
    if (p === n) return { cpuEnd: n };
    const cpuCap = cpu?.cap ?? 0;
    const ov = cpu?.overhead ?? 0;
    if (!disk) return hostNeed(ov, p, n, hosted) <= cpuCap ? { cpuEnd: n } : undefined;
    let end = -1;
    for (let e = p; e <= n; e++) if (hostNeed(ov, p, e, hosted) <= cpuCap) end = e;
    if (end < 0) return undefined;
    return weightsOf(end, n) <= disk.cap ? { cpuEnd: end } : undefined;
  };
  for (let p = n; p >= 0; p--) {
    const options = configs(p).flatMap((cfg) => {
      const h = host(p, cfg.hosted);
      if (!h) return [];
      const first = cfg.hosted ? cfg.accs[0] : undefined;
      const accNeed = (d: PlanDeviceSpec, i: number, j: number): number => need(d.overhead, i, j, d === first ? cfg.hostFrom : n);
      const util = (d: PlanDeviceSpec, i: number, j: number): number => {
        const x = accNeed(d, i, j);
        return x === 0 ? 0 : x / weight(d);
      };
      const ok = (k: number, i: number, j: number): boolean => accNeed(cfg.accs[k]!, i, j) <= cfg.accs[k]!.cap && !(k === 0 && cfg.hosted && j === i);
      // least max utilisation placing exactly [0, p) on these accelerators
      const memo = new Map<string, number>();
      const best = (k: number, i: number): number => {
        if (k === cfg.accs.length) return i === p ? 0 : Infinity;
        const key = `${k}:${i}`;
        const hit = memo.get(key);
        if (hit !== undefined) return hit;
        let out = Infinity;
        for (let j = i; j <= p; j++) if (ok(k, i, j)) out = Math.min(out, Math.max(util(cfg.accs[k]!, i, j), best(k + 1, j)));
        memo.set(key, out);
        return out;
      };
      // fewest non-empty accelerator stages with every utilisation at most `limit`
      const fewest = (limit: number): number => {
        const seen = new Map<string, number>();
        const go = (k: number, i: number): number => {
          if (k === cfg.accs.length) return i === p ? 0 : Infinity;
          const key = `${k}:${i}`;
          const hit = seen.get(key);
          if (hit !== undefined) return hit;
          let out = Infinity;
          for (let j = i; j <= p; j++) {
            if (!ok(k, i, j) || util(cfg.accs[k]!, i, j) > limit) continue;
            out = Math.min(out, (j > i ? 1 : 0) + go(k + 1, j));
          }
          seen.set(key, out);
          return out;
        };
        return go(0, 0);
      };
      const minMaxUtil = best(0, 0);
      return Number.isFinite(minMaxUtil) ? [{ cpuEnd: h.cpuEnd, minMaxUtil, fewest }] : [];
    });
    if (options.length === 0) continue;
    const minMaxUtil = Math.min(...options.map((o) => o.minMaxUtil));
    return {
      prefix: p,
      cpuEnd: options[0]!.cpuEnd,
      gpuBytes: weightsOf(0, p),
      cpuBytes: weightsOf(p, options[0]!.cpuEnd),
      minMaxUtil,
      fewest: (limit: number): number => Math.min(...options.map((o) => o.fewest(limit))),
    };
  }
  return undefined;
}

interface Case {
  model: ModelSpec;
  work: WorkloadSpec;
  devs: DevicesSpec;
}

function inputFor(k: Case): { input: FitInput; built: Built } {
  const built = buildSkeleton(k.model);
  const s = built.skeleton;
  const workload: Workload = { ctx: k.work.ctx, batch: k.work.batch, ubatch: Math.min(k.work.ubatch, k.work.ctx), kvDtype: k.work.kvDtype };
  if (k.work.dtype !== undefined) workload.dtype = k.work.dtype;
  const c = costsOf(s, workload, k.work.target);
  const allWeights = bytesOnDevice(
    s.tensors.map((t) => t.name),
    s,
    workload.dtype,
    k.work.target,
  );
  const whole = allWeights + k.model.blocks.length * c.kvL + c.bws + c.hws;
  const books = [false, true].map((detached) => accounting(chainOf(built.units, !detached, k.model.tied), s, workload, c));
  const at = (x: number, n: number): number => Math.min(n, Math.floor(x * (n + 1)));
  const cap = (spec: CapSpec, scale: number, breakpoint: (book: (typeof books)[number], from: number, to: number) => number): number => {
    if ('zero' in spec) return 0;
    if ('fraction' in spec) return Math.floor(spec.fraction * scale);
    const book = books[spec.detached ? 1 : 0]!;
    const [from, to] = [at(spec.from, book.n), at(spec.to, book.n)].sort((a, b) => a - b) as [number, number];
    return Math.max(0, breakpoint(book, from, to) + spec.jitter);
  };
  const devices: PlanDeviceSpec[] = [];
  k.devs.caps.forEach((spec, i) => {
    const overhead = Math.floor(k.devs.overheadFractions[i]! * whole);
    const big = k.devs.big === i ? Math.ceil(k.devs.bigFraction * (whole + overhead)) : 0;
    const own = cap(spec, whole, (book, from, to) => book.accNeed(overhead, from, to));
    const d: PlanDeviceSpec = { id: String(i), kind: k.devs.virtual ? 'virtual' : 'gpu', cap: Math.max(big, own), overhead };
    if (k.devs.weights) d.weight = k.devs.weights[i]!;
    devices.push(d);
  });
  const bigCpu = k.devs.big === k.devs.caps.length;
  if (k.devs.cpu !== undefined || bigCpu) {
    const own = k.devs.cpu === undefined ? 0 : cap(k.devs.cpu, whole, (book, from, to) => book.hostNeed(0, from, to));
    devices.push({ id: 'cpu', kind: 'cpu', cap: Math.max(own, bigCpu ? Math.ceil(k.devs.bigFraction * whole) : 0), overhead: 0 });
  }
  if (k.devs.disk !== undefined) {
    const diskCap = k.devs.disk === 'unlimited' ? Infinity : cap(k.devs.disk, allWeights, (book, from) => book.weightsOf(from, book.n));
    devices.push({ id: 'disk', kind: 'disk', cap: diskCap, overhead: 0 });
  }
  // Remedies are searched by their own property below; the invariants here need only the verdict.
  return { input: { skeleton: s, devices, workload, target: k.work.target, remedies: false }, built };
}

const TIE_WARNING = 'tied weights could not stay on one device';

/** Every invariant a successful fit plan must satisfy, checked from the plan's own device lists and map. */
function checkPlan(model: ModelSpec, input: FitInput, built: Built, plan: Plan): void {
  const s = input.skeleton;
  const w = input.workload;
  const c = costsOf(s, w, input.target);
  const units = built.units;
  const unitNames = new Set(units.map((u) => u.name));

  // every unit on exactly one device
  const deviceOfUnit = new Map<string, string>();
  for (const d of plan.devices) {
    for (const m of d.modules) {
      assert.ok(unitNames.has(m), `${d.id} lists ${m}, which is not a placement unit`);
      assert.ok(!deviceOfUnit.has(m), `${m} is on both ${deviceOfUnit.get(m)} and ${d.id}`);
      deviceOfUnit.set(m, d.id);
    }
  }
  for (const u of units) assert.ok(deviceOfUnit.has(u.name), `unit ${u.name} is on no device`);

  // the compact map covers every tensor exactly once, agrees with the device lists, keeps blocks whole
  for (const u of units) {
    const where = new Set(u.tensors.map((t) => mapDevice(plan, t)));
    assert.ok(where.size <= 1, `${u.name} is split across ${[...where].join(', ')}`);
    for (const d of where) assert.equal(d, deviceOfUnit.get(u.name), `device map puts ${u.name} on ${d}, the device list on ${deviceOfUnit.get(u.name)}`);
    const keys = plan.deviceMap.filter(([key]) => covers(key, u.name) || key.startsWith(`${u.name}.`));
    for (const [key, d] of keys) {
      assert.equal(d, deviceOfUnit.get(u.name), `device-map key ${key} puts part of ${u.name} on ${d}`);
    }
  }
  assert.equal(new Set(plan.deviceMap.map(([key]) => key)).size, plan.deviceMap.length, 'device-map keys repeat');

  // per-device usage, recomputed: weights (tie once per device), KV of its blocks, workspace of its roles, overhead
  const accs = input.devices.filter(isAcc);
  const rank = new Map<string, number>(accs.map((d, i) => [d.id, i]));
  rank.set('cpu', accs.length);
  rank.set('disk', accs.length + 1);
  const hostIds = new Set(['cpu', 'disk']);
  const unitsOn = (ids: Set<string>): ExpectedUnit[] => units.filter((u) => ids.has(deviceOfUnit.get(u.name)!));
  // accelerate (transformers target) runs offloaded units on the first accelerator that holds any
  const offloaded = unitsOn(hostIds);
  const main = input.target === 'transformers' && offloaded.length > 0 ? accs.find((a) => unitsOn(new Set([a.id])).length > 0) : undefined;
  for (const spec of input.devices) {
    const d = plan.devices.find((x) => x.id === spec.id)!;
    assert.ok(d, `device ${spec.id} missing from the plan`);
    const own = unitsOn(new Set([spec.id]));
    const weights = bytesOnDevice(
      own.flatMap((u) => u.tensors),
      s,
      w.dtype,
      input.target,
    );
    let kv = 0;
    let workspace = 0;
    let overhead = 0;
    let transit = 0;
    if (spec.kind === 'disk') {
      // weights only: disk blocks run from the mapped file on the CPU (or on accelerate's main device)
    } else if (spec.kind === 'cpu' && main) {
      overhead = offloaded.length > 0 ? spec.overhead : 0;
    } else {
      const scope = spec.kind === 'cpu' ? offloaded : spec === main ? [...own, ...offloaded] : own;
      const blocks = scope.filter((u) => u.block !== undefined).length;
      kv = blocks * c.kvL;
      workspace = workspaceOf(
        c,
        scope.length,
        blocks,
        scope.some((u) => u.head),
      );
      overhead = scope.length > 0 ? spec.overhead : 0;
      if (spec === main) {
        transit = largestModule(
          offloaded.flatMap((u) => u.tensors),
          s,
          w.dtype,
          input.target,
        );
        assert.ok(d.hosts, `${spec.id} is accelerate's main device but the plan does not say it hosts the offloaded units`);
        close(d.hosts.transit, transit, `${spec.id} transit`);
        close(d.hosts.kv, offloaded.filter((u) => u.block !== undefined).length * c.kvL, `${spec.id} KV of offloaded layers`);
      }
    }
    if (spec !== main) assert.equal(d.hosts, undefined, `${spec.id} claims to host offloaded units`);
    close(d.weights, weights, `${spec.id} weights`);
    close(d.kv, kv, `${spec.id} kv`);
    close(d.workspace, workspace, `${spec.id} workspace`);
    close(d.overhead, overhead, `${spec.id} overhead`);
    const used = weights + kv + workspace + overhead + transit;
    close(d.used, used, `${spec.id} used`);
    assert.ok(d.used <= spec.cap, `${spec.id} uses ${d.used} over its cap ${spec.cap}`);
    assert.ok(used <= spec.cap * (1 + 1e-12), `${spec.id} needs ${used} over its cap ${spec.cap}`);
  }

  // contiguous stages in device order; a tied head riding with its embedding is the one exception
  const tiedTogether = model.tied && deviceOfUnit.get('lm_head') === deviceOfUnit.get('model.embed_tokens');
  let last = -1;
  let lastName = '';
  for (const u of units) {
    if (tiedTogether && u.name === 'lm_head') continue;
    const r = rank.get(deviceOfUnit.get(u.name)!)!;
    assert.ok(r >= last, `stages are not contiguous: ${u.name} on ${deviceOfUnit.get(u.name)} after ${lastName}`);
    last = r;
    lastName = `${u.name} on ${deviceOfUnit.get(u.name)}`;
  }

  // hand-offs as the plan defines them (units holding bytes, or blocks)
  let handoffs = 0;
  let prev: string | undefined;
  const byName = new Map(s.tensors.map((t) => [t.name, t]));
  for (const u of units) {
    // units holding no bytes of their own (a tied head, a rotary table a ggml runtime computes) hand nothing off
    const own = u.tensors.filter((t) => !(model.tied && t === HEAD)).reduce((sum, t) => sum + loaded(byName.get(t)!, w.dtype, input.target), 0);
    if (own === 0 && u.block === undefined) continue;
    const d = deviceOfUnit.get(u.name)!;
    if (prev !== undefined && d !== prev) handoffs++;
    prev = d;
  }
  assert.equal(plan.handoffs, handoffs, 'hand-off count');

  // ties: together unless impossible, and then the plan says so
  const warned = plan.warnings.some((x) => x.includes(TIE_WARNING));
  if (model.tied && !tiedTogether) {
    assert.ok(warned, 'the tied head left its embedding without a warning');
    const headDevice = plan.devices.find((d) => d.id === deviceOfUnit.get('lm_head'))!;
    assert.deepEqual(headDevice.tiedDuplicates, [HEAD], 'the copy of the tied weight is not listed where it is counted');
  } else {
    assert.ok(!warned, 'tie warning on a plan that keeps ties together');
    for (const d of plan.devices) assert.deepEqual(d.tiedDuplicates, [], `${d.id} lists tied duplicates`);
  }

  // optimality against the brute-force reference: most bytes on GPUs, then CPU before disk, then balance
  const attached = reference(chainOf(units, true, model.tied), s, input, c);
  const ref = attached ?? reference(chainOf(units, false, model.tied), s, input, c);
  assert.ok(ref, 'the reference finds no placement, yet planFit returned one');
  if (attached && model.tied) assert.ok(tiedTogether, 'ties were split although a placement keeping them together exists');
  const gpuUnits = units.filter((u) => rank.get(deviceOfUnit.get(u.name)!)! < accs.length);
  const gpuBytes = bytesOnDevice(
    gpuUnits.flatMap((u) => u.tensors),
    s,
    w.dtype,
    input.target,
  );
  close(gpuBytes, ref.gpuBytes, 'bytes on accelerators (the most possible)');
  const cpuPlan = plan.devices.find((d) => d.kind === 'cpu');
  if (cpuPlan) close(cpuPlan.weights, ref.cpuBytes, 'bytes on cpu (cpu fills before disk)');
  if (accs.length > 0 && ref.prefix > 0) {
    const planUtil = Math.max(
      ...accs.map((spec) => {
        const d = plan.devices.find((x) => x.id === spec.id)!;
        return d.used === 0 ? 0 : d.used / (spec.weight ?? spec.cap);
      }),
    );
    assert.ok(planUtil <= ref.minMaxUtil * (1 + 1e-6) + 1e-12, `max utilisation ${planUtil} where ${ref.minMaxUtil} is possible`);
    const stages = accs.filter((spec) => plan.devices.find((x) => x.id === spec.id)!.modules.length > 0).length;
    const fewest = ref.fewest(planUtil * (1 + 1e-12));
    assert.ok(stages <= fewest, `${stages} GPU stages where ${fewest} reach the same balance`);
  }
}

function scaled(input: FitInput, factor: number): FitInput {
  return { ...input, devices: input.devices.map((d) => ({ ...d, cap: d.cap * factor })) };
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Properties
// ---------------------------------------------------------------------------------------------------------------

interface Stats {
  ok: number;
  infeasible: number;
  offloaded: number;
  detached: number;
  /** transformers-target plans whose main device runs offloaded units. */
  hosted: number;
}

/** One random case: a plan passes every check, or the failure is InfeasiblePlanError and truly infeasible. */
function runCase(k: Case, stats: Stats): void {
  const { input, built } = inputFor(k);
  let plan: Plan;
  try {
    plan = planFit(input);
  } catch (e) {
    assert.ok(e instanceof InfeasiblePlanError, `planFit threw ${(e as Error)?.stack ?? String(e)}`);
    const c = costsOf(input.skeleton, input.workload, input.target);
    const attached = reference(chainOf(built.units, true, k.model.tied), input.skeleton, input, c);
    const detached = reference(chainOf(built.units, false, k.model.tied), input.skeleton, input, c);
    assert.ok(!attached && !detached, `planFit says infeasible, but the reference places it (${e.message})`);
    assert.ok(e.message.includes('does not fit'), `unexpected reason: ${e.message}`);
    assert.ok(
      e.shortfalls.some((x) => x.short > 0),
      `the error names no short device: ${e.message}`,
    );
    // sanity: the generator keeps one device within a factor 10 of the whole model
    const roomy = scaled(input, 10);
    checkPlan(k.model, roomy, built, planFit(roomy));
    stats.infeasible++;
    return;
  }
  checkPlan(k.model, input, built, plan);
  stats.ok++;
  if (plan.devices.some((d) => !isAcc(d) && d.modules.length > 0)) stats.offloaded++;
  if (plan.warnings.some((x) => x.includes(TIE_WARNING))) stats.detached++;
  if (plan.devices.some((d) => d.hosts)) stats.hosted++;
}

const RUNS = Number(process.env.FIT_PROPERTY_RUNS ?? 2500);

/** Tied models whose logits workspace dwarfs the blocks, with caps at the detached chain's breakpoints. */
const tieStressArb: fc.Arbitrary<Case> = fc.record({
  model: modelArb.chain((m) =>
    fc
      .record({
        vocab: fc.integer({ min: 2048, max: 16384 }),
        hidden: fc.integer({ min: 8, max: 96 }),
        numHeads: fc.integer({ min: 1, max: 2 }),
        headDim: fc.integer({ min: 4, max: 32 }),
        intermediate: fc.integer({ min: 8, max: 256 }),
      })
      .map((o) => ({
        ...m,
        ...o,
        numKvHeads: 1,
        tied: true,
        blocks: m.blocks.map((b) => ({ ...b, linears: b.linears.map((l) => ({ ...l, out: Math.min(l.out, 96), in: Math.min(l.in, 96) })) })),
      })),
  ),
  work: workloadArb.map((w) => ({ ...w, batch: 1, ubatch: Math.max(256, w.ubatch), ctx: Math.max(256, w.ubatch) })),
  // The GPU holds exactly the embedding and the blocks up to a cut (± a byte), the cpu exactly the rest
  // with a copy of the tied weight.
  devs: fc
    .record({ d: devicesArb, cut: fc.integer({ min: 1, max: 999 }), j0: fc.constantFrom<0 | 1>(0, 1), j1: fc.constantFrom<-1 | 0 | 1>(-1, 0, 1) })
    .map(({ d, cut, j0, j1 }) => ({
      ...d,
      caps: [{ from: 0, to: cut / 1000, jitter: j0, detached: true }],
      overheadFractions: d.overheadFractions.slice(0, 1),
      weights: undefined,
      cpu: { from: cut / 1000, to: 1, jitter: j1, detached: true },
      disk: undefined,
      big: 1,
      bigFraction: 0.11,
    })),
});

describe('fit: properties over random skeletons, devices and workloads', () => {
  it('every plan respects caps, blocks, coverage, contiguity and preferences; every failure is InfeasiblePlanError', () => {
    const stats: Stats = { ok: 0, infeasible: 0, offloaded: 0, detached: 0, hosted: 0 };
    fc.assert(
      fc.property(fc.record({ model: modelArb, work: workloadArb, devs: devicesArb }), (k: Case) => runCase(k, stats)),
      { numRuns: RUNS, includeErrorInReport: true },
    );
    if (process.env.FIT_PROPERTY_RUNS) console.log('random', stats);
    // the generator must reach every regime
    const { ok, infeasible, offloaded, hosted } = stats;
    assert.ok(
      ok > RUNS / 5 && infeasible > RUNS / 10 && offloaded > RUNS / 20 && hosted > RUNS / 200,
      `ok ${ok}, infeasible ${infeasible}, offloaded ${offloaded}, hosted ${hosted}`,
    );
  });

  it('every suggested remedy of an infeasible plan, applied, plans; and each changes only what it names', () => {
    let checked = 0;
    fc.assert(
      fc.property(fc.record({ model: modelArb, work: workloadArb, devs: devicesArb }), (k: Case) => {
        const { input } = inputFor(k);
        let err: InfeasiblePlanError;
        try {
          planFit({ ...input, remedies: undefined });
          return;
        } catch (e) {
          assert.ok(e instanceof InfeasiblePlanError);
          err = e;
        }
        for (const r of err.remedies) {
          assert.doesNotThrow(() => planFit({ ...r.input, remedies: false }), `${r.text} does not make it fit`);
          assert.equal(r.input.skeleton, input.skeleton);
          checked++;
        }
      }),
      { numRuns: Math.ceil(RUNS / 10), includeErrorInReport: true },
    );
    assert.ok(checked > RUNS / 20, `only ${checked} remedies checked`);
  });

  it('tied weights stay together when they can, and are copied (and counted twice) only when they cannot', () => {
    const stats: Stats = { ok: 0, infeasible: 0, offloaded: 0, detached: 0, hosted: 0 };
    fc.assert(
      fc.property(tieStressArb, (k: Case) => runCase(k, stats)),
      { numRuns: Math.ceil(RUNS / 5), includeErrorInReport: true },
    );
    if (process.env.FIT_PROPERTY_RUNS) console.log('tie stress', stats);
    assert.ok(stats.detached > 0 && stats.ok > stats.detached, `detached ${stats.detached}, ok ${stats.ok}`);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// 2. Behaviour
// ---------------------------------------------------------------------------------------------------------------

const llama = await readModel('llama-2-7b');
const chatglm = await readModel('chatglm2-6b');
const W4K: Workload = { ctx: 4096, batch: 1, ubatch: 512, kvDtype: 'float16' };
const gpu = (id: string, cap: number, extra: Partial<PlanDeviceSpec> = {}): PlanDeviceSpec => ({ id, kind: 'gpu', cap, overhead: 300 * MiB, ...extra });
const cpuDev = (cap: number): PlanDeviceSpec => ({ id: 'cpu', kind: 'cpu', cap, overhead: 0 });
const diskDev = (cap = Infinity): PlanDeviceSpec => ({ id: 'disk', kind: 'disk', cap, overhead: 0 });
const dev = (p: Plan, id: string): DevicePlan => {
  const d = p.devices.find((x) => x.id === id);
  assert.ok(d, `no device ${id} in the plan`);
  return d;
};
const blockCount = (d: DevicePlan, prefix = 'model.layers'): number =>
  d.modules.filter((m) => new RegExp(`^${prefix.replace(/\./g, '\\.')}\\.\\d+$`).test(m)).length;
const gpuWeights = (p: Plan): number => p.devices.filter(isAcc).reduce((sum, d) => sum + d.weights, 0);
const util = (d: DevicePlan): number => d.used / d.cap;
function infeasible(input: FitInput): InfeasiblePlanError {
  try {
    planFit(input);
  } catch (e) {
    assert.ok(e instanceof InfeasiblePlanError, String(e));
    return e;
  }
  assert.fail('the plan fits');
}

describe('fit: behaviour', () => {
  it("puts each layer's KV cache on the device of that layer", () => {
    const p = planFit({ skeleton: llama, devices: [gpu('0', 6 * GiB), gpu('1', 8 * GiB), cpuDev(30 * GiB)], workload: W4K, target: 'vramfit' });
    const kvL = kvBytesPerLayer(llama.attention!, W4K);
    assert.equal(kvL, 64 * MiB, 'llama-2-7b: 8192 fp16 elements per token per layer × 4096 tokens');
    for (const id of ['0', '1']) {
      const d = dev(p, id);
      assert.ok(blockCount(d) > 0, `GPU ${id} holds no block`);
      assert.equal(d.kv, kvL * blockCount(d), `GPU ${id}`);
    }
    const cpu = dev(p, 'cpu');
    assert.ok(blockCount(cpu) > 0);
    assert.equal(cpu.kv, kvL * blockCount(cpu));
    assert.equal(
      p.devices.reduce((sum, d) => sum + d.kv, 0),
      32 * kvL,
    );
  });

  it('charges the logits workspace to the device that holds the head, and only there', () => {
    const dtype = dominantDtype(llama);
    const bws = blockWorkspace(llama.attention!, W4K, TARGETS.vramfit, dtype);
    const hws = headWorkspace(llama.attention!, W4K, TARGETS.vramfit, dtype);
    assert.ok(hws > 0 && bws > 0);
    const onGpus = planFit({ skeleton: llama, devices: [gpu('0', 9 * GiB), gpu('1', 9 * GiB)], workload: W4K, target: 'vramfit' });
    assert.equal(mapDevice(onGpus, 'lm_head.weight'), '1');
    assert.equal(dev(onGpus, '0').workspace, bws);
    assert.equal(dev(onGpus, '1').workspace, bws + hws);
    const offloaded = planFit({ skeleton: llama, devices: [gpu('0', 6 * GiB), cpuDev(30 * GiB)], workload: W4K, target: 'vramfit' });
    assert.equal(mapDevice(offloaded, 'lm_head.weight'), 'cpu');
    assert.equal(dev(offloaded, '0').workspace, bws);
    assert.equal(dev(offloaded, 'cpu').workspace, bws + hws);
  });

  const tiedSpec: ModelSpec = {
    hidden: 64,
    vocab: 8192,
    embedDtype: 'float16',
    headDtype: 'float16',
    finalNormDtype: 'float16',
    blocks: Array.from({ length: 4 }, () => ({
      linears: [
        { out: 64, in: 64, bias: false, dtype: 'float16' as const },
        { out: 64, in: 64, bias: true, dtype: 'float16' as const },
      ],
      nested: true,
      normDtype: 'float16' as const,
    })),
    tied: true,
    tieReversed: true,
    rotary: 'buffer',
    rootTensor: false,
    numHeads: 2,
    numKvHeads: 1,
    headDim: 16,
    intermediate: 64,
  };
  const tiedWork: Workload = { ctx: 512, batch: 1, ubatch: 512, kvDtype: 'float16' };

  it('keeps a tied embedding and head together, counted once', () => {
    const { skeleton, units } = buildSkeleton(tiedSpec);
    const c = costsOf(skeleton, tiedWork, 'vramfit');
    const book = accounting(chainOf(units, true, true), skeleton, tiedWork, c);
    // GPU 0 holds the embedding with its head and 2 blocks, GPU 1 the rest: the chain splits, the head rides along
    const devices: PlanDeviceSpec[] = [
      { id: '0', kind: 'gpu', cap: book.accNeed(0, 0, 3), overhead: 0 },
      { id: '1', kind: 'gpu', cap: book.accNeed(0, 3, book.n), overhead: 0 },
    ];
    const input: FitInput = { skeleton, devices, workload: tiedWork, target: 'vramfit' };
    const p = planFit(input);
    assert.equal(mapDevice(p, HEAD), mapDevice(p, EMBED));
    assert.equal(mapDevice(p, HEAD), '0');
    assert.equal(mapDevice(p, 'model.norm.weight'), '1', 'the chain does go on to GPU 1');
    assert.ok(!p.warnings.some((x) => x.includes(TIE_WARNING)));
    assert.deepEqual(
      p.devices.flatMap((d) => d.tiedDuplicates),
      [],
    );
    const embedBytes = 8192 * 64 * 2;
    assert.equal(
      dev(p, '0').weights,
      bytesOnDevice(
        dev(p, '0').modules.flatMap((m) => units.find((u) => u.name === m)!.tensors),
        skeleton,
        undefined,
        'vramfit',
      ),
    );
    assert.equal(
      p.devices.reduce((sum, d) => sum + d.weights, 0),
      bytesOnDevice(
        skeleton.tensors.map((t) => t.name),
        skeleton,
        undefined,
        'vramfit',
      ),
    );
    assert.ok(dev(p, '0').weights >= embedBytes);
    assert.ok(dev(p, '0').workspace >= c.hws, 'the logits workspace follows the head to GPU 0');
    checkPlan(tiedSpec, input, { skeleton, units }, p);
  });

  it('copies a tied weight when the pair fits on no device, says so, and counts the copy on both devices', () => {
    const { skeleton, units } = buildSkeleton(tiedSpec);
    const c = costsOf(skeleton, tiedWork, 'vramfit');
    const apart = accounting(chainOf(units, false, true), skeleton, tiedWork, c);
    const together = accounting(chainOf(units, true, true), skeleton, tiedWork, c);
    const cut = 5; // the embedding and the 4 blocks on the GPU; norm, rotary and the head on the cpu
    const input: FitInput = {
      skeleton,
      devices: [{ id: '0', kind: 'gpu', cap: apart.accNeed(0, 0, cut), overhead: 0 }, cpuDev(apart.hostNeed(0, cut, apart.n))],
      workload: tiedWork,
      target: 'vramfit',
    };
    // the pair does not fit the GPU, and the whole model does not fit the cpu
    assert.ok(together.accNeed(0, 0, 1) > input.devices[0]!.cap);
    assert.ok(together.hostNeed(0, 0, together.n) > input.devices[1]!.cap);
    const p = planFit(input);
    assert.equal(mapDevice(p, EMBED), '0');
    assert.equal(mapDevice(p, HEAD), 'cpu');
    assert.ok(
      p.warnings.some((x) => x.includes(TIE_WARNING)),
      p.warnings.join('\n'),
    );
    assert.ok(
      p.warnings.some((x) => x.includes('cpu also holds a copy of tied lm_head.weight')),
      p.warnings.join('\n'),
    );
    assert.deepEqual(dev(p, 'cpu').tiedDuplicates, [HEAD]);
    const embedBytes = 8192 * 64 * 2;
    assert.equal(dev(p, 'cpu').weights, embedBytes + 64 * 4, 'the copy and the final norm in F32 (vramfit computes the rotary buffer)');
    assert.equal(
      dev(p, '0').weights,
      bytesOnDevice(
        skeleton.tensors.filter((t) => t.name.startsWith('model.layers.') || t.name === EMBED).map((t) => t.name),
        skeleton,
        undefined,
        'vramfit',
      ),
    );
    assert.equal(
      p.devices.reduce((sum, d) => sum + d.weights, 0),
      bytesOnDevice(
        skeleton.tensors.map((t) => t.name),
        skeleton,
        undefined,
        'vramfit',
      ) + embedBytes,
    );
    assert.equal(dev(p, 'cpu').used, dev(p, 'cpu').cap);
    checkPlan(tiedSpec, input, { skeleton, units }, p);
  });

  const PINNED = ['transformer.embedding', 'transformer.rotary_pos_emb', 'transformer.encoder.final_layernorm', 'transformer.output_layer'];
  const pinnedOn = (p: Plan): string[] => chatglm.tensors.filter((t) => PINNED.some((m) => covers(m, t.name))).map((t) => mapDevice(p, t.name));

  it("pins ChatGLM's embedding, rotary table, final norm and output layer to GPU 0 under transformers", () => {
    assert.deepEqual(pinsFor(chatglm, 'transformers'), PINNED);
    assert.deepEqual(pinsFor(chatglm, 'vramfit'), []);
    assert.deepEqual(pinsFor(llama, 'transformers'), []);
    const pins = pinsFor(chatglm, 'transformers');
    const w: Workload = { ctx: 8192, batch: 1, ubatch: 512, kvDtype: 'float16' };
    const overhead = TARGETS.transformers.gpuOverhead;
    const p = planFit({
      skeleton: chatglm,
      devices: [gpu('0', 6 * GiB, { overhead }), gpu('1', 6 * GiB, { overhead }), cpuDev(64 * GiB)],
      workload: w,
      target: 'transformers',
      pins,
    });
    assert.deepEqual(new Set(pinnedOn(p)), new Set(['0']));
    assert.ok(
      blockCount(dev(p, '1'), 'transformer.encoder.layers') > 0 && blockCount(dev(p, 'cpu'), 'transformer.encoder.layers') > 0,
      'the blocks go on past GPU 0',
    );
    assert.ok(
      dev(p, '0').workspace >= headWorkspace(chatglm.attention!, w, TARGETS.transformers, dominantDtype(chatglm)),
      'logits on GPU 0 with the output layer',
    );
    for (const d of p.devices) assert.ok(d.used <= d.cap);

    // balancing must not empty GPU 0 when it is much smaller than GPU 1 (it would without pins)
    const lopsided = [gpu('0', 8 * GiB, { overhead }), gpu('1', 80 * GiB, { overhead })];
    const free = planFit({ skeleton: chatglm, devices: lopsided, workload: w, target: 'transformers', pins: [] });
    assert.equal(dev(free, '0').modules.length, 0, 'unpinned, the balance leaves GPU 0 empty');
    const pinned = planFit({ skeleton: chatglm, devices: lopsided, workload: w, target: 'transformers', pins });
    assert.deepEqual(new Set(pinnedOn(pinned)), new Set(['0']));
    // a library caller who passes no pins gets the runtime's own, and the warning that says so
    const byDefault = planFit({ skeleton: chatglm, devices: lopsided, workload: w, target: 'transformers' });
    assert.deepEqual(new Set(pinnedOn(byDefault)), new Set(['0']));
    assert.ok(byDefault.warnings.some((x) => x.startsWith('pinned to the first GPU for transformers: transformer.embedding')));

    // and when the pinned modules cannot fit GPU 0, the plan says so
    assert.throws(
      () =>
        planFit({ skeleton: chatglm, devices: [gpu('0', 2 * GiB, { overhead }), gpu('1', 80 * GiB, { overhead })], workload: w, target: 'transformers', pins }),
      (e: unknown) =>
        e instanceof InfeasiblePlanError &&
        /pinned modules/.test(e.message) &&
        e.shortfalls.length === 1 &&
        e.shortfalls[0]!.device === '0' &&
        e.shortfalls[0]!.short > 0,
    );
  });

  it('balances GPUs by utilisation, or by --gpu-weights', () => {
    const even = planFit({ skeleton: llama, devices: [gpu('0', 24 * GiB), gpu('1', 24 * GiB)], workload: W4K, target: 'vramfit' });
    assert.ok(Math.abs(util(dev(even, '0')) - util(dev(even, '1'))) < 0.02, `${util(dev(even, '0'))} vs ${util(dev(even, '1'))}`);
    assert.equal(even.handoffs, 1);
    const uneven = planFit({ skeleton: llama, devices: [gpu('0', 16 * GiB), gpu('1', 32 * GiB)], workload: W4K, target: 'vramfit' });
    assert.ok(Math.abs(util(dev(uneven, '0')) - util(dev(uneven, '1'))) < 0.03, `${util(dev(uneven, '0'))} vs ${util(dev(uneven, '1'))}`);
    assert.ok(blockCount(dev(uneven, '1')) > blockCount(dev(uneven, '0')) * 1.5);

    const weighted = planFit({
      skeleton: llama,
      devices: [gpu('0', 24 * GiB, { weight: 1 }), gpu('1', 24 * GiB, { weight: 3 })],
      workload: W4K,
      target: 'vramfit',
    });
    assert.ok(blockCount(dev(weighted, '0')) < blockCount(dev(even, '0')));
    const ratio = dev(weighted, '1').used / dev(weighted, '0').used;
    assert.ok(ratio > 2.5 && ratio < 3.5, `GPU 1 holds ${ratio}× GPU 0`);
    assert.equal(gpuWeights(weighted), gpuWeights(even), 'weights change the split, not what is on GPUs');
  });

  it('fills the GPUs before balancing when the model does not fit them', () => {
    const p = planFit({ skeleton: llama, devices: [gpu('0', 6 * GiB), gpu('1', 6 * GiB), cpuDev(30 * GiB)], workload: W4K, target: 'vramfit' });
    for (const id of ['0', '1']) {
      const d = dev(p, id);
      // not even the smallest unit left on the cpu would fit
      assert.ok(d.cap - d.used < 0.4 * GiB + 256 * MiB, `GPU ${id} has ${(d.cap - d.used) / GiB} GiB free`);
    }
    assert.ok(p.warnings.some((x) => x.includes('offloaded')));
  });

  it('names each short device in human units, and suggests only changes that were planned again and fit', () => {
    const devices = [gpu('0', 4 * GiB), gpu('1', 4 * GiB)];
    const err = infeasible({ skeleton: llama, devices, workload: W4K, target: 'vramfit' });
    assert.match(err.message, /does not fit/);
    for (const id of ['0', '1']) {
      const s = err.shortfalls.find((x) => x.device === id);
      assert.ok(s && s.short > 0, `GPU ${id} not named short`);
      assert.match(err.message, new RegExp(`^  GPU ${id} is short by \\d+\\.\\d\\d (MiB|GiB)$`, 'm'));
    }
    assert.match(err.message, /^  cpu is short by .* \(no cpu budget was given\)$/m);
    assert.doesNotMatch(err.message, / 0\.00 /, 'amounts are scaled to their unit');
    assert.ok(err.remedies.length >= 3, err.message);
    for (const r of err.remedies) {
      // what the text says is what was planned
      const p = planFit({ ...r.input, remedies: false });
      assert.ok(p.devices.length > 0);
      const cpu = /^--max-memory …,cpu=([\d.]+)(GiB|MiB)$/.exec(r.text);
      if (cpu) assert.equal(r.input.devices.find((d) => d.id === 'cpu')!.cap, Math.ceil(Number(cpu[1]) * (cpu[2] === 'GiB' ? GiB : MiB)));
      const cap = /^--max-memory (\d)=([\d.]+)GiB/.exec(r.text);
      if (cap) assert.equal(r.input.devices.find((d) => d.id === cap[1])!.cap, Math.ceil(Number(cap[2]) * GiB));
      const ctx = /^--ctx (\d+)/.exec(r.text);
      if (ctx) assert.equal(r.input.workload.ctx, Number(ctx[1]));
    }
    assert.ok(
      err.suggestions.some((x) => /^--max-memory …,cpu=\d+\.\d\dGiB$/.test(x)),
      err.suggestions.join('; '),
    );
    // the smallest cpu budget that works: a hundredth of a GiB less does not
    const cpuRemedy = err.remedies.find((r) => r.text.includes('cpu='))!;
    const cpuCap = cpuRemedy.input.devices.find((d) => d.id === 'cpu')!.cap;
    assert.throws(
      () =>
        planFit({
          ...cpuRemedy.input,
          devices: cpuRemedy.input.devices.map((d) => (d.id === 'cpu' ? { ...d, cap: cpuCap - 0.011 * GiB } : d)),
          remedies: false,
        }),
      InfeasiblePlanError,
    );
  });

  it('suggests only what the command accepts: no q8_0 KV or --ctx auto for run', () => {
    const input: FitInput = { skeleton: llama, devices: [gpu('0', 14.2 * GiB)], workload: W4K, target: 'vramfit' };
    const forPlan = infeasible(input);
    assert.ok(
      forPlan.suggestions.some((x) => /^--kv-dtype q[48]_0$/.test(x)),
      forPlan.suggestions.join('; '),
    );
    assert.ok(
      forPlan.suggestions.some((x) => /--ctx \d+ \(or --ctx auto\)/.test(x)),
      forPlan.suggestions.join('; '),
    );
    const forRun = infeasible({ ...input, remedies: { kvDtypes: ['float32', 'float16'], dtypes: ['float16'], ctxAuto: false, offload: true } });
    assert.ok(!forRun.suggestions.some((x) => /q8_0|auto|--dtype/.test(x)), forRun.suggestions.join('; '));
    assert.ok(
      forRun.suggestions.some((x) => /^--ctx \d+: the longest context that fits$/.test(x)),
      forRun.suggestions.join('; '),
    );
  });

  it('keeps the message short with many devices: one line each for the first eight, one line for the rest', () => {
    const many = Array.from({ length: 64 }, (_, i) => gpu(String(i), 150 * MiB, { overhead: 0 }));
    const err = infeasible({ skeleton: llama, devices: many, workload: W4K, target: 'vramfit', remedies: false });
    const lines = err.message.split('\n');
    assert.ok(
      lines.every((l) => l.length <= 120),
      lines.find((l) => l.length > 120),
    );
    assert.equal(lines.filter((l) => /^  GPU \d+ is short by/.test(l)).length, 8);
    assert.match(err.message, /^  … and \d+ more devices, each short by .* to .*$/m);
  });

  it('--ctx auto picks the largest multiple of 256 that keeps the same bytes on the GPUs', () => {
    const planAt =
      (devices: PlanDeviceSpec[]) =>
      (ctx: number): Plan =>
        planFit({ skeleton: llama, devices, workload: { ...W4K, ctx, ubatch: Math.min(512, ctx) }, target: 'vramfit' });
    for (const devices of [[gpu('0', 14 * GiB), cpuDev(30 * GiB)], [gpu('0', 14 * GiB)], [gpu('0', 8 * GiB), gpu('1', 7 * GiB), cpuDev(20 * GiB)]]) {
      const at = planAt(devices);
      const p = largestContext(4096, at);
      const ctx = p.workload.ctx;
      assert.equal(ctx % 256, 0);
      assert.ok(ctx >= 256 && ctx < 4096, `ctx ${ctx}`);
      assert.equal(gpuWeights(p), gpuWeights(at(256)));
      let longer: Plan | undefined;
      try {
        longer = at(ctx + 256);
      } catch (e) {
        assert.ok(e instanceof InfeasiblePlanError);
      }
      if (longer) assert.ok(gpuWeights(longer) < gpuWeights(p), `ctx ${ctx + 256} keeps the same GPU bytes`);
    }
    const roomy = largestContext(4096, planAt([gpu('0', 40 * GiB)]));
    assert.equal(roomy.workload.ctx, 4096);
  });

  it("offloads to disk with the disk blocks' KV cache and workspace in CPU RAM", () => {
    const p = planFit({ skeleton: llama, devices: [gpu('0', 4 * GiB), cpuDev(4 * GiB), diskDev()], workload: W4K, target: 'vramfit' });
    const disk = dev(p, 'disk');
    const cpu = dev(p, 'cpu');
    const kvL = kvBytesPerLayer(llama.attention!, W4K);
    assert.ok(blockCount(disk) > 0 && blockCount(cpu) > 0);
    assert.equal(disk.kv, 0);
    assert.equal(disk.workspace, 0);
    assert.equal(disk.used, disk.weights);
    assert.equal(cpu.kv, kvL * (blockCount(cpu) + blockCount(disk)));
    const dtype = dominantDtype(llama);
    assert.equal(
      cpu.workspace,
      blockWorkspace(llama.attention!, W4K, TARGETS.vramfit, dtype) + headWorkspace(llama.attention!, W4K, TARGETS.vramfit, dtype),
      'the head is on disk and runs on the CPU',
    );
    assert.ok(cpu.used <= cpu.cap);
    assert.equal(mapDevice(p, 'lm_head.weight'), 'disk');
  });
});

// ---------------------------------------------------------------------------------------------------------------
// 3. CLI
// ---------------------------------------------------------------------------------------------------------------

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(argv, { stdout: (s) => void (out += s), stderr: (s) => void (err += s) });
  return { code, out, err };
}

const BASE = ['plan', 'llama-2-7b', '--gpu-memory', '24GiB,24GiB', '--max-memory', '0=5GB,1=10GB,cpu=30GiB'];

describe("fit: the transformers target runs offloaded modules on accelerate's main device", () => {
  // The case: 5 GB and 10 GB on two cards, the rest on the cpu.
  const devices = [gpu('0', 5e9, { overhead: GiB }), gpu('1', 10e9, { overhead: GiB }), cpuDev(30 * GiB)];
  const p = planFit({ skeleton: llama, devices, workload: W4K, target: 'transformers' });
  const offloadedBlocks = blockCount(dev(p, 'cpu'));

  it('counts the KV cache of every offloaded layer, the largest offloaded module and their activations on GPU 0', () => {
    assert.ok(offloadedBlocks > 0, 'the case must offload layers');
    const g0 = dev(p, '0');
    assert.ok(g0.hosts, 'GPU 0 does not say it runs the offloaded modules');
    assert.equal(g0.hosts.kv, offloadedBlocks * 64 * MiB);
    assert.equal(g0.kv, (blockCount(g0) + offloadedBlocks) * 64 * MiB);
    assert.equal(g0.hosts.transit, 32000 * 4096 * 2, 'lm_head, the largest offloaded module, is copied in whole');
    // GPU 0 computes the head's logits for the offloaded lm_head
    assert.equal(
      g0.workspace,
      blockWorkspace(llama.attention!, W4K, TARGETS.transformers, 'float16') + headWorkspace(llama.attention!, W4K, TARGETS.transformers, 'float16'),
    );
    assert.ok(g0.used <= 5e9, `GPU 0 uses ${g0.used}`);
    assert.equal(g0.used, g0.weights + g0.kv + g0.workspace + g0.overhead + g0.hosts.transit);
    const cpu = dev(p, 'cpu');
    assert.equal(cpu.kv, 0, 'the cpu computes nothing under accelerate with a GPU in the map');
    assert.equal(cpu.workspace, 0);
    assert.equal(dev(p, '1').hosts, undefined);
  });

  it('is the most the GPUs can keep: one more layer on the GPUs would overflow a cap', () => {
    const target = planFit({ skeleton: llama, devices, workload: W4K, target: 'vramfit' });
    assert.ok(blockCount(dev(target, 'cpu')) < offloadedBlocks, 'hosting costs GPU 0 room, so fewer layers stay on the GPUs');
    // 64 MiB of KV per hosted layer moves with each layer: with all on GPUs but one, a cap would break
    const bigger = planFit({
      skeleton: llama,
      devices: [gpu('0', 5e9 + 2 * GiB, { overhead: GiB }), devices[1]!, devices[2]!],
      workload: W4K,
      target: 'transformers',
    });
    assert.ok(blockCount(dev(bigger, 'cpu')) < offloadedBlocks);
  });

  it('runs everything on the cpu when no GPU can host the offloaded modules beside its own', () => {
    const tiny = planFit({ skeleton: llama, devices: [gpu('0', 1.5 * GiB, { overhead: GiB }), cpuDev(60 * GiB)], workload: W4K, target: 'transformers' });
    assert.equal(dev(tiny, '0').modules.length, 0);
    assert.equal(dev(tiny, 'cpu').kv, 32 * 64 * MiB);
  });

  it("the table says where the offloaded layers' KV cache lives", async () => {
    const r = await cli(...BASE, '--target', 'transformers');
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /runs offloaded layers \d+–31, norm, rotary_emb, lm_head \(accelerate's main device\): KV of offloaded layers [\d.]+ MiB on GPU 0/);
    assert.match(r.out, /offloaded weights in transit 250\.00 MiB/);
  });
});

describe('plan CLI', () => {
  it('prints a table with both GPUs', async () => {
    const r = await cli(...BASE);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.err, '');
    assert.match(r.out, /^GPU 0\b/m);
    assert.match(r.out, /^GPU 1\b/m);
    assert.match(r.out, /^cpu\b/m);
  });

  it('the table states the verdict in words, echoes each cap as typed, and names simulated cards plainly', async () => {
    const r = await cli(...BASE);
    assert.match(r.out, /^fits: every cap holds; [\d.]+ GiB of 12\.55 GiB weights on GPUs, rest offloaded; fullest GPU \d at [\d.]+ %$/m);
    assert.match(r.out, /of 4\.66 GiB \(--max-memory 0=5GB\)/);
    assert.match(r.out, /of 9\.31 GiB \(--max-memory 1=10GB\)/);
    assert.match(r.out, /of 30\.00 GiB, /, 'a cap typed as its own GiB value is not echoed twice');
    assert.match(r.out, /^GPU 0 simulated 24\.00 GiB$/m);
    assert.doesNotMatch(r.out, /GPU 0 GPU/);
  });

  it('the table says when an export plans for another target than its own', async () => {
    const r = await cli(...BASE);
    assert.match(r.out, /^note: target vramfit; --format accelerate\|python plans for transformers, --format llama\.cpp plans for llama\.cpp/m);
    const t = await cli(...BASE, '--target', 'transformers');
    assert.match(t.out, /^note: target transformers; --format llama\.cpp plans for llama\.cpp/m);
    assert.doesNotMatch(t.out, /accelerate\|python plans/);
  });

  it('--format json is a versioned plan with a device map', async () => {
    const r = await cli(...BASE, '--format', 'json');
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out) as {
      format: string;
      version: number;
      device_map: Record<string, number | string>;
      devices: { id: string }[];
      workload: Record<string, unknown>;
    };
    assert.equal(j.format, 'vramfit-plan');
    assert.equal(j.version, 2);
    assert.equal(typeof j.device_map, 'object');
    assert.equal(j.device_map['model.embed_tokens'], 0);
    assert.equal(j.device_map['lm_head'], 'cpu');
    assert.equal(j.workload['kv_dtype'], 'float16');
    // snake_case everywhere but in records keyed by module names
    const camel: string[] = [];
    const walk = (v: unknown, path: string): void => {
      if (Array.isArray(v)) v.forEach((x, i) => walk(x, `${path}[${i}]`));
      else if (v && typeof v === 'object')
        for (const [k, x] of Object.entries(v)) {
          if (path !== '.device_map' && /[A-Z]/.test(k)) camel.push(`${path}.${k}`);
          walk(x, `${path}.${k}`);
        }
    };
    walk(j, '');
    assert.deepEqual(camel, []);
    assert.deepEqual(
      j.devices.map((d) => d.id),
      ['0', '1', 'cpu'],
    );
  });

  it('--format accelerate gives device_map and max_memory', async () => {
    const r = await cli(...BASE, '--format', 'accelerate');
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out) as { device_map: Record<string, number | string>; max_memory: Record<string, number> };
    assert.deepEqual(Object.keys(j).sort(), ['device_map', 'max_memory']);
    assert.deepEqual(j.max_memory, { 0: 5e9, 1: 10e9, cpu: 30 * GiB });
    assert.deepEqual(new Set(Object.values(j.device_map)), new Set([0, 1, 'cpu']));
  });

  it('--format python is a runnable script', async () => {
    const r = await cli(...BASE, '--format', 'python');
    assert.equal(r.code, 0, r.err);
    // the published repository, not the catalog name; no max_memory beside an explicit map (transformers ignores it)
    assert.match(r.out, /from_pretrained\(\n    "meta-llama\/Llama-2-7b-hf",/);
    assert.doesNotMatch(r.out, /max_memory/);
    assert.match(r.out, /^#   cuda:0: layers 0–\d+; offloaded layers \d+–31 \(accelerate runs cpu\/disk modules on cuda:0\), /m);
    assert.match(r.out, /os\.environ\["CUDA_VISIBLE_DEVICES"\] = "0,1"/);
    assert.match(r.out, /torch\.cuda\.set_per_process_memory_fraction\(0\.\d+, device=0\)/);
    assert.match(r.out, /torch\.cuda\.set_per_process_memory_fraction\(0\.\d+, device=1\)/);
    assert.match(r.out, /AutoModelForCausalLM\.from_pretrained\(/);
  });

  const bad: [string, string[], RegExp][] = [
    ['ambiguous lower-case b', ['--max-memory', '0=5gb'], /--max-memory.*ambiguous/],
    ['unknown device key', ['--max-memory', '0=5GiB,gpu7=1GiB'], /--max-memory.*unknown device 'gpu7'/],
    ['zero context', ['--ctx', '0'], /--ctx/],
    ['unknown KV dtype', ['--kv-dtype', 'nope'], /--kv-dtype.*nope/],
    ['--gpus with --gpu-memory', ['--gpus', '0'], /--gpus/],
    ['accelerate strategy without --compat', ['--strategy', 'sequential'], /--strategy.*--compat accelerate/],
    ['llama.cpp flags for a non-GGUF model', ['--format', 'llama.cpp'], /--format.*GGUF/],
    ['a plan that does not fit', ['--max-memory', '0=2GiB'], /does not fit/],
  ];
  for (const [what, extra, message] of bad) {
    it(`exits 2 with one line on stderr: ${what}`, async () => {
      const r = await cli('plan', 'llama-2-7b', '--gpu-memory', '24GiB,24GiB', ...extra);
      assert.equal(r.code, 2, r.err);
      assert.equal(r.out, '');
      const lines = r.err.trimEnd().split('\n');
      // an infeasible plan lists its short devices and remedies, one short line each
      if (what === 'a plan that does not fit')
        assert.ok(
          lines.every((l) => l.length <= 120),
          r.err,
        );
      else assert.equal(lines.length, 1, r.err);
      assert.match(lines[0]!, /^vramfit: /);
      assert.match(lines[0]!, message);
      assert.doesNotMatch(r.err, /\n\s+at /);
    });
  }

  it('--debug prints the stack', async () => {
    const r = await cli('--debug', 'plan', 'llama-2-7b', '--gpu-memory', '24GiB', '--ctx', '0');
    assert.equal(r.code, 2);
    assert.match(r.err, /^vramfit: --ctx/);
    assert.match(r.err, /\n\s+at /);
  });

  it('--compat accelerate --strategy sequential keeps every no-split decoder layer whole', async () => {
    const r = await cli(
      'plan',
      'llama-2-7b',
      '--gpu-memory',
      '24GiB,24GiB',
      '--max-memory',
      '0=2GB,1=3GB,cpu=30GB',
      '--compat',
      'accelerate',
      '--strategy',
      'sequential',
      '--no-split',
      'LlamaDecoderLayer',
      '--format',
      'accelerate',
    );
    assert.equal(r.code, 0, r.err);
    const { device_map } = JSON.parse(r.out) as { device_map: Record<string, number | string> };
    const layerKeys = Object.keys(device_map).filter((k) => k.startsWith('model.layers'));
    assert.ok(layerKeys.length > 0);
    for (const k of layerKeys) assert.match(k, /^model\.layers(\.\d+)?$/, `${k} splits a decoder layer`);
    const where = new Set(
      Object.entries(device_map)
        .filter(([k]) => /^model\.layers\.\d+$/.test(k))
        .map(([, d]) => d),
    );
    assert.ok(where.size >= 2, 'the layers span several devices');
  });
});

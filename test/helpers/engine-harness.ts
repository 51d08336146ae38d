/**
 * What the engine tests of every architecture share: the greedy run that keeps its logits, the logits
 * comparison, the "split over 1, 2 and 4 virtual devices" check and caps set just above a probe run's plan.
 */
import assert from 'node:assert/strict';
import { generate } from '../../src/engine/generate.js';
import { type DeviceReport, type LoadedModel } from '../../src/engine/model.js';
import { loadModel, type LoadOptions } from '../../src/engine/load.js';

/** Ten prompt tokens: in micro-batches of 4 the second and third chunks attend over a past, as decoding does. */
export const PROMPT = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3];
export const NEW_TOKENS = 6;

/** The options every split and reference comparison loads with (F32 KV cache, one thread). */
export const SPLIT_OPTIONS: LoadOptions = { ctx: 64, ubatch: 4, kvDtype: 'float32', threads: 1 };

export interface GreedyRun {
  ids: number[];
  prompt: Float32Array[];
  steps: Float32Array[];
}

/** Greedy generation that keeps the prompt's and every step's logits. */
export async function greedy(model: LoadedModel, prompt: readonly number[] = PROMPT, maxNewTokens = NEW_TOKENS): Promise<GreedyRun> {
  const stream = generate(model, prompt, { maxNewTokens, sampling: { greedy: true }, keepLogits: true });
  let step = await stream.next();
  while (!step.done) step = await stream.next();
  return { ids: step.value.generatedIds, prompt: step.value.promptLogits!, steps: step.value.stepLogits! };
}

/** The largest absolute difference between two tables of logits rows, which must have as many rows. */
export function maxAbsDiff(a: readonly ArrayLike<number>[], b: readonly ArrayLike<number>[]): number {
  assert.equal(a.length, b.length, 'as many logits rows on both sides');
  let m = 0;
  a.forEach((row, r) => {
    for (let i = 0; i < row.length; i++) m = Math.max(m, Math.abs(row[i]! - b[r]![i]!));
  });
  return m;
}

/** Every device measured at or under its cap and within 2 % of the plan's prediction. */
export function assertUnderCapsAsPredicted(report: readonly DeviceReport[], label = ''): void {
  const at = label ? `${label}: ` : '';
  for (const d of report) {
    assert.ok(d.measured <= d.cap, `${at}device ${d.id} measured ${d.measured} over its cap ${d.cap}`);
    assert.ok(Math.abs(d.measured - d.predicted) <= 0.02 * d.predicted, `${at}device ${d.id} measured ${d.measured} vs predicted ${d.predicted}`);
  }
}

export interface SplitOptions {
  /** Checks the plan of a multi-device load really splits the model; by default: more than one device holds modules. */
  assertSplit?: (model: LoadedModel, devices: string) => void;
  /** Further checks on every load's plan. */
  checkPlan?: (model: LoadedModel, devices: string) => void;
}

function assertSplitByModules(model: LoadedModel, devices: string): void {
  assert.ok(model.plan.devices.filter((d) => d.modules.length > 0).length > 1, `${devices}: the model is really split`);
}

/**
 * Loads the model on virtual:1, virtual:2 and virtual:4 and runs greedy generation on each: the model is really
 * split, every device stays under its cap and within 2 % of the prediction, and the tokens are identical with
 * logits within 1e-5 of the single device's.
 */
export async function assertSplitsAgree(dir: string, base: LoadOptions = SPLIT_OPTIONS, opts: SplitOptions = {}): Promise<GreedyRun[]> {
  const assertSplit = opts.assertSplit ?? assertSplitByModules;
  const runs: GreedyRun[] = [];
  for (const devices of ['virtual:1', 'virtual:2', 'virtual:4']) {
    const model = await loadModel(dir, { ...base, devices });
    try {
      if (devices !== 'virtual:1') assertSplit(model, devices);
      opts.checkPlan?.(model, devices);
      runs.push(await greedy(model));
      assertUnderCapsAsPredicted(model.report(), devices);
    } finally {
      model.dispose();
    }
  }
  for (const [i, r] of runs.slice(1).entries()) {
    assert.deepEqual(r.ids, runs[0]!.ids, `run ${i + 1}: the same greedy tokens as one device`);
    const promptDiff = maxAbsDiff(r.prompt, runs[0]!.prompt);
    const stepDiff = maxAbsDiff(r.steps, runs[0]!.steps);
    assert.ok(promptDiff <= 1e-5, `run ${i + 1}: prompt logits differ by ${promptDiff}`);
    assert.ok(stepDiff <= 1e-5, `run ${i + 1}: step logits differ by ${stepDiff}`);
  }
  return runs;
}

/** A --max-memory value giving each device `margin` bytes over what a probe load with the same options predicts. */
export async function capsJustAbove(dir: string, opts: LoadOptions, margin = 4096): Promise<string> {
  const probe = await loadModel(dir, opts);
  const need = probe.report().map((d) => d.predicted);
  probe.dispose();
  return need.map((n, i) => `${i}=${n + margin}B`).join(',');
}

/** Loads under caps just above the prediction, runs the prompt, and checks every device against its cap and the plan. */
export async function assertRunsUnderTightCaps(dir: string, opts: LoadOptions): Promise<void> {
  const model = await loadModel(dir, { ...opts, maxMemory: await capsJustAbove(dir, opts) });
  try {
    model.forward(PROMPT);
    assertUnderCapsAsPredicted(model.report());
  } finally {
    model.dispose();
  }
}

/** A plain-TypeScript reference model: logits rows for `ids`, appended to its cache at `start` (or its end). */
export interface ReferenceForward {
  forward(ids: readonly number[], start?: number): ArrayLike<number>[];
}

/**
 * The engine's greedy run against a reference: prompt logits and step logits within 1e-4. The reference is fed
 * the engine's own tokens, so one near-tie cannot derail the comparison. Returns the reference's rows.
 */
export function assertAgreesWithReference(got: GreedyRun, ref: ReferenceForward, label = ''): { promptRef: ArrayLike<number>[]; stepRef: ArrayLike<number>[] } {
  const at = label ? `${label}: ` : '';
  const promptRef = ref.forward(PROMPT, 0);
  const promptDiff = maxAbsDiff(got.prompt, promptRef);
  assert.ok(promptDiff < 1e-4, `${at}prompt logits differ by ${promptDiff}`);
  const stepRef = got.ids.slice(0, -1).map((id) => ref.forward([id])[0]!);
  const stepDiff = maxAbsDiff(got.steps.slice(1), stepRef);
  assert.ok(stepDiff < 1e-4, `${at}step logits differ by ${stepDiff}`);
  return { promptRef, stepRef };
}

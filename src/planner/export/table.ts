import { deviceOfModule, label } from '../plan-builder.js';
import type { DevicePlan, Plan } from '../plan.js';
import { formatBytes } from '../units.js';
import { exportsNotFor } from './targets.js';

const WIDTH = 40;
/** A cap typed in the table's own units reads the same there; others (GB, %, free-…) are echoed as typed. */
const SAME_UNITS = /^\d+(\.\d+)?\s*(KiB|MiB|GiB|TiB)$/;

const GLYPHS = { weights: '█', kv: '▓', workspace: '▒', overhead: '░', free: '·' } as const;

/** One bar per device: weights / KV / workspace / overhead / free against the cap. */
function bar(d: DevicePlan): string {
  if (!Number.isFinite(d.cap) || d.cap <= 0) return '';
  const cells = (n: number): number => Math.round((WIDTH * n) / d.cap);
  let out = '';
  out += GLYPHS.weights.repeat(Math.max(0, cells(d.weights + (d.hosts?.transit ?? 0))));
  for (const part of ['kv', 'workspace', 'overhead'] as const) out += GLYPHS[part].repeat(Math.max(0, cells(d[part])));
  out = out.slice(0, WIDTH);
  return `[${out}${GLYPHS.free.repeat(Math.max(0, WIDTH - out.length))}]`;
}

function row(d: DevicePlan): string[] {
  const name = `${label(d)}${d.physical !== undefined && String(d.physical) !== d.id ? ` (physical ${d.physical})` : ''}${d.name ? ` ${d.name}` : ''}`;
  const cap =
    (Number.isFinite(d.cap) ? formatBytes(d.cap) : 'unlimited') +
    (d.capTyped !== undefined && !SAME_UNITS.test(d.capTyped) ? ` (--max-memory ${d.id}=${d.capTyped})` : '');
  const lines = [`${name}`];
  if (d.kind === 'disk') {
    lines.push(`  weights ${formatBytes(d.weights)} (used in place from the files)   cap ${cap}`);
  } else {
    lines.push(`  ${bar(d)} ${formatBytes(d.used)} of ${cap}` + (Number.isFinite(d.cap) ? `, ${formatBytes(d.cap - d.used)} free` : ''));
    lines.push(
      `  weights ${formatBytes(d.weights)} · KV ${formatBytes(d.kv)} · workspace ${formatBytes(d.workspace)} · overhead ${formatBytes(d.overhead)}` +
        (d.hosts ? ` · offloaded weights in transit ${formatBytes(d.hosts.transit)}` : ''),
    );
  }
  lines.push(`  holds: ${d.ranges.length ? d.ranges.join(', ') : '(nothing)'}`);
  if (d.hosts) {
    lines.push(
      `  runs offloaded ${d.hosts.ranges.join(', ')} (accelerate's main device): KV of offloaded layers ${formatBytes(d.hosts.kv)} on ${label(d)} (in its KV), its largest module's weights copied in for each forward`,
    );
  }
  return lines;
}

/** The verdict in words: a plan is only ever printed when it fits (an infeasible one is an error). */
function verdict(p: Plan): string {
  if (p.accelerate) return "fits by accelerate's rules: each device's weights within its budget";
  const acc = p.devices.filter((d) => d.kind === 'gpu' || d.kind === 'virtual');
  const weights = p.devices.reduce((s, d) => s + d.weights, 0);
  const onAcc = acc.reduce((s, d) => s + d.weights, 0);
  const tightest = acc.filter((d) => d.used > 0 && Number.isFinite(d.cap) && d.cap > 0).sort((a, b) => b.used / b.cap - a.used / a.cap)[0];
  const kind = acc[0]?.kind === 'virtual' ? 'devices' : 'GPUs';
  const where =
    acc.length === 0
      ? 'weights on the host'
      : onAcc === weights
        ? `weights all on ${kind}`
        : `${formatBytes(onAcc)} of ${formatBytes(weights)} weights on ${kind}, rest offloaded`;
  return `fits: every cap holds; ${where}${tightest ? `; fullest ${label(tightest)} at ${((100 * tightest.used) / tightest.cap).toFixed(1)} %` : ''}`;
}

export function renderPlanTable(p: Plan): string {
  const w = p.workload;
  const lines = [
    `plan for ${p.model.root_class} (${p.model.source}) · strategy ${p.strategy} · target ${p.target}`,
    p.accelerate
      ? "workload: not budgeted — accelerate's planner counts weights only (no KV cache, activations or overhead)"
      : `workload: ${w.ctx} tokens of context × ${w.batch} sequence(s), micro-batch ${w.ubatch}, KV ${w.kvDtype}${w.dtype ? `, weights as ${w.dtype}` : ''}`,
    verdict(p),
    '',
  ];
  let host: string | undefined;
  for (const d of p.devices) {
    // Across hosts, each host's GPUs under its own heading.
    if (d.host !== undefined && d.host !== host)
      lines.push(
        `host ${d.host}${p.cluster?.hosts.find((h) => h.name === d.host)?.address !== d.host ? ` (${p.cluster?.hosts.find((h) => h.name === d.host)?.address})` : ''}:`,
      );
    if (d.host === undefined && host !== undefined) lines.push('this machine:');
    host = d.host;
    lines.push(...row(d), '');
  }
  const total = (k: 'weights' | 'kv' | 'workspace' | 'overhead'): number => p.devices.reduce((s, d) => s + d[k], 0);
  const onAcc = p.devices.filter((d) => d.kind === 'gpu' || d.kind === 'virtual').reduce((s, d) => s + d.weights, 0);
  lines.push(
    `totals: weights ${formatBytes(total('weights'))} (${formatBytes(onAcc)} on GPUs) · KV ${formatBytes(total('kv'))} · workspace ${formatBytes(total('workspace'))} · overhead ${formatBytes(total('overhead'))} · ${p.handoffs} hand-off(s) per forward pass`,
  );
  if (p.cluster) lines.push(clusterLine(p));
  if (p.quantization) lines.push(...quantizationLines(p));
  lines.push(`legend: ${GLYPHS.weights} weights  ${GLYPHS.kv} KV cache  ${GLYPHS.workspace} workspace  ${GLYPHS.overhead} overhead  ${GLYPHS.free} free`);
  for (const warning of p.warnings) lines.push(`warning: ${warning}`);
  // An export plans for its own runtime, so its map can differ from this table's.
  const others = p.accelerate ? [] : exportsNotFor(p.target);
  if (others.length > 0) {
    lines.push(`note: target ${p.target}; ${others.map((e) => `--format ${e.formats} plans for ${e.target}`).join(', ')} (--target shows it)`);
  }
  return lines.join('\n');
}

/**
 * Per device: its units' weight types (consecutive blocks of one type as a range), bits per weight and the bytes
 * saved against the checkpoint's own types.
 */
function quantizationLines(p: Plan): string[] {
  const q = p.quantization!;
  const r = q.ranking;
  const ranked =
    r === undefined
      ? ''
      : r.by === 'model'
        ? ' · types ranked by the error model'
        : ` · types ranked by measured error (${r.tensors} tensors${r.fromCache ? ', from the cache' : ''}${r.cache ? `; ${r.cache}` : ''})`;
  const out = [`quantize ${q.mode}: KV cache ${q.kvDtype}${ranked}`];
  // A unit is covered by its own key or an ancestor's, or split into finer keys (then the first of them).
  const deviceOf = (unit: string): string | undefined => deviceOfModule(p.deviceMap, unit) ?? p.deviceMap.find(([m]) => m.startsWith(`${unit}.`))?.[1];
  for (const d of p.devices) {
    const mine = q.units.filter((u) => deviceOf(u.name) === d.id);
    if (mine.length === 0) continue;
    const runs: { name: string; prefix?: string; first?: number; last?: number; type: string }[] = [];
    for (const u of mine) {
      const m = /^(.*)\.(\d+)$/.exec(u.name);
      const prev = runs.at(-1);
      if (m && prev && prev.prefix === m[1] && prev.type === u.type && prev.last === Number(m[2]) - 1) prev.last = Number(m[2]);
      else runs.push(m ? { name: u.name, prefix: m[1]!, first: Number(m[2]), last: Number(m[2]), type: u.type } : { name: u.name, type: u.type });
    }
    const shown = runs.map((r) => (r.last !== undefined && r.last !== r.first ? `${r.name}–${r.last} ${r.type}` : `${r.name} ${r.type}`));
    const params = mine.reduce((n, u) => n + u.params, 0);
    const bytes = mine.reduce((n, u) => n + u.bytes, 0);
    const stored = mine.reduce((n, u) => n + u.storedBytes, 0);
    out.push(
      `  ${d.kind === 'gpu' ? `GPU ${d.id}` : d.id}: ${shown.join(', ')} · ${((8 * bytes) / Math.max(1, params)).toFixed(2)} bits/weight (stored ${((8 * stored) / Math.max(1, params)).toFixed(2)}) · ${formatBytes(stored - bytes)} saved`,
    );
  }
  return out;
}

/** Hosts used in pipeline order, the boundaries crossed, and the decode rate the links alone allow. */
function clusterLine(p: Plan): string {
  const c = p.cluster!;
  const used = c.hosts.filter((h) => p.devices.some((d) => d.host === h.name && d.modules.length > 0)).map((h) => h.name);
  const link = `${c.link_gbps} Gbit/s, ${c.link_latency_ms} ms`;
  return c.boundaries === 0
    ? `cluster: host ${used.join(', ') || c.hosts[0]!.name} alone holds the model; no traffic between hosts`
    : `cluster: ${used.join(' → ')} · ${c.boundaries} host boundar${c.boundaries === 1 ? 'y' : 'ies'} over ${link} · decode ≤ ${Math.floor(c.decode_bound_tps!)} tokens/s from the links alone`;
}

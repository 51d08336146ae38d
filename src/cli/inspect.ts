import { formatBytes } from '../planner/units.js';
import type { ModelSummary } from '../reader/summary.js';

function count(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} M`;
  return String(n);
}

function group(n: number): string {
  return n.toLocaleString('en-US');
}

/** Human-readable `vramfit inspect` report; every number says where it came from. */
export function renderSummary(s: ModelSummary): string {
  const out: string[] = [];
  const src = s.source;
  out.push(`model         ${src.path}`);
  out.push(`architecture  ${s.architecture} (family: ${s.family})`);
  out.push(`read from     ${src.kind}, ${src.files.length} file(s), ${group(src.bytesRead)} bytes read (headers only)`);
  out.push(`parameters    ${count(s.parameters)} (${group(s.parameters)})  [${s.sizesFrom}]`);
  out.push(`weights       ${formatBytes(s.totalBytes)} (${group(s.totalBytes)} bytes)`);
  for (const [dtype, bytes] of Object.entries(s.bytesByDtype).sort((a, b) => b[1] - a[1])) {
    out.push(`  ${dtype.padEnd(12)}${formatBytes(bytes).padStart(12)}`);
  }
  if (src.indexTotalSize !== undefined) {
    out.push(`index total   ${group(src.indexTotalSize)} bytes (metadata.total_size)`);
  }
  if (src.storedTiedCopies?.length) {
    out.push(`stored twice  ${src.storedTiedCopies.join(', ')} (a tied copy the checkpoint stores; loaded once)`);
  }
  if (s.quantization) {
    const q = s.quantization;
    out.push(
      `quantization  ${q.method}${q.bits !== undefined ? `, ${q.bits}-bit` : ''}${q.groupSize !== undefined ? `, group ${q.groupSize}` : ''}` +
        (q.sizesModelled ? ' (sizes from headers)' : ' (sizes NOT modelled: shown as unquantized)'),
    );
  }
  if (s.blocks) {
    const b = s.blocks;
    const min = Math.min(...b.bytesEach);
    const max = Math.max(...b.bytesEach);
    const each = min === max ? `${formatBytes(max)} each` : `${formatBytes(min)}–${formatBytes(max)}`;
    out.push(`blocks        ${b.count} × ${b.class} at ${b.prefix}.N, ${each}`);
  }
  out.push(`no-split      ${s.noSplit.length ? s.noSplit.join(', ') : '(none)'}`);
  out.push(`tied          ${s.tied.length ? s.tied.map((g) => g.join(' = ')).join('; ') : '(none)'}`);
  if (s.kv) {
    const k = s.kv;
    out.push(
      `KV cache      ${group(k.bytesPerTokenPerLayer)} B/token/layer, ${formatBytes(k.bytesPerToken)}/token, ${formatBytes(k.bytesAt4k)} at 4k context (${k.dtype}, ${k.attention.toUpperCase()})  [config]`,
    );
    if (k.latentBytesPerToken !== undefined) out.push(`  latent (MLA) cache as llama.cpp keeps it: ${formatBytes(k.latentBytesPerToken)}/token`);
    if (k.slidingWindow !== undefined) out.push(`  sliding window: ${k.slidingWindow} tokens on the layers that use it`);
  } else {
    out.push('KV cache      unknown (no attention facts: architecture not recognised from a config)');
  }
  out.push(`largest layer ${s.largest.name || '(none)'}  ${formatBytes(s.largest.bytes)}`);
  for (const w of s.warnings) out.push(`warning: ${w}`);
  return out.join('\n');
}

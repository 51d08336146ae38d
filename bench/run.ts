/**
 * `npm run bench`: the reader, planner, engine-export, fit-vs-accelerate, engine, server, GPU and quantize-to-fit benchmarks, one compact report.
 * Every timing is a ratio against a baseline measured in the same run; nothing here passes or fails
 * on a threshold. `--brief` leaves out the per-row comparison table (its summary line stays);
 * `--no-peer` skips the llama.cpp comparison (which installs node-llama-cpp into bench/.peer on demand).
 */
import { renderCompare, runCompare } from './compare-accelerate.js';
import { renderEngineBench, runEngineBench } from './engine.js';
import { renderGpuBench, runGpuBench } from './gpu.js';
import { ms, ratio } from './common.js';
import { renderPlannerBench, runPlannerBench } from './planner.js';
import { renderExportsBench, runExportsBench } from './exports.js';
import { renderReaderBench, runReaderBench } from './reader.js';
import { renderServeBench, runServeBench } from './serve.js';
import { renderQuantizeBench, runQuantizeBench } from './quantize.js';

const brief = process.argv.includes('--brief');
const started = performance.now();
const section = (name: string): (() => string) => {
  const t0 = performance.now();
  return () => `(${name} took ${((performance.now() - t0) / 1000).toFixed(1)} s)`;
};

console.log(`# vramfit bench — node ${process.version}, ${process.platform}/${process.arch}\n`);

let done = section('reader');
const reader = await runReaderBench();
console.log(renderReaderBench(reader));
console.log(done(), '\n');

done = section('planner');
const planner = await runPlannerBench();
console.log(renderPlannerBench(planner));
console.log(done(), '\n');

done = section('exports');
const exportsBench = await runExportsBench();
console.log(renderExportsBench(exportsBench));
console.log(done(), '\n');

done = section('compare');
const compare = await runCompare();
const table = renderCompare(compare);
console.log(
  brief
    ? table
        .split('\n')
        .filter((l) => !l.startsWith('|'))
        .join('\n')
    : table,
);
console.log(done(), '\n');

done = section('engine');
const engine = await runEngineBench({ peer: !process.argv.includes('--no-peer') });
console.log(renderEngineBench(engine));
console.log(done(), '\n');

done = section('serve');
const serve = await runServeBench();
console.log(renderServeBench(serve));
console.log(done(), '\n');

done = section('gpu');
const gpu = await runGpuBench();
console.log(renderGpuBench(gpu));
console.log(done(), '\n');

done = section('quantize');
const quantize = await runQuantizeBench({ peer: !process.argv.includes('--no-peer') });
console.log(renderQuantizeBench(quantize));
console.log(done(), '\n');

const fitTotal = planner.rows.reduce((s, x) => s + x.fit, 0);
const autoTotal = planner.rows.reduce((s, x) => s + x.accelerate.auto, 0);
const both = compare.rows.filter((x) => x.fitGpu !== undefined && x.accGpu !== undefined);
console.log('## headline');
console.log(
  `readModel / raw header reads      ${ratio(reader.readModel.median, reader.baseline.median)} (${ms(reader.readModel.median)} ms vs ${ms(reader.baseline.median)} ms, ${reader.checkpoint.tensors} tensors in 163 shards)`,
);
console.log(
  `vramfit inspect / node -e 0       ${ratio(reader.cli.median, reader.nodeStartup.median)} (${ms(reader.cli.median)} ms vs ${ms(reader.nodeStartup.median)} ms)`,
);
console.log(
  `bytes read / checkpoint bytes     ${(reader.bytesRead / reader.checkpoint.folderBytes).toExponential(2)} (${reader.bytesRead} of ${reader.checkpoint.folderBytes})`,
);
console.log(`fit / accelerate auto (plan time) ${ratio(fitTotal, autoTotal)} summed over ${planner.rows.length} model × set-up rows`);
console.log(
  `fit ≥ accelerate (GPU bytes)      ${both.filter((x) => x.fitGpu! >= x.accGpu!).length} of ${both.length} rows; accelerate would overflow in ${compare.rows.filter((x) => x.oom).length}`,
);
const unequal = exportsBench.rows.at(-1)!;
console.log(
  `share of caps reached, ${unequal.model} ${unequal.caps}: exllamav3 ${((unequal.share['exllamav3'] ?? 0) * 100).toFixed(1)} %, vLLM ${((unequal.share['vllm'] ?? 0) * 100).toFixed(1)} %, SGLang ${((unequal.share['sglang'] ?? 0) * 100).toFixed(1)} % (one fraction for all GPUs); --cluster / one host (plan time) ${ratio(exportsBench.cluster.across, exportsBench.cluster.one)}`,
);
const [cpuRun, oneGpu, twoGpus] = gpu.setups;
if (cpuRun && oneGpu)
  console.log(
    `GPU decode / CPU decode            ${ratio(oneGpu.decodeTokS, cpuRun.decodeTokS)}${gpu.emulated ? ' (emulated GPUs: lavapipe)' : ''}${twoGpus ? `; 2 GPUs / 1 GPU ${ratio(twoGpus.decodeTokS, oneGpu.decodeTokS)}` : ''}`,
  );
const d32 = serve.decodeTokS.float32;
const d16 = serve.decodeTokS.float16;
console.log(
  `serve, 8 streams / 1 stream        F32 ${ratio(d32[8]!, d32[1]!)}, F16 ${ratio(d16[8]!, d16[1]!)} (aggregate decode tokens/s); /health p99 while busy ${ms(serve.healthBusy.p99)} ms`,
);
const q4 = quantize.peer['q4_k'];
const q4gen = quantize.gen['q4_k'];
if (q4?.ok && q4gen)
  console.log(
    `Q4_K decode / llama.cpp           ${ratio(q4gen.decodeTokS, q4.summary!.decodeTokS)}; prefill ${ratio(q4gen.prefillTokS, q4.summary!.prefillTokS)} (same GGUF, one thread)`,
  );
console.log(`total ${((performance.now() - started) / 1000).toFixed(1)} s`);

import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { readModel } from '../reader/read-model.js';
import { catalogConfig, catalogNames } from '../reader/catalog/index.js';
import { formatBytes } from '../planner/units.js';
import { summarize } from '../reader/summary.js';
import { isKnownDType, canonicalDType } from '../reader/dtypes.js';
import { InputError } from '../util/errors.js';
import { reportError } from './errors.js';
import { renderSummary } from './inspect.js';
import { renderTree } from './tree.js';
import { ARCHITECTURES } from '../reader/architectures/index.js';
import { addPlanCommand } from './plan-command.js';
import { addListCommand } from './list-command.js';
import { addRunCommands } from './run-command.js';
import { addTokenizeCommand } from './tokenize-command.js';
import { addEvalCommand } from './eval-command.js';
import { addQuantizeCommand } from './quantize-command.js';
import { simulatedInventory } from '../planner/devices/inventory.js';
import { machineInventory } from '../engine/machine-inventory.js';
import { renderInventory } from '../planner/devices/format.js';

export interface Io {
  stdout: (s: string) => void;
  stderr: (s: string) => void;
}

const defaultIo: Io = {
  stdout: (s) => process.stdout.write(s),
  stderr: (s) => process.stderr.write(s),
};

function families(): string {
  return ARCHITECTURES.map((a) => `${a.family} (${a.architectures.join(', ')})`).join('\n  ');
}

/** This package's version, from its package.json (two folders up from src/cli and dist/cli alike). */
function packageVersion(): string {
  const manifest = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string };
  return manifest.version ?? 'unknown';
}

function buildProgram(io: Io): Command {
  const program = new Command('vramfit')
    .description('Fit large language models onto the GPUs you choose, inside the memory you allow on each one.')
    .version(packageVersion(), '-V, --version', 'print the version')
    .option('--debug', 'print stack traces with errors')
    .exitOverride()
    .configureOutput({ writeOut: io.stdout, writeErr: io.stderr })
    .showHelpAfterError('(run with --help for usage)');

  program
    .command('inspect')
    .description("Read a model's structure from its headers alone (no weights are read) and print what planning needs.")
    .argument(
      '<model>',
      'model folder, .safetensors, .gguf, config.json, skeleton .json, an Ollama model (llama3.2, qwen2.5:7b, ollama:NAME[:TAG]), an LM Studio model (lmstudio:publisher/repo), or a repo id in the local Hugging Face cache',
    )
    .option('--tree', 'print the module tree with sizes (runs of identical blocks collapsed)')
    .option('--depth <n>', 'with --tree: deepest level to print', (v) => positiveInt(v, '--depth'))
    .option('--json', 'print the skeleton as JSON (the input `plan` and parity tests take)')
    .option('--kv-dtype <dtype>', "dtype of the KV cache for the per-token figures (default: the model's 16-bit dtype)")
    .addHelpText(
      'after',
      `\nArchitectures with a spec:\n  ${families()}\nOthers are read from safetensors headers, guessing the repeated blocks from tensor names.\n\nCatalog models (real configs, by name; \`vramfit catalog\` gives their sizes):\n  ${catalogNames().join(', ')}`,
    )
    .action(async (model: string, opts: { tree?: boolean; json?: boolean; kvDtype?: string; depth?: number }) => {
      if (opts.kvDtype !== undefined && !isKnownDType(opts.kvDtype)) throw new InputError('--kv-dtype', `unknown dtype ${JSON.stringify(opts.kvDtype)}`);
      const skeleton = await readModel(model);
      if (opts.json) {
        io.stdout(`${JSON.stringify(skeleton, null, 1)}\n`);
        return;
      }
      if (opts.tree) {
        io.stdout(`${renderTree(skeleton, opts.depth)}\n`);
        return;
      }
      const kvDtype = opts.kvDtype === undefined ? undefined : canonicalDType(opts.kvDtype);
      io.stdout(`${renderSummary(summarize(skeleton, kvDtype ? { kvDtype } : {}))}\n`);
    });

  program
    .command('catalog')
    .description('List the built-in catalog of real model configs, usable by name wherever a model is taken (nothing is downloaded).')
    .option('--json', 'print the list as JSON')
    .action(async (opts: { json?: boolean }) => {
      const rows = [];
      for (const name of catalogNames()) {
        const s = summarize(await readModel(name));
        // The dtype holding most of the bytes.
        const dtype = Object.entries(s.bytesByDtype).sort((a, b) => b[1] - a[1])[0]?.[0] ?? '?';
        rows.push({ name, architecture: s.architecture, parameters: s.parameters, dtype, bytes: s.totalBytes, source: catalogConfig(name)!.source });
      }
      if (opts.json) {
        io.stdout(`${JSON.stringify(rows, null, 2)}\n`);
        return;
      }
      const table = [
        ['name', 'architecture', 'parameters', 'dtype', 'size', 'config from'],
        ...rows.map((r) => [r.name, r.architecture, `${(r.parameters / 1e9).toFixed(2)} B`, r.dtype, formatBytes(r.bytes), r.source]),
      ];
      const widths = table[0]!.map((_, c) => Math.max(...table.map((r) => r[c]!.length)));
      io.stdout(
        `${table
          .map((r) =>
            r
              .map((cell, c) => cell.padEnd(widths[c]!))
              .join('  ')
              .trimEnd(),
          )
          .join('\n')}\n`,
      );
    });

  addPlanCommand(program, io);
  addRunCommands(program, io);
  addTokenizeCommand(program, io);
  addEvalCommand(program, io);
  addQuantizeCommand(program, io);
  addListCommand(program, io);

  program
    .command('devices')
    .description(
      'List the GPUs (nvidia-smi, respecting CUDA_VISIBLE_DEVICES, joined with the GPUs an installed CUDA/Vulkan package lets ggml open, one id per card), the active GPU backend, CPU RAM and free disk a plan or run can use.',
    )
    .option('--gpus <ids>', 'physical GPUs to use, as CUDA_VISIBLE_DEVICES takes them')
    .option('--gpu-memory <sizes>', 'simulate GPUs with these totals: 24GiB,24GiB')
    .option('--device-spec <spec>', 'simulate known cards: 4xA100-80GB')
    .option('--offload-folder <dir>', 'folder whose free space is the disk budget (default: the current folder)')
    .option('--backend <name>', 'for a GPU seen by both installed GPU packages: cuda (the default) or vulkan')
    .option('--json', 'print the inventory as JSON')
    .action(async (opts: { gpus?: string; gpuMemory?: string; deviceSpec?: string; offloadFolder?: string; backend?: string; json?: boolean }) => {
      if (opts.backend !== undefined && opts.backend !== 'cuda' && opts.backend !== 'vulkan')
        throw new InputError('--backend', `expected cuda or vulkan, got ${JSON.stringify(opts.backend)}`);
      const simulated = opts.gpuMemory !== undefined || opts.deviceSpec !== undefined;
      if (simulated && opts.gpus !== undefined) throw new InputError('--gpus', 'selects real GPUs; it cannot be combined with --gpu-memory or --device-spec');
      const inv = simulated
        ? await simulatedInventory({
            ...(opts.gpuMemory !== undefined ? { gpuMemory: opts.gpuMemory } : {}),
            ...(opts.deviceSpec !== undefined ? { deviceSpec: opts.deviceSpec } : {}),
            ...(opts.offloadFolder !== undefined ? { offloadFolder: opts.offloadFolder } : {}),
          })
        : await machineInventory({
            ...(opts.gpus !== undefined ? { gpus: opts.gpus } : {}),
            ...(opts.offloadFolder !== undefined ? { offloadFolder: opts.offloadFolder } : {}),
            ...(opts.backend !== undefined ? { backend: opts.backend as 'cuda' } : {}),
          });
      io.stdout(opts.json ? `${JSON.stringify(inv, null, 2)}\n` : `${renderInventory(inv)}\n`);
    });
  return program;
}

function positiveInt(v: string, flag: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 1) throw new InputError(flag, `expected a positive integer, got ${JSON.stringify(v)}`);
  return n;
}

/** Runs the CLI; returns the exit code instead of exiting so tests can call it in-process. */
export async function main(argv: string[], io: Io = defaultIo): Promise<number> {
  const debug = argv.includes('--debug');
  const program = buildProgram(io);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (e) {
    return reportError(e, debug, io.stderr);
  }
}

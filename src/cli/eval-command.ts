/** `vramfit eval MODEL --compare-to BASE`: registration and help; the work is in eval-action.ts, loaded when it runs. */
import type { Command } from 'commander';
import type { Io } from './main.js';
import { addLoadFlags } from './run-command.js';
import type { EvalFlags } from './eval-action.js';

export function addEvalCommand(program: Command, io: Io): void {
  const tty = Boolean(process.stderr.isTTY);
  const c = program
    .command('eval')
    .description(
      "Measure what MODEL's choices (--quantize, --dtype, --kv-dtype, a quantized GGUF) cost against BASE on one token stream, as llama-perplexity --kl-divergence does: KL(P_base ‖ P_model) of the next-token distributions (mean, median, p99, max), top-1 agreement and both perplexities.",
    )
    .argument('<model>', 'the model under test: a folder, .safetensors, .bin or .gguf file, an Ollama or LM Studio model name, or a cached repo id')
    .option('--compare-to <base>', 'the reference model (any form MODEL takes), with the same vocabulary size (required)')
    .option('--text <text>', "the text to score, tokenized by BASE's tokenizer (default: a few KB of built-in English prose)")
    .option('--file <path>', 'read the text to score from this file (UTF-8)')
    .option('--input-ids <ids>', 'token ids to score instead of a text: 1,2,3 (works without tokenizer files)')
    .option('--chunks <k>', 'score at most the first k chunks (default: every whole chunk of the stream)')
    .option('--json', 'print every figure as one JSON object');
  addLoadFlags(c, {
    ctx: 'tokens per chunk: each chunk runs from an empty cache and its second half is scored (default: min(512, the stream, the model maximum); at least 4)',
    showPlan: "print each model's plan (to stderr) after it loads",
  })
    .addHelpText(
      'after',
      `
--devices, --backend, --max-memory, --ubatch and --threads load both models; --quantize, --dtype and --kv-dtype
shape MODEL only (BASE loads as stored). BASE runs first and its logits at the scored positions are kept (in memory
up to 256 MiB, vocabulary × positions × 4 bytes, else in a temp file deleted afterwards); it is disposed before MODEL
loads, so only one model is in memory at a time. KL, log-softmax and perplexity are computed in float64.
The table goes to stdout; a tokenizer mismatch warning and progress (on a terminal) to stderr.`,
    )
    .action(async (model: string, flags: EvalFlags) => (await import('./eval-action.js')).evalModel(model, flags, io, tty));
}

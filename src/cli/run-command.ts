import { QUANTIZE_TYPES } from '../planner/quantize.js';
import type { Command } from 'commander';
import type { Io } from './main.js';
import type { RunFlags } from './run-action.js';
import type { ServeFlags } from './serve-action.js';

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

/**
 * The flags that say how a model is loaded: devices, caps, context and dtypes (run, serve and eval alike). A command
 * whose --ctx means something more (eval's chunk length) passes its own help for it.
 */
export function addLoadFlags(c: Command, help: { ctx?: string; showPlan?: string } = {}): Command {
  return c
    .option(
      '--devices <spec>',
      'cpu (default); virtual:N (N independent CPU backends, each capped like a GPU); gpu (every GPU of an installed CUDA/Vulkan package); gpu:1,3 (those GPUs, numbered as `vramfit devices` shows them); a GPU form may end in ,cpu to let host RAM take blocks too',
    )
    .option('--backend <name>', 'for a GPU seen by both installed packages: cuda (the default) or vulkan')
    .option(
      '--max-memory <budgets>',
      "caps per device, as `vramfit plan` takes them: 0=20GiB,1=50%,cpu=free-8GiB,disk=100GiB (relative caps are of the device's reported memory; cpu and disk join the plan when named)",
    )
    .option('--ctx <tokens>', help.ctx ?? "context length to allocate the KV cache for (default: an Ollama model's num_ctx, else min(model maximum, 4096))")
    .option('--ubatch <n>', 'tokens per forward pass during prefill (default 512)')
    .option(
      '--kv-dtype <dtype>',
      "float16, float32, q8_0 or q4_0 (default: float32 for float32 models, else float16, as transformers keeps it); q8_0/q4_0 attend through flash attention like llama.cpp's -ctk/-ctv with -fa and need heads of whole 32-value blocks",
    )
    .option('--dtype <dtype>', 'load matrices as float32, float16 or bfloat16 (default: as stored)')
    .option(
      '--quantize <type>',
      `convert float matrices at load to ${QUANTIZE_TYPES.join(', ')} (planned at that size), or auto: each block's, the embedding's and the head's type and the KV cache's (unless --kv-dtype) chosen so the model runs on the GPUs alone within the caps, most quality first (see vramfit plan --help). Norms, biases and MoE routers stay; the output head keeps at least q6_k; a tied embedding follows the head; rows that are not whole blocks fall back as llama.cpp's quantizer does (q4_k→q5_0, q5_k→q5_1, q6_k→q8_0, else float16)`,
    )
    .option(
      '--measure',
      "with --quantize auto: rank the types by each tensor's relative error measured on its own weights (64 evenly spaced rows each, ggml's quantizer), cached beside the model, instead of the error model",
    )
    .option('--threads <n>', 'CPU threads per device; also the threads quantizing at load (default: half the cores to compute, all of them to quantize)')
    .option('--show-plan', help.showPlan ?? 'print the plan (to stderr) before generating or serving');
}

export function addRunCommands(program: Command, io: Io): void {
  const tty = Boolean(process.stderr.isTTY);
  const run = program
    .command('run')
    .description(
      'Load a model (safetensors, PyTorch .bin or GGUF; Llama family, Mixtral, Qwen3-MoE, GPT-2, ChatGLM2/3, Baichuan2) as planned across devices, each under its cap, and generate.',
    )
    .argument(
      '<model>',
      'model folder (config.json + weights), a .safetensors, .bin or .gguf file, an Ollama model (llama3.2, qwen2.5:7b, ollama:NAME[:TAG]), an LM Studio model (lmstudio:publisher/repo), or a cached repo id',
    )
    .option(
      '--prompt <text>',
      "text to continue (tokenizer files beside the weights win: tokenizer.json, or ChatGLM2/3's tokenizer.model; else a GGUF's own tokenizer metadata)",
    )
    .option(
      '--chat',
      "wrap --prompt in the model's chat template as a user message (an Ollama model's own template and system prompt; else the tokenizer's chat template)",
    )
    .option('--input-ids <ids>', 'token ids instead of a prompt: 1,2,3 (works without tokenizer files)')
    .option('--max-new-tokens <n>', "tokens to generate (0 allowed; default: an Ollama model's num_predict, else 64)")
    .option('--greedy', "always take the most likely token (the default unless a sampling option is given; overrides an Ollama model's sampling params)")
    .option('--temperature <t>', "sampling temperature (default: an Ollama model's temperature, 0 meaning greedy)")
    .option('--top-k <k>', "sample among the k most likely tokens (default: an Ollama model's top_k)")
    .option('--top-p <p>', "sample among the smallest set of tokens whose probability reaches p (default: an Ollama model's top_p)")
    .option('--seed <n>', "seed for sampling (default: an Ollama model's seed)")
    .option('--stop <text>', "stop when this text is generated (repeatable; an Ollama model's stop strings apply too)", collect)
    .option('--json', 'print one JSON object: prompt_ids, generated_ids, devices (and logits with --logits)')
    .option('--logits', 'with --json: include prompt_logits and step_logits');
  addLoadFlags(run)
    .addHelpText('after', '\nText streams to stdout; the per-device report (cap, predicted and measured peak, bytes moved in) and tokens/s go to stderr.')
    .action(async (model: string, flags: RunFlags) => (await import('./run-action.js')).runModel(model, flags, io, tty));

  const serve = program
    .command('serve')
    .description(
      'Serve a model over HTTP with the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models) and the Ollama API (/api/chat, /api/generate, /api/tags, /api/ps), loaded as planned for --parallel sequences at once, each device under its cap.',
    )
    .argument(
      '<model>',
      'model folder (config.json + weights + tokenizer files), a .safetensors, .bin or .gguf file (its tokenizer from its metadata unless tokenizer files lie beside it), an Ollama or LM Studio model name, or a cached repo id',
    )
    .option('--host <address>', 'address to listen on (default 127.0.0.1: this machine only)', '127.0.0.1')
    .option('--port <n>', 'port to listen on (0: any free port)', '8080')
    .option(
      '--parallel <n>',
      "sequences served at once: the KV cache holds n × --ctx tokens, planned inside the caps; 'auto' takes the most that fit (at most 64)",
      '1',
    )
    .option('--api-key <key>', 'require Authorization: Bearer KEY on every route but /health (default: $VRAMFIT_API_KEY)')
    .option('--name <name>', "the model's name for clients (default: its file or folder name)")
    .option('--queue <n>', 'requests waiting for a slot at most; past it, 429 with Retry-After', '64');
  addLoadFlags(serve).addHelpText(
    'after',
    `
--ctx is per sequence (default: an Ollama model's num_ctx, else min(model maximum, 4096)). An Ollama model's
template and system prompt format chats; its stop strings are added to each request's, and its temperature,
top_k, top_p, seed and num_predict apply where a request does not set them. Every decode step computes one token of every
running sequence in one forward pass; prompts are read in --ubatch chunks between them. The engine runs in
a worker thread, so /health (503 while loading) and /metrics (Prometheus) answer while it computes.
SIGINT/SIGTERM: stop accepting, let running sequences finish (10 s), cancel the rest, free every buffer.`,
  );
  serve.action(async (model: string, flags: ServeFlags) => (await import('./serve-action.js')).serveModel(model, flags, io));

  program
    .command('demo')
    .description('Write a small random-weight Llama checkpoint to a temp folder and run it over capped virtual devices.')
    .option('--devices <spec>', 'virtual devices to split over', 'virtual:2')
    .option('--keep', 'keep the checkpoint folder and print its path')
    .action(async (opts: { devices: string; keep?: boolean }) => (await import('./run-action.js')).runDemo(opts, io));
}

/**
 * Every `vramfit` command in the README's code blocks runs here, with its placeholders (./model,
 * model.gguf, a repo id in the HF cache, …) mapped to tiny checkpoints this test writes, and exits the
 * way the README implies. A command added to the README without a case here fails the first test.
 */
import './helpers/vulkan-four-devices.js';
import assert from 'node:assert/strict';
import { chmodSync, copyFileSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { main } from '../src/cli/main.js';
import { writeDemoCheckpoint } from '../src/engine/demo-checkpoint.js';
import { fixturesDir, realModelsDir, repoRoot } from './helpers/paths.js';
import { writeTinyChatglmCheckpoint } from './helpers/tiny-chatglm.js';
import { writeTinyGguf } from './helpers/tiny-gguf.js';
import { ggufVocabMetadata } from './helpers/gguf-vocab.js';
import { writeServedModel } from './helpers/tiny-served-model.js';
import { writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { TOKENIZER_CONFIG, tokenizerJson } from './helpers/tiny-tokenizer.js';
import { vulkanSkip } from './helpers/vulkan.js';

/** The `vramfit …` lines of the README's code blocks, comments and output redirections removed. */
function readmeCommands(): string[] {
  const text = readFileSync(join(repoRoot, 'README.md'), 'utf8');
  const out: string[] = [];
  let inBlock = false;
  for (const line of text.split('\n')) {
    if (line.startsWith('```')) {
      inBlock = !inBlock;
      continue;
    }
    if (!inBlock || !line.startsWith('vramfit ')) continue;
    out.push(
      line
        .replace(/\s+#\s.*$/, '')
        .replace(/\s+>\s*\S+$/, '')
        .trim(),
    );
  }
  return out;
}

/** Splits a command line as a POSIX shell would for the quoting the README uses ('…' and "…"). */
function shellWords(line: string): string[] {
  const words: string[] = [];
  const re = /'([^']*)'|"([^"]*)"|(\S+)/g;
  for (const m of line.matchAll(re)) words.push(m[1] ?? m[2] ?? m[3]!);
  return words;
}

/** How a README command runs here: its placeholders, the machine it needs, the exit code it implies. */
interface Case {
  /** README word → path or value here. */
  map?: Record<string, string>;
  /** Fake nvidia-smi with four 80 GB cards on PATH (plans for "this machine's" GPUs). */
  smi?: boolean;
  /** Emulated Vulkan GPUs it needs. */
  vulkan?: number;
  /** What the output must show. */
  expect?: RegExp;
  code?: number;
  /** A server: started, asked the README's curl request, then stopped with SIGTERM. */
  serve?: boolean;
}

let root = '';
const P = {
  hf: '', // a tiny Llama folder with a tokenizer and chat template
  gguf: '',
  /** A lone GGUF whose metadata carries the tokenizer and chat template. */
  ggufTok: '',
  cache: '',
  chatglm: '',
  smiDir: '',
};

const CASES: Record<string, Case> = {
  'vramfit inspect ./Llama-2-7b-hf': { map: { './Llama-2-7b-hf': 'hf' }, expect: /LlamaForCausalLM/ },
  'vramfit inspect model.safetensors': { map: { 'model.safetensors': 'hf/model.safetensors' }, expect: /LlamaForCausalLM/ },
  'vramfit inspect model-q4_k_m.gguf': { map: { 'model-q4_k_m.gguf': 'gguf' }, expect: /gguf/i },
  'vramfit inspect meta-llama/Llama-2-7b-hf': { expect: /LlamaForCausalLM/ },
  'vramfit inspect ./config.json': { map: { './config.json': 'hf/config.json' }, expect: /config only/ },
  'vramfit inspect qwen2.5-72b': { expect: /Qwen2ForCausalLM/ },
  'vramfit inspect MODEL --tree': { map: { MODEL: 'hf' }, expect: /×8/ },
  'vramfit inspect MODEL --json': { map: { MODEL: 'hf' }, expect: /"format": "vramfit-skeleton"/ },
  'vramfit plan llama-2-7b --gpu-memory 24GiB,24GiB --max-memory 0=5GB,1=10GB,cpu=30GiB': { expect: /^GPU 1\b/m },
  'vramfit plan llama-2-7b --gpu-memory 24GiB,24GiB --max-memory 0=12GB,1=10GB --format vllm': {
    expect:
      /^CUDA_VISIBLE_DEVICES=0,1 VLLM_PP_LAYER_PARTITION=16,16 vllm serve meta-llama\/Llama-2-7b-hf --pipeline-parallel-size 2 --gpu-memory-utilization 0\.388 --max-model-len 4096 [^\n]*\n# GPU 0: vLLM's one --gpu-memory-utilization 0\.388 lets it use 9\.31 GiB of its 11\.18 GiB cap/,
  },
  "vramfit plan model.gguf --cluster 'a=2xRTX-4090,b@10.0.0.2=1xA100-80GB' --max-memory 0=20GiB,1=20GiB,2=70GiB --format llama.cpp": {
    // The tiny model would fit host a alone; caps that leave host a's GPUs no room past llama.cpp's overhead send it to b.
    map: { 'model.gguf': 'gguf', '0=20GiB,1=20GiB,2=70GiB': '0=352MiB,1=352MiB,2=450MiB' },
    expect:
      /^# on host b:\nCUDA_VISIBLE_DEVICES=0 rpc-server -H 0\.0\.0\.0 -p 50052 &\n# on host a \(serves the model\):\n.*llama-server -m \S+ -ngl \d+ --split-mode layer --tensor-split [\d,]+ --rpc 10\.0\.0\.2:50052 -dev 'CUDA0,CUDA1,RPC0\[10\.0\.0\.2:50052\]' [^\n]*\n# 1 host boundary over 10 Gbit\/s, 0\.5 ms: decode ≤ \d+ tokens\/s/m,
  },
  'vramfit plan llama-2-13b --device-spec 1xRTX-3090,1xRTX-4090 --max-memory 0=10GiB,1=20GiB --format tabbyapi': {
    expect:
      /^# start TabbyAPI with CUDA_VISIBLE_DEVICES=0,1\nmodel:\n[\s\S]*^ {2}cache_size: 4096\n {2}cache_mode: FP16\n {2}chunk_size: 512\n[\s\S]*^ {2}gpu_split_auto: false\n {2}gpu_split: \[ 9\.62, 19\.62 \]\n[\s\S]*^# expected split: GPU 0 14 layers, GPU 1 26 layers/m,
  },
  'vramfit plan llama-2-13b --cluster cluster.yaml --format vllm': {
    map: { 'cluster.yaml': 'root/cluster.yaml' },
    expect:
      /^# on host a \(Ray head\):\nCUDA_VISIBLE_DEVICES=0,1 ray start --head --port 6379 --num-gpus 2\n# on host b:\nCUDA_VISIBLE_DEVICES=0 ray start --address 10\.0\.0\.1:6379 --num-gpus 1\n# on host a \(then, serves the API\):\nVLLM_PP_LAYER_PARTITION=6,7,27 vllm serve meta-llama\/Llama-2-13b-hf --pipeline-parallel-size 3 --gpu-memory-utilization 0\.416 .* --distributed-executor-backend ray\n[\s\S]*^# 1 host boundary over 25 Gbit\/s, 0\.2 ms: decode ≤ 4841 tokens\/s/m,
  },
  'vramfit plan llama-2-7b --gpu-memory 24GiB,24GiB --max-memory 0=5GB,1=10GB --quantize auto': {
    expect: /weights all on GPUs[\s\S]*^quantize auto: KV cache float16 · types ranked by the error model$/m,
  },
  'vramfit plan ./Mixtral-8x7B --device-spec 4xA100-80GB --ctx auto': { map: { './Mixtral-8x7B': 'mixtral' }, expect: /--ctx auto chose \d+ tokens/ },
  'vramfit plan qwen2.5-72b --gpus 2,3 --max-memory 0=90%,1=free-2GiB,cpu=64GiB --format python': { smi: true, expect: /CUDA_VISIBLE_DEVICES"\] = "2,3"/ },
  'vramfit plan chatglm2-6b --gpu-memory 24GiB,24GiB --max-memory 0=5GB,1=10GB,cpu=30GiB --format accelerate': { expect: /"transformer\.embedding": 0/ },
  'vramfit plan model.gguf --max-memory 0=20GiB,cpu=64GiB --format llama.cpp': { map: { 'model.gguf': 'gguf' }, smi: true, expect: /-ngl \d+/ },
  [`vramfit plan llama-2-7b --compat accelerate --strategy balanced --max-memory '{"0": "5GB", "1": "10GB"}'`]: { expect: /strategy accelerate balanced/ },
  'vramfit run ./Qwen2.5-0.5B --prompt "The capital of France is" --max-new-tokens 32': { map: { './Qwen2.5-0.5B': 'hf' } },
  'vramfit run ./model --chat --prompt "Hello" --temperature 0.7 --top-p 0.9 --seed 1 --stop "</s>"': { map: { './model': 'hf' } },
  'vramfit run ./model --input-ids 1,2,3 --greedy --json --logits': { map: { './model': 'hf' }, expect: /"prompt_logits"/ },
  'vramfit run ./model --devices virtual:2 --max-memory 0=300MiB,1=500MiB --prompt "…" --show-plan': { map: { './model': 'hf' }, expect: /^device 1\b/m },
  'vramfit run ./chatglm3-6b --devices virtual:2 --max-memory 0=5GiB,1=10GiB --chat --prompt "你好" --json': {
    map: { './chatglm3-6b': 'chatglm' },
    expect: /"generated_ids"/,
  },
  'vramfit devices': { expect: /GPU backends/ },
  'vramfit quantize ./Llama-3.1-8B-Instruct -o llama-8b-fit.gguf --gpu-memory 24GiB,24GiB --max-memory 0=5GB,1=10GB --quantize auto': {
    map: { './Llama-3.1-8B-Instruct': 'hf', 'llama-8b-fit.gguf': 'hf/fit.gguf' },
    expect: /^wrote \S+fit\.gguf: [^\n]*\n[\s\S]*^llama\.cpp: CUDA_VISIBLE_DEVICES=0,1 llama-server -m \S+fit\.gguf -ngl \d+ /m,
  },
  'vramfit eval ./model --quantize q4_k --compare-to ./model': {
    map: { './model': 'hf' },
    expect: /^KL divergence\s+mean \d[^\n]* · p99 [^\n]* · max [^\n]*\n^top-1 agreement\s+[\d.]+ % \(\d+ of \d+ positions\)$/m,
  },
  'vramfit serve ./Qwen2.5-0.5B --devices virtual:2 --max-memory 0=600MiB,1=600MiB --ctx 2048 --parallel auto --port 8080': {
    map: { './Qwen2.5-0.5B': 'hf', '2048': '256', '8080': '0' },
    serve: true,
    expect: /serving .* \(\d+ slots × 256 tokens[^]*\[curl 200\][^]*data: \[DONE\]/,
  },
  'vramfit run ./model --devices gpu --prompt "…"': { map: { './model': 'hf' }, vulkan: 1 },
  'vramfit run ./Qwen2.5-7B-Instruct-Q4_K_M.gguf --chat --prompt "Hello" --devices gpu:0,1 --max-memory 0=4GiB,1=3GiB': {
    map: { './Qwen2.5-7B-Instruct-Q4_K_M.gguf': 'gguftok', '0=4GiB,1=3GiB': '0=1GiB,1=1GiB' },
    vulkan: 2,
  },
  'vramfit tokenize ./Qwen2.5-7B-Instruct-Q4_K_M.gguf --text "Hello <|im_end|>"': {
    map: { './Qwen2.5-7B-Instruct-Q4_K_M.gguf': 'gguftok' },
    expect: /-> "<\|im_end\|>"\n\d+ tokens\n$/,
  },
  'vramfit run qwen2.5:7b --chat --prompt "Hello" --devices gpu:0,1 --max-memory 0=3GiB,1=3GiB': { map: { '0=3GiB,1=3GiB': '0=1GiB,1=1GiB' }, vulkan: 2 },
  'vramfit list': { expect: /qwen2\.5:7b/ },
  'vramfit list --verify': { expect: /qwen2\.5:7b[\s\S]*\bok\b/ },
  'vramfit tokenize ./model.gguf --chat --text "Hi" --ids': { map: { './model.gguf': 'gguftok' }, expect: /^\[\d+(, \d+)+\]\n$/ },
  // lavapipe's emulated GPUs report 2 GiB each and CI machines have 24 GiB of RAM: the sizes shrink to fit.
  'vramfit run ./model --devices gpu:1,3 --max-memory 1=10GiB,3=50% --prompt "…"': { map: { './model': 'hf', '1=10GiB,3=50%': '1=1GiB,3=50%' }, vulkan: 4 },
  'vramfit run ./model --devices gpu:0,cpu --max-memory 0=free-2GiB,cpu=32GiB …': {
    map: { './model': 'hf', '0=free-2GiB,cpu=32GiB': '0=free-1GiB,cpu=8GiB', '…': '--prompt=hi' },
    vulkan: 1,
  },
  'vramfit run ./model --devices gpu --max-memory 0=6GiB,1=6GiB,cpu=8GiB,disk=100GiB …': {
    map: { './model': 'hf', '0=6GiB,1=6GiB,cpu=8GiB,disk=100GiB': '0=1GiB,1=1GiB,cpu=8GiB,disk=1GiB', '…': '--prompt=hi' },
    vulkan: 2,
  },
};

before(() => {
  root = tempDir('vramfit-readme-');
  P.hf = join(root, 'hf');
  writeDemoCheckpoint(P.hf);
  writeFileSync(join(P.hf, 'tokenizer.json'), JSON.stringify(tokenizerJson()));
  writeFileSync(join(P.hf, 'tokenizer_config.json'), JSON.stringify(TOKENIZER_CONFIG));
  const family = writeTinyFamilyCheckpoint(join(root, 'family'), 'llama2');
  P.gguf = writeTinyGguf(family);
  const served = writeServedModel(join(root, 'served'));
  mkdirSync(join(root, 'lone'));
  P.ggufTok = join(root, 'lone', 'model.gguf');
  renameSync(
    writeTinyGguf(served, 'float16', { ...ggufVocabMetadata(served.dir, { pre: 'gpt-2' }), 'tokenizer.ggml.add_bos_token': true }, 'tok.gguf'),
    P.ggufTok,
  );
  // Ollama's store holding that GGUF as qwen2.5:7b: a manifest naming the blob by its sha256.
  const store = join(root, 'ollama');
  const bytes = readFileSync(P.ggufTok);
  const digest = createHash('sha256').update(bytes).digest('hex');
  mkdirSync(join(store, 'blobs'), { recursive: true });
  writeFileSync(join(store, 'blobs', `sha256-${digest}`), bytes);
  const manifestDir = join(store, 'manifests', 'registry.ollama.ai', 'library', 'qwen2.5');
  mkdirSync(manifestDir, { recursive: true });
  writeFileSync(
    join(manifestDir, '7b'),
    JSON.stringify({ schemaVersion: 2, layers: [{ mediaType: 'application/vnd.ollama.image.model', digest: `sha256:${digest}`, size: bytes.length }] }),
  );
  process.env['OLLAMA_MODELS'] = store;
  process.env['LMSTUDIO_MODELS'] = join(root, 'lmstudio-none');
  // A Hugging Face cache holding meta-llama/Llama-2-7b-hf at refs/main.
  P.cache = join(root, 'hub');
  const snapshot = join(P.cache, 'models--meta-llama--Llama-2-7b-hf', 'snapshots', '0123abcd');
  mkdirSync(snapshot, { recursive: true });
  mkdirSync(join(P.cache, 'models--meta-llama--Llama-2-7b-hf', 'refs'));
  writeFileSync(join(P.cache, 'models--meta-llama--Llama-2-7b-hf', 'refs', 'main'), '0123abcd');
  for (const f of ['config.json', 'model.safetensors']) copyFileSync(join(P.hf, f), join(snapshot, f));
  P.chatglm = join(root, 'chatglm3');
  // ChatGLM3 with the SentencePiece fixture as its tokenizer (560 pieces + 9 specials).
  writeTinyChatglmCheckpoint(P.chatglm, 'chatglm3-32k', { paddedVocabSize: 576 });
  copyFileSync(join(fixturesDir, 'sentencepiece', 'tiny-bpe.model'), join(P.chatglm, 'tokenizer.model'));
  writeFileSync(join(P.chatglm, 'tokenizer_config.json'), JSON.stringify({ name_or_path: 'THUDM/chatglm3-6b', tokenizer_class: 'ChatGLMTokenizer' }));
  // The cluster file the README shows, as it shows it (its first yaml block).
  const yaml = /```yaml\n([\s\S]*?)```/.exec(readFileSync(join(repoRoot, 'README.md'), 'utf8'));
  assert.ok(yaml, 'the README shows a cluster file');
  writeFileSync(join(root, 'cluster.yaml'), yaml[1]!);
  // nvidia-smi answering for four A100s, as a machine the plan commands are meant for.
  P.smiDir = join(root, 'bin');
  mkdirSync(P.smiDir);
  const rows = [0, 1, 2, 3].map((i) => `${i}, GPU-0000000${i}-aaaa-bbbb-cccc-ddddeeeeffff, NVIDIA A100-SXM4-80GB, 81920, 4, 81403, 00000000:0${i + 1}:00.0`);
  const list = [0, 1, 2, 3].map((i) => `GPU ${i}: NVIDIA A100-SXM4-80GB (UUID: GPU-0000000${i}-aaaa-bbbb-cccc-ddddeeeeffff)`);
  writeFileSync(
    join(P.smiDir, 'nvidia-smi'),
    `#!/bin/sh\ncase "$*" in\n  *query-gpu*) printf '%s\\n' ${rows.map((r) => `'${r}'`).join(' ')} ;;\n  *query-compute*) ;;\n  *) printf '%s\\n' ${list.map((r) => `'${r}'`).join(' ')} ;;\nesac\n`,
  );
  chmodSync(join(P.smiDir, 'nvidia-smi'), 0o755);
});
after(() => cleanup(root));

function resolvePlaceholder(word: string, c: Case): string {
  const mapped = c.map?.[word];
  if (mapped === undefined) return word;
  if (mapped.startsWith('-') || /^\d=/.test(mapped)) return mapped;
  if (mapped === 'mixtral') return join(realModelsDir, 'mistralai__Mixtral-8x7B-v0.1');
  const [base, ...rest] = mapped.split('/');
  const dir =
    base === 'hf' ? P.hf : base === 'gguf' ? P.gguf : base === 'gguftok' ? P.ggufTok : base === 'chatglm' ? P.chatglm : base === 'root' ? root : base!;
  return join(dir, ...rest);
}

/** Runs a `serve` command in-process, sends the README's curl request as fetch, then SIGTERM. */
async function runServeCase(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const running = main(argv, { stdout: (s) => (out += s), stderr: (s) => (err += s) });
  let url: string | undefined;
  for (let i = 0; i < 600 && !url; i++) {
    url = /serving .* at (http:\/\/\S+) /.exec(out)?.[1];
    if (!url) await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(url, `the server came up: ${err}`);
  // The README's model folder is named as the model; here it is a temp folder, named as /v1/models says.
  const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] };
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: models.data[0]!.id, messages: [{ role: 'user', content: 'Hello' }], max_tokens: 32, stream: true }),
  });
  const body = await res.text();
  out += `\n[curl ${res.status}]\n${body}`;
  process.emit('SIGTERM');
  return { code: await running, out, err };
}

async function runCase(command: string, c: Case): Promise<{ code: number; out: string; err: string }> {
  const argv = shellWords(command)
    .slice(1)
    .map((w) => resolvePlaceholder(w, c));
  const saved = { PATH: process.env['PATH'], HF_HUB_CACHE: process.env['HF_HUB_CACHE'] };
  process.env['HF_HUB_CACHE'] = P.cache;
  if (c.smi) process.env['PATH'] = `${P.smiDir}:${saved.PATH ?? ''}`;
  let out = '';
  let err = '';
  try {
    if (c.serve) return await runServeCase(argv);
    const code = await main(argv, { stdout: (s) => (out += s), stderr: (s) => (err += s) });
    return { code, out, err };
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

describe('README commands', () => {
  const commands = readmeCommands();

  it('every vramfit command in the README has a case here, and every case is in the README', () => {
    assert.ok(commands.length >= 20, `found only ${commands.length} commands`);
    assert.deepEqual(
      commands.filter((c) => !(c in CASES)),
      [],
      'README commands without a case',
    );
    assert.deepEqual(
      Object.keys(CASES).filter((c) => !commands.includes(c)),
      [],
      'cases no longer in the README',
    );
  });

  for (const command of commands) {
    const c = CASES[command];
    if (!c) continue;
    const skip = c.vulkan ? vulkanSkip(c.vulkan) : false;
    it(command, { skip }, async () => {
      const r = await runCase(command, c);
      assert.equal(r.code, c.code ?? 0, `exit ${r.code}: ${r.err.slice(0, 400)}`);
      // --show-plan and progress go to stderr, the answer to stdout
      if (c.expect) assert.match(r.out + r.err, c.expect);
    });
  }
});

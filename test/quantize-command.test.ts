/**
 * `vramfit quantize MODEL -o OUT.gguf`: the file holds each tensor in the type the plan chose (llama.cpp's names,
 * vectors F32), runs with the logits of `--quantize` at load of the same checkpoint, tokenizes as the
 * tokenizer.json does and carries the chat template; the printed llama.cpp flags name the file and split it as
 * planned; every refusal exits 2 with one line and leaves no file behind.
 */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { makePlan } from '../src/cli/plan-command.js';
import { exportGguf } from '../src/engine/gguf-export.js';
import { loadModel } from '../src/engine/load.js';
import { loadGgufTokenizer } from '../src/engine/text/gguf-tokenizer.js';
import { loadTokenizer } from '../src/engine/text/tokenizer.js';
import { readGgufHeader } from '../src/reader/formats/gguf.js';
import { quantizeSkeleton, type QuantizeType } from '../src/planner/quantize.js';
import { readModel } from '../src/reader/read-model.js';
import { greedy, maxAbsDiff } from './helpers/engine-harness.js';
import { lenmlModels } from './helpers/gguf-vocab.js';
import { writeTinyChatglmCheckpoint } from './helpers/tiny-chatglm.js';
import { writeTinyFamilyCheckpoint, type TinyFamilyName } from './helpers/tiny-llama-family.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { PARITY_TEXTS } from './helpers/tokenizer-texts.js';
import { cli } from './helpers/run-cli.js';

const root = tempDir('vramfit-quantize-cmd-');
after(() => cleanup(root));

/** Rows of 256 and 512: K-quants apply without fallbacks. */
const WIDE = { hidden_size: 256, intermediate_size: 512, num_hidden_layers: 2 };

function checkpoint(name: string, family: TinyFamilyName, vocab: 'llama2' | 'gpt2' | undefined, config: Record<string, unknown> = {}): string {
  const vocabSize = vocab === 'llama2' ? 32000 : vocab === 'gpt2' ? 50257 : 256;
  const dir = writeTinyFamilyCheckpoint(join(root, name), family, { seed: 4, config: { ...WIDE, vocab_size: vocabSize, ...config } }).dir;
  if (vocab) for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(lenmlModels(vocab), f), join(dir, f));
  else for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(lenmlModels('llama2'), f), join(dir, f));
  return dir;
}

/** HF tensor name → dtype, as the written file holds them (read back through vramfit's GGUF reader). */
async function writtenTypes(file: string): Promise<Map<string, string>> {
  return new Map((await readModel(file)).tensors.map((t) => [t.name, t.dtype]));
}

describe('vramfit quantize', () => {
  // The q4_k file runs with a vocabulary that fits the tiny model; the tokenizer cases below use real ones.
  const llama = checkpoint('llama', 'llama2', 'llama2');

  for (const type of ['q8_0', 'q4_k'] as const satisfies readonly QuantizeType[]) {
    it(`--quantize ${type}: each tensor in the plan's type, and the logits of --quantize ${type} at load`, async () => {
      const out = join(root, `llama-${type}.gguf`);
      // With two GPUs of room, llama.cpp's flags split the file's layers over them.
      const gpus = type === 'q8_0' ? ['--gpu-memory', '24GiB,24GiB', '--max-memory', '0=1GiB,1=1GiB'] : [];
      const r = await cli(['quantize', llama, '-o', out, '--quantize', type, '--threads', '2', ...gpus]);
      assert.equal(r.code, 0, r.err);
      assert.match(r.out, new RegExp(`^wrote ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: `, 'm'));
      if (gpus.length)
        assert.match(r.out, /^llama\.cpp: CUDA_VISIBLE_DEVICES=0,1 llama-server -m \S+\.gguf -ngl 3 --split-mode layer --tensor-split \d+,\d+ -c 4096 /m);
      else assert.match(r.out, /^llama\.cpp: llama-server -m \S+\.gguf -ngl 0 /m);

      const expected = quantizeSkeleton(await readModel(llama), type).skeleton;
      const got = await writtenTypes(out);
      for (const t of expected.tensors) {
        const want = t.shape.length === 1 ? 'float32' : t.dtype;
        assert.equal(got.get(t.name), want, t.name);
      }
      const meta = readGgufHeader(out).metadata as Record<string, unknown>;
      assert.equal(meta['general.architecture'], 'llama');
      assert.equal(meta['general.quantization_version'], 2);
      assert.equal(meta['tokenizer.ggml.model'], 'llama');

      // Same rows quantized by the same function: the logits differ only by the permuted q/k's rounding order.
      const a = await loadModel(out, { devices: 'virtual:1', ctx: 64, threads: 1, kvDtype: 'float32' });
      const b = await loadModel(llama, { devices: 'virtual:1', ctx: 64, threads: 1, kvDtype: 'float32', quantize: type });
      try {
        const [ra, rb] = [await greedy(a), await greedy(b)];
        const diff = Math.max(maxAbsDiff(ra.prompt, rb.prompt), maxAbsDiff(ra.steps.slice(0, 1), rb.steps.slice(0, 1)));
        assert.ok(diff < 2e-3, `logits differ by ${diff}`);
      } finally {
        a.dispose();
        b.dispose();
      }
    });
  }

  it('--quantize auto writes the types the plan chose under the caps, and llama.cpp flags with its context and KV type', async () => {
    const dir = checkpoint('auto', 'qwen3', 'llama2');
    const out = join(root, 'auto.gguf');
    // Caps between all-q4_0 and all-float (the simulated GPUs' fixed overhead is ~300 MiB, the weights ~70 MB).
    const flags = { strategy: 'fit', ctx: '512', batch: '1', ubatch: '512', format: 'table', gpuMemory: '24GiB,24GiB', quantize: 'auto' } as const;
    let maxMemory = '';
    let skeleton: Awaited<ReturnType<typeof makePlan>>['skeleton'] | undefined;
    for (let kib = 300 * 1024; kib < 420 * 1024 && !skeleton; kib += 1024) {
      maxMemory = `0=${kib}KiB,1=${kib}KiB`;
      try {
        const p = await makePlan(dir, { ...flags, maxMemory });
        if (new Set(p.skeleton.tensors.filter((t) => t.shape.length === 2).map((t) => t.dtype)).size > 1) skeleton = p.skeleton;
      } catch {
        // Not even q4_0 fits yet.
      }
    }
    assert.ok(skeleton, 'no caps mix the types');
    const r = await cli(['quantize', dir, '-o', out, '--quantize', 'auto', '--gpu-memory', '24GiB,24GiB', '--max-memory', maxMemory, '--ctx', '512']);
    assert.equal(r.code, 0, r.err);
    const got = await writtenTypes(out);
    const chosen = new Set<string>();
    for (const t of skeleton.tensors) {
      if (t.shape.length !== 2) continue;
      assert.equal(got.get(t.name), t.dtype, t.name);
      chosen.add(t.dtype);
    }
    assert.ok(chosen.size > 1, `the caps should mix types: ${[...chosen]}`);
    assert.equal((readGgufHeader(out).metadata as Record<string, unknown>)['general.architecture'], 'qwen3');
    const line = /^llama\.cpp: (.*)$/m.exec(r.out)?.[1] ?? '';
    // llama.cpp's own overhead (350 MiB a GPU) leaves these caps no room: its flags keep the model in RAM, with the
    // context and the KV type the plan chose.
    const kv = { float32: 'f32', float16: 'f16', bfloat16: 'bf16', q8_0: 'q8_0', q4_0: 'q4_0' }[
      (await makePlan(dir, { ...flags, maxMemory })).plan.workload.kvDtype as 'q8_0'
    ];
    assert.match(line, new RegExp(`^llama-server -m \\S+auto\\.gguf -ngl 0 -c 512 .*${kv === 'f16' ? '' : `-ctk ${kv} -ctv ${kv}`}`));
  });

  for (const vocab of ['llama2', 'gpt2'] as const) {
    it(`the ${vocab} tokenizer and chat template travel in the metadata: the same ids as tokenizer.json`, async () => {
      // Llama 2's model rows past its 32000 pieces (a padded vocabulary) get [PADn] pieces, as llama.cpp's converter writes.
      const dir = checkpoint(`tok-${vocab}`, 'llama2', vocab, {
        hidden_size: 64,
        intermediate_size: 128,
        ...(vocab === 'llama2' ? { vocab_size: 32064 } : {}),
      });
      if (vocab === 'llama2')
        writeFileSync(
          join(dir, 'tokenizer_config.json'),
          JSON.stringify({
            ...JSON.parse('{}'),
            bos_token: '<s>',
            eos_token: '</s>',
            add_bos_token: true,
            chat_template: '{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}',
          }),
        );
      const out = join(root, `tok-${vocab}.gguf`);
      const r = await cli(['quantize', dir, '-o', out, '--quantize', 'q8_0']);
      assert.equal(r.code, 0, r.err);
      const fromGguf = loadGgufTokenizer(out);
      const fromJson = loadTokenizer(dir);
      for (const text of PARITY_TEXTS.slice(0, 40)) assert.deepEqual(fromGguf.encode(text), fromJson.encode(text), JSON.stringify(text));
      const meta = readGgufHeader(out).metadata as Record<string, unknown>;
      assert.equal(meta['tokenizer.ggml.pre'], vocab === 'gpt2' ? 'gpt-2' : undefined);
      const tokens = meta['tokenizer.ggml.tokens'] as string[];
      assert.equal(tokens.length, vocab === 'llama2' ? 32064 : 50257);
      if (vocab === 'llama2') assert.equal(tokens.at(-1), '[PAD32063]');
      if (vocab === 'llama2') assert.equal(meta['tokenizer.chat_template'], '{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}');
    });
  }

  it('refuses with one line and exit 2, leaving no file: other architectures, an existing file, not .gguf, a missing folder, bad flags, config-only models', async () => {
    const small = checkpoint('small-vocab', 'llama2', 'llama2', { vocab_size: 256 });
    const glm = join(root, 'glm');
    writeTinyChatglmCheckpoint(glm, 'chatglm2', { seed: 1 });
    const exists = join(root, 'exists.gguf');
    writeFileSync(exists, 'keep me');
    const cases: [string[], RegExp][] = [
      [['quantize', glm, '-o', join(root, 'glm.gguf')], /GGUF export writes the dense Llama family \(llama, mistral, qwen2, qwen3\); this model is chatglm/],
      [['quantize', llama, '-o', exists], /exists\.gguf exists; pass --force to replace it/],
      [['quantize', llama, '-o', join(root, 'out.bin')], /-o: .*out\.bin: the output file name should end in \.gguf/],
      [['quantize', llama, '-o', join(root, 'nowhere', 'x.gguf')], /nowhere does not exist/],
      [['quantize', llama, '-o', join(root, 'x.gguf'), '--quantize', 'q3_k'], /--quantize/],
      [['quantize', llama, '-o', join(root, 'x.gguf'), '--measure'], /--measure: ranks the types --quantize auto chooses/],
      [['quantize', llama, '-o', join(root, 'x.gguf'), '--threads', '0'], /--threads: expected a positive integer/],
      [['quantize', 'llama-2-7b', '-o', join(root, 'x.gguf')], /reads safetensors checkpoints with their weights/],
      [['quantize', small, '-o', join(root, 'x.gguf')], /tokenizer\.json: has token ids up to 31999, past the model's vocabulary of 256/],
    ];
    const before = new Set(readdirSync(root));
    for (const [args, re] of cases) {
      const r = await cli(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
      assert.match(r.err, re);
      assert.equal(r.err.trim().split('\n').length, 1, r.err);
    }
    assert.deepEqual(
      [...readdirSync(root)].filter((f) => !before.has(f)),
      ['glm'].filter((f) => !before.has(f)),
    );
    assert.equal(statSync(exists).size, 'keep me'.length);
  });

  it('a read that fails midway removes the partial file', async () => {
    const source = await readModel(llama);
    // The last tensor claims bytes past the end of its file.
    const broken = {
      ...source,
      tensors: source.tensors.map((t, i, all) =>
        i === all.length - 1
          ? { ...t, location: { ...t.location!, range: [t.location!.range![0] + 1e6, t.location!.range![1] + 1e6] as [number, number] } }
          : t,
      ),
    };
    const out = join(root, 'broken.gguf');
    await assert.rejects(exportGguf({ source: broken, loaded: quantizeSkeleton(broken, 'q8_0').skeleton, out }), /ended inside/);
    assert.ok(!existsSync(out));
    assert.deepEqual(
      readdirSync(root).filter((f) => f.includes('partial')),
      [],
    );
  });
});

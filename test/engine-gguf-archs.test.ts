/**
 * Every engine architecture llama.cpp defines a GGUF layout for runs from GGUF like from safetensors: a tiny random
 * checkpoint written both ways (GGUF in F32, F16 and Q8_0, as llama.cpp's converter lays it out) gives the same
 * greedy tokens, and logits within the type's error, on one device and split over two.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { loadModel, type LoadOptions } from '../src/engine/load.js';
import { readModel } from '../src/reader/read-model.js';
import { writeTinyMoeCheckpoint, type TinyMoeName } from './helpers/tiny-moe.js';
import { writeTinyGguf, writeTinyMoeGguf, type GgufMatrixDtype } from './helpers/tiny-gguf.js';
import { writeTinyBaichuanGguf, writeTinyChatglmGguf, writeTinyGpt2Gguf } from './helpers/tiny-gguf-archs.js';
import { writeTinyGpt2Checkpoint } from './helpers/tiny-gpt2.js';
import { writeTinyChatglmCheckpoint } from './helpers/tiny-chatglm.js';
import { writeTinyBaichuanCheckpoint, type TinyBaichuanName } from './helpers/tiny-baichuan.js';
import type { Skeleton } from '../src/reader/skeleton.js';
import { ggufVocabMetadata } from './helpers/gguf-vocab.js';
import { gv, writeGguf } from '../src/reader/formats/gguf-writer.js';
import { writeServedModel } from './helpers/tiny-served-model.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { greedy, maxAbsDiff, type GreedyRun } from './helpers/engine-harness.js';
import { cli } from './helpers/run-cli.js';

const root = tempDir('vramfit-engine-gguf-');
after(() => cleanup(root));

const OPTS: LoadOptions = { ctx: 64, ubatch: 4, kvDtype: 'float32', threads: 1 };

/** Largest logit error accepted per stored type (tiny random weights: logits of order 1). */
const TOLERANCE: Record<GgufMatrixDtype, number> = { float32: 1e-4, float16: 0.02, q8_0: 0.3 };

async function run(model: string, devices: string): Promise<GreedyRun> {
  const m = await loadModel(model, { ...OPTS, devices });
  try {
    return await greedy(m);
  } finally {
    m.dispose();
  }
}

describe('engine: MoE GGUFs (stacked ffn_*_exps experts)', () => {
  for (const name of ['mixtral', 'qwen3-moe-gguf'] as TinyMoeName[]) {
    it(`${name}: the GGUF maps to the safetensors model's modules, experts split per expert`, async () => {
      const ck = writeTinyMoeCheckpoint(join(root, `${name}-map`), name, { seed: 5 });
      const fromSt = await readModel(ck.dir);
      const fromGguf = await readModel(writeTinyMoeGguf(ck));
      assert.equal(fromGguf.family, fromSt.family);
      assert.deepEqual(
        fromGguf.tensors.map((t) => `${t.name} ${t.shape.join('x')}`).sort(),
        fromSt.tensors.map((t) => `${t.name} ${t.shape.join('x')}`).sort(),
      );
      assert.equal(fromGguf.attention?.numExperts, fromSt.attention?.numExperts);
    });

    for (const dtype of ['float32', 'float16', 'q8_0'] as GgufMatrixDtype[]) {
      it(`${name} ${dtype}: greedy tokens equal the safetensors run's, logits within ${TOLERANCE[dtype]}, on one device and split over two`, async () => {
        const ck = writeTinyMoeCheckpoint(join(root, `${name}-${dtype}`), name, { seed: 5 });
        const expected = await run(ck.dir, 'virtual:1');
        const gguf = writeTinyMoeGguf(ck, dtype);
        for (const devices of ['virtual:1', 'virtual:2']) {
          const got = await run(gguf, devices);
          const diff = Math.max(maxAbsDiff(got.prompt, expected.prompt), maxAbsDiff(got.steps, expected.steps));
          assert.ok(diff < TOLERANCE[dtype], `${devices}: logits differ by ${diff}`);
          if (dtype !== 'q8_0') assert.deepEqual(got.ids, expected.ids, `${devices}: greedy tokens`);
          else assert.deepEqual(got.ids.slice(0, 3), expected.ids.slice(0, 3), `${devices}: first greedy tokens`);
        }
      });
    }
  }
});

/** The same model from two files: one module tree, one size, no warnings about the GGUF. */
function assertSameStructure(fromGguf: Skeleton, fromSt: Skeleton): void {
  assert.equal(fromGguf.family, fromSt.family);
  assert.deepEqual(fromGguf.warnings, []);
  const blockBytes = (s: Skeleton): number[] =>
    Array.from({ length: s.blocks?.count ?? 0 }, (_, i) =>
      s.tensors.filter((t) => t.name.startsWith(`${s.blocks!.prefix}.${i}.`)).reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1), 0),
    );
  assert.deepEqual(blockBytes(fromGguf), blockBytes(fromSt), 'parameters per block');
  assert.deepEqual(fromGguf.no_split_module_classes, fromSt.no_split_module_classes);
}

interface ArchCase {
  label: string;
  /** Writes the safetensors checkpoint; returns its folder and a writer of its GGUF. */
  write(dir: string): { dir: string; gguf(dtype: GgufMatrixDtype): string };
}

const ARCH_CASES: ArchCase[] = [
  // GPT-2 GGUFs carry no scale_attn_* flags (llama.cpp computes the default scaling), so the default config only.
  {
    label: 'GPT-2',
    write(dir: string) {
      const ck = writeTinyGpt2Checkpoint(dir, 'gpt2', { seed: 3 });
      return { dir: ck.dir, gguf: (dtype: GgufMatrixDtype) => writeTinyGpt2Gguf(ck, dtype) };
    },
  },
  // llama.cpp's chatglm layout: multi-query q|k|v, every head hidden/heads wide (ChatGLM2/3-6B, GLM-4-9B).
  {
    label: 'ChatGLM',
    write(dir: string) {
      const ck = writeTinyChatglmCheckpoint(dir, 'chatglm2', { seed: 3 });
      return { dir: ck.dir, gguf: (dtype: GgufMatrixDtype) => writeTinyChatglmGguf(ck, dtype) };
    },
  },
  ...(['baichuan2-7b', 'baichuan2-13b', 'baichuan-13b'] as TinyBaichuanName[]).map((name) => ({
    label: `Baichuan (${name})`,
    write(dir: string) {
      const ck = writeTinyBaichuanCheckpoint(dir, name, { seed: 3 });
      return { dir: ck.dir, gguf: (dtype: GgufMatrixDtype) => writeTinyBaichuanGguf(ck, dtype) };
    },
  })),
];

describe('engine: GPT-2, ChatGLM and Baichuan GGUFs (llama.cpp layouts: Linear GPT-2 matrices, fused ChatGLM qkv, split Baichuan W_pack)', () => {
  for (const c of ARCH_CASES) {
    const slug = c.label.replace(/[^a-z0-9]+/gi, '-');
    it(`${c.label}: the GGUF reads as the safetensors model's modules and sizes, without warnings`, async () => {
      const m = c.write(join(root, `${slug}-map`));
      assertSameStructure(await readModel(m.gguf('float32')), await readModel(m.dir));
    });

    for (const dtype of ['float32', 'float16', 'q8_0'] as GgufMatrixDtype[]) {
      it(`${c.label} ${dtype}: greedy tokens equal the safetensors run's, logits within ${TOLERANCE[dtype]}, on one device and split over two`, async () => {
        const m = c.write(join(root, `${slug}-${dtype}`));
        const expected = await run(m.dir, 'virtual:1');
        const gguf = m.gguf(dtype);
        for (const devices of ['virtual:1', 'virtual:2']) {
          const got = await run(gguf, devices);
          const diff = Math.max(maxAbsDiff(got.prompt, expected.prompt), maxAbsDiff(got.steps, expected.steps));
          assert.ok(diff < TOLERANCE[dtype], `${devices}: logits differ by ${diff}`);
          if (dtype !== 'q8_0') assert.deepEqual(got.ids, expected.ids, `${devices}: greedy tokens`);
          else assert.deepEqual(got.ids.slice(0, 3), expected.ids.slice(0, 3), `${devices}: first greedy tokens`);
        }
      });
    }
  }
});

describe('a lone GGUF runs with the tokenizer and chat template in its metadata', () => {
  const hf = join(root, 'served');
  const ck = writeServedModel(hf);
  const lone = join(root, 'lone');
  mkdirSync(lone);
  const withTokenizer = { ...ggufVocabMetadata(hf, { pre: 'gpt-2' }), 'tokenizer.ggml.add_bos_token': true };
  const gguf = join(lone, 'model.gguf');
  renameSync(writeTinyGguf(ck, 'float32', withTokenizer, 'lone.gguf'), gguf);

  for (const extra of [[], ['--chat']]) {
    it(`vramfit run model.gguf --prompt ${extra.join(' ')} with nothing beside the file gives the Hugging Face folder's ids and text`, async () => {
      const args = ['--prompt', 'hello world, hello', ...extra, '--max-new-tokens', '5', '--json', '--ctx', '64', '--threads', '1'];
      const fromHf = await cli(['run', hf, ...args]);
      const fromGguf = await cli(['run', gguf, ...args]);
      assert.equal(fromHf.code, 0, fromHf.err);
      assert.equal(fromGguf.code, 0, fromGguf.err);
      const a = JSON.parse(fromHf.out) as { prompt_ids: number[]; generated_ids: number[]; text: string };
      const b = JSON.parse(fromGguf.out) as typeof a;
      assert.deepEqual(b.prompt_ids, a.prompt_ids);
      assert.deepEqual(b.generated_ids, a.generated_ids);
      assert.equal(b.text, a.text);
    });
  }

  it('vramfit tokenize prints the same ids for the GGUF and the folder, and the pieces', async () => {
    const a = await cli(['tokenize', hf, '--text', 'hello <|im_end|> world', '--json']);
    const b = await cli(['tokenize', gguf, '--text', 'hello <|im_end|> world', '--json']);
    assert.equal(a.code, 0, a.err);
    assert.equal(b.code, 0, b.err);
    assert.deepEqual(JSON.parse(b.out), JSON.parse(a.out));
    const table = await cli(['tokenize', gguf, '--text', 'hi\n']);
    assert.match(table.out, /^\s+\d+ -> "<s>"$/m);
    assert.match(table.out, /-> "\\n"$/m);
    assert.match(table.out, /^4 tokens$/m);
    const bad = await cli(['tokenize', gguf]);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /--text: give the text with --text or --file/);
  });

  it('tokenizer files beside a GGUF win over its metadata', async () => {
    const beside = join(root, 'beside');
    mkdirSync(beside);
    copyFileSync(gguf, join(beside, 'model.gguf'));
    // A tokenizer.json whose BOS differs shows which one was read.
    const tj = JSON.parse(readFileSync(join(hf, 'tokenizer.json'), 'utf8')) as { post_processor: unknown };
    tj.post_processor = null;
    writeFileSync(join(beside, 'tokenizer.json'), JSON.stringify(tj));
    const lone = JSON.parse((await cli(['tokenize', gguf, '--text', 'hi', '--json'])).out) as { ids: number[] };
    const files = JSON.parse((await cli(['tokenize', join(beside, 'model.gguf'), '--text', 'hi', '--json'])).out) as { ids: number[] };
    assert.deepEqual(files.ids, lone.ids.slice(1), 'the tokenizer.json without a post-processor adds no <s>');
  });
});

describe('GGUF layouts the engine cannot run are refused before any native call', () => {
  it('a chatglm GGUF with separate q/k/v (converted from GlmForCausalLM) names the file and the reason', async () => {
    const path = join(root, 'glm-split.gguf');
    writeGguf(path, {
      metadata: {
        'general.architecture': 'chatglm',
        'chatglm.embedding_length': gv.u32(64),
        'chatglm.attention.head_count': gv.u32(4),
        'chatglm.block_count': gv.u32(1),
      },
      tensors: [{ name: 'blk.0.attn_q.weight', shape: [64, 64], dtype: 'float32' }],
    });
    const r = await cli(['plan', path]);
    assert.equal(r.code, 2);
    assert.match(r.err, /glm-split\.gguf: this chatglm GGUF stores q, k and v separately/);
    assert.doesNotMatch(r.err, /\n\s+at /);
  });

  it('an architecture without a mapping is planned under llama.cpp names, and run says which ones the engine runs', async () => {
    const path = join(root, 'falcon.gguf');
    writeGguf(path, {
      metadata: { 'general.architecture': 'falcon' },
      tensors: [{ name: 'token_embd.weight', shape: [32, 64], dtype: 'float32' }],
    });
    const r = await cli(['run', path, '--input-ids', '1,2', '--max-new-tokens', '1']);
    assert.equal(r.code, 2);
    assert.match(r.err, /falcon\.gguf: the engine runs .*baichuan, chatglm, gpt2.*not supported/);
  });
});

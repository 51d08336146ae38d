import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { main } from '../src/cli/main.js';
import { writeGguf } from '../src/reader/formats/gguf-writer.js';
import { writeSafetensors } from '../src/reader/formats/safetensors-writer.js';
import { cleanup, storedTensorsFor, tempDir, TINY_LLAMA_CONFIG, writeTinyCheckpoint } from './helpers/tiny-models.js';

const root = tempDir();
after(() => cleanup(root));

async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(argv, { stdout: (s) => (out += s), stderr: (s) => (err += s) });
  return { code, out, err };
}

describe('vramfit inspect', () => {
  const dir = join(root, 'tiny');
  writeTinyCheckpoint(dir, TINY_LLAMA_CONFIG, { shards: 2 });

  it('prints the facts planning needs, with their source', async () => {
    const r = await run('inspect', dir);
    assert.equal(r.code, 0, r.err);
    for (const needle of [
      'LlamaForCausalLM',
      'parameters',
      'tensor headers of every shard',
      '4 × LlamaDecoderLayer',
      'no-split      LlamaDecoderLayer',
      'B/token/layer',
      'at 4k context',
      'largest layer',
    ]) {
      assert.ok(r.out.includes(needle), `missing ${needle}:\n${r.out}`);
    }
  });

  it('--tree collapses identical blocks', async () => {
    const r = await run('inspect', dir, '--tree');
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /0–3 ×4  LlamaDecoderLayer/);
    assert.match(r.out, /embed_tokens  Embedding/);
  });

  it('--json writes a skeleton that inspect reads back', async () => {
    const r = await run('inspect', dir, '--json');
    assert.equal(r.code, 0, r.err);
    const file = join(root, 'skel.json');
    writeFileSync(file, r.out);
    const again = await run('inspect', file, '--json');
    const a = JSON.parse(r.out);
    const b = JSON.parse(again.out);
    assert.deepEqual(b.tensors, a.tensors);
    assert.deepEqual(b.modules, a.modules);
    assert.equal(b.format, 'vramfit-skeleton');
  });

  it('reads a GGUF file into the transformers structure', async () => {
    const file = join(root, 'tiny.gguf');
    const ggufName: Record<string, string> = {
      'model.embed_tokens.weight': 'token_embd.weight',
      'model.norm.weight': 'output_norm.weight',
      'lm_head.weight': 'output.weight',
    };
    const layer: Record<string, string> = {
      input_layernorm: 'attn_norm',
      'self_attn.q_proj': 'attn_q',
      'self_attn.k_proj': 'attn_k',
      'self_attn.v_proj': 'attn_v',
      'self_attn.o_proj': 'attn_output',
      post_attention_layernorm: 'ffn_norm',
      'mlp.gate_proj': 'ffn_gate',
      'mlp.up_proj': 'ffn_up',
      'mlp.down_proj': 'ffn_down',
    };
    const tensors = storedTensorsFor(TINY_LLAMA_CONFIG).map((t) => {
      let name = ggufName[t.name];
      const m = /^model\.layers\.(\d+)\.(.+)\.weight$/.exec(t.name);
      if (m) name = `blk.${m[1]}.${layer[m[2]!]}.weight`;
      // Matrices quantized to q8_0 as llama.cpp would; norms stay F32.
      return { name: name!, shape: t.shape, dtype: t.shape.length === 2 ? 'q8_0' : 'float32' };
    });
    writeGguf(file, {
      metadata: {
        'general.architecture': 'llama',
        'llama.block_count': 4,
        'llama.embedding_length': 64,
        'llama.feed_forward_length': 128,
        'llama.attention.head_count': 4,
        'llama.attention.head_count_kv': 2,
        'llama.context_length': 512,
      },
      tensors,
    });
    const r = await run('inspect', file, '--json');
    assert.equal(r.code, 0, r.err);
    const s = JSON.parse(r.out);
    assert.equal(s.family, 'llama');
    assert.equal(s.source.kind, 'gguf');
    assert.deepEqual(s.warnings, []);
    const q = s.tensors.find((t: { name: string }) => t.name === 'model.layers.3.self_attn.k_proj.weight');
    assert.deepEqual([q.shape, q.dtype], [[32, 64], 'q8_0']);
    assert.deepEqual(s.blocks, { prefix: 'model.layers', count: 4, class: 'LlamaDecoderLayer' });
  });

  it('an unmapped GGUF architecture keeps llama.cpp names and guesses blocks', async () => {
    const file = join(root, 'odd.gguf');
    writeGguf(file, {
      metadata: { 'general.architecture': 'rwkv7' },
      tensors: [0, 1, 2]
        .flatMap((i) => [{ name: `blk.${i}.ffn.weight`, shape: [8, 32], dtype: 'float16' }])
        .concat([{ name: 'token_embd.weight', shape: [10, 32], dtype: 'float16' }]),
    });
    const r = await run('inspect', file, '--json');
    assert.equal(r.code, 0, r.err);
    const s = JSON.parse(r.out);
    assert.equal(s.family, 'unknown');
    assert.equal(s.blocks.prefix, 'blk');
  });

  it('bad input: one line naming the file, exit 2, no stack unless --debug', async () => {
    const bad = join(root, 'bad.safetensors');
    writeFileSync(bad, Buffer.from([1, 2, 3]));
    const r = await run('inspect', bad);
    assert.equal(r.code, 2);
    assert.equal(r.out, '');
    assert.equal(r.err.trim().split('\n').length, 1, r.err);
    assert.ok(r.err.includes(bad), r.err);
    assert.ok(!r.err.includes('    at '), 'no stack');
    const d = await run('inspect', bad, '--debug');
    assert.equal(d.code, 2);
    assert.ok(d.err.includes('    at '), 'stack with --debug');
  });

  it('a truncated shard is bad input', async () => {
    const dir2 = join(root, 'trunc');
    writeTinyCheckpoint(dir2);
    const file = join(dir2, 'model.safetensors');
    const { truncateSync, statSync } = await import('node:fs');
    truncateSync(file, statSync(file).size - 10);
    const r = await run('inspect', dir2);
    assert.equal(r.code, 2);
    assert.match(r.err, /model\.safetensors: /);
  });

  it('unknown flags and values are usage errors with exit 2', async () => {
    assert.equal((await run('inspect', dir, '--frobnicate')).code, 2);
    const kv = await run('inspect', dir, '--kv-dtype', 'float99');
    assert.equal(kv.code, 2);
    assert.match(kv.err, /--kv-dtype: unknown dtype/);
    assert.equal((await run('--help')).code, 0);
  });

  it('writeSafetensors output with an unknown architecture still inspects', async () => {
    const d = join(root, 'unk');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(d);
    writeSafetensors(join(d, 'model.safetensors'), [
      { name: 'h.0.w', dtype: 'F32', shape: [4, 4] },
      { name: 'h.1.w', dtype: 'F32', shape: [4, 4] },
    ]);
    const r = await run('inspect', d);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /warning: unknown architecture/);
  });
});

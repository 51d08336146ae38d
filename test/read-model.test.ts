import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { writeSafetensors } from '../src/reader/formats/safetensors-writer.js';
import { readModel } from '../src/reader/read-model.js';
import { storedBytes } from '../src/reader/reconcile.js';
import { parseSkeleton } from '../src/reader/skeleton-json.js';
import { summarize } from '../src/reader/summary.js';
import { InputError } from '../src/util/errors.js';
import { oracleDir } from './helpers/paths.js';
import { cleanup, tempDir, TINY_LLAMA_CONFIG, writeTinyCheckpoint } from './helpers/tiny-models.js';

const root = tempDir();
after(() => cleanup(root));
let n = 0;
const fresh = (): string => join(root, `m${n++}`);

async function rejectsWith(p: Promise<unknown>, code: string, pattern: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof InputError, `expected InputError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.match(e.message, pattern);
    assert.ok(!e.message.includes('\n'), 'one line');
    return true;
  });
}

describe('readModel: Hugging Face folders', () => {
  it('reads a single model.safetensors: shapes and byte ranges from the header', async () => {
    const dir = fresh();
    const { names, totalSize } = writeTinyCheckpoint(dir);
    const s = await readModel(dir);
    assert.equal(s.family, 'llama');
    assert.equal(s.source.kind, 'safetensors');
    assert.equal(s.source.shapes, 'headers');
    assert.deepEqual(s.warnings, []);
    for (const name of names) assert.ok(s.tensors.find((t) => t.name === name)?.location?.range, `${name} has a byte range`);
    assert.equal(storedBytes(s.tensors, [], s.tied), totalSize);
    // Loaded memory also holds the non-persistent rotary buffer (head_dim / 2 float32 values).
    assert.equal(summarize(s).totalBytes, totalSize + 8 * 4);
    assert.ok(s.source.bytesRead < 10_000, `read ${s.source.bytesRead} bytes`);
  });

  it('reads every shard header of a sharded checkpoint, in registration order', async () => {
    const dir = fresh();
    writeTinyCheckpoint(dir, TINY_LLAMA_CONFIG, { shards: 3 });
    const s = await readModel(dir);
    assert.equal(s.source.kind, 'safetensors-index');
    assert.equal(s.source.shapes, 'headers');
    assert.equal(s.source.files.length, 5, "index, config and three shards");
    const layers = s.modules.filter((m) => /^model\.layers\.\d+$/.test(m.name)).map((m) => m.name);
    assert.deepEqual(layers, ['model.layers.0', 'model.layers.1', 'model.layers.2', 'model.layers.3']);
    assert.equal(s.modules[0]!.name, 'model');
    assert.equal(s.modules.at(-1)!.name, 'lm_head');
  });

  it('synthesizes shapes from config + index when no shard is present', async () => {
    const dir = fresh();
    const { totalSize } = writeTinyCheckpoint(dir, TINY_LLAMA_CONFIG, { shards: 2, writeShards: false });
    const s = await readModel(dir);
    assert.equal(s.source.shapes, 'synthesized');
    assert.equal(s.source.indexTotalSize, totalSize);
    assert.equal(storedBytes(s.tensors, [], s.tied), totalSize);
  });

  it('refuses an index whose shard is missing when others are present', async () => {
    const dir = fresh();
    writeTinyCheckpoint(dir, TINY_LLAMA_CONFIG, { shards: 2 });
    const { rmSync } = await import('node:fs');
    rmSync(join(dir, 'model-00002-of-00002.safetensors'));
    await rejectsWith(readModel(dir), 'MISSING_SHARD', /model-00002-of-00002\.safetensors.*missing/);
  });

  it('refuses a weight_map entry outside the model folder', async () => {
    for (const bad of ['../evil.safetensors', '/etc/passwd', 'sub/../../x.safetensors']) {
      const dir = fresh();
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'config.json'), JSON.stringify(TINY_LLAMA_CONFIG));
      writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { 'model.norm.weight': bad } }));
      await rejectsWith(readModel(dir), 'BAD_FORMAT', /outside the model folder/);
    }
  });

  it('refuses a shard that holds a tensor the index puts elsewhere', async () => {
    const dir = fresh();
    writeTinyCheckpoint(dir, TINY_LLAMA_CONFIG, { shards: 2 });
    const indexPath = join(dir, 'model.safetensors.index.json');
    const { readFileSync } = await import('node:fs');
    const index = JSON.parse(readFileSync(indexPath, 'utf8'));
    index.weight_map['model.embed_tokens.weight'] = 'model-00002-of-00002.safetensors';
    writeFileSync(indexPath, JSON.stringify(index));
    await rejectsWith(readModel(dir), 'BAD_FORMAT', /model\.embed_tokens\.weight/);
  });

  it('names the file and the key for a config that is not JSON or lacks a key', async () => {
    const dir = fresh();
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'config.json'), '{"hidden_size": 64,');
    await rejectsWith(readModel(dir), 'BAD_CONFIG', /config\.json: not valid JSON/);
    const { hidden_size: _h, ...noHidden } = TINY_LLAMA_CONFIG;
    writeFileSync(join(dir, 'config.json'), JSON.stringify(noHidden));
    await rejectsWith(readModel(dir), 'BAD_CONFIG', /config\.json: missing hidden size: hidden_size \(tried hidden_size, n_embd/);
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...TINY_LLAMA_CONFIG, num_hidden_layers: -1 }));
    await rejectsWith(readModel(dir), 'BAD_CONFIG', /num_hidden_layers must be a non-negative integer/);
  });

  it('reads config.json alone (synthesized skeleton)', async () => {
    const dir = fresh();
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'config.json'), JSON.stringify(TINY_LLAMA_CONFIG));
    const s = await readModel(join(dir, 'config.json'));
    assert.equal(s.source.kind, 'config');
    assert.equal(s.blocks?.count, 4);
    assert.equal(s.attention?.kvElementsPerToken, 2 * 2 * 16);
    assert.equal(s.attention?.attention, 'gqa');
  });

  it('a path that does not exist and is not a repo id is bad input', async () => {
    await rejectsWith(readModel(join(root, 'nope')), 'NOT_FOUND', /no such file or folder/);
  });
});

describe('readModel: the local Hugging Face cache', () => {
  it('resolves org/name through refs/main to its snapshot', async () => {
    const cache = join(root, 'hub');
    const repo = join(cache, 'models--acme--tiny-llama');
    const snapshot = join(repo, 'snapshots', 'abc123');
    writeTinyCheckpoint(snapshot);
    mkdirSync(join(repo, 'refs'), { recursive: true });
    writeFileSync(join(repo, 'refs', 'main'), 'abc123\n');
    const s = await readModel('acme/tiny-llama', { env: { HF_HUB_CACHE: cache } });
    assert.equal(s.family, 'llama');
    const viaHome = await readModel('acme/tiny-llama@abc123', { env: { HF_HOME: root } });
    assert.equal(viaHome.tensors.length, s.tensors.length);
  });

  it('says clearly when a repo id is not cached, and never downloads', async () => {
    await rejectsWith(readModel('acme/absent-model', { env: { HF_HUB_CACHE: join(root, 'hub') } }), 'NOT_FOUND', /not in the local Hugging Face cache.*never downloads/);
  });
});

describe('readModel: files and unknown architectures', () => {
  it('guesses repeated blocks from the tensor names of an unknown architecture', async () => {
    const dir = fresh();
    mkdirSync(dir, { recursive: true });
    const tensors = [];
    for (let i = 0; i < 12; i++) {
      tensors.push({ name: `backbone.blocks.${i}.mixer.in_proj.weight`, dtype: 'F16', shape: [32, 16] });
      tensors.push({ name: `backbone.blocks.${i}.norm.weight`, dtype: 'F16', shape: [16] });
    }
    tensors.push({ name: 'backbone.embedding.weight', dtype: 'F16', shape: [100, 16] });
    tensors.push({ name: 'lm_head.weight', dtype: 'F16', shape: [100, 16] });
    writeSafetensors(join(dir, 'model.safetensors'), tensors);
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ architectures: ['MambaForCausalLM'], hidden_size: 16, num_hidden_layers: 12 }));
    const s = await readModel(dir);
    assert.equal(s.family, 'unknown');
    assert.deepEqual(s.blocks, { prefix: 'backbone.blocks', count: 12, class: 'BlocksBlock' });
    assert.deepEqual(s.no_split_module_classes, ['BlocksBlock']);
    assert.ok(s.warnings.some((w) => w.includes('backbone.blocks.N')), s.warnings.join('; '));
    // Registration order is guessed: embedding before blocks, blocks numerically, head last.
    const order = s.modules.map((m) => m.name).filter((m) => !m.includes('.') || /^backbone\.[a-z]+$|^backbone\.blocks\.\d+$/.test(m));
    assert.equal(order.indexOf('backbone.embedding') < order.indexOf('backbone.blocks'), true);
    assert.ok(order.indexOf('backbone.blocks.2') < order.indexOf('backbone.blocks.10'));
    assert.equal(s.modules.at(-1)!.name, 'lm_head');
  });

  it('an unknown architecture with only an index is refused with the reason', async () => {
    const dir = fresh();
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ architectures: ['MambaForCausalLM'] }));
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { 'a.weight': 'model-1.safetensors' } }));
    await rejectsWith(readModel(dir), 'UNKNOWN_ARCHITECTURE', /unknown architecture MambaForCausalLM, and no safetensors headers/);
  });

  it('reads a lone .safetensors file with the config beside it', async () => {
    const dir = fresh();
    writeTinyCheckpoint(dir);
    const s = await readModel(join(dir, 'model.safetensors'));
    assert.equal(s.family, 'llama');
    assert.equal(s.source.kind, 'safetensors');
  });

  it('keeps the tensors a quantized checkpoint really stores', async () => {
    const dir = fresh();
    mkdirSync(dir, { recursive: true });
    const cfg = { ...TINY_LLAMA_CONFIG, num_hidden_layers: 1, torch_dtype: 'float16', quantization_config: { quant_method: 'gptq', bits: 4, group_size: 32 } };
    writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
    const tensors: { name: string; dtype: string; shape: number[] }[] = [
      { name: 'model.embed_tokens.weight', dtype: 'F16', shape: [256, 64] },
      { name: 'model.norm.weight', dtype: 'F16', shape: [64] },
      { name: 'lm_head.weight', dtype: 'F16', shape: [256, 64] },
      { name: 'model.layers.0.input_layernorm.weight', dtype: 'F16', shape: [64] },
      { name: 'model.layers.0.post_attention_layernorm.weight', dtype: 'F16', shape: [64] },
    ];
    const linears: [string, number, number][] = [
      ['self_attn.q_proj', 64, 64], ['self_attn.k_proj', 64, 32], ['self_attn.v_proj', 64, 32], ['self_attn.o_proj', 64, 64],
      ['mlp.gate_proj', 64, 128], ['mlp.up_proj', 64, 128], ['mlp.down_proj', 128, 64],
    ];
    for (const [name, inF, outF] of linears) {
      const p = `model.layers.0.${name}`;
      tensors.push({ name: `${p}.qweight`, dtype: 'I32', shape: [inF / 8, outF] });
      tensors.push({ name: `${p}.qzeros`, dtype: 'I32', shape: [inF / 32, outF / 8] });
      tensors.push({ name: `${p}.scales`, dtype: 'F16', shape: [inF / 32, outF] });
    }
    writeSafetensors(join(dir, 'model.safetensors'), tensors);
    const s = await readModel(dir);
    assert.equal(s.quantization?.method, 'gptq');
    assert.equal(s.quantization?.sizesModelled, true);
    assert.ok(s.tensors.some((t) => t.name === 'model.layers.0.self_attn.q_proj.qweight'));
    assert.ok(!s.tensors.some((t) => t.name === 'model.layers.0.self_attn.q_proj.weight'), 'replaced float weight dropped');
    const stored = tensors.reduce((sum, t) => sum + t.shape.reduce((a, b) => a * b, 1) * (t.dtype === 'I32' ? 4 : 2), 0);
    assert.equal(summarize(s).totalBytes, stored + 8 * 4, "stored tensors plus the rotary buffer");
  });
});

describe('skeleton JSON', () => {
  it('round-trips through inspect --json', async () => {
    const dir = fresh();
    writeTinyCheckpoint(dir, TINY_LLAMA_CONFIG, { shards: 2 });
    const s = await readModel(dir);
    const file = join(dir, 'skeleton.json');
    writeFileSync(file, JSON.stringify(s));
    const back = await readModel(file);
    assert.deepEqual({ ...back, source: { ...back.source, bytesRead: 0 } }, { ...s, source: { ...s.source, bytesRead: 0 } });
  });

  it('reads the input object of an accelerate oracle case', async () => {
    const s = await readModel(join(oracleDir, '000.json'));
    assert.equal(s.root_class, 'LlamaForCausalLM');
    assert.equal(s.source.kind, 'oracle-case');
    assert.deepEqual(s.blocks, { prefix: 'model.layers', count: 32, class: 'LlamaDecoderLayer' });
  });

  it('refuses malformed skeletons with the reason', () => {
    const bad: [unknown, RegExp][] = [
      [[], /expected a JSON object/],
      [{ format: 'vramfit-skeleton', version: 99 }, /newer than this vramfit reads/],
      [{ root_class: 'X', modules: [], tensors: [{ name: 'a.w', shape: [1], dtype: 'float16' }] }, /module a, which is not listed/],
      [{ root_class: 'X', modules: [{ name: 'a', class: 'A' }], tensors: [{ name: 'a.w', shape: [1], dtype: 'float99' }] }, /unknown dtype/],
      [{ root_class: 'X', modules: [{ name: 'a', class: 'A' }], tensors: [{ name: 'a.w', shape: [-1], dtype: 'float16' }] }, /non-negative integers/],
      [{ root_class: 'X', modules: [{ name: 'a', class: 'A' }], tensors: [{ name: 'a.w', shape: [1], dtype: 'float16' }], tied: [['a.w', 'b.w']] }, /b\.w, which is not in tensors/],
    ];
    for (const [json, pattern] of bad) {
      assert.throws(() => parseSkeleton(json, 'x.json'), (e: unknown) => e instanceof InputError && pattern.test(e.message) && e.message.startsWith('x.json: '));
    }
  });
});

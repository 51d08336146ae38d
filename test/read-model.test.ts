import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { writeSafetensors } from '../src/reader/formats/safetensors-writer.js';
import { readModel } from '../src/reader/read-model.js';
import { storedBytes } from '../src/reader/reconcile.js';
import { parseSkeleton } from '../src/reader/skeleton-json.js';
import { summarize } from '../src/reader/summary.js';
import { InputError } from '../src/util/errors.js';
import { oracleDir } from './helpers/paths.js';
import { f32Bytes, writePytorchBin, writeTinyBinCheckpoint } from './helpers/pytorch-bin-writer.js';
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
    assert.equal(s.source.files.length, 5, 'index, config and three shards');
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

describe('readModel: shape values a model cannot physically have', () => {
  for (const [key, value, pattern] of [
    ['num_hidden_layers', 1_000_000_000, /num_hidden_layers must be between 1 and 10,000, got 1,000,000,000/],
    ['num_attention_heads', 0, /num_attention_heads must be between 1 and 65,536, got 0/],
    ['num_key_value_heads', 0, /num_key_value_heads must be between 1 and 65,536, got 0/],
    ['vocab_size', 2 ** 40, /vocab_size must be between 1 and 16,777,216/],
  ] as const) {
    it(`refuses ${key} = ${value} at once, naming the file and key`, async () => {
      const dir = fresh();
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...TINY_LLAMA_CONFIG, [key]: value }));
      await rejectsWith(readModel(dir), 'BAD_CONFIG', pattern);
    });
  }
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

  it('refuses a refs file or a revision that would lead out of the cache', async () => {
    const cache = join(root, 'hub-evil');
    const repo = join(cache, 'models--acme--evil');
    writeTinyCheckpoint(join(root, 'outside'));
    mkdirSync(join(repo, 'refs'), { recursive: true });
    mkdirSync(join(repo, 'snapshots'), { recursive: true });
    writeFileSync(join(repo, 'refs', 'main'), '../../../outside\n');
    await rejectsWith(
      readModel('acme/evil', { env: { HF_HUB_CACHE: cache } }),
      'BAD_INPUT',
      /refs\/main: holds "\.\.\/\.\.\/\.\.\/outside", not a commit hash; refusing to follow it out of the cache/,
    );
    // readModel never takes `..` as a repo id; the resolver refuses it on its own too.
    const { resolveRepoId } = await import('../src/reader/hf-cache.js');
    assert.throws(() => resolveRepoId('acme/evil@..', { HF_HUB_CACHE: cache }), /revision "\.\." is not a branch, tag or commit name/);
  });

  it('says clearly when a repo id is not cached, and never downloads', async () => {
    await rejectsWith(
      readModel('acme/absent-model', { env: { HF_HUB_CACHE: join(root, 'hub') } }),
      'NOT_FOUND',
      /not in the local Hugging Face cache.*never downloads/,
    );
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
    assert.ok(
      s.warnings.some((w) => w.includes('backbone.blocks.N')),
      s.warnings.join('; '),
    );
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
      ['self_attn.q_proj', 64, 64],
      ['self_attn.k_proj', 64, 32],
      ['self_attn.v_proj', 64, 32],
      ['self_attn.o_proj', 64, 64],
      ['mlp.gate_proj', 64, 128],
      ['mlp.up_proj', 64, 128],
      ['mlp.down_proj', 128, 64],
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
    assert.equal(summarize(s).totalBytes, stored + 8 * 4, 'stored tensors plus the rotary buffer');
  });
});

describe('readModel: PyTorch .bin checkpoints', () => {
  /** Every tensor a checkpoint stores has a byte range exactly as long as its shape × dtype. */
  function assertRanges(s: Awaited<ReturnType<typeof readModel>>, names: string[], files: string[]): void {
    for (const name of names) {
      const t = s.tensors.find((x) => x.name === name)!;
      assert.ok(t.location?.range, `${name} has a byte range`);
      assert.ok(files.includes(t.location.file), `${name} is in ${t.location.file}`);
      assert.equal(t.location.range[1] - t.location.range[0], t.shape.reduce((a, b) => a * b, 1) * 4, name);
    }
  }

  it('reads every shard of a pytorch_model.bin.index.json: real shapes and byte ranges', async () => {
    const dir = fresh();
    const { names, shapes, files, totalSize } = writeTinyBinCheckpoint(dir, TINY_LLAMA_CONFIG, { shards: 3 });
    const s = await readModel(dir);
    assert.equal(s.source.kind, 'bin-index');
    assert.equal(s.source.shapes, 'headers');
    assert.deepEqual(s.warnings, []);
    assert.equal(s.source.files.length, 5, 'index, config and three shards');
    assertRanges(s, names, files);
    for (const name of names) assert.deepEqual(s.tensors.find((t) => t.name === name)!.shape, shapes[name]);
    assert.equal(storedBytes(s.tensors, [], s.tied), totalSize);
    assert.equal(summarize(s).sizesFrom, 'tensor headers of every .bin shard (pickles)');
    assert.ok(s.source.bytesRead < 3 * 70_000, `read ${s.source.bytesRead} bytes`);
    // The same model as safetensors gives the same skeleton, byte ranges aside.
    const st = fresh();
    writeTinyCheckpoint(st, TINY_LLAMA_CONFIG);
    const ref = await readModel(st);
    const plain = (x: typeof s): unknown => x.tensors.map((t) => [t.name, t.shape, t.dtype, t.kind]);
    assert.deepEqual(plain(s), plain(ref));
    assert.deepEqual(s.modules, ref.modules);
  });

  it('reads a single pytorch_model.bin in a folder, and a .bin file given directly', async () => {
    const dir = fresh();
    const { names } = writeTinyBinCheckpoint(dir, TINY_LLAMA_CONFIG);
    for (const target of [dir, join(dir, 'pytorch_model.bin')]) {
      const s = await readModel(target);
      assert.equal(s.family, 'llama');
      assert.equal(s.source.kind, 'bin');
      assert.equal(s.source.shapes, 'headers');
      assert.deepEqual(s.warnings, []);
      assertRanges(s, names, ['pytorch_model.bin']);
      assert.equal(summarize(s).sizesFrom, 'tensor headers (.bin pickle)');
    }
  });

  it('prefers model.safetensors when both formats are present', async () => {
    const dir = fresh();
    writeTinyBinCheckpoint(dir, TINY_LLAMA_CONFIG);
    writeTinyCheckpoint(dir, TINY_LLAMA_CONFIG);
    assert.equal((await readModel(dir)).source.kind, 'safetensors');
  });

  it('keeps synthesizing from the index when no shard is present', async () => {
    const dir = fresh();
    const { files, totalSize } = writeTinyBinCheckpoint(dir, TINY_LLAMA_CONFIG, { shards: 2 });
    for (const f of files) rmSync(join(dir, f));
    const s = await readModel(dir);
    assert.equal(s.source.kind, 'bin-index');
    assert.equal(s.source.shapes, 'synthesized');
    assert.equal(storedBytes(s.tensors, [], s.tied), totalSize);
    assert.equal(summarize(s).sizesFrom, 'index names + architecture spec (shards not present)');
  });

  it('refuses shards that disagree with the index, and corrupt shards, naming the file', async () => {
    const dir = fresh();
    const { files } = writeTinyBinCheckpoint(dir, TINY_LLAMA_CONFIG, { shards: 2 });
    const indexPath = join(dir, 'pytorch_model.bin.index.json');
    const index = JSON.parse(readFileSync(indexPath, 'utf8')) as { weight_map: Record<string, string> };
    writeFileSync(indexPath, JSON.stringify({ weight_map: { ...index.weight_map, 'model.norm.weight': files[0] } }));
    await rejectsWith(
      readModel(dir),
      'BAD_FORMAT',
      /pytorch_model-00002-of-00002\.bin: holds model\.norm\.weight, which the index puts in pytorch_model-00001-of-00002\.bin/,
    );
    writeFileSync(indexPath, JSON.stringify({ weight_map: { ...index.weight_map, 'model.extra.weight': files[1] } }));
    await rejectsWith(readModel(dir), 'BAD_FORMAT', /model\.extra\.weight is listed in weight_map but not in pytorch_model-00002-of-00002\.bin/);
    writeFileSync(indexPath, JSON.stringify(index));
    writeFileSync(join(dir, files[1]!), 'not a checkpoint');
    await rejectsWith(readModel(dir), 'BAD_FORMAT', /pytorch_model-00002-of-00002\.bin: not a PyTorch checkpoint/);
  });

  it('warns about non-contiguous views and keeps the reason on the tensor', async () => {
    const dir = fresh();
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ architectures: ['TinyNet'], hidden_size: 4 }));
    const storage = { dtype: 'float32' as const, bytes: f32Bytes(Array.from({ length: 12 }, (_, i) => i)) };
    writePytorchBin(join(dir, 'pytorch_model.bin'), [
      { name: 'a.weight', storage, shape: [3, 4] },
      { name: 'b.weight', storage, shape: [4, 3], strides: [1, 4] },
    ]);
    const s = await readModel(dir);
    const [start, end] = s.tensors.find((t) => t.name === 'a.weight')!.location!.range!;
    assert.equal(end - start, 48);
    assert.equal(start % 64, 0, 'storages start 64-byte aligned');
    const view = s.tensors.find((t) => t.name === 'b.weight')!;
    assert.equal(view.location?.range, undefined);
    assert.match(view.location?.noRange ?? '', /not contiguous \(shape \[4, 3\], strides \[1, 4\]\)/);
    assert.ok(
      s.warnings.some((w) => /^pytorch_model\.bin: b\.weight is not contiguous .* the engine cannot load it$/.test(w)),
      s.warnings.join('; '),
    );
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
    // the one addition: where the claims came from (run checks files and ranges against it)
    assert.equal(back.source.skeletonFile, file);
    const { skeletonFile: _read, ...source } = back.source;
    assert.deepEqual({ ...back, source: { ...source, bytesRead: 0 } }, { ...s, source: { ...s.source, bytesRead: 0 } });
    // a skeletonFile written into the JSON is not believed
    writeFileSync(file, JSON.stringify({ ...s, source: { ...s.source, skeletonFile: '/elsewhere/x.json' } }));
    assert.equal((await readModel(file)).source.skeletonFile, file);
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
      [
        { root_class: 'X', modules: [{ name: 'a', class: 'A' }], tensors: [{ name: 'a.w', shape: [1], dtype: 'float16' }], tied: [['a.w', 'b.w']] },
        /b\.w, which is not in tensors/,
      ],
    ];
    for (const [json, pattern] of bad) {
      assert.throws(
        () => parseSkeleton(json, 'x.json'),
        (e: unknown) => e instanceof InputError && pattern.test(e.message) && e.message.startsWith('x.json: '),
      );
    }
  });
});

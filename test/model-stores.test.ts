/** Models named as Ollama and LM Studio hold them, and `vramfit list`: fake stores in temp folders, nothing downloaded. */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { cpSync, mkdirSync, readFileSync, renameSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { main } from '../src/cli/main.js';
import { readModel } from '../src/reader/read-model.js';
import { listHfCacheModels } from '../src/reader/stores/hf-cache-list.js';
import { listLmStudioModels, lmStudioModelsDir, lmStudioModelsDirs, resolveLmStudioModel } from '../src/reader/stores/lmstudio.js';
import { listOllamaModels, ollamaModelsDir, parseOllamaName, resolveOllamaModel, verifyBlob } from '../src/reader/stores/ollama.js';
import { FormatError, InputError } from '../src/util/errors.js';
import { writeTinyGguf } from './helpers/tiny-gguf.js';
import { writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { cleanup, tempDir, writeTinyCheckpoint } from './helpers/tiny-models.js';

const MEDIA = 'application/vnd.ollama.image.';
const root = tempDir('vramfit-stores-');
after(() => cleanup(root));

const sha256 = (bytes: Uint8Array | string): string => createHash('sha256').update(bytes).digest('hex');

interface Layer {
  mediaType: string;
  digest: string;
  size: number;
}

/** Stores bytes as Ollama does, under their own hash, and returns the manifest layer naming them. */
function addBlob(store: string, kind: string, bytes: Uint8Array | string): Layer {
  const data = typeof bytes === 'string' ? Buffer.from(bytes) : bytes;
  const hex = sha256(data);
  mkdirSync(join(store, 'blobs'), { recursive: true });
  writeFileSync(join(store, 'blobs', `sha256-${hex}`), data);
  return { mediaType: `${MEDIA}${kind}`, digest: `sha256:${hex}`, size: data.length };
}

function writeManifest(store: string, name: string, content: unknown): string {
  const [host, namespace, model, tag] = name.split('/') as [string, string, string, string];
  const dir = join(store, 'manifests', host, namespace, model);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, tag), typeof content === 'string' ? content : JSON.stringify(content));
  return join(dir, tag);
}

function manifestOf(store: string, layers: Layer[]): unknown {
  const config = addBlob(store, 'config', '{"model_format":"gguf","model_family":"llama"}');
  return {
    schemaVersion: 2,
    mediaType: 'application/vnd.docker.distribution.manifest.v2+json',
    config: { ...config, mediaType: 'application/vnd.docker.container.image.v1+json' },
    layers,
  };
}

const TEMPLATE = '{{ if .System }}<|system|>{{ .System }}{{ end }}<|user|>{{ .Prompt }}<|assistant|>';
const PARAMS = { stop: ['<|user|>'], temperature: 0.7, num_ctx: 4096 };

let llamaGguf: Buffer;
let qwenGguf: Buffer;
const home = join(root, 'home');
const ollama = join(root, 'ollama');
const lms = join(root, 'lms');
const hub = join(root, 'hub');
const env: NodeJS.ProcessEnv = { HOME: home, OLLAMA_MODELS: ollama, LMSTUDIO_MODELS: lms, HF_HUB_CACHE: hub };
let hfSize = 0;

/** The main Ollama store: library models, a user namespace, an hf.co model with a projector, and one named like a catalog model. */
function buildOllamaStore(store: string): void {
  const model = addBlob(store, 'model', llamaGguf);
  const llama32 = [model, addBlob(store, 'template', TEMPLATE), addBlob(store, 'system', 'You are terse.'), addBlob(store, 'params', JSON.stringify(PARAMS))];
  writeManifest(store, 'registry.ollama.ai/library/llama3.2/latest', manifestOf(store, llama32));
  writeManifest(
    store,
    'registry.ollama.ai/library/qwen2.5/7b',
    manifestOf(store, [addBlob(store, 'model', qwenGguf), addBlob(store, 'params', '{"num_ctx":8192}')]),
  );
  writeManifest(store, 'registry.ollama.ai/myuser/mymodel/q4', manifestOf(store, [model, addBlob(store, 'adapter', 'lora bytes')]));
  writeManifest(store, 'hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF/Q4_K_M', manifestOf(store, [model, addBlob(store, 'projector', 'clip bytes')]));
  writeManifest(store, 'registry.ollama.ai/library/llama-2-7b/latest', manifestOf(store, [model]));
}

function putFile(path: string, bytes: Uint8Array | string): void {
  mkdirSync(join(path, '..'), { recursive: true });
  writeFileSync(path, bytes);
}

function buildLmStudioStore(dir: string): void {
  putFile(join(dir, 'lmstudio-community', 'Qwen2.5-7B-Instruct-GGUF', 'Qwen2.5-7B-Instruct-Q4_K_M.gguf'), qwenGguf);
  putFile(join(dir, 'lmstudio-community', 'Qwen2.5-7B-Instruct-GGUF', 'mmproj-model-f16.gguf'), llamaGguf);
  putFile(join(dir, 'bartowski', 'Tiny-GGUF', 'Tiny-Q4_K_M.gguf'), llamaGguf);
  putFile(join(dir, 'bartowski', 'Tiny-GGUF', 'Tiny-Q8_0.gguf'), llamaGguf);
  putFile(join(dir, 'alice', 'Shared-GGUF', 'shared.gguf'), llamaGguf);
  putFile(join(dir, 'bob', 'Shared-GGUF', 'shared.gguf'), llamaGguf);
  for (let i = 1; i <= 3; i++) putFile(join(dir, 'carol', 'Big-GGUF', `big-0000${i}-of-00003.gguf`), 'part');
}

/** An HF cache entry laid out as huggingface_hub does: snapshot files are links into blobs/. */
function buildHfCache(cache: string): void {
  const repo = join(cache, 'models--acme--tiny-llama');
  const snapshot = join(repo, 'snapshots', 'abc123');
  writeTinyCheckpoint(snapshot);
  mkdirSync(join(repo, 'blobs'), { recursive: true });
  const weights = join(snapshot, 'model.safetensors');
  const blob = join(repo, 'blobs', sha256(readFileSync(weights)));
  renameSync(weights, blob);
  symlinkSync(join('..', '..', 'blobs', sha256(readFileSync(blob))), weights);
  mkdirSync(join(repo, 'refs'), { recursive: true });
  writeFileSync(join(repo, 'refs', 'main'), 'abc123');
  hfSize = statSync(blob).size + statSync(join(snapshot, 'config.json')).size;
}

before(() => {
  const llama = writeTinyFamilyCheckpoint(join(root, 'ck-llama'), 'llama2');
  llamaGguf = readFileSync(writeTinyGguf(llama));
  const qwen = writeTinyFamilyCheckpoint(join(root, 'ck-qwen'), 'qwen2');
  qwenGguf = readFileSync(writeTinyGguf(qwen));
  mkdirSync(home, { recursive: true });
  buildOllamaStore(ollama);
  buildLmStudioStore(lms);
  buildHfCache(hub);
});

/** Asserts an InputError of `code` whose one-line message matches every pattern. */
function inputError(code: string, ...patterns: RegExp[]): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof InputError, `expected InputError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    for (const p of patterns) assert.match(e.message, p);
    assert.ok(!e.message.includes('\n'), 'one line');
    return true;
  };
}

const escape = (s: string): RegExp => new RegExp(s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&'));

describe('Ollama names', () => {
  it('parse as Ollama does: [host/][namespace/]model[:tag] with its defaults', () => {
    const table: [string, string, string, string, string][] = [
      ['llama3.2', 'registry.ollama.ai', 'library', 'llama3.2', 'latest'],
      ['qwen2.5:7b', 'registry.ollama.ai', 'library', 'qwen2.5', '7b'],
      ['myuser/mymodel:q4', 'registry.ollama.ai', 'myuser', 'mymodel', 'q4'],
      ['hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M', 'hf.co', 'bartowski', 'Llama-3.2-1B-Instruct-GGUF', 'Q4_K_M'],
      ['localhost:5000/team/model', 'localhost:5000', 'team', 'model', 'latest'],
    ];
    for (const [spec, host, namespace, model, tag] of table) assert.deepEqual(parseOllamaName(spec), { host, namespace, model, tag }, spec);
  });

  it('refuses names that are not Ollama names, so no part can leave the store', () => {
    for (const bad of ['a/b/c/d', '../x', 'x:..', 'a//b', 'x:', 'a b', '/abs', 'x:y:z', 'm@sha256:00']) {
      assert.throws(() => parseOllamaName(bad), inputError('BAD_INPUT', /not an Ollama model name/), bad);
    }
  });

  it('the store is OLLAMA_MODELS, else ~/.ollama/models under HOME', () => {
    assert.equal(ollamaModelsDir({ OLLAMA_MODELS: '/x/models', HOME: home }), '/x/models');
    assert.equal(ollamaModelsDir({ HOME: home }), join(home, '.ollama', 'models'));
  });
});

describe('readModel: Ollama', () => {
  for (const spec of ['llama3.2', 'ollama:llama3.2:latest', 'llama3.2:latest']) {
    it(`${spec} reads the model blob, with the template, system prompt and params of its manifest`, async () => {
      const s = await readModel(spec, { env });
      assert.equal(s.source.kind, 'gguf');
      assert.equal(s.family, 'llama');
      assert.equal(s.source.files[0], join(ollama, 'blobs', `sha256-${sha256(llamaGguf)}`));
      assert.equal(s.source.path, spec);
      assert.deepEqual(s.source.store, {
        kind: 'ollama',
        name: 'llama3.2:latest',
        manifest: join(ollama, 'manifests', 'registry.ollama.ai', 'library', 'llama3.2', 'latest'),
        template: TEMPLATE,
        system: 'You are terse.',
        params: PARAMS,
      });
    });
  }

  it('a tagged name (qwen2.5:7b) picks that tag', async () => {
    const s = await readModel('qwen2.5:7b', { env });
    assert.equal(s.model_type, 'qwen2');
    assert.equal(s.source.store?.name, 'qwen2.5:7b');
    assert.deepEqual(s.source.store?.params, { num_ctx: 8192 });
    assert.equal(s.source.store?.template, undefined);
  });

  it('a namespaced name and an hf.co name resolve; adapters and projectors are counted, not refused', async () => {
    const user = await readModel('myuser/mymodel:q4', { env });
    assert.equal(user.source.store?.name, 'myuser/mymodel:q4');
    assert.equal(resolveOllamaModel('myuser/mymodel:q4', env).adapters, 1);
    const hf = await readModel('hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M', { env });
    assert.equal(hf.source.store?.name, 'hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M');
    const m = resolveOllamaModel('hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M', env);
    assert.equal(m.projector, true);
    assert.equal(m.adapters, 0);
    assert.equal(m.size, llamaGguf.length);
    assert.equal(m.modelDigest, `sha256:${sha256(llamaGguf)}`);
  });

  it('a tag Ollama does not have is an error saying where it looked', async () => {
    await assert.rejects(
      readModel('qwen2.5:3b', { env }),
      inputError(
        'NOT_FOUND',
        /not found in Ollama's store/,
        escape(join(ollama, 'manifests', 'registry.ollama.ai', 'library', 'qwen2.5', '3b')),
        /OLLAMA_MODELS/,
      ),
    );
  });

  it('catalog names still win over a store model of the same name', async () => {
    const s = await readModel('llama-2-7b', { env });
    assert.equal(s.source.kind, 'config');
    assert.equal(s.source.path, 'catalog:llama-2-7b');
    assert.equal(s.source.store, undefined);
  });
});

describe('readModel: LM Studio', () => {
  it('publisher/repo picks its one GGUF, leaving the mmproj projector out', async () => {
    const s = await readModel('lmstudio-community/Qwen2.5-7B-Instruct-GGUF', { env });
    assert.equal(s.source.files[0], join(lms, 'lmstudio-community', 'Qwen2.5-7B-Instruct-GGUF', 'Qwen2.5-7B-Instruct-Q4_K_M.gguf'));
    assert.deepEqual(s.source.store, { kind: 'lmstudio', name: 'lmstudio-community/Qwen2.5-7B-Instruct-GGUF' });
    assert.equal(s.model_type, 'qwen2');
  });

  it('a bare repo name finds its publisher; lmstudio: names LM Studio alone', async () => {
    const s = await readModel('Qwen2.5-7B-Instruct-GGUF', { env });
    assert.equal(s.source.store?.name, 'lmstudio-community/Qwen2.5-7B-Instruct-GGUF');
    const p = await readModel('lmstudio:Qwen2.5-7B-Instruct-GGUF', { env });
    assert.equal(p.source.files[0], s.source.files[0]);
  });

  it('publisher/repo/file.gguf names one of several files', async () => {
    const s = await readModel('bartowski/Tiny-GGUF/Tiny-Q8_0.gguf', { env });
    assert.equal(s.source.files[0], join(lms, 'bartowski', 'Tiny-GGUF', 'Tiny-Q8_0.gguf'));
    assert.equal(s.source.store?.name, 'bartowski/Tiny-GGUF/Tiny-Q8_0.gguf');
  });

  it('a folder with several GGUFs, or a repo under several publishers, lists the candidates', async () => {
    await assert.rejects(readModel('bartowski/Tiny-GGUF', { env }), inputError('BAD_INPUT', /holds 2 GGUF models \(Tiny-Q4_K_M\.gguf, Tiny-Q8_0\.gguf\)/));
    await assert.rejects(readModel('Shared-GGUF', { env }), inputError('BAD_INPUT', /matches 2 folders.*alice\/Shared-GGUF, bob\/Shared-GGUF/));
  });

  it('a split GGUF is refused with how to merge it', async () => {
    await assert.rejects(
      readModel('carol/Big-GGUF', { env }),
      inputError('BAD_INPUT', /big-00001-of-00003\.gguf: split GGUF \(3 parts\): merge them with llama-gguf-split --merge/),
    );
    assert.throws(() => resolveLmStudioModel('carol/Big-GGUF/big-00002-of-00003.gguf', env), inputError('BAD_INPUT', /split GGUF \(3 parts\)/));
  });

  it('an explicit lmstudio: name that is not there says where it looked', () => {
    assert.throws(() => resolveLmStudioModel('nobody/nothing', env), inputError('NOT_FOUND', /not found in LM Studio's models folder/, escape(lms)));
  });

  it("the models folder is LMSTUDIO_MODELS, else LM Studio's downloadsFolder setting, else its defaults", () => {
    const h = join(root, 'lm-home');
    mkdirSync(join(h, '.cache', 'lm-studio', 'models'), { recursive: true });
    assert.equal(lmStudioModelsDir({ HOME: h }), join(h, '.cache', 'lm-studio', 'models'));
    mkdirSync(join(h, '.lmstudio', 'models'), { recursive: true });
    assert.equal(lmStudioModelsDir({ HOME: h }), join(h, '.lmstudio', 'models'));
    writeFileSync(join(h, '.lmstudio', 'settings.json'), JSON.stringify({ downloadsFolder: lms }));
    assert.deepEqual(lmStudioModelsDirs({ HOME: h }), [lms, join(h, '.lmstudio', 'models'), join(h, '.cache', 'lm-studio', 'models')]);
    assert.equal(lmStudioModelsDir({ HOME: h }), lms);
    assert.deepEqual(lmStudioModelsDirs({ HOME: h, LMSTUDIO_MODELS: '/elsewhere' }), ['/elsewhere']);
  });
});

describe('readModel: names found nowhere', () => {
  it('lists every place it looked', async () => {
    await assert.rejects(
      readModel('no-such-model', { env }),
      inputError(
        'NOT_FOUND',
        /^no-such-model: no such file or folder, and not a catalog model \(.*vramfit catalog lists all \d+\)/,
        escape(join(ollama, 'manifests', 'registry.ollama.ai', 'library', 'no-such-model', 'latest')),
        escape(`LM Studio's models folder (looked in ${lms})`),
        escape(hub),
      ),
    );
  });

  it('a repo id missing from the HF cache also names the Ollama and LM Studio places', async () => {
    await assert.rejects(
      readModel('acme/absent', { env }),
      inputError(
        'NOT_FOUND',
        /not in the local Hugging Face cache.*never downloads/,
        escape(join(ollama, 'manifests', 'registry.ollama.ai', 'acme', 'absent')),
        escape(lms),
      ),
    );
  });

  it('repo ids still come from the HF cache', async () => {
    const s = await readModel('acme/tiny-llama', { env });
    assert.equal(s.source.repoId, 'acme/tiny-llama');
    assert.equal(s.source.store, undefined);
  });
});

describe('Ollama stores that are damaged', () => {
  const broken = join(root, 'ollama-broken');
  const benv = { ...env, OLLAMA_MODELS: broken };
  const manifest = (model: string): string => join(broken, 'manifests', 'registry.ollama.ai', 'library', model, 'latest');
  before(() => {
    const good = addBlob(broken, 'model', llamaGguf);
    writeManifest(broken, 'registry.ollama.ai/library/not-json/latest', '{"layers": [');
    writeManifest(broken, 'registry.ollama.ai/library/no-model/latest', manifestOf(broken, [addBlob(broken, 'template', TEMPLATE)]));
    writeManifest(broken, 'registry.ollama.ai/library/two-models/latest', manifestOf(broken, [good, good]));
    writeManifest(broken, 'registry.ollama.ai/library/bad-digest/latest', manifestOf(broken, [{ ...good, digest: 'sha256:../../etc/passwd' }]));
    writeManifest(broken, 'registry.ollama.ai/library/no-layers/latest', { schemaVersion: 2 });
    writeManifest(broken, 'registry.ollama.ai/library/missing-blob/latest', manifestOf(broken, [{ ...good, digest: `sha256:${'0'.repeat(64)}` }]));
    writeManifest(broken, 'registry.ollama.ai/library/size-mismatch/latest', manifestOf(broken, [{ ...good, size: good.size + 1 }]));
    writeManifest(broken, 'registry.ollama.ai/library/params-array/latest', manifestOf(broken, [good, addBlob(broken, 'params', '[1,2]')]));
    writeManifest(
      broken,
      'registry.ollama.ai/library/huge-template/latest',
      manifestOf(broken, [good, { ...addBlob(broken, 'template', 'x'), size: 2 ** 21 }]),
    );
  });

  const cases: [string, string, RegExp][] = [
    ['not-json', 'BAD_FORMAT', /is not a JSON manifest/],
    ['no-model', 'BAD_FORMAT', /has no model layer \(application\/vnd\.ollama\.image\.model\)/],
    ['two-models', 'BAD_FORMAT', /has 2 model layers/],
    ['bad-digest', 'BAD_FORMAT', /layer 0 \(model\) has digest "sha256:\.\.\/\.\.\/etc\/passwd", expected sha256:<64 lowercase hex digits>/],
    ['no-layers', 'BAD_FORMAT', /no layers array/],
  ];
  for (const [model, code, pattern] of cases) {
    it(`${model}: a clear error naming the manifest`, async () => {
      await assert.rejects(readModel(model, { env: benv }), (e: unknown) => {
        assert.ok(e instanceof FormatError, String(e));
        return inputError(code, new RegExp(`^${escape(manifest(model)).source}: `), pattern)(e);
      });
    });
  }

  it('a missing blob names the blob and the layer', async () => {
    await assert.rejects(
      readModel('missing-blob', { env: benv }),
      inputError('NOT_FOUND', escape(`${join(broken, 'blobs', `sha256-${'0'.repeat(64)}`)}: missing: the model layer of ${manifest('missing-blob')}`)),
    );
  });

  it('a blob whose size differs from the manifest is malformed', async () => {
    await assert.rejects(
      readModel('size-mismatch', { env: benv }),
      inputError('BAD_FORMAT', /sha256-[0-9a-f]{64}: is \d+ bytes but .*size-mismatch.* gives its model layer \d+/),
    );
  });

  it('params that are not a JSON object, and a template layer over 1 MiB, are refused', async () => {
    await assert.rejects(readModel('params-array', { env: benv }), inputError('BAD_FORMAT', /sha256-[0-9a-f]{64}: the params layer is not a JSON object/));
    await assert.rejects(
      readModel('huge-template', { env: benv }),
      inputError('BAD_FORMAT', /template layer .* is 2097152 bytes; refusing to read more than 1048576/),
    );
  });

  it('listOllamaModels returns the good ones plus an error entry for a broken manifest, without throwing', () => {
    const store = join(root, 'ollama-one-broken');
    const good = addBlob(store, 'model', llamaGguf);
    writeManifest(store, 'registry.ollama.ai/library/a/latest', manifestOf(store, [good]));
    writeManifest(store, 'registry.ollama.ai/library/b/1b', manifestOf(store, [good]));
    writeManifest(store, 'registry.ollama.ai/library/c/latest', 'not json');
    writeManifest(store, 'registry.ollama.ai/library/a/.hidden', 'ignored');
    const list = listOllamaModels({ OLLAMA_MODELS: store });
    assert.deepEqual(
      list.map((e) => [e.name, e.size, e.error === undefined]),
      [
        ['a:latest', good.size, true],
        ['b:1b', good.size, true],
        ['c:latest', undefined, false],
      ],
    );
    assert.match(list[2]!.error!, /c\/latest: is not a JSON manifest/);
    assert.deepEqual(listOllamaModels({ OLLAMA_MODELS: join(root, 'absent') }), []);
  });
});

describe('store listings', () => {
  it('list each store, empty when it is absent', () => {
    assert.deepEqual(listHfCacheModels(env), [{ name: 'acme/tiny-llama', path: join(hub, 'models--acme--tiny-llama', 'snapshots', 'abc123'), size: hfSize }]);
    assert.deepEqual(
      listLmStudioModels(env).map((m) => [m.name, m.error !== undefined]),
      [
        ['alice/Shared-GGUF', false],
        ['bartowski/Tiny-GGUF/Tiny-Q4_K_M.gguf', false],
        ['bartowski/Tiny-GGUF/Tiny-Q8_0.gguf', false],
        ['bob/Shared-GGUF', false],
        ['carol/Big-GGUF', true],
        ['lmstudio-community/Qwen2.5-7B-Instruct-GGUF', false],
      ],
    );
    const none = { HOME: join(root, 'empty-home'), HF_HUB_CACHE: join(root, 'no-hub') };
    assert.deepEqual(listHfCacheModels(none), []);
    assert.deepEqual(listLmStudioModels(none), []);
    assert.deepEqual(listOllamaModels(none), []);
  });

  it('verifyBlob hashes in chunks and reports the actual digest', async () => {
    const big = Buffer.alloc(9 * 1024 * 1024 + 7, 3);
    const layer = addBlob(join(root, 'hash'), 'model', big);
    const path = join(root, 'hash', 'blobs', layer.digest.replace(':', '-'));
    const seen: number[] = [];
    assert.deepEqual(await verifyBlob(path, layer.digest, (n) => seen.push(n)), { ok: true, actual: layer.digest });
    assert.deepEqual(seen, [4 * 1024 * 1024, 8 * 1024 * 1024, big.length]);
    assert.equal((await verifyBlob(path, `sha256:${'f'.repeat(64)}`)).ok, false);
  });
});

describe('vramfit list', () => {
  async function cli(args: string[], vars: NodeJS.ProcessEnv): Promise<{ code: number; out: string; err: string }> {
    const keys = ['HOME', 'OLLAMA_MODELS', 'LMSTUDIO_MODELS', 'HF_HUB_CACHE'] as const;
    const saved = Object.fromEntries(keys.map((k) => [k, process.env[k]]));
    const put = (k: string, v: string | undefined): void => {
      // Assigning undefined to process.env stores the string "undefined".
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    };
    for (const k of keys) put(k, vars[k]);
    let out = '';
    let err = '';
    try {
      const code = await main(args, { stdout: (s) => (out += s), stderr: (s) => (err += s) });
      return { code, out, err };
    } finally {
      for (const k of keys) put(k, saved[k]);
    }
  }

  it('shows all three stores with architecture, size and path, then where it looked', async () => {
    const r = await cli(['list'], env);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^source\s+name\s+architecture\s+size\s+path$/m);
    assert.match(
      r.out,
      new RegExp(`^hf-cache\\s+acme/tiny-llama\\s+LlamaForCausalLM\\s+\\d+\\.\\d\\d KiB\\s+${escape(join(hub, 'models--acme--tiny-llama')).source}`, 'm'),
    );
    assert.match(r.out, /^ollama\s+llama3\.2:latest\s+llama\s+\d+\.\d\d KiB\s+\S+sha256-[0-9a-f]{64}$/m);
    assert.match(r.out, /^ollama\s+qwen2\.5:7b\s+qwen2\s/m);
    assert.match(r.out, /^ollama\s+hf\.co\/bartowski\/Llama-3\.2-1B-Instruct-GGUF:Q4_K_M\s+llama\s/m);
    assert.match(r.out, /^lmstudio\s+lmstudio:lmstudio-community\/Qwen2\.5-7B-Instruct-GGUF\s+qwen2\s+\d+\.\d\d KiB\s/m);
    assert.match(r.out, /^lmstudio\s+lmstudio:carol\/Big-GGUF\s+\?\s/m);
    assert.match(r.out, /^error: lmstudio lmstudio:carol\/Big-GGUF: split GGUF \(3 parts\)/m);
    assert.match(r.out, new RegExp(`^hf-cache: 1 model in ${escape(hub).source}`, 'm'));
    assert.match(r.out, new RegExp(`^ollama: 5 models in ${escape(ollama).source}`, 'm'));
    assert.match(r.out, new RegExp(`^lmstudio: 6 models in ${escape(lms).source}`, 'm'));
  });

  it('still says where it looked when every store is empty', async () => {
    const empty = join(root, 'nothing');
    const r = await cli(['list'], { HOME: empty, OLLAMA_MODELS: join(empty, 'o'), HF_HUB_CACHE: join(empty, 'hub') });
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^hf-cache: no models in .*\(not there\)/m);
    assert.match(r.out, /^ollama: no models in .*\(not there\)/m);
    assert.match(r.out, /^lmstudio: no models in .*\.lmstudio\/models, .*\.cache\/lm-studio\/models \(none there\)/m);
  });

  it('--verify hashes every Ollama blob; a tampered blob of the same size is a MISMATCH and exit code 1', async () => {
    const copy = join(root, 'ollama-verify');
    cpSync(ollama, copy, { recursive: true });
    const venv = { ...env, OLLAMA_MODELS: copy };
    const ok = await cli(['list', '--verify'], venv);
    assert.equal(ok.code, 0, ok.err);
    assert.match(ok.out, /^source\s+name\s+architecture\s+size\s+path\s+verified$/m);
    assert.match(ok.out, /^ollama\s+llama3\.2:latest\s.*\sok$/m);
    assert.equal(ok.out.match(/\sok$/gm)?.length, 5);

    const blob = join(copy, 'blobs', `sha256-${sha256(qwenGguf)}`);
    const tampered = Buffer.from(qwenGguf);
    const last = tampered.length - 1;
    tampered.writeUInt8(tampered.readUInt8(last) ^ 0xff, last);
    writeFileSync(blob, tampered);
    const bad = await cli(['list', '--verify'], venv);
    assert.equal(bad.code, 1);
    assert.match(bad.out, new RegExp(`^ollama\\s+qwen2\\.5:7b\\s.*MISMATCH \\(blob sha256-${sha256(qwenGguf)} hashes to sha256:${sha256(tampered)}\\)$`, 'm'));
    assert.match(bad.out, /^ollama\s+llama3\.2:latest\s.*\sok$/m);
    assert.match(bad.err, /^vramfit: 1 of 5 Ollama models failed verification/);

    const j = await cli(['list', '--verify', '--json'], venv);
    assert.equal(j.code, 1);
    const rows = JSON.parse(j.out) as { source: string; name: string; architecture: string; size: number | null; path: string; verified: string | null }[];
    assert.match(rows.find((x) => x.name === 'qwen2.5:7b')!.verified!, /^MISMATCH/);
    assert.equal(rows.find((x) => x.name === 'acme/tiny-llama')!.verified, null);
  });

  it('--verify reports a missing blob', async () => {
    const copy = join(root, 'ollama-missing');
    cpSync(ollama, copy, { recursive: true });
    const { rmSync } = await import('node:fs');
    rmSync(join(copy, 'blobs', `sha256-${sha256(qwenGguf)}`));
    const r = await cli(['list', '--verify'], { ...env, OLLAMA_MODELS: copy });
    assert.equal(r.code, 1);
    assert.match(r.out, new RegExp(`^ollama\\s+qwen2\\.5:7b\\s.*missing \\(blob sha256-${sha256(qwenGguf)}\\)$`, 'm'));
  });

  it('--json prints the same rows as JSON', async () => {
    const r = await cli(['list', '--json'], env);
    assert.equal(r.code, 0, r.err);
    const rows = JSON.parse(r.out) as { source: string; name: string; architecture: string; size: number | null; path: string }[];
    assert.deepEqual(
      rows.filter((x) => x.source === 'ollama').map((x) => x.name),
      ['hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M', 'llama-2-7b:latest', 'llama3.2:latest', 'qwen2.5:7b', 'myuser/mymodel:q4'],
    );
    const hf = rows.find((x) => x.source === 'hf-cache')!;
    assert.deepEqual(hf, {
      source: 'hf-cache',
      name: 'acme/tiny-llama',
      architecture: 'LlamaForCausalLM',
      size: hfSize,
      path: join(hub, 'models--acme--tiny-llama', 'snapshots', 'abc123'),
    });
    assert.equal(rows.find((x) => x.name === 'qwen2.5:7b')!.size, qwenGguf.length);
  });
});

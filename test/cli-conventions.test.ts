/** The conventions a command-line user expects: --version, a catalog listing, "did you mean", flags that contradict each other. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { catalogNames, catalogSuggestions } from '../src/reader/catalog/index.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { cli } from './helpers/run-cli.js';

describe('CLI conventions', () => {
  it('vramfit --version prints the package version', async () => {
    const { version } = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
    const r = await cli(['--version']);
    assert.equal(r.code, 0);
    assert.equal(r.out.trim(), version);
  });

  it('vramfit catalog lists every catalog model with its parameters and size, and --json the same', async () => {
    const r = await cli(['catalog']);
    assert.equal(r.code, 0, r.err);
    for (const name of catalogNames()) assert.match(r.out, new RegExp(`^${name.replace(/\./g, '\\.')}\\s`, 'm'));
    assert.match(r.out, /^llama-2-7b\s+LlamaForCausalLM\s+6\.74 B\s+float16\s+12\.55 GiB/m);
    const j = JSON.parse((await cli(['catalog', '--json'])).out) as { name: string; parameters: number; bytes: number }[];
    assert.equal(j.length, catalogNames().length);
    assert.equal(j.find((x) => x.name === 'llama-2-7b')!.parameters, 6738415616);
  });

  it('a misspelled model name gets the catalog names it was probably meant as', async () => {
    assert.deepEqual(catalogSuggestions('lama-2-7b').slice(0, 1), ['llama-2-7b']);
    assert.deepEqual(catalogSuggestions('completely-unrelated-name'), []);
    const r = await cli(['plan', 'mistral-7', '--gpu-memory', '24GiB']);
    assert.equal(r.code, 2);
    assert.match(r.err, /^vramfit: mistral-7: no such file or folder, and not a catalog model \(did you mean mistral-7b[,?]/);
  });

  it('inspect --help lists the catalog, as the README says', async () => {
    const r = await cli(['inspect', '--help']);
    assert.match(r.out, /Catalog models[^\n]*\n\s+llama-2-7b, llama-2-7b-chat/);
  });

  it('run refuses --chat with --input-ids, naming the flag', async () => {
    const dir = tempDir();
    try {
      writeTinyFamilyCheckpoint(dir, 'llama2');
      const r = await cli(['run', dir, '--input-ids', '1,2', '--chat']);
      assert.equal(r.code, 2);
      assert.match(r.err, /^vramfit: --chat: wraps --prompt in the chat template; --input-ids are used as given/);
      assert.equal(r.err.trim().split('\n').length, 1);
    } finally {
      cleanup(dir);
    }
  });
});

describe('run bounds what is physically meaningful', () => {
  it("a context past the model's trained positions, and more threads than twice the cores, are refused naming the flag", async () => {
    const dir = tempDir();
    try {
      writeTinyFamilyCheckpoint(dir, 'llama2');
      const ctx = await cli(['run', dir, '--input-ids', '1,2', '--ctx', '10000000']);
      assert.equal(ctx.code, 2);
      assert.match(ctx.err, /^vramfit: --ctx: 10000000 tokens exceed the \d+-token context this model was trained for/);
      const threads = await cli(['run', dir, '--input-ids', '1,2', '--threads', '100000']);
      assert.equal(threads.code, 2);
      assert.match(threads.err, /^vramfit: --threads: 100000 threads on \d+ cores: .* \(at most \d+\)/);
    } finally {
      cleanup(dir);
    }
  });
});

describe('signals', () => {
  for (const [signal, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const) {
    it(`${signal} during vramfit demo removes its checkpoint folder and exits ${code}`, async () => {
      const { spawn } = await import('node:child_process');
      const { readdirSync } = await import('node:fs');
      const tmp = tempDir('vramfit-signal-');
      try {
        const child = spawn(
          process.execPath,
          ['--import', 'tsx', '--input-type=module', '-e', "import { main } from './src/cli/main.ts'; process.exitCode = await main(['demo']);"],
          {
            cwd: new URL('..', import.meta.url),
            env: { ...process.env, TMPDIR: tmp },
            stdio: ['ignore', 'pipe', 'pipe'],
          },
        );
        let out = '';
        let sent = false;
        child.stdout.on('data', (d: Buffer) => {
          out += String(d);
          // The checkpoint is written and named before the model loads: interrupt there.
          if (!sent && out.includes('demo checkpoint:')) {
            sent = true;
            child.kill(signal);
          }
        });
        const [status] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on('close', (c, s) => resolve([c, s])));
        assert.ok(sent, 'the demo started');
        assert.equal(status, code);
        assert.deepEqual(
          readdirSync(tmp).filter((f) => f.startsWith('vramfit-demo-')),
          [],
          'no checkpoint folder left behind',
        );
      } finally {
        cleanup(tmp);
      }
    });
  }
});

describe('accelerate compatibility: options with every strategy accelerate passes them under', () => {
  // load_checkpoint_and_dispatch hands offload_buffers to infer_auto_device_map for auto, balanced,
  // balanced_low_0 and sequential alike; fallback_allocation no entry point passes.
  const base = ['plan', 'llama-2-7b', '--compat', 'accelerate', '--max-memory', '0=262144000,cpu=30GB', '--format', 'json'];
  for (const strategy of ['auto', 'balanced', 'balanced_low_0', 'sequential']) {
    it(`--offload-buffers with --strategy ${strategy} silences the offloaded-buffers warning`, async () => {
      const warned = async (extra: string[]): Promise<boolean> => {
        const r = await cli([...base, '--strategy', strategy, ...extra]);
        assert.equal(r.code, 0, r.err);
        return (JSON.parse(r.out) as { warnings: string[] }).warnings.some((w) => w.includes('offload_buffers=True'));
      };
      assert.equal(await warned([]), true);
      assert.equal(await warned(['--offload-buffers']), false);
    });
  }

  it('--fallback-allocation is refused outside --strategy sequential, saying why', async () => {
    const r = await cli([...base, '--strategy', 'balanced', '--fallback-allocation']);
    assert.equal(r.code, 2);
    assert.match(r.err, /--strategy: --fallback-allocation is an option of infer_auto_device_map alone .* use it with --strategy sequential/);
  });
});

/** The library entry point as the README shows it: plan() and the exporters, with the CLI's behaviour. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { exporters, InfeasiblePlanError, plan, planWithSkeleton } from '../src/index.js';
import { main } from '../src/cli/main.js';

async function cli(args: string[]): Promise<string> {
  let out = '';
  const code = await main(args, { stdout: (s) => (out += s), stderr: () => {} });
  assert.equal(code, 0);
  return out;
}

describe('library: plan() and the exporters', () => {
  const options = { gpuMemory: '24GiB,24GiB', maxMemory: '0=5GB,1=10GB,cpu=30GiB' } as const;

  it('plan() returns the plan `vramfit plan` prints', async () => {
    const p = await plan('llama-2-7b', options);
    assert.equal(p.strategy, 'fit');
    assert.equal(p.model.repo_id, 'meta-llama/Llama-2-7b-hf');
    const json = JSON.parse(await cli(['plan', 'llama-2-7b', '--gpu-memory', '24GiB,24GiB', '--max-memory', '0=5GB,1=10GB,cpu=30GiB', '--format', 'json'])) as {
      device_map: Record<string, unknown>;
    };
    assert.deepEqual(Object.fromEntries(p.deviceMap.map(([k, v]) => [k, /^\d+$/.test(v) ? Number(v) : v])), json.device_map);
    assert.equal(
      exporters.table(p),
      (await cli(['plan', 'llama-2-7b', '--gpu-memory', '24GiB,24GiB', '--max-memory', '0=5GB,1=10GB,cpu=30GiB'])).split('\nnote: GPUs are simulated')[0],
    );
  });

  it('the exporters give what --format accelerate / python print, with the real repo id', async () => {
    const p = await plan('llama-2-7b', { ...options, target: 'transformers' });
    assert.deepEqual(
      exporters.accelerate(p),
      JSON.parse(await cli(['plan', 'llama-2-7b', '--gpu-memory', '24GiB,24GiB', '--max-memory', '0=5GB,1=10GB,cpu=30GiB', '--format', 'accelerate'])),
    );
    assert.equal(
      exporters.python(p),
      await cli(['plan', 'llama-2-7b', '--gpu-memory', '24GiB,24GiB', '--max-memory', '0=5GB,1=10GB,cpu=30GiB', '--format', 'python']),
    );
    assert.match(exporters.python(p), /"meta-llama\/Llama-2-7b-hf"/);
  });

  it("applies ChatGLM's pins under transformers, as the CLI does", async () => {
    const { plan: p } = await planWithSkeleton('chatglm2-6b', { gpuMemory: '8GiB,80GiB', maxMemory: '0=8GiB,1=80GiB', target: 'transformers' });
    const map = new Map(p.deviceMap);
    for (const m of ['transformer.embedding', 'transformer.rotary_pos_emb', 'transformer.encoder.final_layernorm', 'transformer.output_layer'])
      assert.equal(map.get(m), '0', m);
  });

  it('a model that does not fit throws InfeasiblePlanError with verified remedies', async () => {
    await assert.rejects(
      plan('llama-2-7b', { gpuMemory: '24GiB', maxMemory: '0=2GiB' }),
      (e: unknown) => e instanceof InfeasiblePlanError && e.remedies.length > 0,
    );
  });
});

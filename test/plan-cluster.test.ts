/**
 * `plan --cluster`: GPUs of several hosts planned as one pipeline. Every GPU stays under its cap, each host's
 * stages are contiguous, no host is used while fewer leading hosts would hold the weights on GPUs, the decode bound
 * the links set only grows with link speed, and the llama.cpp export starts an rpc-server per remote GPU and names
 * every device in pipeline order.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { makePlan, type PlanFlags } from '../src/cli/plan-command.js';
import { decodeBound, hostBoundaries, parseCluster } from '../src/planner/cluster.js';
import { writeTinyFamilyCheckpoint } from './helpers/tiny-llama-family.js';
import { writeTinyGguf } from './helpers/tiny-gguf.js';
import { cleanup, tempDir } from './helpers/tiny-models.js';
import { cli } from './helpers/run-cli.js';

const root = tempDir('vramfit-cluster-');
after(() => cleanup(root));

const BASE: PlanFlags = { strategy: 'fit', ctx: '4096', batch: '1', ubatch: '512', format: 'table' };

/** A deterministic stream of numbers in [0, 1). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

describe('plan --cluster', () => {
  it('property: caps hold, stages are contiguous per host, and no host is crossed into needlessly', async () => {
    const next = rng(7);
    const hostsOf = ['a=2xRTX-4090,b=1xA100-80GB', 'a=1xRTX-4090,b=2xRTX-4090,c=1xA100-80GB', 'a=1xA100-80GB,b=1xA100-80GB'];
    let planned = 0;
    const crossings = new Set<number>();
    for (let trial = 0; trial < 24; trial++) {
      const cluster = hostsOf[trial % hostsOf.length]!;
      const c = parseCluster(cluster);
      const gpus = c.hosts.reduce((n, h) => n + h.gpus, 0);
      const caps = Array.from({ length: gpus }, () => Math.round((8 + next() * 40) * 10) / 10);
      const model = ['llama-2-13b', 'qwen2.5-14b', 'mixtral-8x7b'][Math.floor(next() * 3)]!;
      const maxMemory = caps.map((g, i) => `${i}=${g}GiB`).join(',');
      let plan;
      try {
        plan = (await makePlan(model, { ...BASE, cluster, maxMemory })).plan;
      } catch {
        continue;
      }
      planned++;
      const used = plan.devices.filter((d) => d.kind === 'gpu');
      for (const d of used) assert.ok(d.used <= d.cap, `${model} ${maxMemory}: GPU ${d.id} over its cap`);
      // Contiguous stages per host: hosts appear in one run each, in cluster order.
      const stages = used.filter((d) => d.modules.length > 0).map((d) => d.host!);
      const runs = stages.filter((h, i) => i === 0 || stages[i - 1] !== h);
      assert.equal(new Set(runs).size, runs.length, `${model} ${maxMemory}: a host comes back (${stages.join(' ')})`);
      assert.deepEqual(
        runs,
        c.hosts.map((h) => h.name).filter((h) => runs.includes(h)),
      );
      assert.equal(plan.cluster!.boundaries, hostBoundaries([c.hosts[0]!.name, ...stages]));
      crossings.add(plan.cluster!.boundaries);
      // No needless boundary: the leading hosts before the last one used do not hold the weights alone.
      const last = c.hosts.findIndex((h) => h.name === runs.at(-1));
      if (last > 0) {
        const fewer = c.hosts.slice(0, last).reduce((n, h) => n + h.gpus, 0);
        const fewerMemory = caps
          .slice(0, fewer)
          .map((g, i) => `${i}=${g}GiB`)
          .join(',');
        const alone = await makePlan(model, {
          ...BASE,
          deviceSpec: c.hosts
            .slice(0, last)
            .map((h) => h.spec)
            .join(','),
          maxMemory: fewerMemory,
        }).then(
          (r) => r.plan.devices.every((d) => d.kind === 'gpu' || d.weights === 0),
          () => false,
        );
        assert.equal(alone, false, `${model} ${maxMemory}: ${runs.join('→')} used although fewer hosts hold it`);
      }
    }
    assert.ok(planned >= 8, `only ${planned} of 24 random clusters could be planned`);
    assert.ok(crossings.has(0) && [...crossings].some((n) => n > 0), `host boundaries seen: ${[...crossings]}`);
  });

  it('the decode bound the links set is monotone in link speed and falls with latency and boundaries', () => {
    let previous = 0;
    for (const gbps of [1, 2.5, 10, 25, 100, 400]) {
      const b = decodeBound(1, 8192, { linkGbps: gbps, linkLatencyMs: 0.2 });
      assert.ok(b > previous, `${gbps} Gbit/s`);
      previous = b;
    }
    assert.ok(decodeBound(2, 8192, { linkGbps: 10, linkLatencyMs: 0.2 }) < decodeBound(1, 8192, { linkGbps: 10, linkLatencyMs: 0.2 }));
    assert.ok(decodeBound(1, 8192, { linkGbps: 10, linkLatencyMs: 1 }) < decodeBound(1, 8192, { linkGbps: 10, linkLatencyMs: 0.2 }));
    assert.equal(decodeBound(0, 8192, { linkGbps: 10, linkLatencyMs: 0.2 }), Infinity);
    // One 8192-wide F32 hidden state over 10 Gbit/s is 26 µs; with 0.5 ms latency, one boundary allows ~1900 tokens/s.
    assert.equal(Math.floor(decodeBound(1, 8192, { linkGbps: 10, linkLatencyMs: 0.5 })), 1900);
  });

  it('groups the table by host and says the boundary and the bound; one host alone when it holds the model', async () => {
    const two = await cli([
      'plan',
      'llama-2-13b',
      '--cluster',
      'a=2xRTX-4090,b@10.0.0.2=1xA100-80GB',
      '--max-memory',
      '0=10GiB,1=10GiB,2=75GiB',
      '--link',
      '25,0.2',
    ]);
    assert.equal(two.code, 0, two.err);
    assert.match(two.out, /^host a:\nGPU 0 RTX-4090[\s\S]*^host b \(10\.0\.0\.2\):\nGPU 2 A100-80GB/m);
    assert.match(two.out, /^cluster: a → b · 1 host boundary over 25 Gbit\/s, 0\.2 ms · decode ≤ \d+ tokens\/s from the links alone$/m);
    const one = await cli(['plan', 'llama-2-7b', '--cluster', 'a=2xRTX-4090,b=1xA100-80GB']);
    assert.equal(one.code, 0, one.err);
    assert.match(one.out, /^cluster: host a alone holds the model; no traffic between hosts$/m);
    assert.doesNotMatch(one.out, /^host b/m);
  });

  it('llama.cpp across hosts: an rpc-server per remote GPU, --rpc and -dev in pipeline order, --tensor-split to match', async () => {
    const ck = writeTinyFamilyCheckpoint(join(root, 'm'), 'llama2', { config: { num_hidden_layers: 8, hidden_size: 256, intermediate_size: 1024 } });
    const gguf = writeTinyGguf(ck, 'float16');
    // No GPU can take the whole 16 MB model next to llama.cpp's 350 MiB overhead: all three hold layers.
    const r = await cli([
      'plan',
      gguf,
      '--cluster',
      'a=1xRTX-4090,b@10.0.0.2=2xRTX-4090',
      '--max-memory',
      '0=370MiB,1=370MiB,2=370MiB',
      '--ctx',
      '256',
      '--format',
      'llama.cpp',
    ]);
    assert.equal(r.code, 0, r.err);
    const lines = r.out.trimEnd().split('\n');
    assert.deepEqual(lines.slice(0, 4), [
      '# on host b:',
      'CUDA_VISIBLE_DEVICES=0 rpc-server -H 0.0.0.0 -p 50052 &',
      'CUDA_VISIBLE_DEVICES=1 rpc-server -H 0.0.0.0 -p 50053 &',
      '# on host a (serves the model):',
    ]);
    const main = lines[4]!;
    const split = /--tensor-split (\S+)/.exec(main)![1]!.split(',').map(Number);
    assert.equal(
      split.reduce((a, b) => a + b, 0),
      9,
      'eight blocks and the output layer',
    );
    assert.ok(
      split.every((n) => n > 0),
      `every GPU holds layers: ${split.join(',')}`,
    );
    assert.match(main, /--rpc 10\.0\.0\.2:50052,10\.0\.0\.2:50053 -dev 'CUDA0,RPC0\[10\.0\.0\.2:50052\],RPC0\[10\.0\.0\.2:50053\]' /);
    assert.match(main, /^CUDA_VISIBLE_DEVICES=0 llama-server -m \S+\.gguf -ngl 9 --split-mode layer /);
    assert.match(main, / -c 256 /);
    assert.ok(lines.some((l) => /^# 1 host boundary over 10 Gbit\/s, 0\.5 ms: decode ≤ \d+ tokens\/s/.test(l)));
    assert.equal(lines.at(-1), '# llama.cpp RPC has no authentication or encryption: run it on a trusted network only');
  });

  it('refuses bad cluster descriptions and mixed device flags with one line', async () => {
    const cases: [string[], RegExp][] = [
      [['plan', 'llama-2-7b', '--cluster', '2xRTX-4090'], /--cluster: expected HOST=CARDS \(a=2xRTX-4090\), got "2xRTX-4090"/],
      [['plan', 'llama-2-7b', '--cluster', 'a=2xRTX-4090,a=1xA100-80GB'], /--cluster: host a is named twice/],
      [['plan', 'llama-2-7b', '--cluster', 'a=2xRTX-9999'], /--cluster/],
      [['plan', 'llama-2-7b', '--cluster', 'a=1xA100-80GB', '--gpu-memory', '24GiB'], /--gpu-memory: --cluster already names every GPU of every host/],
      [['plan', 'llama-2-7b', '--link', '10'], /--link: describes the link between --cluster hosts; give --cluster too/],
      [
        ['plan', 'llama-2-13b', '--cluster', 'a@10.0.0.1=2xRTX-4090,b@10.0.0.2=1xA100-80GB', '--max-memory', '0=10GiB,1=10GiB,2=75GiB', '--format', 'sglang'],
        /--cluster: SGLang gives every node the same number of pipeline stages \(pp-size ÷ nnodes\) and this plan runs 2 on a, 1 on b/,
      ],
      [
        ['plan', 'mixtral-8x7b', '--cluster', 'a@10.0.0.1=1xRTX-4090,b@10.0.0.9=2xRTX-4090,c@10.0.0.3=2xRTX-4090', '--format', 'vllm'],
        /--cluster: vLLM's Ray executor ranks the other hosts by GPU count, then IP, so the pipeline would run a, c, b/,
      ],
      [['plan', 'llama-2-7b', '--cluster', 'a=1xA100-80GB', '--link', 'fast'], /--link: expected Gbit\/s\[,latency ms\]/],
    ];
    for (const [args, re] of cases) {
      const r = await cli(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.out}${r.err}`);
      assert.match(r.err, re);
      assert.equal(r.err.trim().split('\n').length, 1, r.err);
    }
  });

  /** Each `# on host X` section's command lines, the words of each, and its leading VAR=value words. */
  function sections(out: string): { host: string; role?: string; env: Record<string, string>; words: string[] }[] {
    const found: { host: string; role?: string; env: Record<string, string>; words: string[] }[] = [];
    let at: { host: string; role?: string } | undefined;
    for (const line of out.trimEnd().split('\n')) {
      const m = /^# on host (\S+?)(?: \((.+)\))?:$/.exec(line);
      if (m) at = { host: m[1]!, ...(m[2] ? { role: m[2] } : {}) };
      else if (!line.startsWith('#') && at) {
        const words = line.split(' ');
        const env: Record<string, string> = {};
        while (/^[A-Z_]+=/.test(words[0]!)) {
          const [k, v] = words.shift()!.split('=') as [string, string];
          env[k] = v;
        }
        found.push({ ...at, env, words });
      }
    }
    return found;
  }
  /** llama-2-13b planned across `cluster` under `maxMemory`, exported for `format`. */
  const planAcross = (cluster: string, maxMemory: string, format: string): ReturnType<typeof cli> =>
    cli(['plan', 'llama-2-13b', '--cluster', cluster, '--max-memory', maxMemory, '--format', format]);
  const flagOf = (words: string[], flag: string): string | undefined => (words.includes(flag) ? words[words.indexOf(flag) + 1] : undefined);

  it('vLLM across hosts with as many stages on each: its --nnodes launch, one line per host, --headless off the head', async () => {
    const r = await planAcross('a@10.0.0.1=1xRTX-4090,b@10.0.0.2=1xRTX-4090', '0=20GiB,1=20GiB', 'vllm');
    assert.equal(r.code, 0, r.err);
    const [a, b, ...rest] = sections(r.out);
    assert.equal(rest.length, 0);
    assert.deepEqual([a!.host, a!.role, b!.host, b!.role], ['a', 'serves the API', 'b', undefined]);
    for (const [rank, s] of [a!, b!].entries()) {
      assert.deepEqual(s.words.slice(0, 3), ['vllm', 'serve', 'meta-llama/Llama-2-13b-hf']);
      assert.equal(s.env['CUDA_VISIBLE_DEVICES'], '0');
      assert.equal(
        s.env['VLLM_PP_LAYER_PARTITION']!.split(',').reduce((n, x) => n + Number(x), 0),
        40,
      );
      assert.equal(flagOf(s.words, '--pipeline-parallel-size'), '2');
      assert.equal(flagOf(s.words, '--nnodes'), '2');
      assert.equal(flagOf(s.words, '--node-rank'), String(rank));
      assert.equal(flagOf(s.words, '--master-addr'), '10.0.0.1');
      assert.equal(s.words.includes('--headless'), rank > 0);
    }
    assert.match(r.out, /^# 1 host boundary over 10 Gbit\/s, 0\.5 ms: decode ≤ \d+ tokens\/s from the links alone$/m);
  });

  it('vLLM across hosts with uneven stages: Ray, each host starting with its own GPUs, the serve line on the head', async () => {
    const r = await planAcross('a@10.0.0.1=2xRTX-4090,b@10.0.0.2=1xA100-80GB', '0=10GiB,1=10GiB,2=75GiB', 'vllm');
    assert.equal(r.code, 0, r.err);
    const [head, worker, serve, ...rest] = sections(r.out);
    assert.equal(rest.length, 0);
    assert.deepEqual([head!.host, head!.env['CUDA_VISIBLE_DEVICES'], head!.words.join(' ')], ['a', '0,1', 'ray start --head --port 6379 --num-gpus 2']);
    assert.deepEqual(
      [worker!.host, worker!.env['CUDA_VISIBLE_DEVICES'], worker!.words.join(' ')],
      ['b', '0', 'ray start --address 10.0.0.1:6379 --num-gpus 1'],
    );
    assert.equal(serve!.host, 'a');
    const partition = serve!.env['VLLM_PP_LAYER_PARTITION']!.split(',').map(Number);
    assert.equal(partition.length, 3);
    assert.equal(
      partition.reduce((n, x) => n + x, 0),
      40,
    );
    assert.equal(flagOf(serve!.words, '--pipeline-parallel-size'), '3');
    assert.equal(flagOf(serve!.words, '--distributed-executor-backend'), 'ray');
    assert.equal(serve!.words.includes('--nnodes'), false);
    // Hosts named without an IP: the order Ray ranks them in cannot be checked, and the export says so.
    const named = await cli(['plan', 'mixtral-8x7b', '--cluster', 'a=1xRTX-4090,b=2xRTX-4090,c=2xRTX-4090', '--format', 'vllm']);
    assert.equal(named.code, 0, named.err);
    assert.match(named.out, /^# vLLM's Ray executor ranks the other hosts by GPU count, then IP: the plan assumes the order given; give them as name@IP/m);
  });

  it('SGLang across hosts: --nnodes, --node-rank and --dist-init-addr on every host, the partition the same everywhere', async () => {
    const r = await planAcross('a@10.0.0.1=1xRTX-4090,b@10.0.0.2=1xRTX-4090', '0=20GiB,1=20GiB', 'sglang');
    assert.equal(r.code, 0, r.err);
    const hosts = sections(r.out);
    assert.deepEqual(
      hosts.map((h) => h.host),
      ['a', 'b'],
    );
    for (const [rank, s] of hosts.entries()) {
      assert.deepEqual(s.words.slice(0, 3), ['python', '-m', 'sglang.launch_server']);
      assert.equal(s.env['SGLANG_PP_LAYER_PARTITION'], hosts[0]!.env['SGLANG_PP_LAYER_PARTITION']);
      assert.equal(
        s.env['SGLANG_PP_LAYER_PARTITION']!.split(',').reduce((n, x) => n + Number(x), 0),
        40,
      );
      assert.equal(flagOf(s.words, '--pp-size'), '2');
      assert.equal(flagOf(s.words, '--nnodes'), '2');
      assert.equal(flagOf(s.words, '--node-rank'), String(rank));
      assert.equal(flagOf(s.words, '--dist-init-addr'), '10.0.0.1:50000');
    }
  });

  it('reads the cluster from a JSON or YAML file: hosts, addresses, per-GPU caps and the link, the same plan as the flags give', async () => {
    const yaml = join(root, 'cluster.yaml');
    writeFileSync(
      yaml,
      [
        'hosts:',
        '  - { name: a, address: 10.0.0.1, gpus: 2xRTX-4090, caps: [10GiB, 10GiB] }',
        '  - name: b',
        '    address: 10.0.0.2',
        '    gpus: [A100-80GB]',
        '    caps: 75GiB',
        'link: { gbps: 25, latency_ms: 0.2 }',
        '',
      ].join('\n'),
    );
    const json = join(root, 'cluster.json');
    writeFileSync(
      json,
      JSON.stringify({
        hosts: [
          { name: 'a', address: '10.0.0.1', gpus: '2xRTX-4090', caps: ['10GiB', '10GiB'] },
          { name: 'b', address: '10.0.0.2', gpus: ['A100-80GB'], caps: '75GiB' },
        ],
        link: { gbps: 25, latency_ms: 0.2 },
      }),
    );
    const byFlags = await makePlan('llama-2-13b', {
      ...BASE,
      cluster: 'a@10.0.0.1=2xRTX-4090,b@10.0.0.2=1xA100-80GB',
      maxMemory: '0=10GiB,1=10GiB,2=75GiB',
      link: '25,0.2',
    });
    for (const file of [yaml, json]) {
      const byFile = await makePlan('llama-2-13b', { ...BASE, cluster: file });
      assert.deepEqual(byFile.plan.deviceMap, byFlags.plan.deviceMap, file);
      assert.deepEqual(
        byFile.plan.devices.map((d) => [d.id, d.cap, d.host]),
        byFlags.plan.devices.map((d) => [d.id, d.cap, d.host]),
      );
      assert.deepEqual(byFile.plan.cluster, byFlags.plan.cluster);
    }
    // --max-memory adds to the file's caps (here the CPU's) and may not cap a GPU twice.
    const withCpu = await makePlan('llama-2-13b', { ...BASE, cluster: yaml, maxMemory: 'cpu=20GiB' });
    assert.equal(withCpu.plan.devices.find((d) => d.kind === 'cpu')?.cap, 20 * 1024 ** 3);
  });

  it('refuses a bad cluster file naming the file and the entry', async () => {
    const write = (name: string, text: string): string => {
      const f = join(root, name);
      writeFileSync(f, text);
      return f;
    };
    const cases: [string[], RegExp][] = [
      [['--cluster', join(root, 'missing.yaml')], /--cluster: cannot read \S+missing\.yaml: ENOENT/],
      [['--cluster', write('bad.yaml', 'hosts: [a, {')], /bad\.yaml: is not valid JSON or YAML/],
      [['--cluster', write('nohosts.yaml', 'link: {gbps: 10}\n')], /nohosts\.yaml: hosts: expected a list of at least one host/],
      [
        ['--cluster', write('key.yaml', 'hosts:\n  - {name: a, gpus: 1xRTX-4090, memory: 20GiB}\n')],
        /key\.yaml: hosts\[0\]: unknown key memory \(known: name, address, gpus, caps\)/,
      ],
      [['--cluster', write('count.yaml', 'hosts:\n  - {name: a, gpus: 2xRTX-4090, caps: [20GiB]}\n')], /count\.yaml: a\.caps: gives 1 caps for 2 GPUs/],
      [['--cluster', write('cap.yaml', 'hosts:\n  - {name: a, gpus: 1xRTX-4090, caps: lots}\n')], /cap\.yaml: a\.caps: /],
      [['--cluster', write('card.yaml', 'hosts:\n  - {name: a, gpus: 1xRTX-9999}\n')], /card\.yaml: a\.gpus/],
      [
        ['--cluster', write('twice.yaml', 'hosts:\n  - {name: a, gpus: 1xRTX-4090}\n  - {name: a, gpus: 1xRTX-4090}\n')],
        /twice\.yaml: hosts\[1\]\.name: host a is named twice/,
      ],
      [['--cluster', write('link.yaml', 'hosts:\n  - {name: a, gpus: 1xRTX-4090}\nlink: {gbps: fast}\n')], /link\.yaml: link\.gbps: expected Gbit\/s above 0/],
      [
        ['--cluster', write('ok.yaml', 'hosts:\n  - {name: a, gpus: 1xRTX-4090, caps: 20GiB}\n'), '--link', '10'],
        /--link: \S+ok\.yaml describes the cluster; put the link there/,
      ],
      [['--cluster', join(root, 'ok.yaml'), '--max-memory', '0=10GiB'], /--max-memory: GPU 0 already has a cap in \S+ok\.yaml/],
    ];
    for (const [args, re] of cases) {
      const r = await cli(['plan', 'llama-2-7b', ...args]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.out}${r.err}`);
      assert.match(r.err, re);
      assert.equal(r.err.trim().split('\n').length, 1, r.err);
    }
  });

  it('property: vLLM and SGLang across hosts either refuse in one line or start every stage once, in plan order, with the whole partition', async () => {
    const next = rng(11);
    const shapes = [
      'a@10.0.0.1=2xRTX-4090,b@10.0.0.2=2xRTX-4090',
      'a@10.0.0.1=1xRTX-4090,b@10.0.0.2=2xRTX-4090,c@10.0.0.3=1xA100-80GB',
      'a@10.0.0.1=2xRTX-4090,b@10.0.0.9=1xRTX-4090',
    ];
    const outcomes = new Set<string>();
    for (let trial = 0; trial < 18; trial++) {
      const cluster = shapes[trial % shapes.length]!;
      const gpus = parseCluster(cluster).hosts.reduce((n, h) => n + h.gpus, 0);
      const maxMemory = Array.from({ length: gpus }, (_, i) => `${i}=${Math.round((10 + next() * 14) * 10) / 10}GiB`).join(',');
      const model = ['llama-2-13b', 'qwen2.5-14b'][Math.floor(next() * 2)]!;
      const layers = model === 'llama-2-13b' ? 40 : 48;
      const format = trial % 2 === 0 ? 'vllm' : 'sglang';
      const r = await cli(['plan', model, '--cluster', cluster, '--max-memory', maxMemory, '--format', format]);
      if (r.code !== 0) {
        assert.equal(r.code, 2, r.err);
        assert.equal(r.err.trim().split('\n')[0]!.startsWith('vramfit: '), true, r.err);
        outcomes.add(`${format} refused`);
        continue;
      }
      const found = sections(r.out);
      if (!/^# on host/m.test(r.out)) {
        outcomes.add(`${format} one host`);
        continue;
      }
      const serve = found.filter((f) => f.words[0] !== 'ray');
      const partition = (serve[0]!.env['VLLM_PP_LAYER_PARTITION'] ?? serve[0]!.env['SGLANG_PP_LAYER_PARTITION'])!.split(',').map(Number);
      assert.equal(
        partition.reduce((n, x) => n + x, 0),
        layers,
        r.out,
      );
      assert.ok(partition.every((n) => n > 0));
      const size = Number(flagOf(serve[0]!.words, format === 'vllm' ? '--pipeline-parallel-size' : '--pp-size'));
      assert.equal(size, partition.length);
      // Every stage is started once: the GPUs the hosts make visible (or give Ray) add up to the pipeline.
      const started = found
        .filter((f) => f.env['CUDA_VISIBLE_DEVICES'] !== undefined)
        .reduce((n, f) => n + f.env['CUDA_VISIBLE_DEVICES']!.split(',').length, 0);
      assert.equal(started, size, r.out);
      // Hosts appear in cluster order, the serving host first.
      const order = [...new Set(found.map((f) => f.host))];
      const hosts = parseCluster(cluster).hosts.map((h) => h.name);
      assert.deepEqual(order, hosts.slice(0, order.length), r.out);
      outcomes.add(`${format} ${found.some((f) => f.words[0] === 'ray') ? 'ray' : 'nnodes'}`);
    }
    for (const seen of ['vllm nnodes', 'vllm ray', 'sglang nnodes', 'sglang refused'])
      assert.ok(outcomes.has(seen), `${seen} not met: ${[...outcomes].join(', ')}`);
  });
});

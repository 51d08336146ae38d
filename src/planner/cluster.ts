/**
 * `--cluster 'a=2xRTX-4090,b=1xA100-80GB'`: GPUs on several hosts, planned as one pipeline. Hosts keep their order
 * (the first is where the model is served from), each host's GPUs are numbered on from the last host's, and a plan
 * uses the fewest leading hosts that hold the weights on GPUs, so no host boundary is crossed that a smaller set of
 * hosts would not need. Every crossing costs a round trip on the link per token: `decodeBound` is the tokens/s the
 * links alone allow.
 */
import { InputError } from '../util/errors.js';
import { parse as parseYaml } from 'yaml';
import { parseMaxMemory } from './budgets.js';
import { parseDeviceSpec } from './devices/cards.js';

export interface ClusterHost {
  name: string;
  /** Where the other hosts reach it (`name@address`, else the name). */
  address: string;
  /** Its cards, as --device-spec takes them. */
  spec: string;
  gpus: number;
}

export interface Cluster {
  hosts: ClusterHost[];
  linkGbps: number;
  linkLatencyMs: number;
}

const HOST = /^([A-Za-z0-9][A-Za-z0-9_.-]*)(?:@([A-Za-z0-9_.:-]+))?=(.+)$/;

/** `a=2xRTX-4090,1xA6000,b@10.0.0.2=1xA100-80GB`: an entry without `=` adds cards to the host before it. */
export function parseCluster(spec: string, link = '10'): Cluster {
  const hosts: { name: string; address: string; cards: string[] }[] = [];
  for (const raw of spec.split(',').map((s) => s.trim())) {
    if (raw === '') throw new InputError('--cluster', `"${spec}" has an empty entry`);
    const m = HOST.exec(raw);
    if (m) {
      if (hosts.some((h) => h.name === m[1])) throw new InputError('--cluster', `host ${m[1]} is named twice`);
      hosts.push({ name: m[1]!, address: m[2] ?? m[1]!, cards: [m[3]!] });
    } else if (hosts.length === 0) throw new InputError('--cluster', `expected HOST=CARDS (a=2xRTX-4090), got "${raw}"`);
    else hosts.at(-1)!.cards.push(raw);
  }
  if (hosts.length === 0) throw new InputError('--cluster', 'names no host');
  const [gbpsText, latencyText] = link.split(',').map((s) => s.trim());
  const linkGbps = Number(gbpsText);
  const linkLatencyMs = latencyText === undefined ? 0.5 : Number(latencyText);
  if (!(linkGbps > 0) || !Number.isFinite(linkGbps)) throw new InputError('--link', `expected Gbit/s[,latency ms] such as 10 or 25,0.2, got "${link}"`);
  if (!(linkLatencyMs >= 0) || !Number.isFinite(linkLatencyMs))
    throw new InputError('--link', `expected a latency in ms after the comma, got "${latencyText}"`);
  return { hosts: hosts.map((h) => clusterHost(h.name, h.address, h.cards.join(','), '--cluster')), linkGbps, linkLatencyMs };
}

function clusterHost(name: string, address: string, spec: string, where: string): ClusterHost {
  return { name, address, spec, gpus: parseDeviceSpec(spec, where).length };
}

/** A cluster file: its hosts and link, and the caps it gives GPUs (keyed by GPU number across the cluster, as --max-memory takes them). */
export interface ClusterFile {
  cluster: Cluster;
  caps: Record<string, string | number>;
}

const FILE_KEYS = new Set(['hosts', 'link']);
const HOST_KEYS = new Set(['name', 'address', 'gpus', 'caps']);
const LINK_KEYS = new Set(['gbps', 'latency_ms']);
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const ADDRESS = /^[A-Za-z0-9_.:-]+$/;

/**
 * A cluster written out (JSON or YAML; YAML reads both):
 *
 *     hosts:
 *       - { name: a, address: 10.0.0.1, gpus: 2xRTX-4090, caps: [20GiB, 22GiB] }
 *       - { name: b, address: 10.0.0.2, gpus: [A100-80GB], caps: 90% }
 *     link: { gbps: 25, latency_ms: 0.2 }
 *
 * `gpus` is a --device-spec string or a list of cards; `caps`, one --max-memory size for every GPU of the host or
 * a list with one per GPU. Every mistake names the file and the entry.
 */
export function parseClusterFile(text: string, file: string): ClusterFile {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (e) {
    throw new InputError(file, `is not valid JSON or YAML: ${(e as Error).message.split('\n')[0]}`);
  }
  const where = (at: string): string => `${file}: ${at}`;
  const obj = (v: unknown, at: string, keys: Set<string>): Record<string, unknown> => {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new InputError(where(at), 'expected a mapping');
    const unknown = Object.keys(v).filter((k) => !keys.has(k));
    if (unknown.length) throw new InputError(where(at), `unknown key ${unknown.join(', ')} (known: ${[...keys].join(', ')})`);
    return v as Record<string, unknown>;
  };
  const top = obj(doc, 'the file', FILE_KEYS);
  if (!Array.isArray(top['hosts']) || top['hosts'].length === 0) throw new InputError(where('hosts'), 'expected a list of at least one host');
  const hosts: ClusterHost[] = [];
  const caps: Record<string, string | number> = {};
  let first = 0;
  top['hosts'].forEach((raw: unknown, i: number) => {
    const h = obj(raw, `hosts[${i}]`, HOST_KEYS);
    const name = h['name'];
    if (typeof name !== 'string' || !NAME.test(name)) throw new InputError(where(`hosts[${i}].name`), 'expected a host name of letters, digits, _ . -');
    if (hosts.some((x) => x.name === name)) throw new InputError(where(`hosts[${i}].name`), `host ${name} is named twice`);
    const address = h['address'] ?? name;
    if (typeof address !== 'string' || !ADDRESS.test(address)) throw new InputError(where(`${name}.address`), 'expected a host name or IP address');
    const gpus = h['gpus'];
    const spec =
      typeof gpus === 'string' ? gpus : Array.isArray(gpus) && gpus.length > 0 && gpus.every((g) => typeof g === 'string') ? gpus.join(',') : undefined;
    if (spec === undefined) throw new InputError(where(`${name}.gpus`), 'expected cards as --device-spec takes them (2xRTX-4090) or a list of cards');
    const host = clusterHost(name, address, spec, where(`${name}.gpus`));
    const given = h['caps'];
    if (given !== undefined) {
      const list = Array.isArray(given) ? given : Array.from({ length: host.gpus }, () => given);
      if (list.length !== host.gpus) throw new InputError(where(`${name}.caps`), `gives ${list.length} caps for ${host.gpus} GPUs`);
      list.forEach((cap: unknown, k: number) => {
        if (typeof cap !== 'string' && typeof cap !== 'number')
          throw new InputError(where(`${name}.caps`), `expected sizes such as 20GiB or 90%, got ${JSON.stringify(cap)}`);
        caps[String(first + k)] = cap;
      });
      try {
        parseMaxMemory(Object.fromEntries(list.map((cap: string | number, k: number) => [String(first + k), cap])));
      } catch (e) {
        if (e instanceof InputError) throw new InputError(where(`${name}.caps`), e.reason);
        throw e;
      }
    }
    hosts.push(host);
    first += host.gpus;
  });
  let linkGbps = 10;
  let linkLatencyMs = 0.5;
  if (top['link'] !== undefined) {
    const l = obj(top['link'], 'link', LINK_KEYS);
    if (l['gbps'] !== undefined) {
      if (typeof l['gbps'] !== 'number' || !(l['gbps'] > 0) || !Number.isFinite(l['gbps'])) throw new InputError(where('link.gbps'), 'expected Gbit/s above 0');
      linkGbps = l['gbps'];
    }
    if (l['latency_ms'] !== undefined) {
      if (typeof l['latency_ms'] !== 'number' || !(l['latency_ms'] >= 0) || !Number.isFinite(l['latency_ms']))
        throw new InputError(where('link.latency_ms'), 'expected milliseconds, 0 or more');
      linkLatencyMs = l['latency_ms'];
    }
  }
  return { cluster: { hosts, linkGbps, linkLatencyMs }, caps };
}

/** The --device-spec of all hosts' GPUs in cluster order, and the host of each GPU index. */
export function clusterGpus(c: Cluster): { deviceSpec: string; hostOf: string[] } {
  return { deviceSpec: c.hosts.map((h) => h.spec).join(','), hostOf: c.hosts.flatMap((h) => Array.from({ length: h.gpus }, () => h.name)) };
}

/**
 * Decode tokens/s the links allow: each crossing sends one token's hidden state and waits for the link's latency, in
 * series. 4 bytes per hidden element either way: llama.cpp's RPC backend sends the F32 activations; vLLM and SGLang
 * send the hidden state and the residual in the 16-bit model dtype (IntermediateTensors / PPProxyTensors).
 * Infinity without a crossing.
 */
export function decodeBound(boundaries: number, hiddenSize: number, c: Pick<Cluster, 'linkGbps' | 'linkLatencyMs'>): number {
  if (boundaries === 0) return Infinity;
  const seconds = c.linkLatencyMs / 1000 + (hiddenSize * 4 * 8) / (c.linkGbps * 1e9);
  return 1 / (boundaries * seconds);
}

/** How often consecutive GPUs of the pipeline (in order) are on different hosts. */
export function hostBoundaries(stageHosts: readonly string[]): number {
  let n = 0;
  for (let i = 1; i < stageHosts.length; i++) if (stageHosts[i] !== stageHosts[i - 1]) n++;
  return n;
}

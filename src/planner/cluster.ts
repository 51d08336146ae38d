/**
 * `--cluster 'a=2xRTX-4090,b=1xA100-80GB'`: GPUs on several hosts, planned as one pipeline. Hosts keep their order
 * (the first is where the model is served from), each host's GPUs are numbered on from the last host's, and a plan
 * uses the fewest leading hosts that hold the weights on GPUs, so no host boundary is crossed that a smaller set of
 * hosts would not need. Every crossing costs a round trip on the link per token: `decodeBound` is the tokens/s the
 * links alone allow.
 */
import { InputError } from '../util/errors.js';
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
  return {
    hosts: hosts.map((h) => {
      const specText = h.cards.join(',');
      return { name: h.name, address: h.address, spec: specText, gpus: parseDeviceSpec(specText, '--cluster').length };
    }),
    linkGbps,
    linkLatencyMs,
  };
}

/** The --device-spec of all hosts' GPUs in cluster order, and the host of each GPU index. */
export function clusterGpus(c: Cluster): { deviceSpec: string; hostOf: string[] } {
  return { deviceSpec: c.hosts.map((h) => h.spec).join(','), hostOf: c.hosts.flatMap((h) => Array.from({ length: h.gpus }, () => h.name)) };
}

/**
 * Decode tokens/s the links allow: each crossing sends one token's hidden state (F32 activations, as llama.cpp's
 * RPC backend does) and waits for the link's latency, in series. Infinity without a crossing.
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

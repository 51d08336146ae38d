import type { BlockFacts, SkeletonModule, SkeletonTensor } from './skeleton.js';

/**
 * For an architecture vramfit has no spec for: rebuild a module tree from tensor names alone.
 * Headers list names alphabetically, so registration order is guessed: embeddings first, numbered
 * children in numeric order, heads last. Repeated numbered blocks become no-split candidates.
 */
export interface GuessedStructure {
  modules: SkeletonModule[];
  tensors: SkeletonTensor[];
  blocks?: BlockFacts;
  noSplit: string[];
  warnings: string[];
}

const FIRST = /(^|_)(embed|embedding|embeddings|embed_tokens|wte|wpe|tok_embeddings|word_embeddings|token_embd)$/;
const LAST = /^(lm_head|output|head|output_layer|embed_out|ln_f|norm|final_layernorm|final_layer_norm)$/;

interface Node {
  name: string;
  children: Map<string, Node>;
  tensors: SkeletonTensor[];
}

function rank(seg: string): number {
  if (FIRST.test(seg)) return 0;
  if (LAST.test(seg)) return 2;
  return 1;
}

function compareSegments(a: string, b: string): number {
  const na = /^\d+$/.test(a);
  const nb = /^\d+$/.test(b);
  if (na && nb) return Number(a) - Number(b);
  if (na !== nb) return na ? -1 : 1;
  return rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0);
}

function isNumbered(node: Node): boolean {
  const keys = [...node.children.keys()];
  return keys.length >= 2 && keys.every((k) => /^\d+$/.test(k)) && node.tensors.length === 0;
}

function className(segment: string): string {
  return segment
    .split(/[_\W]+/)
    .filter(Boolean)
    .map((p) => p[0]!.toUpperCase() + p.slice(1))
    .join('');
}

export function guessStructure(tensors: readonly SkeletonTensor[]): GuessedStructure {
  const root: Node = { name: '', children: new Map(), tensors: [] };
  for (const t of tensors) {
    const parts = t.name.split('.');
    let node = root;
    for (const seg of parts.slice(0, -1)) {
      let next = node.children.get(seg);
      if (!next) {
        next = { name: node.name === '' ? seg : `${node.name}.${seg}`, children: new Map(), tensors: [] };
        node.children.set(seg, next);
      }
      node = next;
    }
    node.tensors.push(t);
  }

  const modules: SkeletonModule[] = [];
  const ordered: SkeletonTensor[] = [];
  let best: { node: Node; count: number } | undefined;
  const visit = (node: Node, cls: string): void => {
    if (node.name !== '') modules.push({ name: node.name, class: cls });
    ordered.push(...node.tensors);
    const numbered = isNumbered(node);
    if (numbered && (!best || node.children.size > best.count)) best = { node, count: node.children.size };
    const keys = [...node.children.keys()].sort(compareSegments);
    const last = node.name.split('.').pop() ?? '';
    for (const k of keys) {
      const child = node.children.get(k)!;
      visit(child, numbered ? `${className(last)}Block` : guessClass(k, child));
    }
  };
  visit(root, 'Model');

  const warnings: string[] = [];
  let blocks: BlockFacts | undefined;
  const noSplit: string[] = [];
  if (best) {
    const cls = `${className(best.node.name.split('.').pop() ?? '')}Block`;
    blocks = { prefix: best.node.name, count: best.count, class: cls };
    noSplit.push(cls);
    warnings.push(
      `unknown architecture: guessed from tensor names that ${best.node.name}.N (${best.count} blocks) are the repeated blocks; each is kept whole as class ${cls}`,
    );
  } else {
    warnings.push('unknown architecture: no repeated numbered blocks found in the tensor names; modules may be split anywhere');
  }
  return { modules, tensors: ordered, blocks, noSplit, warnings };
}

function guessClass(segment: string, node: Node): string {
  if (node.children.size > 0) return isNumbered(node) ? 'ModuleList' : className(segment) || 'Module';
  const weight = node.tensors.find((t) => t.name.endsWith('.weight'));
  if (weight && FIRST.test(segment)) return 'Embedding';
  if (weight && weight.shape.length === 2) return 'Linear';
  if (weight && weight.shape.length === 1) return 'Norm';
  return 'Module';
}

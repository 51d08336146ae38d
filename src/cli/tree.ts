import { formatBytes } from '../planner/units.js';
import { moduleSizes } from '../reader/sizes.js';
import type { Skeleton } from '../reader/skeleton.js';

interface TreeNode {
  name: string;
  path: string;
  cls: string;
  bytes: number;
  children: TreeNode[];
}

function buildTree(s: Skeleton): TreeNode {
  const sizes = moduleSizes(s);
  const root: TreeNode = { name: '', path: '', cls: s.root_class, bytes: sizes.get('') ?? 0, children: [] };
  const byPath = new Map<string, TreeNode>([['', root]]);
  for (const m of s.modules) {
    const cut = m.name.lastIndexOf('.');
    const parent = byPath.get(cut < 0 ? '' : m.name.slice(0, cut)) ?? root;
    const node: TreeNode = { name: m.name.slice(cut + 1), path: m.name, cls: m.class, bytes: sizes.get(m.name) ?? 0, children: [] };
    parent.children.push(node);
    byPath.set(m.name, node);
  }
  return root;
}

/** Two subtrees are "identical blocks" when classes, names and sizes agree all the way down. */
function signature(n: TreeNode): string {
  return `${n.cls}:${n.bytes}(${n.children.map((c) => `${c.name}=${signature(c)}`).join(',')})`;
}

/** The module tree with sizes; runs of identical numbered siblings print once as `0–31 ×32`. */
export function renderTree(s: Skeleton, maxDepth = Infinity): string {
  const lines: string[] = [];
  const root = buildTree(s);
  lines.push(`${root.cls}  ${formatBytes(root.bytes)}`);
  const walk = (node: TreeNode, indent: string, depth: number): void => {
    if (depth > maxDepth) return;
    const kids = node.children;
    for (let i = 0; i < kids.length;) {
      let j = i + 1;
      const sig = signature(kids[i]!);
      while (j < kids.length && /^\d+$/.test(kids[j]!.name) && signature(kids[j]!) === sig) j++;
      const first = kids[i]!;
      const run = j - i;
      const last = j === kids.length;
      const label = run > 1 ? `${first.name}–${kids[j - 1]!.name} ×${run}` : first.name;
      const size = run > 1 ? `${formatBytes(first.bytes)} each` : formatBytes(first.bytes);
      lines.push(`${indent}${last ? '└─ ' : '├─ '}${label}  ${first.cls}  ${size}`);
      walk(first, indent + (last ? '   ' : '│  '), depth + 1);
      i = j;
    }
  };
  walk(root, '', 1);
  return lines.join('\n');
}

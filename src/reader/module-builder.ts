import type { SkeletonModule, SkeletonTensor } from './skeleton.js';

/**
 * Builds a module tree in registration order, the way a model's `__init__` assigns submodules.
 * Architecture specs describe their model with it; nothing here knows any architecture.
 */
export class ModuleScope {
  constructor(
    private readonly tree: ModuleTree,
    /** Dotted path of this module ('' for the root). */
    readonly path: string,
  ) {}

  private join(name: string): string {
    return this.path === '' ? name : `${this.path}.${name}`;
  }

  /** Registers a child module and describes its contents in `body`. */
  child(name: string, cls: string, body?: (m: ModuleScope) => void): ModuleScope {
    const scope = new ModuleScope(this.tree, this.join(name));
    this.tree.modules.push({ name: scope.path, class: cls });
    body?.(scope);
    return scope;
  }

  /** A `ModuleList` of `count` children named 0..count-1. */
  list(name: string, count: number, cls: string, body: (m: ModuleScope, index: number) => void): ModuleScope {
    return this.child(name, 'ModuleList', (l) => {
      for (let i = 0; i < count; i++) l.child(String(i), cls, (m) => body(m, i));
    });
  }

  param(name: string, shape: number[], dtype = this.tree.dtype): void {
    this.tree.tensors.push({ name: this.join(name), shape, dtype, kind: 'param' });
  }

  buffer(name: string, shape: number[], dtype: string, persistent: boolean): void {
    this.tree.tensors.push({ name: this.join(name), shape, dtype, kind: 'buffer', persistent });
  }

  /** torch.nn.Linear: weight [out, in], then bias [out]. */
  linear(name: string, inFeatures: number, outFeatures: number, bias = false, cls = 'Linear'): ModuleScope {
    return this.child(name, cls, (m) => {
      m.param('weight', [outFeatures, inFeatures]);
      if (bias) m.param('bias', [outFeatures]);
    });
  }

  /** GPT-2's Conv1D: weight stored transposed, [in, out]. */
  conv1d(name: string, inFeatures: number, outFeatures: number): ModuleScope {
    return this.child(name, 'Conv1D', (m) => {
      m.param('weight', [inFeatures, outFeatures]);
      m.param('bias', [outFeatures]);
    });
  }

  embedding(name: string, count: number, dim: number, cls = 'Embedding'): ModuleScope {
    return this.child(name, cls, (m) => m.param('weight', [count, dim]));
  }

  /** A norm with a weight (and a bias for LayerNorm-style norms). */
  norm(name: string, cls: string, dim: number, bias = false): ModuleScope {
    return this.child(name, cls, (m) => {
      m.param('weight', [dim]);
      if (bias) m.param('bias', [dim]);
    });
  }

  /** A module with no tensors (activation, dropout, attention core). */
  leaf(name: string, cls: string): ModuleScope {
    return this.child(name, cls);
  }
}

export class ModuleTree {
  readonly modules: SkeletonModule[] = [];
  readonly tensors: SkeletonTensor[] = [];
  readonly root: ModuleScope;
  constructor(readonly dtype: string) {
    this.root = new ModuleScope(this, '');
  }
}

/**
 * Reads Python `repr()` text back into plain data, for oracle fixtures whose expected values were written as
 * repr strings ("{'model.embed_tokens': 0, 'lm_head': 'cpu'}").
 *
 * Handles: dict, list, tuple, set, str ('…' and "…" with escapes), int, float (inf/nan too), True/False/None,
 * and the wrappers `OrderedDict(...)`, `defaultdict(<class 'int'>, {...})` and `torch.device('cuda', 0)`-style
 * calls (kept as their argument). Dict keys become strings (0 → "0"), as in JSON.
 */
export type PyValue = null | boolean | number | string | PyValue[] | { [key: string]: PyValue };

export function parsePythonRepr(text: string): PyValue {
  const p = new Parser(text);
  const v = p.value();
  p.skipWs();
  if (!p.done()) throw p.error('trailing text');
  return v;
}

/** A fixture value: parsed when it is a repr string of a container, returned as is otherwise (JSON fixtures). */
export function fromFixture(value: unknown): unknown {
  if (typeof value !== 'string') return value;
  const t = value.trim();
  if (/^(\{|\[|\(|OrderedDict\(|defaultdict\()/.test(t)) return parsePythonRepr(t);
  return value;
}

class Parser {
  private i = 0;
  constructor(private readonly s: string) {}

  done(): boolean {
    return this.i >= this.s.length;
  }

  error(msg: string): Error {
    return new Error(`python repr: ${msg} at ${this.i}: ${JSON.stringify(this.s.slice(this.i, this.i + 30))}`);
  }

  skipWs(): void {
    while (this.i < this.s.length && /\s/.test(this.s[this.i] as string)) this.i++;
  }

  private peek(): string {
    return this.s[this.i] ?? '';
  }

  private eat(c: string): boolean {
    this.skipWs();
    if (this.s.startsWith(c, this.i)) {
      this.i += c.length;
      return true;
    }
    return false;
  }

  private expect(c: string): void {
    if (!this.eat(c)) throw this.error(`expected '${c}'`);
  }

  value(): PyValue {
    this.skipWs();
    const c = this.peek();
    if (c === '{') return this.dictOrSet();
    if (c === '[') return this.seq('[', ']');
    if (c === '(') return this.seq('(', ')');
    if (c === "'" || c === '"') return this.str();
    if (c === '<') return this.angle();
    if (/[-+\d.]/.test(c)) return this.num();
    const ident = /^[A-Za-z_][\w.]*/.exec(this.s.slice(this.i));
    if (!ident) throw this.error('unexpected character');
    const word = ident[0];
    this.i += word.length;
    switch (word) {
      case 'None':
        return null;
      case 'True':
        return true;
      case 'False':
        return false;
      case 'inf':
        return Infinity;
      case 'nan':
        return NaN;
    }
    // A call like OrderedDict([...]) / defaultdict(<class 'int'>, {...}) / device(type='cuda', index=0).
    if (!this.eat('(')) return word;
    const args: PyValue[] = [];
    while (!this.eat(')')) {
      const kw = /^\s*([A-Za-z_]\w*)=/.exec(this.s.slice(this.i));
      if (kw) this.i += kw[0].length;
      args.push(this.value());
      if (!this.eat(',')) {
        this.expect(')');
        break;
      }
    }
    if (word === 'OrderedDict' || word === 'dict') {
      const a = args[0];
      if (a === undefined) return {};
      if (Array.isArray(a)) return Object.fromEntries(a.map((pair) => pairOf(pair)));
      return a;
    }
    if (word === 'defaultdict') return args[1] ?? {};
    return args.length === 1 ? (args[0] as PyValue) : args;
  }

  private angle(): PyValue {
    const end = this.s.indexOf('>', this.i);
    if (end < 0) throw this.error('unclosed <');
    const text = this.s.slice(this.i, end + 1);
    this.i = end + 1;
    return text;
  }

  private dictOrSet(): PyValue {
    this.expect('{');
    if (this.eat('}')) return {};
    const first = this.value();
    if (this.eat(':')) {
      const out: { [key: string]: PyValue } = {};
      out[keyOf(first)] = this.value();
      while (this.eat(',')) {
        if (this.eat('}')) return out;
        const k = this.value();
        this.expect(':');
        out[keyOf(k)] = this.value();
      }
      this.expect('}');
      return out;
    }
    const items = [first];
    while (this.eat(',')) {
      if (this.eat('}')) return items;
      items.push(this.value());
    }
    this.expect('}');
    return items;
  }

  private seq(open: string, close: string): PyValue[] {
    this.expect(open);
    const items: PyValue[] = [];
    if (this.eat(close)) return items;
    for (;;) {
      items.push(this.value());
      if (this.eat(',')) {
        if (this.eat(close)) return items;
        continue;
      }
      this.expect(close);
      return items;
    }
  }

  private str(): string {
    const q = this.peek();
    this.i++;
    let out = '';
    while (this.i < this.s.length) {
      const c = this.s[this.i++] as string;
      if (c === q) return out;
      if (c !== '\\') {
        out += c;
        continue;
      }
      const e = this.s[this.i++] ?? '';
      const simple: Record<string, string> = { n: '\n', t: '\t', r: '\r', '\\': '\\', "'": "'", '"': '"', '0': '\0' };
      if (e in simple) out += simple[e];
      else if (e === 'x' || e === 'u' || e === 'U') {
        const len = e === 'x' ? 2 : e === 'u' ? 4 : 8;
        out += String.fromCodePoint(parseInt(this.s.slice(this.i, this.i + len), 16));
        this.i += len;
      } else out += `\\${e}`;
    }
    throw this.error('unterminated string');
  }

  private num(): number {
    const m = /^[-+]?(?:inf|nan|(?:\d[\d_]*)?(?:\.\d*)?(?:[eE][-+]?\d+)?)/.exec(this.s.slice(this.i));
    const t = m?.[0] ?? '';
    if (t === '' || t === '-' || t === '+') throw this.error('bad number');
    this.i += t.length;
    if (/inf$/.test(t)) return t.startsWith('-') ? -Infinity : Infinity;
    if (/nan$/.test(t)) return NaN;
    return Number(t.replace(/_/g, ''));
  }
}

function keyOf(k: PyValue): string {
  if (typeof k === 'string') return k;
  if (typeof k === 'number' || typeof k === 'boolean' || k === null) return String(k);
  return JSON.stringify(k);
}

function pairOf(pair: PyValue): [string, PyValue] {
  if (!Array.isArray(pair) || pair.length !== 2) throw new Error('python repr: OrderedDict item is not a pair');
  return [keyOf(pair[0] as PyValue), pair[1] as PyValue];
}

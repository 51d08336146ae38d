/**
 * Ollama's prompt formats: the Go text/template source of a model's "template" layer, rendered for a chat the way
 * Ollama's server does it. Only the part of text/template that Ollama's templates use is implemented, with Go's
 * semantics (trim markers, truthiness, and/or returning an operand, byte-based len/slice on strings, variable
 * scoping, break/continue); anything else is refused with an InputError rather than rendered differently, since a
 * prompt that is almost right silently degrades the model's answers.
 *
 * How Ollama builds the prompt (template/template.go, server/routes.go):
 * - when the request's first message is not a system message, the manifest's system layer is put in front;
 * - consecutive messages of one role are merged with a blank line between them, and every system message's text,
 *   joined the same way, is `.System`;
 * - a template that reads `.Messages` runs once over the whole conversation, with `.Response` empty;
 * - any other template runs once per round (a system/user/assistant turn as `.System`/`.Prompt`/`.Response`), and
 *   the last round is cut right after its `{{ .Response }}`, so the prompt ends where the model's answer starts.
 *   A template that names neither `.Messages` nor `.Response` gets a `{{ .Response }}` appended first.
 */
import { InputError } from '../../util/errors.js';

export interface OllamaMessage {
  role: string;
  content: string;
}

export interface OllamaChatOptions {
  /**
   * True: the prompt Ollama's chat endpoint sends to the model. False: templates without `.Messages` render their last
   * round whole instead of cutting it at `{{ .Response }}` (so a conversation ending with an assistant message comes
   * out closed). Templates with `.Messages` have no such switch in Ollama: they decide themselves, from the last
   * message's role, whether to open an assistant turn, and render the same either way.
   */
  addGenerationPrompt: boolean;
  /** The manifest's system layer: Ollama puts it in front when the first message is not a system message. */
  defaultSystem?: string;
  /**
   * The request's `think` flag, read by templates as `.Think`, `.ThinkLevel` ("medium" when true) and `.IsThinkSet`.
   * Unset means the request did not say; note that Ollama sets it to true itself for models it knows can think.
   */
  think?: boolean;
}

/**
 * A template is code from a file the user downloaded: one that loops 10⁹ times or builds a gigantic string would hang
 * or kill the process. A real chat takes thousands of steps and kilobytes; these bounds are far above that. Nesting is
 * bounded so that parsing and rendering, which recurse, cannot overflow the stack (real templates nest under ten).
 */
export const GO_TEMPLATE_BUDGET = { steps: 1_000_000, chars: 32 * 1024 * 1024, nesting: 100 };

// ---------------------------------------------------------------------------------------------------------------
// Syntax tree (the shapes of Go's text/template/parse, which Ollama's cut at {{ .Response }} walks)

interface ListNode {
  nodes: Node[];
}

type Node = TextNode | ActionNode | BranchNode | LoopControlNode;

interface TextNode {
  type: 'text';
  text: string;
  line: number;
}

/** {{ pipeline }}: prints the value, unless the pipeline declares or assigns variables. */
interface ActionNode {
  type: 'action';
  pipe: PipeNode;
  line: number;
}

interface LoopControlNode {
  type: 'break' | 'continue';
  line: number;
}

interface BranchNode {
  type: 'if' | 'with' | 'range';
  pipe: PipeNode;
  list: ListNode;
  elseList: ListNode | null;
  line: number;
}

interface PipeNode {
  type: 'pipe';
  /** Variables declared (`:=`) or assigned (`=`) by the pipeline, `$` included in each name. */
  decl: string[];
  isAssign: boolean;
  cmds: CommandNode[];
  line: number;
}

interface CommandNode {
  args: ArgNode[];
}

type ArgNode =
  | { type: 'field'; ident: string[]; line: number }
  | { type: 'variable'; ident: string[]; line: number }
  | { type: 'chain'; node: ArgNode; fields: string[]; line: number }
  | { type: 'identifier'; name: string; line: number }
  | { type: 'dot'; line: number }
  | { type: 'nil'; line: number }
  | { type: 'bool'; value: boolean; line: number }
  | { type: 'number'; value: number | GoFloat; line: number }
  | { type: 'string'; value: string; line: number }
  | PipeNode;

/** The functions vramfit evaluates: Go's builtins that templates use, and Ollama's json/currentDate/yesterdayDate. */
const FUNCTIONS = new Set(['and', 'or', 'not', 'eq', 'ne', 'lt', 'le', 'gt', 'ge', 'len', 'index', 'slice', 'print', 'printf', 'println']);
const OLLAMA_FUNCTIONS = new Set(['json', 'currentDate', 'yesterdayDate']);
/** Defined for Ollama's templates but not evaluated here (tool descriptions and HTML/JS/URL escaping). */
const REFUSED_FUNCTIONS = new Set(['toTypeScriptType', 'call', 'html', 'js', 'urlquery']);

/** A parsed Ollama template; build it with parseGoTemplate. */
export class GoTemplate {
  readonly source: string;
  /** Whether Ollama renders it once over `.Messages` (true) or round by round with `.System`/`.Prompt`/`.Response`. */
  readonly usesMessages: boolean;
  /** @internal The tree, with Ollama's appended `{{ .Response }}` when the template names neither field. */
  readonly root: ListNode;
  private cut: { root: ListNode } | { crashLine: number } | undefined;

  /** @internal */
  constructor(source: string, root: ListNode) {
    this.source = source;
    const names = new Set(identifiers(root).map((n) => n.toLowerCase()));
    this.usesMessages = names.has('messages');
    if (!names.has('messages') && !names.has('response')) {
      const line = lastLine(source);
      const response: Node = {
        type: 'action',
        line,
        pipe: { type: 'pipe', decl: [], isAssign: false, line, cmds: [{ args: [{ type: 'field', ident: ['Response'], line }] }] },
      };
      root = { nodes: [...root.nodes, response] };
    }
    this.root = root;
  }

  /** @internal The tree Ollama renders a conversation's last round with; computed once. */
  cutTree(): { root: ListNode } | { crashLine: number } {
    this.cut ??= cutAtResponse(this.root);
    return this.cut;
  }
}

/**
 * Parses an Ollama template. Throws InputError(where, ..., 'BAD_CONFIG') for what Go itself would not parse (unclosed
 * action, missing {{ end }}, undefined function or variable), naming the line, and InputError(where, ...,
 * 'UNSUPPORTED_TEMPLATE') for valid Go that vramfit does not render: {{ template }}, {{ define }}, {{ block }},
 * the functions toTypeScriptType/call/html/js/urlquery, complex numbers.
 */
export function parseGoTemplate(source: string, where: string): GoTemplate {
  let parser: Parser;
  let root: ListNode;
  try {
    parser = new Parser(lex(source));
    root = parser.parse();
  } catch (e) {
    if (e instanceof TemplateSyntaxError) throw new InputError(where, `Go template syntax error on line ${e.line}: ${e.message}`, 'BAD_CONFIG');
    throw e;
  }
  // Syntax errors anywhere win over an unsupported construct: Ollama cannot use such a template either.
  const refused = parser.refused;
  if (refused) throw new InputError(where, `line ${refused.line}: ${refused.what} is not supported in Ollama templates by vramfit`, 'UNSUPPORTED_TEMPLATE');
  return new GoTemplate(source, root);
}

/**
 * The prompt Ollama's chat endpoint builds for these messages with this template (see the module comment and
 * OllamaChatOptions). Throws InputError(where, ..., 'BAD_CONFIG') when rendering fails as it would in Go (a field a
 * message does not have, an index out of range, a non-function called with arguments), when the template would print
 * a value Ollama renders as garbage ("<no value>", a pointer), and when it exceeds GO_TEMPLATE_BUDGET.
 */
export function renderOllamaChat(template: GoTemplate, messages: readonly OllamaMessage[], options: OllamaChatOptions, where: string): string {
  let msgs = messages.map((m) => ({ role: m.role, content: m.content }));
  if (msgs.length > 0 && msgs[0]!.role !== 'system' && options.defaultSystem) msgs = [{ role: 'system', content: options.defaultSystem }, ...msgs];
  const { system, collated } = collate(msgs);
  const thinkFields: [string, GoValue][] = [
    ['Think', options.think === true],
    ['ThinkLevel', options.think === true ? 'medium' : ''],
    ['IsThinkSet', options.think !== undefined],
  ];
  const budget = new Budget();
  const out: string[] = [];
  const run = (root: ListNode, fields: [string, GoValue][], ollamaFunctions: boolean) =>
    new Execution(budget, out, ollamaFunctions).run(root, new GoMap(new Map([...fields, ...thinkFields])));

  try {
    if (template.usesMessages) {
      const list = collated.length === 0 ? null : collated.map((m) => messageValue(m.role, m.content));
      run(
        template.root,
        [
          ['System', system],
          ['Messages', new GoSlice('[]message', list, 0, list?.length ?? 0, list?.length ?? 0)],
          // Tool calling is not offered, so .Tools is Ollama's nil list: false, empty, printing as "null".
          ['Tools', new GoSlice('tools', null, 0, 0, 0, true)],
          ['Response', ''],
        ],
        true,
      );
      return out.join('');
    }

    // Each message only fills its slot; a round is rendered when a slot it would overwrite is already filled.
    let roundSystem = '';
    let prompt = '';
    let response = '';
    const fields = (): [string, GoValue][] => [
      ['System', roundSystem],
      ['Prompt', prompt],
      ['Response', response],
    ];
    const flush = () => {
      run(template.root, fields(), true);
      roundSystem = prompt = response = '';
    };
    for (const m of collated) {
      if (m.role === 'system') {
        if (prompt !== '' || response !== '') flush();
        roundSystem = m.content;
      } else if (m.role === 'user') {
        if (response !== '') flush();
        prompt = m.content;
      } else if (m.role === 'assistant') {
        response = m.content;
      }
    }
    if (!options.addGenerationPrompt) {
      run(template.root, fields(), true);
      return out.join('');
    }
    const cut = template.cutTree();
    if ('crashLine' in cut) {
      throw new InputError(
        where,
        `Ollama cannot render this template either: its {{ .Response }} on line ${cut.crashLine} lies in a block with an {{ else }}, where Ollama's cut of the last turn crashes`,
        'BAD_CONFIG',
      );
    }
    // Ollama renders the cut tree as a bare template, without its own functions (json, currentDate, ...).
    run(cut.root, fields(), false);
    return out.join('');
  } catch (e) {
    if (e instanceof RenderError) throw new InputError(where, `cannot render the template (line ${e.line}: ${e.message})`, e.code);
    if (e instanceof OverBudget) throw new InputError(where, `the template was stopped: ${e.message}`, 'BAD_CONFIG');
    throw e;
  }
}

/** Ollama's collate: consecutive messages of one role merge (tool results excepted); all system texts make .System. */
function collate(msgs: readonly OllamaMessage[]): { system: string; collated: OllamaMessage[] } {
  const systems: string[] = [];
  const collated: OllamaMessage[] = [];
  for (const m of msgs) {
    if (m.role === 'system') systems.push(m.content);
    const last = collated[collated.length - 1];
    if (last && last.role === m.role && m.role !== 'tool') last.content += `\n\n${m.content}`;
    else collated.push({ role: m.role, content: m.content });
  }
  return { system: systems.join('\n\n'), collated };
}

function messageValue(role: string, content: string): GoStruct {
  // The fields of Ollama's template message, in its order (json prints them so); images and tool calls are never set here.
  return new GoStruct(
    'message',
    new Map<string, GoValue>([
      ['Role', role],
      ['Content', content],
      ['Thinking', ''],
      ['Images', new GoSlice('[]image', null, 0, 0, 0)],
      ['ToolCalls', new GoSlice('[]toolcall', null, 0, 0, 0)],
      ['ToolName', ''],
      ['ToolCallID', ''],
    ]),
  );
}

function lastLine(source: string): number {
  let line = 1;
  for (let i = 0; i < source.length; i++) if (source.charCodeAt(i) === 10) line++;
  return line;
}

/**
 * The names Ollama looks for to choose how to render: every field and variable name in actions and control
 * pipelines, as its Identifiers walk collects them (it does not look inside `(pipeline).Field` chains).
 */
function identifiers(list: ListNode): string[] {
  const names: string[] = [];
  const ofArg = (a: ArgNode): void => {
    if (a.type === 'field' || a.type === 'variable') names.push(...a.ident);
    else if (a.type === 'pipe') ofPipe(a);
  };
  const ofPipe = (p: PipeNode): void => {
    for (const c of p.cmds) for (const a of c.args) ofArg(a);
  };
  const ofList = (l: ListNode): void => {
    for (const n of l.nodes) {
      if (n.type === 'action') ofPipe(n.pipe);
      else if (n.type === 'if' || n.type === 'with' || n.type === 'range') {
        ofPipe(n.pipe);
        ofList(n.list);
        if (n.elseList) ofList(n.elseList);
      }
    }
  };
  ofList(list);
  return names;
}

/**
 * Ollama's cut of the last round: walking the tree in order, everything after the first field named Response is
 * dropped, whole actions included once none of their arguments is left. Its walk visits the lists of if/with/range
 * but not their conditions; and when the cut starts inside a block that has an {{ else }}, Ollama's code crashes.
 */
function cutAtResponse(root: ListNode): { root: ListNode } | { crashLine: number } {
  let cut = false;
  let crashLine = 0;
  const walkArg = (a: ArgNode): ArgNode | null => {
    if (a.type === 'field' && a.ident.includes('Response')) {
      cut = true;
      return a;
    }
    if (cut) return null;
    return a.type === 'pipe' ? walkPipe(a) : a;
  };
  const walkPipe = (p: PipeNode): PipeNode | null => {
    if (cut) return null;
    const cmds: CommandNode[] = [];
    for (const c of p.cmds) {
      const args = c.args.map(walkArg).filter((a): a is ArgNode => a !== null);
      if (args.length === 0) return null;
      cmds.push({ args });
    }
    return cmds.length === 0 ? null : { ...p, cmds };
  };
  const walkList = (l: ListNode): ListNode | null => {
    if (cut) return null;
    const nodes: Node[] = [];
    for (const n of l.nodes) {
      const kept = walkNode(n);
      if (kept) nodes.push(kept);
    }
    return { nodes };
  };
  const walkNode = (n: Node): Node | null => {
    if (cut) return null;
    if (n.type === 'action') {
      const pipe = walkPipe(n.pipe);
      return pipe ? { ...n, pipe } : null;
    }
    if (n.type === 'if' || n.type === 'with' || n.type === 'range') {
      const list = walkList(n.list) ?? { nodes: [] };
      let elseList = n.elseList;
      if (elseList) {
        elseList = walkList(elseList);
        if (!elseList) {
          crashLine ||= n.line;
          elseList = { nodes: [] };
        }
      }
      return { ...n, list, elseList };
    }
    return n;
  };
  const out = walkList(root) ?? { nodes: [] };
  return crashLine ? { crashLine } : { root: out };
}

// ---------------------------------------------------------------------------------------------------------------
// Lexer (Go's text/template/parse lexer: same tokens, trim markers and errors)

type TokenType =
  | 'text'
  | 'leftDelim'
  | 'rightDelim'
  | 'space'
  | 'field'
  | 'variable'
  | 'identifier'
  | 'keyword'
  | 'bool'
  | 'nil'
  | 'dot'
  | 'number'
  | 'complex'
  | 'charConstant'
  | 'string'
  | 'rawString'
  | 'char'
  | 'pipe'
  | 'assign'
  | 'declare'
  | 'leftParen'
  | 'rightParen'
  | 'eof';

interface Token {
  type: TokenType;
  value: string;
  line: number;
}

class TemplateSyntaxError extends Error {
  readonly line: number;
  constructor(line: number, message: string) {
    super(message);
    this.line = line;
  }
}

const KEYWORDS = new Set(['block', 'break', 'continue', 'define', 'else', 'end', 'if', 'range', 'template', 'with']);

/** Go's space characters: the only ones trim markers remove. */
function isSpace(c: string | undefined): boolean {
  return c === ' ' || c === '\t' || c === '\r' || c === '\n';
}

const LETTER_OR_DIGIT = /^[\p{L}\p{Nd}]$/u;

function isAlphaNumeric(c: string | undefined): boolean {
  if (c === undefined) return false;
  const code = c.charCodeAt(0);
  if (code < 0x80) return (code >= 0x30 && code <= 0x39) || (code >= 0x41 && code <= 0x5a) || (code >= 0x61 && code <= 0x7a) || code === 0x5f;
  return LETTER_OR_DIGIT.test(c);
}

function inSet(set: string, c: string | undefined): boolean {
  return c !== undefined && c.length === 1 && set.includes(c);
}

function lex(src: string): Token[] {
  const tokens: Token[] = [];
  let pos = 0;
  let line = 1;
  const countLines = (from: number, to: number) => {
    for (let k = from; k < to; k++) if (src.charCodeAt(k) === 10) line++;
  };
  const fail = (at: number, message: string): never => {
    throw new TemplateSyntaxError(at, message);
  };
  const atTerminator = (q: number): boolean => {
    const c = src[q];
    return c === undefined || isSpace(c) || inSet('.,|:()', c) || src.startsWith('}}', q);
  };
  const scanNumber = (p: number): number => {
    let q = p;
    if (inSet('+-', src[q])) q++;
    let digits = '0123456789_';
    if (src[q] === '0') {
      q++;
      const base = inSet('xX', src[q]) ? '0123456789abcdefABCDEF_' : inSet('oO', src[q]) ? '01234567_' : inSet('bB', src[q]) ? '01_' : null;
      if (base) {
        q++;
        digits = base;
      }
    }
    while (inSet(digits, src[q])) q++;
    if (src[q] === '.') {
      q++;
      while (inSet(digits, src[q])) q++;
    }
    if (digits.length === 11 && inSet('eE', src[q])) {
      q++;
      if (inSet('+-', src[q])) q++;
      while (inSet('0123456789_', src[q])) q++;
    }
    if (digits.length === 23 && inSet('pP', src[q])) {
      q++;
      if (inSet('+-', src[q])) q++;
      while (inSet('0123456789_', src[q])) q++;
    }
    if (src[q] === 'i') q++;
    return isAlphaNumeric(src[q]) ? -1 : q;
  };
  const scanQuoted = (p: number, quote: string, what: string): number => {
    let q = p + 1;
    for (;;) {
      const c = src[q];
      if (c === '\\') {
        if (src[q + 1] === undefined || src[q + 1] === '\n') fail(line, `unterminated ${what}`);
        q += 2;
        continue;
      }
      if (c === undefined || c === '\n') fail(line, `unterminated ${what}`);
      q++;
      if (c === quote) return q;
    }
  };

  for (;;) {
    const open = src.indexOf('{{', pos);
    if (open < 0) {
      if (pos < src.length) tokens.push({ type: 'text', value: src.slice(pos), line });
      countLines(pos, src.length);
      break;
    }
    const trimLeft = src[open + 2] === '-' && isSpace(src[open + 3]);
    let textEnd = open;
    if (trimLeft) while (textEnd > pos && isSpace(src[textEnd - 1])) textEnd--;
    if (textEnd > pos) tokens.push({ type: 'text', value: src.slice(pos, textEnd), line });
    countLines(pos, open);
    const actionLine = line;
    let p = open + 2 + (trimLeft ? 2 : 0);

    if (src.startsWith('/*', p)) {
      const close = src.indexOf('*/', p + 2);
      if (close < 0) fail(actionLine, 'unclosed comment');
      let q = close + 2;
      const trimRight = isSpace(src[q]) && src[q + 1] === '-' && src.startsWith('}}', q + 2);
      if (trimRight) q += 4;
      else if (src.startsWith('}}', q)) q += 2;
      else fail(actionLine, 'comment ends before closing delimiter');
      if (trimRight) while (isSpace(src[q])) q++;
      countLines(open, q);
      pos = q;
      continue;
    }

    tokens.push({ type: 'leftDelim', value: '{{', line });
    countLines(open, p);
    let parenDepth = 0;
    let start = p;
    let startLine = line;
    const push = (type: TokenType, end: number) => {
      tokens.push({ type, value: src.slice(start, end), line: startLine });
      countLines(start, end);
      p = end;
    };
    for (;;) {
      const trimRight = isSpace(src[p]) && src[p + 1] === '-' && src.startsWith('}}', p + 2);
      if (trimRight || src.startsWith('}}', p)) {
        if (parenDepth > 0) fail(line, 'unclosed left paren');
        const end = p + (trimRight ? 4 : 2);
        countLines(p, end);
        tokens.push({ type: 'rightDelim', value: '}}', line });
        p = end;
        if (trimRight) {
          while (isSpace(src[p])) p++;
          countLines(end, p);
        }
        break;
      }
      if (p >= src.length) fail(actionLine, 'unclosed action (no "}}" before the end of the template)');
      const c = src[p]!;
      start = p;
      startLine = line;
      if (isSpace(c)) {
        let q = p;
        while (isSpace(src[q])) q++;
        // The last space may belong to a " -}}".
        if (src[q] === '-' && src.startsWith('}}', q + 1)) q--;
        if (q > p) push('space', q);
        else p = q;
        continue;
      }
      if (c === '=') push('assign', p + 1);
      else if (c === ':') {
        if (src[p + 1] !== '=') fail(line, 'expected :=');
        push('declare', p + 2);
      } else if (c === '|') push('pipe', p + 1);
      else if (c === '"') push('string', scanQuoted(p, '"', 'quoted string'));
      else if (c === '`') {
        const close = src.indexOf('`', p + 1);
        if (close < 0) fail(line, 'unterminated raw quoted string');
        push('rawString', close + 1);
      } else if (c === "'") push('charConstant', scanQuoted(p, "'", 'character constant'));
      else if (c === '$' || (c === '.' && !inSet('0123456789', src[p + 1]))) {
        let q = p + 1;
        if (atTerminator(q)) {
          push(c === '$' ? 'variable' : 'dot', q);
          continue;
        }
        while (isAlphaNumeric(src[q])) q++;
        if (!atTerminator(q)) fail(line, `bad character ${JSON.stringify(src[q])}`);
        push(c === '$' ? 'variable' : 'field', q);
      } else if (inSet('+-.0123456789', c)) {
        const bad = () => {
          let q = p + 1;
          while (isAlphaNumeric(src[q]) || inSet('.+-', src[q])) q++;
          return fail(line, `bad number syntax: ${JSON.stringify(src.slice(p, q))}`);
        };
        let q = scanNumber(p);
        if (q < 0) bad();
        if (inSet('+-', src[q])) {
          q = scanNumber(q);
          if (q < 0) bad();
          push('complex', q);
        } else push('number', q);
      } else if (isAlphaNumeric(c)) {
        let q = p;
        while (isAlphaNumeric(src[q])) q++;
        if (!atTerminator(q)) fail(line, `bad character ${JSON.stringify(src[q])}`);
        const word = src.slice(p, q);
        push(KEYWORDS.has(word) ? 'keyword' : word === 'true' || word === 'false' ? 'bool' : word === 'nil' ? 'nil' : 'identifier', q);
      } else if (c === '(') {
        parenDepth++;
        push('leftParen', p + 1);
      } else if (c === ')') {
        if (--parenDepth < 0) fail(line, 'unexpected right paren');
        push('rightParen', p + 1);
      } else if (c >= ' ' && c <= '~') push('char', p + 1);
      else fail(line, `unrecognized character in action: ${JSON.stringify(c)}`);
    }
    pos = p;
  }
  tokens.push({ type: 'eof', value: '', line });
  return tokens;
}

// ---------------------------------------------------------------------------------------------------------------
// Parser (Go's text/template/parse grammar)

type ParsedNode = Node | { type: 'end' | 'else'; line: number };

class Parser {
  /** The first valid-but-unsupported construct met; parsing goes on so that a later syntax error wins. */
  refused: { line: number; what: string } | null = null;
  private readonly tokens: Token[];
  private i = 0;
  private vars: string[] = ['$'];
  private rangeDepth = 0;
  private depth = 0;

  constructor(tokens: Token[]) {
    this.tokens = tokens;
  }

  parse(): ListNode {
    const nodes: Node[] = [];
    while (this.peek().type !== 'eof') {
      const n = this.textOrAction();
      if (n.type === 'end' || n.type === 'else') this.fail(n.line, `unexpected {{ ${n.type} }}`);
      nodes.push(n as Node);
    }
    return { nodes };
  }

  private fail(line: number, message: string): never {
    throw new TemplateSyntaxError(line, message);
  }

  private refuse(line: number, what: string): void {
    this.refused ??= { line, what };
  }

  private next(): Token {
    const t = this.tokens[Math.min(this.i, this.tokens.length - 1)]!;
    this.i++;
    return t;
  }

  private backup(): void {
    this.i--;
  }

  private peek(): Token {
    const t = this.next();
    this.backup();
    return t;
  }

  private nextNonSpace(): Token {
    let t: Token;
    do t = this.next();
    while (t.type === 'space');
    return t;
  }

  private peekNonSpace(): Token {
    const t = this.nextNonSpace();
    this.backup();
    return t;
  }

  private expect(type: TokenType, context: string): Token {
    const t = this.nextNonSpace();
    if (t.type !== type) this.unexpected(t, context);
    return t;
  }

  private unexpected(t: Token, context: string): never {
    const shown = t.type === 'eof' ? 'end of template' : t.type === 'rightDelim' ? '"}}"' : JSON.stringify(t.value);
    this.fail(t.line, `unexpected ${shown} in ${context}`);
  }

  private enter(line: number): void {
    if (++this.depth > GO_TEMPLATE_BUDGET.nesting) this.fail(line, `nested more than ${GO_TEMPLATE_BUDGET.nesting} deep`);
  }

  private textOrAction(): ParsedNode {
    const t = this.nextNonSpace();
    if (t.type === 'text') return { type: 'text', text: t.value, line: t.line };
    if (t.type === 'leftDelim') return this.action(t.line);
    this.unexpected(t, 'input');
  }

  private action(line: number): ParsedNode {
    const t = this.nextNonSpace();
    if (t.type === 'keyword') {
      switch (t.value) {
        case 'break':
        case 'continue': {
          const end = this.nextNonSpace();
          if (end.type !== 'rightDelim') this.unexpected(end, `{{ ${t.value} }}`);
          if (this.rangeDepth === 0) this.fail(t.line, `{{ ${t.value} }} outside {{ range }}`);
          return { type: t.value, line: t.line };
        }
        case 'else': {
          const peek = this.peekNonSpace();
          if (!(peek.type === 'keyword' && (peek.value === 'if' || peek.value === 'with'))) this.expect('rightDelim', '{{ else }}');
          return { type: 'else', line: t.line };
        }
        case 'end':
          this.expect('rightDelim', '{{ end }}');
          return { type: 'end', line: t.line };
        case 'if':
        case 'with':
        case 'range':
          return this.control(t.value, t.line);
        case 'template':
        case 'block':
        case 'define':
          return this.namedTemplate(t.value, t.line);
      }
    }
    this.backup();
    return { type: 'action', line, pipe: this.pipeline('command', 'rightDelim') };
  }

  private control(context: 'if' | 'with' | 'range', line: number): BranchNode {
    this.enter(line);
    const mark = this.vars.length;
    const pipe = this.pipeline(context, 'rightDelim');
    if (context === 'range') this.rangeDepth++;
    const body = this.itemList(context, line);
    if (context === 'range') this.rangeDepth--;
    let elseList: ListNode | null = null;
    if (body.next.type === 'else') {
      const peek = this.peek();
      // {{ else if }} and {{ else with }} nest a new block that takes the single {{ end }}.
      if (peek.type === 'keyword' && peek.value === context && context !== 'range') {
        this.next();
        elseList = { nodes: [this.control(context, peek.line)] };
      } else {
        const rest = this.itemList(context, line);
        if (rest.next.type !== 'end') this.fail(rest.next.line, `expected {{ end }} for the {{ ${context} }} on line ${line}, found another {{ else }}`);
        elseList = rest.list;
      }
    }
    this.vars.length = mark;
    this.depth--;
    return { type: context, pipe, list: body.list, elseList, line };
  }

  private itemList(context: string, line: number): { list: ListNode; next: { type: 'end' | 'else'; line: number } } {
    const nodes: Node[] = [];
    while (this.peekNonSpace().type !== 'eof') {
      const n = this.textOrAction();
      if (n.type === 'end' || n.type === 'else') return { list: { nodes }, next: n as { type: 'end' | 'else'; line: number } };
      nodes.push(n as Node);
    }
    this.fail(line, `missing {{ end }} for the {{ ${context} }} on line ${line}`);
  }

  /** {{ template }}, {{ block }} and {{ define }}: parsed to find later syntax errors, then refused. */
  private namedTemplate(keyword: string, line: number): Node {
    this.refuse(line, `{{ ${keyword} }}`);
    const name = this.nextNonSpace();
    if (name.type !== 'string' && name.type !== 'rawString') this.unexpected(name, `{{ ${keyword} }} clause`);
    if (keyword === 'template') {
      if (this.nextNonSpace().type !== 'rightDelim') {
        this.backup();
        this.pipeline('template', 'rightDelim');
      }
      return { type: 'text', text: '', line };
    }
    if (keyword === 'block') this.pipeline('block', 'rightDelim');
    else this.expect('rightDelim', '{{ define }}');
    this.enter(line);
    const [vars, rangeDepth] = [this.vars, this.rangeDepth];
    this.vars = ['$'];
    this.rangeDepth = 0;
    const body = this.itemList(keyword, line);
    if (body.next.type !== 'end') this.fail(body.next.line, `unexpected {{ else }} in {{ ${keyword} }}`);
    [this.vars, this.rangeDepth] = [vars, rangeDepth];
    this.depth--;
    return { type: 'text', text: '', line };
  }

  private pipeline(context: string, end: 'rightDelim' | 'rightParen'): PipeNode {
    const pipe: PipeNode = { type: 'pipe', decl: [], isAssign: false, cmds: [], line: this.peekNonSpace().line };
    for (;;) {
      const v = this.peekNonSpace();
      if (v.type !== 'variable') break;
      const save = this.i;
      this.next();
      const declare = this.peekNonSpace();
      if (declare.type === 'assign' || declare.type === 'declare') {
        pipe.isAssign = declare.type === 'assign';
        this.nextNonSpace();
        pipe.decl.push(v.value);
        this.vars.push(v.value);
        break;
      }
      if (declare.type === 'char' && declare.value === ',') {
        this.nextNonSpace();
        pipe.decl.push(v.value);
        this.vars.push(v.value);
        if (context === 'range' && pipe.decl.length < 2) {
          const after = this.peekNonSpace();
          if (after.type === 'variable' || after.type === 'rightDelim' || after.type === 'rightParen') continue;
          this.fail(after.line, 'range can only initialize variables');
        }
        this.fail(declare.line, `too many declarations in ${context}`);
      }
      this.i = save;
      break;
    }
    for (;;) {
      const t = this.nextNonSpace();
      if (t.type === end) break;
      switch (t.type) {
        case 'bool':
        case 'charConstant':
        case 'complex':
        case 'dot':
        case 'field':
        case 'identifier':
        case 'number':
        case 'nil':
        case 'rawString':
        case 'string':
        case 'variable':
        case 'leftParen':
          this.backup();
          pipe.cmds.push(this.command());
          continue;
        default:
          this.unexpected(t, context);
      }
    }
    if (pipe.cmds.length === 0) this.fail(pipe.line, `missing value for ${context}`);
    pipe.cmds.slice(1).forEach((c, k) => {
      const first = c.args[0]!;
      if (['bool', 'dot', 'nil', 'number', 'string'].includes(first.type)) this.fail(pipe.line, `non executable command in pipeline stage ${k + 2}`);
    });
    return pipe;
  }

  private command(): CommandNode {
    const cmd: CommandNode = { args: [] };
    for (;;) {
      this.peekNonSpace();
      const operand = this.operand();
      if (operand) cmd.args.push(operand);
      const t = this.next();
      if (t.type === 'space') continue;
      if (t.type === 'rightDelim' || t.type === 'rightParen') this.backup();
      else if (t.type !== 'pipe') this.unexpected(t, 'operand');
      break;
    }
    if (cmd.args.length === 0) this.fail(this.peek().line, 'empty command');
    return cmd;
  }

  private operand(): ArgNode | null {
    const node = this.term();
    if (!node || this.peek().type !== 'field') return node;
    const fields: string[] = [];
    while (this.peek().type === 'field') fields.push(this.next().value.slice(1));
    switch (node.type) {
      case 'field':
      case 'variable':
        return { ...node, ident: [...node.ident, ...fields] };
      case 'bool':
      case 'string':
      case 'number':
      case 'nil':
      case 'dot':
        return this.fail(node.line, `unexpected . after a ${node.type}`);
      default:
        return { type: 'chain', node, fields, line: node.line };
    }
  }

  private term(): ArgNode | null {
    const t = this.nextNonSpace();
    const line = t.line;
    switch (t.type) {
      case 'identifier':
        if (!FUNCTIONS.has(t.value) && !OLLAMA_FUNCTIONS.has(t.value)) {
          if (REFUSED_FUNCTIONS.has(t.value)) this.refuse(line, `the function "${t.value}"`);
          else this.fail(line, `function "${t.value}" not defined (neither Go nor Ollama defines it)`);
        }
        return { type: 'identifier', name: t.value, line };
      case 'dot':
        return { type: 'dot', line };
      case 'nil':
        return { type: 'nil', line };
      case 'variable':
        if (!this.vars.includes(t.value)) this.fail(line, `undefined variable "${t.value}"`);
        return { type: 'variable', ident: [t.value], line };
      case 'field':
        return { type: 'field', ident: [t.value.slice(1)], line };
      case 'bool':
        return { type: 'bool', value: t.value === 'true', line };
      case 'number':
      case 'charConstant':
      case 'complex':
        return { type: 'number', value: this.number(t), line };
      case 'leftParen': {
        this.enter(line);
        const pipe = this.pipeline('parenthesized pipeline', 'rightParen');
        this.depth--;
        return pipe;
      }
      case 'string':
      case 'rawString':
        return { type: 'string', value: this.unquote(t), line };
    }
    this.backup();
    return null;
  }

  /** A number literal as Go's ideal constants resolve it: float64 when written with . e or p, else int. */
  private number(t: Token): number | GoFloat {
    const text = t.value;
    if (t.type === 'charConstant') {
      const { bytes, codePoint } = unquoteGo(text.slice(1, -1), "'", () => this.fail(t.line, `malformed character constant: ${text}`));
      if (codePoint === null || bytes.length === 0) this.fail(t.line, `malformed character constant: ${text}`);
      return codePoint;
    }
    if (t.type === 'complex' || text.endsWith('i')) {
      this.refuse(t.line, `the complex number ${text}`);
      return 0;
    }
    const body = text.replace(/^[+-]/, '');
    const negative = text.startsWith('-');
    const hex = /^0[xX]/.test(body);
    if (hex ? /[pP]/.test(body) : /[.eE]/.test(body)) {
      if (hex) {
        this.refuse(t.line, `the hexadecimal float ${text}`);
        return 0;
      }
      if (/(^|[^0-9])_|_($|[^0-9])/.test(body)) this.fail(t.line, `illegal number syntax: ${JSON.stringify(text)}`);
      const f = Number(body.replace(/_/g, ''));
      if (!Number.isFinite(f) || body === '.') this.fail(t.line, `illegal number syntax: ${JSON.stringify(text)}`);
      return new GoFloat(negative ? -f : f);
    }
    const m = /^(?:0[xX]((?:_?[0-9a-fA-F])+)|0[oO]((?:_?[0-7])+)|0[bB]((?:_?[01])+)|0((?:_?[0-7])*)|([1-9](?:_?[0-9])*))$/.exec(body);
    if (!m) this.fail(t.line, `illegal number syntax: ${JSON.stringify(text)}`);
    const [, h, o, b, legacyOctal, decimal] = m;
    const digits = (h ?? o ?? b ?? legacyOctal ?? decimal ?? '').replace(/_/g, '');
    const prefix = h !== undefined ? '0x' : o !== undefined || legacyOctal !== undefined ? '0o' : b !== undefined ? '0b' : '';
    const value = digits === '' ? 0n : BigInt(prefix + digits);
    if (value > 2n ** 63n) this.fail(t.line, `integer overflow: ${JSON.stringify(text)}`);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
      this.refuse(t.line, `the integer ${text} (beyond 2^53)`);
      return 0;
    }
    return negative ? -Number(value) : Number(value);
  }

  private unquote(t: Token): string {
    if (t.type === 'rawString') return t.value.slice(1, -1).replace(/\r/g, '');
    const { bytes } = unquoteGo(t.value.slice(1, -1), '"', () => this.fail(t.line, `invalid syntax in string ${t.value}`));
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array(bytes));
    } catch {
      this.refuse(t.line, `the string ${t.value}, which is not valid UTF-8,`);
      return '';
    }
  }
}

/**
 * The bytes of a Go string or rune literal's body (strconv.Unquote's escapes: \x and octal give raw bytes, \u and \U
 * code points). codePoint is the single character of a rune literal, or null when the body is not exactly one.
 */
function unquoteGo(body: string, quote: '"' | "'", fail: () => never): { bytes: number[]; codePoint: number | null } {
  const bytes: number[] = [];
  const encoder = new TextEncoder();
  let count = 0;
  let codePoint: number | null = null;
  let k = 0;
  while (k < body.length) {
    let cp: number;
    const c = body[k]!;
    if (c !== '\\') {
      cp = body.codePointAt(k)!;
      if (c === quote || c === '\n') fail();
      bytes.push(...encoder.encode(String.fromCodePoint(cp)));
      k += cp > 0xffff ? 2 : 1;
    } else {
      const e = body[k + 1];
      k += 2;
      const simple: Record<string, number> = { a: 7, b: 8, f: 12, n: 10, r: 13, t: 9, v: 11, '\\': 92 };
      if (e !== undefined && e in simple) {
        cp = simple[e]!;
        bytes.push(cp);
      } else if (e === quote) {
        cp = quote.charCodeAt(0);
        bytes.push(cp);
      } else if (e === 'x' || e === 'u' || e === 'U') {
        const n = e === 'x' ? 2 : e === 'u' ? 4 : 8;
        const hex = body.slice(k, k + n);
        if (!new RegExp(`^[0-9a-fA-F]{${n}}$`).test(hex)) fail();
        k += n;
        cp = parseInt(hex, 16);
        if (e === 'x') bytes.push(cp);
        else {
          if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) fail();
          bytes.push(...encoder.encode(String.fromCodePoint(cp)));
        }
      } else if (e !== undefined && e >= '0' && e <= '7') {
        const oct = body.slice(k - 1, k + 2);
        if (!/^[0-7]{3}$/.test(oct)) fail();
        k += 2;
        cp = parseInt(oct, 8);
        if (cp > 255) fail();
        bytes.push(cp);
      } else fail();
    }
    count++;
    codePoint = cp;
  }
  return { bytes, codePoint: count === 1 ? codePoint : null };
}

// ---------------------------------------------------------------------------------------------------------------
// Values: Go's types as Ollama's data has them

/** A float64 (only number literals written with . e or p make one); plain JS numbers are Go ints. */
class GoFloat {
  readonly value: number;
  constructor(value: number) {
    this.value = value;
  }
}

/** A Go slice: a window on a backing array (Go's slice function may reach up to its capacity). Null items: a nil slice. */
class GoSlice {
  readonly typeName: string;
  readonly items: readonly GoValue[] | null;
  readonly start: number;
  readonly length: number;
  readonly cap: number;
  /** Ollama's tool list prints and formats as its JSON (a String method). */
  readonly printsAsJson: boolean;
  constructor(typeName: string, items: readonly GoValue[] | null, start: number, length: number, cap: number, printsAsJson = false) {
    this.typeName = typeName;
    this.items = items;
    this.start = start;
    this.length = length;
    this.cap = cap;
    this.printsAsJson = printsAsJson;
  }
  at(i: number): GoValue {
    return this.items![this.start + i]!;
  }
}

/** A pointer to a struct: Ollama's messages. */
class GoStruct {
  readonly typeName: string;
  readonly fields: ReadonlyMap<string, GoValue>;
  constructor(typeName: string, fields: ReadonlyMap<string, GoValue>) {
    this.typeName = typeName;
    this.fields = fields;
  }
}

/** A map[string]any: the data Ollama executes templates with (a missing key reads as nil). */
class GoMap {
  readonly entries: ReadonlyMap<string, GoValue>;
  constructor(entries: ReadonlyMap<string, GoValue>) {
    this.entries = entries;
  }
}

/** null is Go's untyped nil, what a missing map key gives. */
type GoValue = string | number | boolean | null | GoFloat | GoSlice | GoStruct | GoMap;

function typeName(v: GoValue): string {
  if (v === null) return 'nil';
  if (typeof v === 'string') return 'string';
  if (typeof v === 'number') return 'int';
  if (typeof v === 'boolean') return 'bool';
  if (v instanceof GoFloat) return 'float64';
  if (v instanceof GoMap) return 'map[string]any';
  return v.typeName;
}

function isTrue(v: GoValue): boolean {
  if (v === null) return false;
  if (typeof v === 'string') return v.length > 0;
  if (typeof v === 'number') return v !== 0;
  if (typeof v === 'boolean') return v;
  if (v instanceof GoFloat) return v.value !== 0;
  if (v instanceof GoSlice) return v.length > 0;
  if (v instanceof GoMap) return v.entries.size > 0;
  return true;
}

/** fmt's %v of a float64: shortest digits, exponent form below 1e-4 and from 1e6 (1e+06, 2.5e-05). */
function formatFloat(x: number): string {
  if (Number.isNaN(x)) return 'NaN';
  if (!Number.isFinite(x)) return x > 0 ? '+Inf' : '-Inf';
  if (x === 0) return Object.is(x, -0) ? '-0' : '0';
  const [mantissa, e] = x.toExponential().split('e') as [string, string];
  const exp = Number(e);
  if (exp < -4 || exp >= 6) return `${mantissa}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  return String(x);
}

/** Go's encoding/json string form: HTML-sensitive characters and U+2028/U+2029 escaped as \u sequences. */
function jsonString(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (ch === '\b') out += '\\b';
    else if (ch === '\f') out += '\\f';
    else if (c < 0x20 || ch === '<' || ch === '>' || ch === '&' || c === 0x2028 || c === 0x2029) out += `\\u${c.toString(16).padStart(4, '0')}`;
    else if (c >= 0xd800 && c <= 0xdfff) out += '\ufffd';
    else out += ch;
  }
  return `${out}"`;
}

function jsonValue(v: GoValue): string {
  if (v === null) return 'null';
  if (typeof v === 'string') return jsonString(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (v instanceof GoFloat) return Number.isFinite(v.value) ? String(v.value) : '';
  if (v instanceof GoSlice) {
    if (v.items === null) return 'null';
    const parts: string[] = [];
    for (let i = 0; i < v.length; i++) parts.push(jsonValue(v.at(i)));
    return `[${parts.join(',')}]`;
  }
  const entries = v instanceof GoMap ? [...v.entries].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)) : [...v.fields];
  return `{${entries.map(([k, x]) => `${jsonString(k)}:${jsonValue(x)}`).join(',')}}`;
}

/** Go compares strings by UTF-8 bytes, i.e. by code point; JS's < compares UTF-16 units, which differs past U+D7FF. */
function compareStrings(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let k = 0; k < n; k++) {
    const x = a.charCodeAt(k);
    const y = b.charCodeAt(k);
    if (x === y) continue;
    const key = (c: number) => (c >= 0xd800 && c <= 0xdfff ? c + 0x10000 : c);
    return key(x) < key(y) ? -1 : 1;
  }
  return a.length - b.length;
}

// ---------------------------------------------------------------------------------------------------------------
// Execution (Go's text/template exec semantics)

class RenderError extends Error {
  readonly line: number;
  readonly code: string;
  constructor(line: number, message: string, code = 'BAD_CONFIG') {
    super(message);
    this.line = line;
    this.code = code;
  }
}

class OverBudget extends Error {}

class Budget {
  private steps = 0;
  private chars = 0;
  step(n = 1): void {
    this.steps += n;
    if (this.steps > GO_TEMPLATE_BUDGET.steps)
      throw new OverBudget(`it ran more than ${GO_TEMPLATE_BUDGET.steps.toLocaleString('en-US')} steps (a conversation takes thousands)`);
  }
  text(n: number): void {
    this.chars += n;
    // Work proportional to the text too: a loop over len or slice of a long message costs more than one step.
    this.step(Math.floor(n / 1024));
    if (this.chars > GO_TEMPLATE_BUDGET.chars) throw new OverBudget(`it built more than ${GO_TEMPLATE_BUDGET.chars / 1024 / 1024} MiB of text`);
  }
}

/** Marks "no value piped in" (Go's missingVal), told apart from a piped-in nil. */
const NO_FINAL = Symbol('no final');
type Final = GoValue | typeof NO_FINAL;
type Signal = 'break' | 'continue' | undefined;

/** An argument as the template wrote it, for error messages. */
function describeArg(a: ArgNode): string {
  switch (a.type) {
    case 'field':
      return `.${a.ident.join('.')}`;
    case 'variable':
      return a.ident.join('.');
    case 'identifier':
      return a.name;
    case 'string':
      return JSON.stringify(a.value);
    case 'number':
      return String(a.value instanceof GoFloat ? a.value.value : a.value);
    case 'bool':
      return String(a.value);
    case 'chain':
      return `(...).${a.fields.join('.')}`;
    case 'pipe':
      return '(...)';
    case 'dot':
      return '.';
    case 'nil':
      return 'nil';
  }
}

const describePipe = (p: PipeNode): string => p.cmds.map((c) => c.args.map(describeArg).join(' ')).join(' | ');

class Execution {
  private readonly budget: Budget;
  private readonly out: string[];
  /** False for Ollama's last-round cut tree, which it executes without its own functions. */
  private readonly ollamaFunctions: boolean;
  private vars: { name: string; value: GoValue }[] = [];

  constructor(budget: Budget, out: string[], ollamaFunctions: boolean) {
    this.budget = budget;
    this.out = out;
    this.ollamaFunctions = ollamaFunctions;
  }

  run(root: ListNode, data: GoValue): void {
    this.vars = [{ name: '$', value: data }];
    this.walkList(data, root);
  }

  private emit(s: string): void {
    this.budget.text(s.length);
    this.out.push(s);
  }

  private walkList(dot: GoValue, list: ListNode): Signal {
    for (const n of list.nodes) {
      const signal = this.walk(dot, n);
      if (signal) return signal;
    }
    return undefined;
  }

  private walk(dot: GoValue, node: Node): Signal {
    this.budget.step();
    switch (node.type) {
      case 'text':
        this.emit(node.text);
        return undefined;
      case 'action': {
        // A declaration's value is not printed; the variable lives until the enclosing block's {{ end }}.
        const value = this.evalPipeline(dot, node.pipe);
        if (node.pipe.decl.length === 0) this.emit(this.printed(value, node.line, () => `{{ ${describePipe(node.pipe)} }}`));
        return undefined;
      }
      case 'break':
      case 'continue':
        return node.type;
      case 'if':
      case 'with': {
        const mark = this.vars.length;
        try {
          const value = this.evalPipeline(dot, node.pipe);
          if (isTrue(value)) return this.walkList(node.type === 'with' ? value : dot, node.list);
          return node.elseList ? this.walkList(dot, node.elseList) : undefined;
        } finally {
          this.vars.length = mark;
        }
      }
      case 'range':
        return this.walkRange(dot, node);
    }
  }

  private walkRange(dot: GoValue, node: BranchNode): Signal {
    const outer = this.vars.length;
    try {
      const value = this.evalPipeline(dot, node.pipe);
      const mark = this.vars.length;
      const { decl, isAssign } = node.pipe;
      const iteration = (index: GoValue, elem: GoValue): Signal => {
        this.budget.step();
        if (decl.length > 0) {
          if (isAssign) this.setVar(decl[0]!, decl.length > 1 ? index : elem, node.line);
          else this.vars[this.vars.length - 1]!.value = elem;
        }
        if (decl.length > 1) {
          if (isAssign) this.setVar(decl[1]!, elem, node.line);
          else this.vars[this.vars.length - 2]!.value = index;
        }
        try {
          return this.walkList(elem, node.list);
        } finally {
          this.vars.length = mark;
        }
      };
      let ran = false;
      if (value instanceof GoSlice) {
        for (let i = 0; i < value.length; i++) {
          ran = true;
          if (iteration(i, value.at(i)) === 'break') break;
        }
      } else if (value instanceof GoMap) {
        const keys = [...value.entries.keys()].sort(compareStrings);
        for (const k of keys) {
          ran = true;
          if (iteration(k, value.entries.get(k)!) === 'break') break;
        }
      } else if (typeof value === 'number') {
        // Go 1.22: ranging over an int n counts 0..n-1.
        if (decl.length > 1) throw new RenderError(node.line, `can't use ${value} to iterate over more than one variable`);
        for (let i = 0; i < value; i++) {
          ran = true;
          if (iteration(i, i) === 'break') break;
        }
      } else if (value !== null) {
        throw new RenderError(node.line, `range can't iterate over a ${typeName(value)}`);
      }
      if (!ran && node.elseList) return this.walkList(dot, node.elseList);
      return undefined;
    } finally {
      this.vars.length = outer;
    }
  }

  private setVar(name: string, value: GoValue, line: number): void {
    for (let k = this.vars.length - 1; k >= 0; k--) {
      if (this.vars[k]!.name === name) {
        this.vars[k]!.value = value;
        return;
      }
    }
    throw new RenderError(line, `undefined variable: ${name}`);
  }

  private varValue(name: string, line: number): GoValue {
    for (let k = this.vars.length - 1; k >= 0; k--) if (this.vars[k]!.name === name) return this.vars[k]!.value;
    throw new RenderError(line, `undefined variable: ${name}`);
  }

  private evalPipeline(dot: GoValue, pipe: PipeNode): GoValue {
    this.budget.step();
    let value: Final = NO_FINAL;
    for (const cmd of pipe.cmds) value = this.evalCommand(dot, cmd, value);
    const result = value === NO_FINAL ? null : value;
    for (const name of pipe.decl) {
      if (pipe.isAssign) this.setVar(name, result, pipe.line);
      else this.vars.push({ name, value: result });
    }
    return result;
  }

  private notAFunction(args: ArgNode[], final: Final): void {
    if (args.length > 1 || final !== NO_FINAL) throw new RenderError(args[0]!.line, `can't give an argument to the non-function ${describeArg(args[0]!)}`);
  }

  private evalCommand(dot: GoValue, cmd: CommandNode, final: Final): GoValue {
    this.budget.step();
    const first = cmd.args[0]!;
    const hasArgs = cmd.args.length > 1 || final !== NO_FINAL;
    switch (first.type) {
      case 'field':
        return this.fieldChain(dot, first.ident, hasArgs, first.line);
      case 'chain':
        return this.fieldChain(this.evalArg(dot, first.node), first.fields, hasArgs, first.line);
      case 'identifier':
        return this.call(dot, first, cmd.args.slice(1), final);
      case 'variable': {
        const value = this.varValue(first.ident[0]!, first.line);
        if (first.ident.length === 1) {
          this.notAFunction(cmd.args, final);
          return value;
        }
        return this.fieldChain(value, first.ident.slice(1), hasArgs, first.line);
      }
      case 'pipe':
        this.notAFunction(cmd.args, final);
        return this.evalPipeline(dot, first);
      case 'nil':
        throw new RenderError(first.line, 'nil is not a command');
    }
    this.notAFunction(cmd.args, final);
    return this.evalArg(dot, first);
  }

  private fieldChain(receiver: GoValue, ident: string[], hasArgs: boolean, line: number): GoValue {
    let value = receiver;
    ident.forEach((name, k) => {
      value = this.field(value, name, hasArgs && k === ident.length - 1, line);
    });
    return value;
  }

  private field(receiver: GoValue, name: string, hasArgs: boolean, line: number): GoValue {
    if (receiver instanceof GoMap) {
      if (hasArgs) throw new RenderError(line, `.${name} is not a method but has arguments`);
      // Ollama's data is a map: a name it does not set reads as nil (false, and refused when printed).
      return receiver.entries.get(name) ?? null;
    }
    if (receiver instanceof GoStruct) {
      if (!receiver.fields.has(name)) throw new RenderError(line, `can't evaluate field ${name} in type ${receiver.typeName}`);
      if (hasArgs) throw new RenderError(line, `.${name} has arguments but cannot be invoked as function`);
      return receiver.fields.get(name)!;
    }
    if (receiver === null) throw new RenderError(line, `can't evaluate field ${name} of nil (a field Ollama does not set)`);
    throw new RenderError(line, `can't evaluate field ${name} in type ${typeName(receiver)}`);
  }

  private evalArg(dot: GoValue, arg: ArgNode): GoValue {
    switch (arg.type) {
      case 'dot':
        return dot;
      case 'nil':
        return null;
      case 'bool':
      case 'number':
      case 'string':
        return arg.value;
      case 'field':
        return this.fieldChain(dot, arg.ident, false, arg.line);
      case 'variable': {
        const value = this.varValue(arg.ident[0]!, arg.line);
        return arg.ident.length === 1 ? value : this.fieldChain(value, arg.ident.slice(1), false, arg.line);
      }
      case 'chain':
        return this.fieldChain(this.evalArg(dot, arg.node), arg.fields, false, arg.line);
      case 'identifier':
        return this.call(dot, arg, [], NO_FINAL);
      case 'pipe':
        return this.evalPipeline(dot, arg);
    }
  }

  /** The text Go would write for a value; refuses values it writes as "<no value>" or as Go syntax/pointers. */
  private printed(v: GoValue, line: number, what: string | (() => string)): string {
    const context = () => (typeof what === 'string' ? what : what());
    if (v === null) throw new RenderError(line, `${context()} prints a value Ollama does not set (Go writes "<no value>" or "<nil>")`);
    if (typeof v === 'string') return v;
    if (typeof v === 'number' || typeof v === 'boolean') return String(v);
    if (v instanceof GoFloat) return formatFloat(v.value);
    if (v instanceof GoSlice) {
      if (v.printsAsJson) return this.counted(jsonValue(v));
      if (v.length === 0) return '[]';
    }
    throw new RenderError(line, `${context()} prints a ${typeName(v)}, which Go writes in its own syntax (use its fields, or json)`);
  }

  private counted(s: string): string {
    this.budget.text(s.length);
    return s;
  }

  private call(dot: GoValue, fn: { name: string; line: number }, argNodes: ArgNode[], final: Final): GoValue {
    this.budget.step();
    const { name, line } = fn;
    const fail = (message: string): never => {
      throw new RenderError(line, message);
    };
    if (OLLAMA_FUNCTIONS.has(name) && !this.ollamaFunctions) {
      fail(`"${name}" is not a defined function where Ollama renders the last turn of a template without .Messages, so Ollama fails too`);
    }
    const count = argNodes.length + (final === NO_FINAL ? 0 : 1);
    const arity = (min: number, max = min) => {
      if (count < min || count > max)
        fail(`wrong number of args for ${name}: want ${max === Infinity ? `at least ${min}` : min === max ? min : `${min} to ${max}`} got ${count}`);
    };
    if (name === 'and' || name === 'or') {
      // Go evaluates and/or lazily and returns the deciding operand itself, not a bool.
      arity(1, Infinity);
      let v: GoValue = null;
      for (const a of argNodes) {
        v = this.evalArg(dot, a);
        if (isTrue(v) === (name === 'or')) return v;
      }
      return final === NO_FINAL ? v : final;
    }
    const args = argNodes.map((a) => this.evalArg(dot, a));
    if (final !== NO_FINAL) args.push(final);
    switch (name) {
      case 'not':
        arity(1);
        return !isTrue(args[0]!);
      case 'eq': {
        arity(1, Infinity);
        if (args.length === 1) fail('missing argument for comparison');
        const [a, ...rest] = args as [GoValue, ...GoValue[]];
        return rest.some((b) => this.equal(a, b, line));
      }
      case 'ne':
        arity(2);
        return !this.equal(args[0]!, args[1]!, line);
      case 'lt':
      case 'le':
      case 'gt':
      case 'ge': {
        arity(2);
        const less = this.less(args[0]!, args[1]!, line);
        if (name === 'lt') return less;
        if (name === 'ge') return !less;
        const lessOrEqual = less || this.equal(args[0]!, args[1]!, line);
        return name === 'le' ? lessOrEqual : !lessOrEqual;
      }
      case 'len':
        arity(1);
        return this.length(args[0]!, line);
      case 'index':
        arity(1, Infinity);
        return this.index(args[0]!, args.slice(1), line);
      case 'slice':
        arity(1, Infinity);
        return this.slice(args[0]!, args.slice(1), line);
      case 'print':
      case 'println': {
        const parts = args.map((a) => this.printed(a, line, name));
        let s = '';
        parts.forEach((p, k) => {
          const spaced = name === 'println' || (typeof args[k - 1] !== 'string' && typeof args[k] !== 'string');
          s += (k > 0 && spaced ? ' ' : '') + p;
        });
        return this.counted(name === 'println' ? `${s}\n` : s);
      }
      case 'printf':
        arity(1, Infinity);
        if (typeof args[0] !== 'string') fail(`printf's format must be a string, not a ${typeName(args[0]!)}`);
        return this.counted(this.sprintf(args[0] as string, args.slice(1), line));
      case 'json':
        arity(1);
        return this.counted(jsonValue(args[0]!));
      case 'currentDate':
      case 'yesterdayDate': {
        // Ollama ignores the arguments (a format, some day) but they must be strings.
        for (const a of args) if (typeof a !== 'string') fail(`${name} takes strings, not a ${typeName(a)}`);
        const d = new Date();
        if (name === 'yesterdayDate') d.setDate(d.getDate() - 1);
        return `${String(d.getFullYear()).padStart(4, '0')}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
      }
    }
    return fail(`"${name}" is not a defined function`);
  }

  /** Go's eq: basic kinds compare by value (int with float is an error), nil equals only nil, messages by identity. */
  private equal(a: GoValue, b: GoValue, line: number): boolean {
    const kind = (v: GoValue) =>
      typeof v === 'string' ? 'string' : typeof v === 'number' ? 'int' : typeof v === 'boolean' ? 'bool' : v instanceof GoFloat ? 'float' : null;
    const ka = kind(a);
    const kb = kind(b);
    if (ka !== kb) {
      if (a !== null && b !== null) throw new RenderError(line, `incompatible types for comparison: ${typeName(a)} and ${typeName(b)}`);
      return false;
    }
    if (ka === 'float') return (a as GoFloat).value === (b as GoFloat).value;
    if (ka !== null) return a === b;
    // Lists, messages and maps: nil compares with anything of one kind, messages by pointer, the rest not at all.
    const goKind = (v: GoValue) => (v instanceof GoSlice ? 'slice' : v instanceof GoStruct ? 'pointer' : 'map');
    const isNil = (v: GoValue) => v === null || (v instanceof GoSlice && v.items === null);
    const nonComparable = () => new RenderError(line, `non-comparable types ${typeName(a)} and ${typeName(b)}`);
    if (a !== null && b !== null && goKind(a) !== goKind(b)) throw nonComparable();
    if (isNil(a) || isNil(b)) return isNil(a) === isNil(b);
    if (a instanceof GoStruct) return a === b;
    throw nonComparable();
  }

  private less(a: GoValue, b: GoValue, line: number): boolean {
    if (typeof a === 'number' && typeof b === 'number') return a < b;
    if (a instanceof GoFloat && b instanceof GoFloat) return a.value < b.value;
    if (typeof a === 'string' && typeof b === 'string') {
      this.budget.step(Math.floor(Math.min(a.length, b.length) / 1024));
      return compareStrings(a, b) < 0;
    }
    const basic = (v: GoValue) => typeof v === 'string' || typeof v === 'number' || v instanceof GoFloat;
    if (!basic(a) || !basic(b)) throw new RenderError(line, `invalid type for comparison: ${typeName(basic(a) ? b : a)}`);
    throw new RenderError(line, `incompatible types for comparison: ${typeName(a)} and ${typeName(b)}`);
  }

  private length(v: GoValue, line: number): number {
    if (typeof v === 'string') {
      this.budget.step(Math.floor(v.length / 1024));
      return Buffer.byteLength(v, 'utf8');
    }
    if (v instanceof GoSlice) return v.length;
    if (v instanceof GoMap) return v.entries.size;
    throw new RenderError(line, v === null ? 'len of nil' : `len of type ${typeName(v)}`);
  }

  private intArg(v: GoValue, cap: number, line: number, what: string): number {
    if (typeof v !== 'number') throw new RenderError(line, `cannot ${what} with ${v === null ? 'nil' : `type ${typeName(v)}`}`);
    if (v < 0 || v > cap) throw new RenderError(line, `index out of range: ${v}`);
    return v;
  }

  private index(item: GoValue, indexes: GoValue[], line: number): GoValue {
    if (item === null) throw new RenderError(line, 'index of untyped nil');
    let v: GoValue = item;
    for (const i of indexes) {
      if (v instanceof GoSlice || typeof v === 'string') {
        const len = typeof v === 'string' ? this.length(v, line) : v.length;
        const x = this.intArg(i, len, line, 'index slice/array');
        if (x >= len) throw new RenderError(line, `index out of range: ${x}`);
        // Indexing a string gives a byte, a number in Go too.
        v = typeof v === 'string' ? Buffer.from(v, 'utf8')[x]! : v.at(x);
      } else if (v instanceof GoMap) {
        if (typeof i !== 'string') throw new RenderError(line, `${typeName(i)} is not index type for map[string]any`);
        v = v.entries.get(i) ?? null;
      } else {
        throw new RenderError(line, `can't index item of type ${typeName(v)}`);
      }
    }
    return v;
  }

  private slice(item: GoValue, indexes: GoValue[], line: number): GoValue {
    if (item === null) throw new RenderError(line, 'slice of untyped nil');
    if (indexes.length > 3) throw new RenderError(line, `too many slice indexes: ${indexes.length}`);
    if (typeof item === 'string') {
      if (indexes.length === 3) throw new RenderError(line, 'cannot 3-index slice a string');
      const bytes = Buffer.from(item, 'utf8');
      this.budget.step(Math.floor(bytes.length / 1024));
      const idx = [0, bytes.length];
      indexes.forEach((x, k) => (idx[k] = this.intArg(x, bytes.length, line, 'index slice/array')));
      const [i, j] = idx as [number, number];
      if (i > j) throw new RenderError(line, `invalid slice index: ${i} > ${j}`);
      // Go slices bytes; a cut inside a character would send invalid UTF-8 to the tokenizer.
      const inside = (k: number) => k < bytes.length && (bytes[k]! & 0xc0) === 0x80;
      if (inside(i) || inside(j)) throw new RenderError(line, `slice ${i}:${j} cuts a multi-byte character of the string`);
      return this.counted(bytes.subarray(i, j).toString('utf8'));
    }
    if (!(item instanceof GoSlice)) throw new RenderError(line, `can't slice item of type ${typeName(item)}`);
    const idx = [0, item.length, item.cap];
    indexes.forEach((x, k) => (idx[k] = this.intArg(x, item.cap, line, 'index slice/array')));
    const [i, j, k] = idx as [number, number, number];
    if (i > j) throw new RenderError(line, `invalid slice index: ${i} > ${j}`);
    if (j > k) throw new RenderError(line, `invalid slice index: ${j} > ${k}`);
    const cap = indexes.length === 3 ? k - i : item.cap - i;
    return new GoSlice(item.typeName, item.items, item.start + i, j - i, cap, item.printsAsJson);
  }

  /** fmt.Sprintf for the verbs templates use (%s %d %v %%); anything fmt would write as an error is refused. */
  private sprintf(format: string, args: GoValue[], line: number): string {
    let out = '';
    let used = 0;
    for (let k = 0; k < format.length; k++) {
      const c = format[k]!;
      if (c !== '%') {
        out += c;
        continue;
      }
      const verb = format[++k];
      if (verb === '%') {
        out += '%';
        continue;
      }
      if (verb !== 's' && verb !== 'd' && verb !== 'v') {
        throw new RenderError(line, `printf verb "%${verb ?? ''}" is not supported (only %s, %d, %v and %%)`, 'UNSUPPORTED_TEMPLATE');
      }
      if (used >= args.length) throw new RenderError(line, `printf format ${JSON.stringify(format)} has more verbs than arguments`);
      const a = args[used++]!;
      if (verb === 'd' && typeof a !== 'number') throw new RenderError(line, `printf %d given a ${typeName(a)}`);
      if (verb === 's' && typeof a !== 'string' && !(a instanceof GoSlice && a.printsAsJson)) throw new RenderError(line, `printf %s given a ${typeName(a)}`);
      out += this.printed(a, line, 'printf');
    }
    if (used < args.length) throw new RenderError(line, `printf format ${JSON.stringify(format)} has fewer verbs than arguments`);
    return out;
  }
}

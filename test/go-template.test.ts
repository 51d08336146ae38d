import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { GO_TEMPLATE_BUDGET, parseGoTemplate, renderOllamaChat, type OllamaChatOptions, type OllamaMessage } from '../src/engine/text/go-template.js';
import { InputError } from '../src/util/errors.js';

// Templates written for these tests in the style of those Ollama ships. The expected prompts were checked against
// Go's text/template driven the way Ollama's server drives it.

const LLAMA3 = `{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}{{ if or (ne .Role "assistant") (not $last) }}<|eot_id|>{{ end }}
{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}`;

const CHATML = `{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}`;

const MISTRAL = `{{- range $i, $m := .Messages }}
{{- if eq $m.Role "user" }}[INST] {{ if and (eq (len (slice $.Messages $i)) 1) $.System }}{{ $.System }}

{{ end }}{{ $m.Content }}[/INST]
{{- else if eq $m.Role "assistant" }} {{ $m.Content }}</s>
{{- end }}
{{- end }}`;

const GEMMA = `{{- $system := "" }}
{{- range .Messages }}
{{- if eq .Role "system" }}
{{- $system = .Content }}
{{- continue }}
{{- end }}
{{- if eq .Role "user" }}<start_of_turn>user
{{ if $system }}{{ $system }}

{{ $system = "" }}{{ end }}
{{- .Content }}<end_of_turn>
{{ else }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}
{{- end }}<start_of_turn>model
`;

const LLAMA2 = `{{- $first := true }}
{{- range .Messages }}
{{- if eq .Role "user" }}
{{- if $first }}<s>{{ end }}[INST] {{ if and $first $.System }}<<SYS>>
{{ $.System }}
<</SYS>>

{{ end }}{{ .Content }} [/INST]
{{- $first = false }}
{{- else if eq .Role "assistant" }} {{ .Content }} </s><s>
{{- end }}
{{- end }}`;

/** A template without .Messages: Ollama renders it once per turn and cuts the last turn at {{ .Response }}. */
const LEGACY =
  '{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>';

const ONE: OllamaMessage[] = [{ role: 'user', content: 'Hello' }];
const WITH_SYSTEM: OllamaMessage[] = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'Hello' },
];
const THREE: OllamaMessage[] = [
  { role: 'user', content: 'Hi' },
  { role: 'assistant', content: 'Hello!' },
  { role: 'user', content: 'Name?' },
];
const ENDS_WITH_ASSISTANT: OllamaMessage[] = [
  { role: 'user', content: 'Hi' },
  { role: 'assistant', content: 'Hello!' },
];

function render(source: string, messages: readonly OllamaMessage[] = ONE, options: Partial<OllamaChatOptions> = {}): string {
  return renderOllamaChat(parseGoTemplate(source, 'model: template'), messages, { addGenerationPrompt: true, ...options }, 'model: template');
}

/** Asserts an InputError with this code, a reason matching `reason`, and a one-line message. */
function refuses(fn: () => unknown, code: string, reason: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof InputError, `expected InputError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.equal(e.where, 'model: template');
    assert.match(e.reason, reason);
    assert.ok(!e.message.includes('\n'), `not one line: ${JSON.stringify(e.message)}`);
    return true;
  });
}

describe('Ollama chat prompts', () => {
  const cases: { name: string; template: string; one: string; system: string; three: string; defaultSystem: string }[] = [
    {
      name: 'llama3-instruct style',
      template: LLAMA3,
      one: '<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
      system:
        '<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
      three:
        '<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nName?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
      defaultSystem:
        '<|start_header_id|>system<|end_header_id|>\n\nDEF<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
    },
    {
      name: 'chatml (Qwen) style',
      template: CHATML,
      one: '<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n',
      system: '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n',
      three: '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nName?<|im_end|>\n<|im_start|>assistant\n',
      defaultSystem: '<|im_start|>system\nDEF<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n',
    },
    {
      name: 'mistral-instruct style',
      template: MISTRAL,
      one: '[INST] Hello[/INST]',
      system: '[INST] Be brief.\n\nHello[/INST]',
      three: '[INST] Hi[/INST] Hello!</s>[INST] Name?[/INST]',
      defaultSystem: '[INST] DEF\n\nHello[/INST]',
    },
    {
      name: 'gemma-instruct style',
      template: GEMMA,
      one: '<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n',
      system: '<start_of_turn>user\nBe brief.\n\nHello<end_of_turn>\n<start_of_turn>model\n',
      three: '<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nName?<end_of_turn>\n<start_of_turn>model\n',
      defaultSystem: '<start_of_turn>user\nDEF\n\nHello<end_of_turn>\n<start_of_turn>model\n',
    },
    {
      name: 'llama2-chat style',
      template: LLAMA2,
      one: '<s>[INST] Hello [/INST]',
      system: '<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHello [/INST]',
      three: '<s>[INST] Hi [/INST] Hello! </s><s>[INST] Name? [/INST]',
      defaultSystem: '<s>[INST] <<SYS>>\nDEF\n<</SYS>>\n\nHello [/INST]',
    },
    {
      name: 'legacy template without .Messages',
      template: LEGACY,
      one: '<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n',
      system: '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n',
      // Each earlier turn is the whole template, which here ends without a newline after <|im_end|>.
      three: '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|><|im_start|>user\nName?<|im_end|>\n<|im_start|>assistant\n',
      defaultSystem: '<|im_start|>system\nDEF<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n',
    },
  ];

  for (const c of cases) {
    describe(c.name, () => {
      it('renders one user message', () => assert.equal(render(c.template, ONE), c.one));
      it('renders a system message and a user message', () => assert.equal(render(c.template, WITH_SYSTEM), c.system));
      it('renders a three-turn conversation', () => assert.equal(render(c.template, THREE), c.three));
      it('uses the default system prompt only when the conversation does not start with one', () => {
        assert.equal(render(c.template, ONE, { defaultSystem: 'DEF' }), c.defaultSystem);
        assert.equal(render(c.template, WITH_SYSTEM, { defaultSystem: 'DEF' }), c.system);
      });
    });
  }

  it('cuts a template without .Messages at {{ .Response }} only when asked for the generation prompt', () => {
    // True: Ollama's prompt, which ends where the answer goes (after the assistant's text when prefilled).
    assert.equal(render(LEGACY, ENDS_WITH_ASSISTANT), '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!');
    // False: the last turn is rendered whole, closed like the earlier ones.
    assert.equal(
      render(LEGACY, ENDS_WITH_ASSISTANT, { addGenerationPrompt: false }),
      '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>',
    );
    assert.equal(render(LEGACY, ONE, { addGenerationPrompt: false }), '<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<|im_end|>');
  });

  it('lets a .Messages template decide itself whether to open the assistant turn', () => {
    assert.equal(render(CHATML, ENDS_WITH_ASSISTANT), '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!');
    assert.equal(render(CHATML, THREE, { addGenerationPrompt: false }), render(CHATML, THREE));
    assert.equal(
      render(LLAMA3, ENDS_WITH_ASSISTANT),
      '<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!',
    );
  });

  it('prepends the default system prompt when the first message is not a system message, as Ollama does', () => {
    const later: OllamaMessage[] = [
      { role: 'user', content: 'a' },
      { role: 'system', content: 'S2' },
      { role: 'user', content: 'b' },
    ];
    assert.equal(
      render('{{ .System }}|{{ range .Messages }}{{ .Role }}:{{ .Content }};{{ end }}', later, { defaultSystem: 'DEF' }),
      'DEF\n\nS2|system:DEF;user:a;system:S2;user:b;',
    );
  });

  it('merges consecutive messages of one role and joins every system message into .System', () => {
    const msgs: OllamaMessage[] = [
      { role: 'system', content: 's1' },
      { role: 'system', content: 's2' },
      { role: 'user', content: 'a' },
      { role: 'user', content: 'b' },
      { role: 'tool', content: 't1' },
      { role: 'tool', content: 't2' },
    ];
    assert.equal(
      render('{{ .System }}|{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}', msgs),
      's1\n\ns2|system=s1\n\ns2;user=a\n\nb;tool=t1;tool=t2;',
    );
  });

  it('renders a template without .Messages turn by turn, moving later system messages into the next turn', () => {
    const t = '{{ if .System }}[S:{{ .System }}]{{ end }}[U:{{ .Prompt }}][A:{{ .Response }}]';
    const msgs: OllamaMessage[] = [
      { role: 'system', content: 's1' },
      { role: 'user', content: 'a' },
      { role: 'assistant', content: 'b' },
      { role: 'system', content: 's2' },
      { role: 'user', content: 'c' },
    ];
    assert.equal(render(t, msgs), '[S:s1][U:a][A:b][S:s2][U:c][A:');
  });

  it('appends {{ .Response }} to a template that names neither .Messages nor .Response', () => {
    assert.equal(render('U:{{ .Prompt }} A:', THREE), 'U:Hi A:Hello!U:Name? A:');
  });

  it('cuts the last turn after the first .Response field, dropping whole actions past it', () => {
    assert.equal(render('A{{ .Prompt }}B{{ .Response | printf "%s" }}C', THREE), 'AHiBHello!CAName?B');
    assert.equal(render('U{{ .Prompt }}A{{ $.Response }}Z', ONE), 'UHelloAZ');
  });

  it('sets .Think, .ThinkLevel and .IsThinkSet from the think option', () => {
    const t = '{{ if .Think }}think {{ end }}{{ .ThinkLevel }}|{{ .IsThinkSet }}|{{ range .Messages }}{{ .Content }}{{ end }}';
    assert.equal(render(t), '|false|Hello');
    assert.equal(render(t, ONE, { think: true }), 'think medium|true|Hello');
    assert.equal(render(t, ONE, { think: false }), '|true|Hello');
  });

  it('gives messages the fields of Ollama message, empty where vramfit has nothing', () => {
    const t =
      '{{ range .Messages }}[{{ .Thinking }}|{{ .Images }}|{{ .ToolCalls }}|{{ .ToolName }}|{{ if .ToolCalls }}calls{{ end }}]{{ end }}{{ if .Tools }}tools{{ end }}';
    assert.equal(render(t), '[|[]|[]||]');
  });
});

describe('Go template semantics', () => {
  it('trims spaces at {{- and -}}, and reads {{-3}} as a number', () => {
    assert.equal(render('{{ range .Messages }}a  \n {{- .Content -}} \n  b{{ end }}'), 'aHellob');
    assert.equal(render('x{{-3}}y{{- 3 -}}z{{ range .Messages }}{{ end }}'), 'x-3y3z');
  });

  it('drops comments, trimming around them when marked', () => {
    assert.equal(render('a {{- /* a comment */ -}} b {{/* another */}}c{{ range .Messages }}{{ end }}'), 'ab c');
  });

  it('treats "", 0, nil and empty lists as false', () => {
    const msgs: OllamaMessage[] = [
      { role: 'user', content: '' },
      { role: 'assistant', content: 'x' },
    ];
    assert.equal(
      render(
        '{{ range .Messages }}{{ if .Content }}C{{ else }}E{{ end }}{{ end }}|{{ if 0 }}z{{ else }}nz{{ end }}|{{ if .Tools }}T{{ else }}noT{{ end }}|{{ if .Unset }}u{{ else }}nu{{ end }}',
        msgs,
      ),
      'EC|nz|noT|nu',
    );
    assert.equal(render('{{ if slice .Messages 1 }}some{{ else }}none{{ end }}'), 'none');
  });

  it('returns an operand from and/or, evaluating only what it needs', () => {
    assert.equal(
      render('{{ range .Messages }}[{{ and .Content "yes" }}|{{ or .Role "x" }}|{{ and "x" 0 }}|{{ or 0 "" }}|{{ or $.System "dflt" }}]{{ end }}'),
      '[yes|user|0||dflt]',
    );
    // The second operand would fail (no such field on a message) if it were evaluated.
    assert.equal(render('{{ range .Messages }}{{ or .Content .NoSuchField }}{{ end }}'), 'Hello');
  });

  it('compares with eq against several values, else if and not', () => {
    const t = '{{ range .Messages }}{{ if eq .Role "user" "system" }}U/S{{ else if eq .Role "assistant" }}A{{ else }}O{{ end }};{{ end }}';
    assert.equal(render(t, [...THREE, { role: 'tool', content: 't' }]), 'U/S;A;U/S;O;');
    assert.equal(
      render('{{ range $i, $m := .Messages }}{{ if lt $i 1 }}first{{ else if ge $i 2 }}late{{ else }}mid{{ end }} {{ end }}', THREE),
      'first mid late ',
    );
    assert.equal(
      render('{{ if not .System }}none{{ end }}{{ if ne (len .Messages) 2 }}!2{{ end }}{{ if le 1 1 }}le{{ end }}{{ if gt 2 1 }}gt{{ end }}'),
      'none!2legt',
    );
  });

  it('runs the else of a range over nothing', () => {
    assert.equal(render('{{ range .Messages }}m{{ else }}none{{ end }}|{{ range .Tools }}t{{ else }}no tools{{ end }}'), 'm|no tools');
  });

  it('sets dot with with, and takes its else when the value is empty', () => {
    assert.equal(
      render('{{ with .System }}sys={{ . }}{{ else }}nosys{{ end }}{{ range .Messages }}{{ with .Content }}[{{ . }}]{{ end }}{{ end }}'),
      'nosys[Hello]',
    );
    assert.equal(render('{{ with .Unset }}x{{ else with .Messages }}{{ len . }} messages{{ end }}'), '1 messages');
  });

  it('scopes variables to their block, with $ the data and = assigning outer ones', () => {
    const t =
      '{{ $n := 0 }}{{ range $i, $m := .Messages }}{{ $n = $i }}{{ $i }}:{{ $m.Role }}:{{ len $.Messages }};{{ end }}n={{ $n }}{{ if $x := .System }}{{ $x }}{{ else }}!{{ end }}';
    assert.equal(render(t, THREE, { defaultSystem: 'D' }), '0:system:4;1:user:4;2:assistant:4;3:user:4;n=3D');
  });

  it('measures, slices and indexes strings by bytes and lists by elements', () => {
    assert.equal(
      render('{{ len "héllo" }}|{{ slice "hello" 1 3 }}|{{ index "abc" 1 }}|{{ (index .Messages 1).Content }}|{{ len (slice .Messages 1) }}', THREE),
      '6|el|98|Hello!|2',
    );
    assert.equal(render('{{ range $i, $_ := .Messages }}{{ if eq (len (slice $.Messages $i)) 1 }}last={{ .Content }}{{ end }}{{ end }}', THREE), 'last=Name?');
  });

  it('formats with printf %s %d %v %%, print and println as fmt does', () => {
    assert.equal(render('{{ range .Messages }}{{ printf "%s-%d-%v-%v %%" .Role 42 true .Content }}{{ end }}'), 'user-42-true-Hello %');
    assert.equal(
      render('{{ print 1 2 "a" 3 true }}|{{ println "x" 1 }}|{{ .System | printf "<%s>" | printf "[%s]" }}{{ range .Messages }}{{ end }}'),
      '1 2a3 true|x 1\n|[<>]',
    );
    assert.equal(
      render("{{ 1e6 }} {{ 1.5 }} {{ 2.5e-5 }} {{ 1e3 }} {{ 0x1F }} {{ 017 }} {{ 1_000 }} {{ 'a' }}{{ range .Messages }}{{ end }}"),
      '1e+06 1.5 2.5e-05 1000 31 15 1000 97',
    );
  });

  it('reads raw strings and Go string escapes', () => {
    assert.equal(render('{{ "a\\tb\\n\\u00e9\\x41\\101\\\\\\"" }}|{{ `raw\\n{{ x }}` }}{{ range .Messages }}{{ end }}'), 'a\tb\né' + 'AA\\"|raw\\n{{ x }}');
  });

  it('stops a range with break and skips with continue', () => {
    const t = '{{ range .Messages }}{{ if eq .Role "system" }}{{ continue }}{{ end }}{{ .Content }}{{ if eq .Content "Hello!" }}{{ break }}{{ end }};{{ end }}';
    assert.equal(render(t, THREE, { defaultSystem: 'D' }), 'Hi;Hello!');
  });

  it('ranges over an integer and a map, keys sorted', () => {
    assert.equal(
      render(
        '{{ range $i := 3 }}{{ $i }}{{ end }}{{ range $k, $v := $ }}{{ if eq $k "Response" "System" }}{{ $k }},{{ end }}{{ end }}{{ range .Messages }}{{ end }}',
      ),
      '012Response,System,',
    );
  });

  it('has Ollama json (Go encoding/json escaping) and currentDate', () => {
    const msgs: OllamaMessage[] = [{ role: 'user', content: 'a<b>&"\n' }];
    assert.equal(
      render('{{ json .Messages }}|{{ json .Tools }}|{{ json 5 }}', msgs),
      '[{"Role":"user","Content":"a\\u003cb\\u003e\\u0026\\"\\n","Thinking":"","Images":null,"ToolCalls":null,"ToolName":"","ToolCallID":""}]|null|5',
    );
    const d = new Date();
    const today = `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
    const out = render('Today is {{ currentDate }}.{{ range .Messages }}{{ end }}');
    // Around midnight the date may move on between the two readings.
    assert.match(out, /^Today is \d{4}-\d{2}-\d{2}\.$/);
    assert.ok(out === `Today is ${today}.` || d.getHours() === 23, out);
  });
});

describe('refusals', () => {
  it('refuses {{ template }}, {{ define }} and {{ block }} as unsupported', () => {
    refuses(() => parseGoTemplate('{{ template "x" . }}', 'model: template'), 'UNSUPPORTED_TEMPLATE', /line 1: \{\{ template \}\}/);
    refuses(() => parseGoTemplate('a\n{{ define "x" }}hi{{ end }}{{ .Prompt }}', 'model: template'), 'UNSUPPORTED_TEMPLATE', /line 2: \{\{ define \}\}/);
    refuses(() => parseGoTemplate('{{ block "x" . }}hi{{ end }}', 'model: template'), 'UNSUPPORTED_TEMPLATE', /\{\{ block \}\}/);
  });

  it('refuses functions: Ollama-only ones as unsupported, undefined ones as broken', () => {
    refuses(
      () => parseGoTemplate('{{ range .Tools }}{{ toTypeScriptType .Function }}{{ end }}', 'model: template'),
      'UNSUPPORTED_TEMPLATE',
      /"toTypeScriptType"/,
    );
    refuses(() => parseGoTemplate('{{ html .Prompt }}', 'model: template'), 'UNSUPPORTED_TEMPLATE', /"html"/);
    refuses(() => parseGoTemplate('{{ upper .Prompt }}', 'model: template'), 'BAD_CONFIG', /line 1: function "upper" not defined/);
  });

  it('prefers a syntax error to an unsupported construct', () => {
    refuses(() => parseGoTemplate('{{ template "x" }}\n{{ if .Prompt }}', 'model: template'), 'BAD_CONFIG', /missing \{\{ end \}\}/);
  });

  it('refuses syntax errors naming the line', () => {
    refuses(() => parseGoTemplate('a\nb {{ .Prompt ', 'model: template'), 'BAD_CONFIG', /line 2: unclosed action/);
    refuses(
      () => parseGoTemplate('x\n\n{{ range .Messages }}\n{{ if .Content }}y{{ end }}', 'model: template'),
      'BAD_CONFIG',
      /line 3: missing \{\{ end \}\} for the \{\{ range \}\} on line 3/,
    );
    refuses(() => parseGoTemplate('{{ end }}', 'model: template'), 'BAD_CONFIG', /unexpected \{\{ end \}\}/);
    refuses(() => parseGoTemplate('{{ $x }}', 'model: template'), 'BAD_CONFIG', /undefined variable "\$x"/);
    refuses(() => parseGoTemplate('{{ break }}', 'model: template'), 'BAD_CONFIG', /outside \{\{ range \}\}/);
    refuses(() => parseGoTemplate('{{ "unterminated }}', 'model: template'), 'BAD_CONFIG', /unterminated quoted string/);
    refuses(() => parseGoTemplate('{{ .X | "a" }}', 'model: template'), 'BAD_CONFIG', /non executable command/);
    refuses(() => parseGoTemplate('{{ /* space before */ }}', 'model: template'), 'BAD_CONFIG', /unexpected "\/"/);
  });

  it('refuses what fails when Go executes it', () => {
    const run = (t: string) => () => render(t);
    refuses(run('{{ range .Messages }}{{ .Name }}{{ end }}'), 'BAD_CONFIG', /line 1: can't evaluate field Name/);
    refuses(run('{{ index .Messages 3 }}'), 'BAD_CONFIG', /index out of range: 3/);
    refuses(run('{{ range .Messages }}{{ .Role .Content }}{{ end }}'), 'BAD_CONFIG', /has arguments/);
    refuses(run('{{ range .Messages }}{{ if eq .Role 1 }}{{ end }}{{ end }}'), 'BAD_CONFIG', /incompatible types for comparison/);
    refuses(run('{{ range .Messages }}{{ len 3 }}{{ end }}'), 'BAD_CONFIG', /len of type int/);
    refuses(run('{{ range .Messages }}{{ slice .Content 2 9 }}{{ end }}'), 'BAD_CONFIG', /index out of range/);
  });

  it('refuses to print what Go would print as "<no value>" or in Go syntax', () => {
    refuses(() => render('{{ .Unset }}{{ range .Messages }}{{ end }}'), 'BAD_CONFIG', /\{\{ \.Unset \}\} prints a value Ollama does not set/);
    refuses(() => render('{{ range .Messages }}{{ . }}{{ end }}'), 'BAD_CONFIG', /prints a message/);
    refuses(() => render('{{ range .Messages }}{{ printf "%s %s" .Role }}{{ end }}'), 'BAD_CONFIG', /more verbs than arguments/);
    refuses(() => render('{{ range .Messages }}{{ printf "%5s" .Role }}{{ end }}'), 'UNSUPPORTED_TEMPLATE', /printf verb/);
  });

  it('refuses what Ollama cannot render either', () => {
    // Ollama's cut of the last turn crashes on a {{ .Response }} inside a block with an else.
    refuses(() => render('{{ if .Prompt }}{{ .Prompt }}{{ .Response }}{{ else }}x{{ end }}'), 'BAD_CONFIG', /Ollama cannot render this template either/);
    // And it renders that cut without its own functions.
    refuses(() => render('{{ json .Prompt }}{{ .Response }}'), 'BAD_CONFIG', /"json" is not a defined function/);
  });

  it('stops a runaway range at the step budget', () => {
    const many = Array.from({ length: 200 }, (_, i) => ({ role: i % 2 ? 'assistant' : 'user', content: `m${i}` }));
    const nested = '{{ range .Messages }}{{ range $.Messages }}{{ range $.Messages }}.{{ end }}{{ end }}{{ end }}';
    refuses(() => render(nested, many), 'BAD_CONFIG', /stopped: it ran more than 1,000,000 steps/);
    refuses(() => render('{{ range 1000000000 }}{{ end }}{{ .Prompt }}'), 'BAD_CONFIG', /more than 1,000,000 steps/);
  });

  it('stops a template that builds too much text', () => {
    const doubling = '{{ $x := "ab" }}{{ range 64 }}{{ $x = printf "%s%s" $x $x }}{{ end }}{{ len $x }}{{ range .Messages }}{{ end }}';
    refuses(() => render(doubling), 'BAD_CONFIG', new RegExp(`more than ${GO_TEMPLATE_BUDGET.chars / 1024 / 1024} MiB`));
  });

  it('refuses nesting deeper than the parser allows', () => {
    const deep = '{{ if .Prompt }}'.repeat(500) + '{{ end }}'.repeat(500);
    refuses(() => parseGoTemplate(deep, 'model: template'), 'BAD_CONFIG', /nested more than/);
    refuses(() => parseGoTemplate(`{{ ${'('.repeat(500)}.Prompt${')'.repeat(500)} }}`, 'model: template'), 'BAD_CONFIG', /nested more than/);
  });
});

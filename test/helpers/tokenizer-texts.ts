/**
 * Texts tokenizers part ways on: scripts, emoji (with joiners and modifiers), code with tabs and runs of spaces,
 * leading and trailing whitespace, newlines of every kind, digits, contractions, combining marks, and the text of
 * special tokens typed as text (whole and cut short). Shared by the tokenizer parity test and script.
 */
export const PARITY_TEXTS: readonly string[] = [
  '',
  ' ',
  '  ',
  '\n',
  '\n\n\n',
  '\r\n',
  '\t',
  'Hello world',
  'Hello, world!',
  ' Hello world',
  'Hello world ',
  '   leading and trailing   ',
  'The quick brown fox jumps over the lazy dog.',
  "I'm sure you'll like it; they've said we'd go. DON'T SHOUT. It's O'Neil's.",
  'Numbers: 0 7 42 123 1234 12345 1234567890 3.14159 -17 1e-9 0x1F',
  '你好，世界！今天天气很好。',
  '机器学习是人工智能的一个分支，研究计算机如何从数据中学习。',
  'こんにちは世界。日本語のテキストです。カタカナとひらがな。',
  '한국어 텍스트입니다. 안녕하세요!',
  'Привет, мир! Это тест.',
  'مرحبا بالعالم',
  'नमस्ते दुनिया',
  'Ελληνικά κείμενα',
  'emoji 😀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇯🇵',
  '😀😀😀',
  'café naïve résumé Ångström',
  'e\u0301 a\u0308 combining marks',
  'def add(a, b):\n\treturn a + b\n',
  'function f(x) {\n    if (x  ===  1)  {\n        return   [x, x*2];\n    }\n}\n',
  'int main() {\r\n\tprintf("%d\\n", 42);\r\n}',
  '    four leading spaces',
  'tabs\t\tbetween\t\t\twords',
  'many     spaces      here',
  'line1\nline2\n\nline4\n \n',
  'https://example.com/path?query=1&x=y#frag',
  'user@example.com, +1 (555) 123-4567',
  '<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n',
  '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>',
  '<s>[INST] What? [/INST]</s>',
  '<|endoftext|>tail',
  '<|im_start|>half <|im_end',
  '< s > </ s> <|eot_id| > <|endoftext',
  '<think>\nreasoning\n</think>\n\nanswer',
  '\u00a0non-breaking\u00a0spaces\u2003em\u2009thin',
  'zero\u200bwidth\u200djoiner',
  '\u2581already\u2581escaped',
  'Ⅻ ½ ² ℃ ﬁ ｆｕｌｌｗｉｄｔｈ',
  '𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛 𐍈',
  '!!!???...,,,;;;:::',
  '"quoted" \'single\' `back`',
  'a'.repeat(200),
  ' '.repeat(40) + 'x',
  'x' + '\n'.repeat(10) + 'y',
];

/** Pieces random texts are stitched from, so every kind above meets every other at a boundary. */
const ATOMS = [
  ' ',
  '  ',
  '\t',
  '\n',
  '\r\n',
  'the',
  ' cat',
  'Hello',
  "'s",
  "n't",
  '123',
  '4567',
  '.',
  ', ',
  '!?',
  '你好',
  '世界',
  'こんにちは',
  '한국',
  'Привет',
  '😀',
  '👍🏽',
  '👨‍👩‍👧',
  'é',
  'e\u0301',
  '{}',
  '()',
  '=>',
  '<|im_start|>',
  '<|im_end|>',
  '<|eot_id|>',
  '<s>',
  '</s>',
  '<|endoftext|>',
  '<|',
  '|>',
  '▁',
  'x',
  'ABC',
  'def',
];

/** Deterministic random texts (mulberry32 from `seed`). */
export function randomTexts(count: number, seed: number): string[] {
  let s = seed >>> 0;
  const next = (): number => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out: string[] = [];
  for (let i = 0; i < count; i++) {
    const n = 1 + Math.floor(next() * 12);
    let t = '';
    for (let k = 0; k < n; k++) t += ATOMS[Math.floor(next() * ATOMS.length)]!;
    out.push(t);
  }
  return out;
}

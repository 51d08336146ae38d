/** Tiny tokenizers in the tokenizer.json format, written by tests (no downloads). */

/** GPT-2's bytes_to_unicode: every byte gets a printable character, so a BPE vocabulary can be written as text. */
export function bytesToUnicode(): string[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const map: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) map[b] = String.fromCodePoint(printable.includes(b) ? b : 256 + extra++);
  return map;
}
export const B2U = bytesToUnicode();
export const sym = (s: string): string => Array.from(new TextEncoder().encode(s), (b) => B2U[b]).join('');
export const bytesSym = (...bytes: number[]): string => bytes.map((b) => B2U[b]).join('');

/** Merges in rank order, each as the two halves' byte-level spellings. */
export const MERGES: [string, string][] = [
  ['h', 'e'],
  ['l', 'l'],
  ['he', 'll'],
  ['hell', 'o'],
  [sym(' '), 'w'],
  ['o', 'r'],
  [sym(' w'), 'or'],
  ['l', 'd'],
  [sym(' wor'), 'ld'],
  // é (C3 A9) becomes one token; 世 (E4 B8 96) and 🙂 (F0 9F 99 82) get tokens that end mid-character.
  [bytesSym(0xc3), bytesSym(0xa9)],
  [bytesSym(0xe4), bytesSym(0xb8)],
  [bytesSym(0xf0), bytesSym(0x9f)],
];
export const SPECIALS = ['<s>', '</s>', '<|im_start|>', '<|im_end|>'];

export function tokenizerJson(): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  B2U.forEach((u, i) => (vocab[u] = i));
  for (const [a, b] of MERGES) vocab[a + b] = Object.keys(vocab).length;
  const firstSpecial = Object.keys(vocab).length;
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIALS.map((content, i) => ({
      id: firstSpecial + i,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [firstSpecial], tokens: ['<s>'] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: MERGES.map(([a, b]) => `${a} ${b}`),
    },
  };
}

/** A Llama-2-style SentencePiece BPE: Metaspace via normalizer, byte fallback for characters outside the vocab. */
export function byteFallbackTokenizerJson(): Record<string, unknown> {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  for (const piece of ['▁', 'h', 'e', 'l', 'o', 'w', 'r', 'd', 'é', 'he', 'll', '▁w', 'or', '▁he']) vocab[piece] = Object.keys(vocab).length;
  return {
    version: '1.0',
    added_tokens: ['<unk>', '<s>', '</s>'].map((content, id) => ({ id, content, special: true, normalized: false })),
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: '▁' },
        { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [],
      special_tokens: {},
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE',
      unk_token: '<unk>',
      fuse_unk: true,
      byte_fallback: true,
      vocab,
      merges: ['h e', 'l l', '▁ w', 'o r', '▁ he'],
    },
  };
}

export const CHATML =
  '{{ bos_token }}{% for message in messages %}' +
  "{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}" +
  "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

export const TOKENIZER_CONFIG = {
  bos_token: '<s>',
  eos_token: '</s>',
  clean_up_tokenization_spaces: false,
  chat_template: CHATML,
};

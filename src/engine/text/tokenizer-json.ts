/**
 * The parts of a tokenizer.json the tokenizer library trusts without checking: a vocabulary that is
 * not a token → id map, ids that repeat or are not ids, merges of tokens the vocabulary lacks, added
 * tokens without an id. The library then encodes text to nothing and no error is raised; refusing
 * here names the file and the key instead.
 */
import { InputError } from '../../util/errors.js';

type Json = Record<string, unknown>;

const MODEL_TYPES = ['BPE', 'WordPiece', 'WordLevel', 'Unigram'];

export function checkTokenizerJson(json: Json, file: string): void {
  const fail = (key: string, reason: string): never => {
    throw new InputError(file, `${key}: ${reason}`, 'BAD_CONFIG');
  };
  const model = json['model'];
  if (typeof model !== 'object' || model === null || Array.isArray(model)) fail('model', 'missing or not an object');
  const m = model as Json;
  const type = m['type'] ?? (m['merges'] !== undefined ? 'BPE' : undefined);
  if (typeof type !== 'string' || !MODEL_TYPES.includes(type)) fail('model.type', `${JSON.stringify(type)} is not one of ${MODEL_TYPES.join(', ')}`);
  const ids = new Set<number>();
  const isId = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
  let vocab: Set<string> | undefined;
  if (type === 'Unigram') {
    const v = m['vocab'];
    if (!Array.isArray(v) || !v.every((e) => Array.isArray(e) && typeof e[0] === 'string' && typeof e[1] === 'number'))
      fail('model.vocab', 'a Unigram vocabulary must be a list of [piece, score] pairs');
  } else {
    const v = m['vocab'];
    if (typeof v !== 'object' || v === null || Array.isArray(v)) fail('model.vocab', 'must be an object of token → id');
    vocab = new Set();
    for (const [token, id] of Object.entries(v as Json)) {
      if (!isId(id)) fail('model.vocab', `token ${JSON.stringify(token).slice(0, 40)} has id ${JSON.stringify(id)}, not a non-negative integer`);
      if (ids.has(id as number)) fail('model.vocab', `id ${id as number} is given to more than one token`);
      ids.add(id as number);
      vocab.add(token);
    }
    if (vocab.size === 0) fail('model.vocab', 'is empty');
  }
  if (type === 'BPE' && vocab) {
    const merges = m['merges'] ?? [];
    if (!Array.isArray(merges)) fail('model.merges', 'must be a list');
    (merges as unknown[]).forEach((merge, i) => {
      const pair = typeof merge === 'string' ? merge.split(' ') : merge;
      if (!Array.isArray(pair) || pair.length !== 2 || !pair.every((p) => typeof p === 'string'))
        fail(`model.merges[${i}]`, `${JSON.stringify(merge)} is not a pair of tokens`);
      const [a, b] = pair as [string, string];
      // As the tokenizers library builds it: the right part loses its continuing-subword prefix.
      const prefix = typeof m['continuing_subword_prefix'] === 'string' ? (m['continuing_subword_prefix'] as string) : '';
      const merged = a + (prefix && b.startsWith(prefix) ? b.slice(prefix.length) : b);
      for (const t of [a, b, merged]) if (!vocab.has(t)) fail(`model.merges[${i}]`, `${JSON.stringify(t)} is not in the vocabulary`);
    });
  }
  const added = json['added_tokens'] ?? [];
  if (!Array.isArray(added)) fail('added_tokens', 'must be a list');
  (added as unknown[]).forEach((t, i) => {
    const o = t as Json;
    if (typeof t !== 'object' || t === null || !isId(o['id']) || typeof o['content'] !== 'string')
      fail(`added_tokens[${i}]`, 'needs an integer id and a string content');
  });
}

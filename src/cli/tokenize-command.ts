/**
 * `vramfit tokenize MODEL --text "…"`: the ids (and what each decodes to) of a text under the tokenizer `run` and
 * `serve` would use, like llama.cpp's llama-tokenize. Reads tokenizer files or a GGUF's header, never weights.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Command } from 'commander';
import { readModel } from '../reader/read-model.js';
import { loadModelTokenizer, tokenizerSourceOf, type TokenizerSource } from '../engine/text/model-tokenizer.js';
import { createChatFormat } from '../engine/text/chat-format.js';
import type { SkeletonStore } from '../reader/skeleton.js';
import { InputError } from '../util/errors.js';
import type { Io } from './main.js';

interface TokenizeFlags {
  text?: string;
  file?: string;
  chat?: boolean;
  special: boolean;
  ids?: boolean;
  json?: boolean;
}

/** Where a model's tokenizer lives, found from headers alone; with the store (Ollama, LM Studio) it came from, if any. */
export async function tokenizerSourceFor(model: string): Promise<TokenizerSource & { store?: SkeletonStore }> {
  const path = resolve(model);
  // A folder of tokenizer files alone (no config.json or weights) is enough to tokenize.
  if (existsSync(path) && statSync(path).isDirectory() && existsSync(resolve(path, 'tokenizer.json'))) return { modelDir: path };
  // A vocabulary-only GGUF (llama.cpp ships such files) has no model to read: its metadata is the tokenizer.
  if (existsSync(path) && statSync(path).isFile() && path.endsWith('.gguf')) return { modelDir: dirname(path), ggufFile: path };
  const src = (await readModel(model)).source;
  const found = tokenizerSourceOf(src);
  if (!found) throw new InputError(model, `a ${src.kind === 'config' ? 'catalog or config-only' : src.kind} model has no tokenizer files here`, 'NOT_FOUND');
  return src.store ? { ...found, store: src.store } : found;
}

export function addTokenizeCommand(program: Command, io: Io): void {
  program
    .command('tokenize')
    .description(
      "Print the token ids of a text under the model's tokenizer (tokenizer files beside the weights, else a GGUF's own metadata), as llama-tokenize does.",
    )
    .argument('<model>', 'model folder, tokenizer folder, .gguf file, an Ollama or LM Studio model name, or a cached repo id')
    .option('--text <text>', 'the text to tokenize')
    .option('--file <path>', 'read the text from this file (UTF-8)')
    .option(
      '--chat',
      "render the text as a user message through the model's chat template (an Ollama model's own template and system prompt), with the assistant prompt after it",
    )
    .option('--no-special', 'do not add BOS/EOS (special-token text in the input is still matched)')
    .option('--ids', 'print only the ids, as [1, 2, 3]')
    .option('--json', 'print {ids, tokens, pieces, count} (with --chat: and chat_template, the template used)')
    .action(async (model: string, flags: TokenizeFlags) => {
      if ((flags.text === undefined) === (flags.file === undefined)) throw new InputError('--text', 'give the text with --text or --file (one of them)');
      let text = flags.text;
      if (flags.file !== undefined) {
        if (!existsSync(flags.file) || !statSync(flags.file).isFile()) throw new InputError('--file', `${flags.file} is not a readable file`, 'NOT_FOUND');
        text = readFileSync(flags.file, 'utf8');
      }
      const source = await tokenizerSourceFor(model);
      const tokenizer = loadModelTokenizer(source);
      const format = flags.chat ? createChatFormat(tokenizer, source.store) : undefined;
      for (const w of format?.warnings ?? []) io.stderr(`warning: ${w}\n`);
      const ids = format
        ? format.encodeChat([{ role: 'user', content: text! }], { addGenerationPrompt: true })
        : tokenizer.encode(text!, { addSpecialTokens: flags.special });
      const pieces = ids.map((id) => tokenizer.decode([id]));
      if (flags.json) {
        const tokens = ids.map((id) => tokenizer.idToToken(id) ?? null);
        io.stdout(`${JSON.stringify({ ids, tokens, pieces, count: ids.length, ...(format ? { chat_template: format.description } : {}) })}\n`);
      } else if (flags.ids) {
        io.stdout(`[${ids.join(', ')}]\n`);
      } else {
        // JSON quoting keeps newlines, tabs and lone bytes (U+FFFD) visible on one line per token.
        for (let i = 0; i < ids.length; i++) io.stdout(`${String(ids[i]).padStart(6)} -> ${JSON.stringify(pieces[i])}\n`);
        io.stdout(`${ids.length} token${ids.length === 1 ? '' : 's'}\n`);
      }
    });
}

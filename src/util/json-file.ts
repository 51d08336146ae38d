import { readFileSync } from 'node:fs';
import { InputError } from './errors.js';
import { assertRegularFile } from './regular-file.js';

/** Reads a file that must hold a JSON object; every failure is an InputError naming the file. */
export function readJsonObjectFile(path: string, code = 'BAD_CONFIG'): Record<string, unknown> {
  assertRegularFile(path);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new InputError(path, `cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, 'NOT_FOUND');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new InputError(path, `not valid JSON (${(e as Error).message})`, code);
  }
  if (!json || typeof json !== 'object' || Array.isArray(json)) throw new InputError(path, 'expected a JSON object', code);
  return json as Record<string, unknown>;
}

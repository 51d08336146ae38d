import { readFileSync } from 'node:fs';
import { InputError } from '../util/errors.js';
import { ConfigReader } from './config.js';

export function readConfigFile(path: string): ConfigReader {
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
    throw new InputError(path, `not valid JSON (${(e as Error).message})`, 'BAD_CONFIG');
  }
  if (!json || typeof json !== 'object' || Array.isArray(json)) throw new InputError(path, 'expected a JSON object', 'BAD_CONFIG');
  return new ConfigReader(json as Record<string, unknown>, path);
}

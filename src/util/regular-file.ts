import { statSync, type Stats } from 'node:fs';
import { InputError } from './errors.js';

/**
 * Checks that `path` is a regular file before anything opens it: a named pipe would block a read
 * forever, and a directory, socket or device would fail in ways that say nothing useful.
 */
export function assertRegularFile(path: string): void {
  let s: Stats;
  try {
    s = statSync(path);
  } catch (e) {
    throw new InputError(path, `cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, 'NOT_FOUND');
  }
  if (s.isFile()) return;
  const kind = s.isDirectory()
    ? 'a folder'
    : s.isFIFO()
      ? 'a named pipe'
      : s.isSocket()
        ? 'a socket'
        : s.isCharacterDevice() || s.isBlockDevice()
          ? 'a device'
          : 'not a regular file';
  throw new InputError(path, `is ${kind}, not a file`, 'NOT_A_FILE');
}

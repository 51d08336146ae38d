import { CommanderError } from 'commander';
import { isVramfitError } from '../util/errors.js';

/**
 * The one place errors become what the user sees: one line, an exit code (2 bad input, 1 internal),
 * and a stack trace only with --debug.
 */
export function reportError(e: unknown, debug: boolean, stderr: (s: string) => void): number {
  if (e instanceof CommanderError) {
    // commander has already printed its message (usage errors); help and version exit 0.
    return e.exitCode === 0 ? 0 : 2;
  }
  if (isVramfitError(e)) {
    stderr(`vramfit: ${e.message}\n`);
    if (debug && e.stack) stderr(`${e.stack}\n`);
    return e.exitCode;
  }
  const err = e instanceof Error ? e : new Error(String(e));
  stderr(`vramfit: internal error: ${err.message}${debug ? '' : ' (run with --debug for details)'}\n`);
  if (debug && err.stack) stderr(`${err.stack}\n`);
  return 1;
}

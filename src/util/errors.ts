/**
 * Errors are values with a stable code, created where the problem is known.
 * The CLI turns them into one-line messages and exit codes in exactly one place (cli/errors.ts).
 */
export class VramfitError extends Error {
  readonly code: string;
  /** Process exit code the CLI uses: 2 for bad input, 1 for internal failures. */
  readonly exitCode: 1 | 2;
  constructor(code: string, message: string, exitCode: 1 | 2) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.exitCode = exitCode;
  }
}

/** Bad input: a file, flag or value the user gave. `where` names it (a path, `--flag`, or `file: key`). */
export class InputError extends VramfitError {
  readonly where: string;
  readonly reason: string;
  constructor(where: string, reason: string, code = 'BAD_INPUT') {
    super(code, `${where}: ${reason}`, 2);
    this.where = where;
    this.reason = reason;
  }
}

/** A checkpoint or header that is malformed (truncated, overlapping ranges, bad magic, ...). */
export class FormatError extends InputError {
  constructor(file: string, reason: string) {
    super(file, reason, 'BAD_FORMAT');
  }
}

export function isVramfitError(e: unknown): e is VramfitError {
  return e instanceof VramfitError;
}

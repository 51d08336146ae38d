/**
 * A word for a POSIX shell command line, safe to paste: plain words stay as they are, anything else is
 * single-quoted (inside single quotes nothing expands — no `$(…)`, backticks or variables), with each
 * single quote written as '\''.
 */
export function shellWord(s: string): string {
  if (/^[A-Za-z0-9_./:=,@%+-]+$/.test(s)) return s;
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { FormatError } from '../../src/util/errors.js';

/** Asserts that `fn` throws a one-line FormatError naming `file` whose reason matches `reason`. */
export function assertFormatError(fn: () => unknown, file: string, reason: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof FormatError, `expected FormatError, got ${String(e)}`);
    assert.equal(e.where, file);
    assert.equal(e.code, 'BAD_FORMAT');
    assert.ok(e.message.startsWith(`${file}: `), e.message);
    assert.match(e.reason, reason);
    assert.ok(!e.message.includes('\n'), 'one-line message');
    return true;
  });
}

/** A temp folder for one test file (made before its tests, removed after) and fresh file names in it. */
export function tempFiles(prefix: string, extension: string): (name?: string) => string {
  let dir = '';
  let counter = 0;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), prefix));
  });
  after(() => {
    rmSync(dir, { recursive: true, force: true });
  });
  return (name = 'model') => join(dir, `${name}-${counter++}.${extension}`);
}

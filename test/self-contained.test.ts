/**
 * A plain clone's `npm test` (and `npm run bench`) must find everything it reads inside the repository:
 * no test or benchmark file may name a path outside it (a sibling folder such as ../shared, which exists
 * only on the machines this was built on, or an absolute path into someone's home or work folder).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { it } from 'node:test';
import { repoRoot } from './helpers/paths.js';

/** Patterns that name a place outside the repository. */
const OUTSIDE = [/\.\.\/shared\b/, /['"`]\.\.['"`]\s*,\s*['"`]shared['"`]/, /['"`]\/(work|home|root|Users)\//, /['"`]~\//];

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return e.name === 'fixtures' || e.name === 'node_modules' || e.name.startsWith('.') ? [] : sourceFiles(p);
    return /\.(ts|mts|js|mjs)$/.test(e.name) ? [p] : [];
  });
}

export function pathsOutside(files: readonly string[]): string[] {
  const found: string[] = [];
  for (const file of files) {
    readFileSync(file, 'utf8')
      .split('\n')
      .forEach((line, i) => {
        if (OUTSIDE.some((re) => re.test(line))) found.push(`${relative(repoRoot, file)}:${i + 1}: ${line.trim()}`);
      });
  }
  return found;
}

it('no test or benchmark names a path outside the repository', () => {
  const files = [...sourceFiles(join(repoRoot, 'test')), ...sourceFiles(join(repoRoot, 'bench'))].filter((f) => !f.endsWith('self-contained.test.ts'));
  assert.ok(files.length > 20, 'the test and bench files were found');
  assert.deepEqual(pathsOutside(files), []);
});

it('the check catches the ways such paths were written', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vramfit-paths-'));
  try {
    const lines = [
      "export const CORPUS = resolve(ROOT, '../shared/fixtures/real-models');",
      "export const sharedDir = resolve(repoRoot, '..', 'shared');",
      "const model = '/work/main/model.safetensors';",
      "const cache = '~/.cache/huggingface';",
    ];
    const file = join(dir, 'probe.ts');
    writeFileSync(file, `${lines.join('\n')}\nconst fine = join(repoRoot, 'test', 'fixtures');\n`);
    assert.equal(pathsOutside([file]).length, lines.length);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

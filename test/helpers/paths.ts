import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** Fixtures live in the repository, so a plain clone's `npm test` has everything it reads. */
export const fixturesDir = resolve(repoRoot, 'test', 'fixtures');
export const realModelsDir = resolve(fixturesDir, 'real-models');
export const oracleDir = resolve(fixturesDir, 'accelerate-oracle');

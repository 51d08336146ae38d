import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const sharedDir = resolve(repoRoot, '..', 'shared');
export const realModelsDir = resolve(sharedDir, 'fixtures', 'real-models');
export const oracleDir = resolve(sharedDir, 'fixtures', 'accelerate-oracle');

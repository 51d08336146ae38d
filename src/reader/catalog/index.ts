import { ConfigReader } from '../config.js';
import { CATALOG } from './models.js';

export function catalogNames(): string[] {
  return Object.keys(CATALOG);
}

/** A catalog model's config, with the entry's overrides applied; undefined for an unknown name. */
export function catalogConfig(name: string): { cfg: ConfigReader; source: string } | undefined {
  const entry = CATALOG[name.toLowerCase()];
  if (!entry) return undefined;
  return { cfg: new ConfigReader({ ...entry.config, ...(entry.overrides ?? {}) }, `catalog:${name.toLowerCase()}`), source: entry.source };
}

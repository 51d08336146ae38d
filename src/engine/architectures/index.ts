import { InputError } from '../../util/errors.js';
import { llamaArchitecture } from './llama.js';
import type { EngineArchitecture, EngineHyper } from './types.js';

/** Every architecture the engine runs; one file each. */
const ARCHITECTURES: readonly EngineArchitecture<EngineHyper>[] = [llamaArchitecture as EngineArchitecture<EngineHyper>];

export function engineArchitecture(family: string, where: string): EngineArchitecture<EngineHyper> {
  const arch = ARCHITECTURES.find((a) => a.families.includes(family));
  if (!arch) {
    const known = ARCHITECTURES.flatMap((a) => a.families).join(', ');
    throw new InputError(where, `the engine runs ${known}; ${family} is not supported yet`, 'UNSUPPORTED_ARCHITECTURE');
  }
  return arch;
}

import { InputError } from '../../util/errors.js';
import { baichuanArchitecture } from './baichuan.js';
import { chatglmArchitecture } from './chatglm.js';
import { gpt2Architecture } from './gpt2.js';
import { llamaArchitecture } from './llama.js';
import { moeArchitecture } from './moe.js';
import type { EngineArchitecture, EngineHyper } from './types.js';

/** Every architecture the engine runs; one file each. */
const ARCHITECTURES: readonly EngineArchitecture<EngineHyper>[] = [
  llamaArchitecture as EngineArchitecture<EngineHyper>,
  baichuanArchitecture as EngineArchitecture<EngineHyper>,
  chatglmArchitecture as EngineArchitecture<EngineHyper>,
  gpt2Architecture as EngineArchitecture<EngineHyper>,
  moeArchitecture as EngineArchitecture<EngineHyper>,
];

export function engineArchitecture(family: string, where: string): EngineArchitecture<EngineHyper> {
  const arch = ARCHITECTURES.find((a) => a.families.includes(family));
  if (!arch) {
    const known = ARCHITECTURES.flatMap((a) => a.families).join(', ');
    throw new InputError(where, `the engine runs ${known}; ${family} is not supported yet`, 'UNSUPPORTED_ARCHITECTURE');
  }
  return arch;
}

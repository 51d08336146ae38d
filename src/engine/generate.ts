import type { LoadedModel } from './model.js';
import { createSampler, validateSamplerOptions, type SamplerOptions } from './text/sampling.js';
import { StopChecker, type StopReason } from './text/stop.js';
import type { StreamDecoder } from './text/tokenizer.js';

export interface GenerateOptions {
  maxNewTokens: number;
  sampling: SamplerOptions;
  eosTokenIds?: readonly number[];
  stopStrings?: readonly string[];
  /** Keep the logits each token was chosen from (and every prompt position's). */
  keepLogits?: boolean;
  /** Turns ids into text for streaming and stop strings; without it only EOS ids stop generation. */
  decoder?: StreamDecoder;
}

export interface GeneratedToken {
  id: number;
  /** Text this token completes (may be empty while a character or a stop string is pending). */
  text: string;
  logits?: Float32Array;
}

export interface GenerationResult {
  promptIds: number[];
  generatedIds: number[];
  text: string;
  stop: StopReason | 'max-new-tokens' | 'context-full';
  promptLogits?: Float32Array[];
  stepLogits?: Float32Array[];
  promptSeconds: number;
  generateSeconds: number;
}

/**
 * Prefills the prompt, then samples one token at a time through the KV cache, yielding each token as
 * it is chosen. The generator's return value is the whole result.
 */
export async function* generate(model: LoadedModel, promptIds: readonly number[], o: GenerateOptions): AsyncGenerator<GeneratedToken, GenerationResult> {
  validateSamplerOptions(o.sampling);
  const sample = createSampler(o.sampling);
  const stop = new StopChecker({ eosTokenIds: o.eosTokenIds ?? [], stopStrings: o.stopStrings ?? [] });
  model.reset();
  const t0 = performance.now();
  const promptRows = model.forward(promptIds, o.keepLogits === true);
  const t1 = performance.now();
  const result: GenerationResult = {
    promptIds: [...promptIds],
    generatedIds: [],
    text: '',
    stop: 'max-new-tokens',
    promptSeconds: (t1 - t0) / 1000,
    generateSeconds: 0,
  };
  if (o.keepLogits) {
    result.promptLogits = promptRows;
    result.stepLogits = [];
  }
  let logits = promptRows.at(-1);
  const g0 = performance.now();
  for (let i = 0; i < o.maxNewTokens && logits; i++) {
    const id = sample(logits);
    result.generatedIds.push(id);
    if (o.keepLogits) result.stepLogits!.push(logits);
    const piece = o.decoder ? o.decoder.push(id) : '';
    const step = stop.push(id, piece);
    result.text += step.text;
    const event: GeneratedToken = { id, text: step.text };
    if (o.keepLogits) event.logits = logits;
    yield event;
    if (step.stop) {
      result.stop = step.stop;
      break;
    }
    if (i === o.maxNewTokens - 1) break;
    if (model.position >= model.ctx) {
      result.stop = 'context-full';
      break;
    }
    logits = model.forward([id])[0];
    // Let the event loop breathe between tokens (the compute itself is synchronous).
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  if (result.stop === 'max-new-tokens' || result.stop === 'context-full') {
    const tail = stop.pushText(o.decoder ? o.decoder.flush() : '');
    result.text += tail.text + stop.finish();
  }
  result.generateSeconds = (performance.now() - g0) / 1000;
  return result;
}

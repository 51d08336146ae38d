/**
 * When generation stops, and which text the user sees: an EOS token id ends it, and so does a stop string
 * anywhere in the streamed text, even one spread over several tokens. Text before a stop string is emitted, the
 * stop string and anything after it are not. While the text ends in something that could still grow into a stop
 * string, that much is held back; the rest goes out at once.
 *
 * Feed it the stable text pieces of a StreamDecoder (tokenizer.ts), so a stop string is matched against real
 * characters, never against a half-decoded one.
 */
import { InputError } from '../../util/errors.js';

export interface StopOptions {
  /** Token ids that end generation (the tokenizer's eosTokenIds). */
  eosTokenIds?: readonly number[];
  /** Strings that end generation; non-empty. */
  stopStrings?: readonly string[];
}

export type StopReason = { kind: 'eos'; tokenId: number } | { kind: 'stop-string'; stopString: string };

export interface StopStep {
  /** Text that is now safe to show (possibly ''). */
  text: string;
  /** Set once generation must end; later calls return no text. */
  stop: StopReason | null;
}

export class StopChecker {
  private readonly eos: ReadonlySet<number>;
  private readonly stopStrings: readonly string[];
  private held = '';
  private stopped: StopReason | null = null;

  constructor(options: StopOptions = {}) {
    for (const s of options.stopStrings ?? []) {
      // An empty stop string would match before the first character: generation could never say anything.
      if (typeof s !== 'string' || s.length === 0) throw new InputError('--stop', 'stop strings must be non-empty');
    }
    this.eos = new Set(options.eosTokenIds ?? []);
    this.stopStrings = [...new Set(options.stopStrings ?? [])];
  }

  get stopReason(): StopReason | null {
    return this.stopped;
  }

  isEos(tokenId: number): boolean {
    return this.eos.has(tokenId);
  }

  /**
   * One generated token and the text it added. An EOS id stops generation and releases the held-back text
   * (it was ordinary text after all); its own text is ignored, since EOS is a marker, not output.
   */
  push(tokenId: number, text: string): StopStep {
    if (this.stopped) return { text: '', stop: this.stopped };
    if (this.eos.has(tokenId)) {
      this.stopped = { kind: 'eos', tokenId };
      const out = this.held;
      this.held = '';
      return { text: out, stop: this.stopped };
    }
    return this.pushText(text);
  }

  /** Text without a token id (e.g. a StreamDecoder's flush); only stop strings apply. */
  pushText(text: string): StopStep {
    if (this.stopped) return { text: '', stop: this.stopped };
    const buffer = this.held + text;
    const hit = this.firstStop(buffer);
    if (hit) {
      this.stopped = { kind: 'stop-string', stopString: hit.stopString };
      this.held = '';
      return { text: buffer.slice(0, hit.index), stop: this.stopped };
    }
    const keep = this.partialStopLength(buffer);
    this.held = buffer.slice(buffer.length - keep);
    return { text: buffer.slice(0, buffer.length - keep), stop: null };
  }

  /** At the end of generation (token limit): the held-back text turned out not to start a stop string. */
  finish(): string {
    const out = this.stopped ? '' : this.held;
    this.held = '';
    return out;
  }

  /** The earliest occurrence of any stop string; at equal positions the first listed wins. */
  private firstStop(buffer: string): { index: number; stopString: string } | null {
    let best: { index: number; stopString: string } | null = null;
    for (const s of this.stopStrings) {
      const index = buffer.indexOf(s);
      if (index >= 0 && (best === null || index < best.index)) best = { index, stopString: s };
    }
    return best;
  }

  /** Length of the longest suffix of `buffer` that is a proper prefix of some stop string. */
  private partialStopLength(buffer: string): number {
    let longest = 0;
    for (const s of this.stopStrings) {
      for (let n = Math.min(s.length - 1, buffer.length); n > longest; n--) {
        if (buffer.endsWith(s.slice(0, n))) {
          longest = n;
          break;
        }
      }
    }
    return longest;
  }
}

/**
 * SentencePiece models (`tokenizer.model`, a serialized `sentencepiece.ModelProto`) read without protobuf or
 * Python, and a BPE encoder/decoder over them that gives the ids `sentencepiece` (0.1.9x) gives.
 *
 * Reader: a bounded protobuf decoder for the few fields tokenization needs (pieces {piece, score, type},
 * trainer_spec {model_type, byte_fallback, treat_whitespace_as_suffix, unk/bos/eos/pad pieces, unk_surface},
 * normalizer_spec {name, precompiled_charsmap, add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces}).
 * Every varint, tag and length is checked against the bytes left before it is used, counts are capped, and
 * anything malformed is a FormatError naming the file; other fields are skipped.
 *
 * Encoder: a direct TypeScript port of sentencepiece's BPE algorithm (bpe_model.cc), not a conversion to a
 * tokenizer.json for @huggingface/tokenizers. The conversion transformers' convert_slow_tokenizer does is close but
 * not equal: sentencepiece merges the adjacent pair whose *merged piece* scores highest, leftmost first, whereas a
 * merges list ranks every split of a piece separately, so the two part ways when two different splits of one piece
 * are adjacent (symbols [ab][a][ba], piece "aba": sentencepiece takes the left pair, a ranked list whichever split
 * ranks first); the library's Metaspace pre-tokenizer also omits the dummy prefix when the text already starts with
 * a space (sentencepiece always adds it: " x" is "▁▁x"); and a merges list cannot express sentencepiece's
 * user-defined symbols (never merged) or unused pieces (merged through, then split back). The port is small, needs
 * no merges table (a 64k-piece model would derive ~100k merges on every load), and is checked id for id against
 * sentencepiece (test/fixtures/sentencepiece/; during development also on 40,000 random texts with ChatGLM2's own
 * 64,789-piece tokenizer.model). Unigram models and precompiled normalizer tables (nmt_nfkc) are refused.
 */
import { readFileSync, statSync } from 'node:fs';
import { FormatError, InputError } from '../../util/errors.js';
import { assertRegularFile } from '../../util/regular-file.js';

// ---------------------------------------------------------------------------------------------------------------
// ModelProto

export type PieceType = 'normal' | 'unknown' | 'control' | 'user_defined' | 'unused' | 'byte';
export type SentencePieceModelType = 'unigram' | 'bpe' | 'word' | 'char';

export interface SentencePieceEntry {
  piece: string;
  score: number;
  type: PieceType;
}

export interface SentencePieceModelProto {
  pieces: SentencePieceEntry[];
  trainerSpec: {
    modelType: SentencePieceModelType;
    byteFallback: boolean;
    treatWhitespaceAsSuffix: boolean;
    unkPiece: string;
    bosPiece: string;
    eosPiece: string;
    padPiece: string;
    unkSurface: string;
  };
  normalizerSpec: {
    name: string;
    /** Bytes of the precompiled normalization table; 0 for the identity normalizer. */
    precompiledCharsmapBytes: number;
    addDummyPrefix: boolean;
    removeExtraWhitespaces: boolean;
    escapeWhitespaces: boolean;
  };
}

/** Larger than any released tokenizer.model (Gemma's 256k pieces: 4 MiB), far below what would strain memory. */
export const MAX_MODEL_FILE_BYTES = 64 * 1024 * 1024;
/** Pieces one model may hold (released models: 32k to 256k). */
export const MAX_PIECES = 1 << 20;

const PIECE_TYPES: Record<number, PieceType> = { 1: 'normal', 2: 'unknown', 3: 'control', 4: 'user_defined', 5: 'unused', 6: 'byte' };
const MODEL_TYPES: Record<number, SentencePieceModelType> = { 1: 'unigram', 2: 'bpe', 3: 'word', 4: 'char' };

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_BYTES = 2;
const WIRE_FIXED32 = 5;

/** A protobuf reader over buf[pos, end) that refuses to read past end. */
class ProtoReader {
  private readonly view: DataView;
  constructor(
    private readonly buf: Uint8Array,
    public pos: number,
    private readonly end: number,
    private readonly file: string,
    private readonly where: string,
  ) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  get done(): boolean {
    return this.pos >= this.end;
  }

  fail(reason: string, at = this.pos): never {
    throw new FormatError(this.file, `${this.where}: ${reason} (byte ${at})`);
  }

  /** A varint as its low 32 bits (unsigned) and whether any higher bit is set. */
  varint(): { lo: number; high: boolean } {
    const start = this.pos;
    let lo = 0;
    let high = false;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) this.fail('truncated varint', start);
      const b = this.buf[this.pos++]!;
      const bits = b & 0x7f;
      if (i < 4) lo |= bits << (7 * i);
      else if (i === 4) {
        lo |= (bits & 0x0f) << 28;
        if (bits >> 4) high = true;
      } else if (bits) high = true;
      if (i === 9 && b > 1) this.fail('varint longer than 64 bits', start);
      if ((b & 0x80) === 0) return { lo: lo >>> 0, high };
    }
    return this.fail('varint longer than 10 bytes', start);
  }

  /** A length that must fit in the bytes left. */
  length(): number {
    const at = this.pos;
    const { lo, high } = this.varint();
    const left = this.end - this.pos;
    if (high || lo > left) this.fail(`length ${high ? '≥ 2^32' : lo} exceeds the ${left} bytes left`, at);
    return lo;
  }

  tag(): { field: number; wire: number; at: number } {
    const at = this.pos;
    const { lo, high } = this.varint();
    const field = lo >>> 3;
    if (high || field === 0) this.fail(`bad field tag ${high ? '≥ 2^32' : lo}`, at);
    return { field, wire: lo & 7, at };
  }

  /** int32 / enum: protobuf writes negative values as 10-byte varints whose low 32 bits are the two's complement. */
  int32(): number {
    return this.varint().lo | 0;
  }

  bool(): boolean {
    const { lo, high } = this.varint();
    return lo !== 0 || high;
  }

  float(): number {
    if (this.end - this.pos < 4) this.fail('truncated float');
    const v = this.view.getFloat32(this.pos, true);
    this.pos += 4;
    return v;
  }

  string(what: string): string {
    const n = this.length();
    const at = this.pos;
    this.pos += n;
    try {
      return UTF8.decode(this.buf.subarray(at, at + n));
    } catch {
      return this.fail(`${what} is not valid UTF-8`, at);
    }
  }

  /** A reader over the next length-delimited field, which this reader skips. */
  sub(where: string): ProtoReader {
    const n = this.length();
    const r = new ProtoReader(this.buf, this.pos, this.pos + n, this.file, where);
    this.pos += n;
    return r;
  }

  skip(wire: number, field: number, at: number): void {
    switch (wire) {
      case WIRE_VARINT:
        this.varint();
        return;
      case WIRE_FIXED64:
        if (this.end - this.pos < 8) this.fail(`truncated field ${field}`);
        this.pos += 8;
        return;
      case WIRE_BYTES: {
        // Not `this.pos += this.length()`: that reads pos before length() moves it past the varint.
        const n = this.length();
        this.pos += n;
        return;
      }
      case WIRE_FIXED32:
        if (this.end - this.pos < 4) this.fail(`truncated field ${field}`);
        this.pos += 4;
        return;
      default:
        this.fail(`field ${field} has wire type ${wire}, which no sentencepiece model uses`, at);
    }
  }

  expect(wire: number, want: number, field: number, name: string, at: number): void {
    if (wire !== want) this.fail(`${name} (field ${field}) has wire type ${wire}, expected ${want}`, at);
  }
}

// ignoreBOM: a piece may be U+FEFF itself (ChatGLM's id 31168), which the default decoder would drop.
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Parses a serialized ModelProto. Throws FormatError naming `file` for anything malformed. */
export function parseSentencePieceModel(bytes: Uint8Array, file: string): SentencePieceModelProto {
  const model: SentencePieceModelProto = {
    pieces: [],
    trainerSpec: {
      modelType: 'unigram',
      byteFallback: false,
      treatWhitespaceAsSuffix: false,
      unkPiece: '<unk>',
      bosPiece: '<s>',
      eosPiece: '</s>',
      padPiece: '<pad>',
      unkSurface: ' \u2047 ',
    },
    normalizerSpec: { name: '', precompiledCharsmapBytes: 0, addDummyPrefix: true, removeExtraWhitespaces: true, escapeWhitespaces: true },
  };
  const r = new ProtoReader(bytes, 0, bytes.length, file, 'ModelProto');
  while (!r.done) {
    const { field, wire, at } = r.tag();
    switch (field) {
      case 1: {
        r.expect(wire, WIRE_BYTES, field, 'pieces', at);
        if (model.pieces.length >= MAX_PIECES) r.fail(`more than ${MAX_PIECES} pieces`, at);
        model.pieces.push(readPiece(r.sub(`pieces[${model.pieces.length}]`)));
        break;
      }
      case 2:
        r.expect(wire, WIRE_BYTES, field, 'trainer_spec', at);
        readTrainerSpec(r.sub('trainer_spec'), model.trainerSpec);
        break;
      case 3:
        r.expect(wire, WIRE_BYTES, field, 'normalizer_spec', at);
        readNormalizerSpec(r.sub('normalizer_spec'), model.normalizerSpec);
        break;
      default:
        r.skip(wire, field, at);
    }
  }
  if (model.pieces.length === 0) throw new FormatError(file, 'ModelProto: no pieces (is this a sentencepiece model?)');
  return model;
}

function readPiece(r: ProtoReader): SentencePieceEntry {
  let piece: string | undefined;
  let score = 0;
  let type: PieceType = 'normal';
  while (!r.done) {
    const { field, wire, at } = r.tag();
    if (field === 1) {
      r.expect(wire, WIRE_BYTES, field, 'piece', at);
      piece = r.string('piece');
    } else if (field === 2) {
      r.expect(wire, WIRE_FIXED32, field, 'score', at);
      score = r.float();
      if (Number.isNaN(score)) r.fail('score is NaN', at);
    } else if (field === 3) {
      r.expect(wire, WIRE_VARINT, field, 'type', at);
      const t = r.int32();
      const name = PIECE_TYPES[t];
      if (!name) r.fail(`unknown piece type ${t}`, at);
      type = name;
    } else r.skip(wire, field, at);
  }
  if (piece === undefined || piece === '') r.fail('empty piece');
  return { piece, score, type };
}

function readTrainerSpec(r: ProtoReader, spec: SentencePieceModelProto['trainerSpec']): void {
  while (!r.done) {
    const { field, wire, at } = r.tag();
    const str = (name: string): string => {
      r.expect(wire, WIRE_BYTES, field, name, at);
      return r.string(name);
    };
    const flag = (name: string): boolean => {
      r.expect(wire, WIRE_VARINT, field, name, at);
      return r.bool();
    };
    switch (field) {
      case 3: {
        r.expect(wire, WIRE_VARINT, field, 'model_type', at);
        const t = r.int32();
        const name = MODEL_TYPES[t];
        if (!name) r.fail(`unknown model_type ${t}`, at);
        spec.modelType = name;
        break;
      }
      case 24:
        spec.treatWhitespaceAsSuffix = flag('treat_whitespace_as_suffix');
        break;
      case 35:
        spec.byteFallback = flag('byte_fallback');
        break;
      case 44:
        spec.unkSurface = str('unk_surface');
        break;
      case 45:
        spec.unkPiece = str('unk_piece');
        break;
      case 46:
        spec.bosPiece = str('bos_piece');
        break;
      case 47:
        spec.eosPiece = str('eos_piece');
        break;
      case 48:
        spec.padPiece = str('pad_piece');
        break;
      default:
        r.skip(wire, field, at);
    }
  }
}

function readNormalizerSpec(r: ProtoReader, spec: SentencePieceModelProto['normalizerSpec']): void {
  while (!r.done) {
    const { field, wire, at } = r.tag();
    const flag = (name: string): boolean => {
      r.expect(wire, WIRE_VARINT, field, name, at);
      return r.bool();
    };
    switch (field) {
      case 1:
        r.expect(wire, WIRE_BYTES, field, 'name', at);
        spec.name = r.string('name');
        break;
      case 2:
        r.expect(wire, WIRE_BYTES, field, 'precompiled_charsmap', at);
        spec.precompiledCharsmapBytes = r.length();
        r.pos += spec.precompiledCharsmapBytes;
        break;
      case 3:
        spec.addDummyPrefix = flag('add_dummy_prefix');
        break;
      case 4:
        spec.removeExtraWhitespaces = flag('remove_extra_whitespaces');
        break;
      case 5:
        spec.escapeWhitespaces = flag('escape_whitespaces');
        break;
      default:
        r.skip(wire, field, at);
    }
  }
}

/** Reads and parses a tokenizer.model file; InputError when it cannot be read, FormatError when malformed. */
export function readSentencePieceModel(path: string): SentencePieceModelProto {
  assertRegularFile(path);
  let bytes: Uint8Array;
  try {
    const size = statSync(path).size;
    if (size > MAX_MODEL_FILE_BYTES) throw new FormatError(path, `${size} bytes; a sentencepiece model is at most ${MAX_MODEL_FILE_BYTES}`);
    bytes = readFileSync(path);
  } catch (e) {
    if (e instanceof InputError) throw e;
    throw new InputError(path, `cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, 'NOT_FOUND');
  }
  return parseSentencePieceModel(bytes, path);
}

// ---------------------------------------------------------------------------------------------------------------
// BPE encoder / decoder

const SPACE_SYMBOL = '\u2581';
const BYTE_PIECE = /^<0x([0-9A-F]{2})>$/;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/** One candidate merge of adjacent symbols `left` and `right`, the merged piece `size` chars long. */
interface Candidate {
  left: number;
  right: number;
  score: number;
  size: number;
}

/** sentencepiece's agenda order: higher score first, then the leftmost pair. */
function before(a: Candidate, b: Candidate): boolean {
  return a.score !== b.score ? a.score > b.score : a.left < b.left;
}

class Agenda {
  private readonly heap: Candidate[] = [];
  get size(): number {
    return this.heap.length;
  }
  push(c: Candidate): void {
    const h = this.heap;
    h.push(c);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!before(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }
  pop(): Candidate {
    const h = this.heap;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && before(h[l]!, h[m]!)) m = l;
        if (r < h.length && before(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }
}

/**
 * A SentencePiece BPE model: encode as `SentencePieceProcessor.encode(text)` and decode as
 * `SentencePieceProcessor.decode(ids)` do, for models with the identity normalizer (no precompiled table).
 */
export class SentencePieceBpe {
  readonly file: string;
  readonly pieces: readonly SentencePieceEntry[];
  readonly unkId: number;
  /** -1 when the model has no such control piece, as sentencepiece's bos_id() / eos_id() / pad_id(). */
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  private readonly normal = new Map<string, number>();
  private readonly reserved = new Map<string, number>();
  private readonly byteIds = new Int32Array(256).fill(-1);
  private readonly byteOf: Int16Array;
  /** User-defined pieces by first UTF-16 unit, longest first (sentencepiece's PrefixMatcher takes the longest). */
  private readonly userDefined = new Map<string, string[]>();
  private readonly spec: SentencePieceModelProto;

  constructor(model: SentencePieceModelProto, file: string) {
    this.file = file;
    this.spec = model;
    this.pieces = model.pieces;
    if (model.trainerSpec.modelType !== 'bpe') {
      throw new InputError(file, `a ${model.trainerSpec.modelType} sentencepiece model; only BPE models are supported`, 'UNSUPPORTED_TOKENIZER');
    }
    if (model.normalizerSpec.precompiledCharsmapBytes > 0) {
      throw new InputError(
        file,
        `normalizer "${model.normalizerSpec.name}" uses a precompiled character map, which is not supported (only the identity normalizer)`,
        'UNSUPPORTED_TOKENIZER',
      );
    }
    this.byteOf = new Int16Array(model.pieces.length).fill(-1);
    let unk = -1;
    model.pieces.forEach((p, id) => {
      const isNormal = p.type === 'normal' || p.type === 'user_defined' || p.type === 'unused';
      // Two tables, as sentencepiece keeps them: a control piece may share its text with a normal one (lookups
      // try the reserved table first), but not with another piece of its own table.
      const map = isNormal ? this.normal : this.reserved;
      const seen = map.get(p.piece);
      if (seen !== undefined) throw new FormatError(file, `piece ${JSON.stringify(p.piece)} is defined twice (ids ${seen} and ${id})`);
      map.set(p.piece, id);
      if (p.type === 'user_defined') {
        const list = this.userDefined.get(p.piece[0]!) ?? [];
        list.push(p.piece);
        this.userDefined.set(p.piece[0]!, list);
      }
      if (p.type === 'unknown') {
        if (unk >= 0) throw new FormatError(file, `two unknown pieces (ids ${unk} and ${id})`);
        unk = id;
      }
      if (p.type === 'byte') {
        if (!model.trainerSpec.byteFallback) throw new FormatError(file, `byte piece ${JSON.stringify(p.piece)} (id ${id}) although byte_fallback is off`);
        const m = BYTE_PIECE.exec(p.piece);
        if (!m) throw new FormatError(file, `byte piece ${JSON.stringify(p.piece)} (id ${id}) is not of the form <0xXX>`);
        const b = parseInt(m[1]!, 16);
        this.byteIds[b] = id;
        this.byteOf[id] = b;
      }
    });
    if (unk < 0) throw new FormatError(file, 'no unknown piece (<unk>)');
    this.unkId = unk;
    for (const list of this.userDefined.values()) list.sort((a, b) => b.length - a.length);
    const control = (piece: string): number => {
      const id = this.pieceToIdOrUndefined(piece);
      return id !== undefined && model.pieces[id]!.type === 'control' ? id : -1;
    };
    this.bosId = control(model.trainerSpec.bosPiece);
    this.eosId = control(model.trainerSpec.eosPiece);
    this.padId = control(model.trainerSpec.padPiece);
  }

  get size(): number {
    return this.pieces.length;
  }

  private pieceToIdOrUndefined(piece: string): number | undefined {
    return this.reserved.get(piece) ?? this.normal.get(piece);
  }

  /** sentencepiece's PieceToId: an unknown piece maps to the unk id. */
  pieceToId(piece: string): number {
    return this.pieceToIdOrUndefined(piece) ?? this.unkId;
  }

  /** The id of a piece the vocabulary holds; undefined otherwise. */
  lookup(piece: string): number | undefined {
    return this.pieceToIdOrUndefined(piece);
  }

  idToPiece(id: number): string | undefined {
    return this.pieces[id]?.piece;
  }

  isControl(id: number): boolean {
    return this.pieces[id]?.type === 'control';
  }

  /** The normalized text the model segments: dummy prefix, whitespace handling, spaces as ▁. */
  normalize(text: string): string {
    const ns = this.spec.normalizerSpec;
    // sentencepiece reads UTF-8; a lone surrogate has no UTF-8 form, and TextEncoder would write U+FFFD for it.
    let s = text.replace(LONE_SURROGATE, '\uFFFD');
    if (ns.removeExtraWhitespaces) s = s.replace(/^ +| +$/g, '').replace(/ {2,}/g, ' ');
    if (s === '') return '';
    if (ns.addDummyPrefix) s = this.spec.trainerSpec.treatWhitespaceAsSuffix ? `${s} ` : ` ${s}`;
    return ns.escapeWhitespaces ? s.replaceAll(' ', SPACE_SYMBOL) : s;
  }

  /** Pieces (as [piece, id]) before byte fallback: sentencepiece's BPE Model::Encode. */
  private segment(normalized: string): [string, number][] {
    // Symbols: one per character, or per user-defined piece (longest match), which never merges.
    const piece: string[] = [];
    const frozen: boolean[] = [];
    for (let i = 0; i < normalized.length;) {
      let len = 0;
      let freeze = false;
      for (const u of this.userDefined.get(normalized[i]!) ?? []) {
        if (normalized.startsWith(u, i)) {
          len = u.length;
          freeze = true;
          break;
        }
      }
      if (len === 0) len = normalized.codePointAt(i)! > 0xffff ? 2 : 1;
      piece.push(normalized.slice(i, i + len));
      frozen.push(freeze);
      i += len;
    }
    const n = piece.length;
    const prev = Array.from({ length: n }, (_, i) => i - 1);
    const next = Array.from({ length: n }, (_, i) => (i + 1 < n ? i + 1 : -1));
    const agenda = new Agenda();
    const revMerge = new Map<string, [string, string]>();
    const consider = (left: number, right: number): void => {
      if (left < 0 || right < 0 || frozen[left] || frozen[right]) return;
      const merged = piece[left]! + piece[right]!;
      const id = this.normal.get(merged);
      if (id === undefined) return;
      const p = this.pieces[id]!;
      agenda.push({ left, right, score: p.score, size: merged.length });
      if (p.type === 'unused') revMerge.set(merged, [piece[left]!, piece[right]!]);
    };
    for (let i = 1; i < n; i++) consider(i - 1, i);
    while (agenda.size > 0) {
      const top = agenda.pop();
      const l = piece[top.left]!;
      const r = piece[top.right]!;
      // Stale: one side was merged away or has grown since this candidate was queued.
      if (l === '' || r === '' || l.length + r.length !== top.size) continue;
      piece[top.left] = l + r;
      piece[top.right] = '';
      next[top.left] = next[top.right]!;
      if (next[top.right]! >= 0) prev[next[top.right]!] = top.left;
      consider(prev[top.left]!, top.left);
      consider(top.left, next[top.left]!);
    }
    const out: [string, number][] = [];
    const resegment = (w: string): void => {
      const id = this.pieceToId(w);
      const split = this.pieces[id]!.type === 'unused' ? revMerge.get(w) : undefined;
      if (!split) {
        out.push([w, id]);
        return;
      }
      resegment(split[0]);
      resegment(split[1]);
    };
    for (let i = n > 0 ? 0 : -1; i !== -1; i = next[i]!) resegment(piece[i]!);
    return out;
  }

  /** Token ids of `text`, as sentencepiece's encode(text) (no BOS/EOS). */
  encode(text: string): number[] {
    const ids: number[] = [];
    let prevUnk = false;
    for (const [w, id] of this.segment(this.normalize(text))) {
      const unk = id === this.unkId;
      if (unk && this.spec.trainerSpec.byteFallback) {
        for (const b of ENCODER.encode(w)) ids.push(this.byteIds[b]! >= 0 ? this.byteIds[b]! : this.unkId);
      } else if (!(unk && prevUnk)) {
        // Without byte fallback a run of unknown characters is one unk piece.
        ids.push(id);
      }
      prevUnk = unk;
    }
    return ids;
  }

  /** Pieces of `text` (sentencepiece's encode(text, out_type=str)). */
  encodeAsPieces(text: string): string[] {
    return this.encode(text).map((id) => this.pieces[id]!.piece);
  }

  /**
   * Text of `ids`, as sentencepiece's decode(ids): control pieces decode to nothing, the unknown piece to
   * unk_surface, runs of byte pieces to their UTF-8 text (each byte of an invalid sequence to U+FFFD), ▁ to a space,
   * and the first ▁ of the text is dropped (the dummy prefix). Ids outside the vocabulary are skipped.
   */
  decode(ids: readonly number[]): string {
    let text = '';
    let bosWs = true;
    let bytes: number[] = [];
    const flushBytes = (): void => {
      if (bytes.length === 0) return;
      text += decodeBytesLikeSentencepiece(bytes); // never empty
      bosWs = false;
      bytes = [];
    };
    const removeExtraWhitespaces = this.spec.normalizerSpec.removeExtraWhitespaces;
    const stripPrefix = this.spec.normalizerSpec.addDummyPrefix || removeExtraWhitespaces;
    for (const id of ids) {
      const p = this.pieces[id];
      if (!p) continue;
      if (p.type === 'byte') {
        bytes.push(this.byteOf[id]!);
        continue;
      }
      flushBytes();
      // Control pieces are invisible and leave the dummy-prefix position where it is. Any other piece ends it, even
      // a lone ▁ that decodes to nothing (decode([▁, ▁x]) is " x"), except that with remove_extra_whitespaces the
      // position lasts until some text appears (decode([▁, ▁, ▁x]) is "x"), as sentencepiece 0.1.97 does.
      if (p.type === 'control') continue;
      let s: string;
      if (p.type === 'unknown') s = this.spec.trainerSpec.unkSurface;
      else {
        let piece = p.piece;
        if (bosWs && stripPrefix && piece.startsWith(SPACE_SYMBOL)) piece = piece.slice(1);
        s = piece.replaceAll(SPACE_SYMBOL, ' ');
      }
      text += s;
      if (s !== '' || !removeExtraWhitespaces) bosWs = false;
    }
    flushBytes();
    return text;
  }
}

const ENCODER = new TextEncoder();

/**
 * sentencepiece's byte-piece decoding: valid UTF-8 characters as themselves, every byte that does not start a
 * valid character as U+FFFD (one per byte, unlike TextDecoder, which replaces maximal invalid subsequences).
 */
export function decodeBytesLikeSentencepiece(bytes: readonly number[]): string {
  let out = '';
  let i = 0;
  while (i < bytes.length) {
    const n = validUtf8Length(bytes, i);
    if (n === 0) {
      out += '\uFFFD';
      i += 1;
    } else {
      out += UTF8.decode(Uint8Array.from(bytes.slice(i, i + n)));
      i += n;
    }
  }
  return out;
}

/** Length of the valid UTF-8 character at bytes[i] (1 to 4), or 0 when the bytes there are not one. */
function validUtf8Length(bytes: readonly number[], i: number): number {
  const b0 = bytes[i]!;
  if (b0 < 0x80) return 1;
  const cont = (k: number, lo = 0x80, hi = 0xbf): boolean => {
    const b = bytes[i + k];
    return b !== undefined && b >= lo && b <= hi;
  };
  if (b0 >= 0xc2 && b0 <= 0xdf) return cont(1) ? 2 : 0;
  if (b0 === 0xe0) return cont(1, 0xa0) && cont(2) ? 3 : 0;
  if ((b0 >= 0xe1 && b0 <= 0xec) || b0 === 0xee || b0 === 0xef) return cont(1) && cont(2) ? 3 : 0;
  if (b0 === 0xed) return cont(1, 0x80, 0x9f) && cont(2) ? 3 : 0;
  if (b0 === 0xf0) return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0;
  if (b0 >= 0xf1 && b0 <= 0xf3) return cont(1) && cont(2) && cont(3) ? 4 : 0;
  if (b0 === 0xf4) return cont(1, 0x80, 0x8f) && cont(2) && cont(3) ? 4 : 0;
  return 0;
}

/** Loads tokenizer.model as a BPE model; InputError / FormatError naming the file on failure. */
export function loadSentencePieceBpe(path: string): SentencePieceBpe {
  return new SentencePieceBpe(readSentencePieceModel(path), path);
}

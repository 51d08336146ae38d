/**
 * A restricted pickle interpreter that reads a PyTorch state_dict without executing anything.
 *
 * It knows only the opcodes `torch.save` emits for a dict of tensors (protocols 2 to 5), and only the
 * globals such a pickle names: `collections.OrderedDict`, the tensor and parameter rebuild functions of
 * `torch._utils` / `torch._tensor`, the `torch.<X>Storage` types and the `torch.<dtype>` objects. Nothing is
 * ever called: "calling" one of these globals builds a plain description (a tensor's storage key, offset,
 * shape and strides). Any other global or opcode is a FormatError, and so is a length or count that the
 * remaining bytes cannot hold, checked before anything is allocated.
 */
import { lookupDType } from '../dtypes.js';
import { FormatError } from '../../util/errors.js';

// ---------------------------------------------------------------------------------------------------------
// Values

export interface PGlobal {
  t: 'global';
  module: string;
  name: string;
}
export interface PTuple {
  t: 'tuple';
  items: PValue[];
}
export interface PList {
  t: 'list';
  items: PValue[];
}
export interface PDict {
  t: 'dict';
  map: Map<PValue, PValue>;
}
export interface PFloat {
  t: 'float';
  v: number;
}
export interface PBytes {
  t: 'bytes';
  v: Uint8Array;
}

/** A storage named by a persistent id: ('storage', torch.<X>Storage, key, location, numel[, view]). */
export interface PStorage {
  t: 'storage';
  key: string;
  /** Element dtype of a typed storage; `uint8` for an UntypedStorage (numel counts bytes). */
  dtype: string;
  /** Elements of the storage (of `dtype`). */
  numel: number;
  location: string;
  /** Legacy (pre-1.6) storage views: the element offset into the root storage `key`, and the view's size. */
  view?: { key: string; offset: number; numel: number };
}

export interface PTensor {
  t: 'tensor';
  storage: PStorage;
  /** In elements of `dtype`. */
  offset: number;
  shape: number[];
  strides: number[];
  dtype: string;
}

export type PValue = null | boolean | number | bigint | string | PGlobal | PTuple | PList | PDict | PFloat | PBytes | PStorage | PTensor;

// ---------------------------------------------------------------------------------------------------------
// Limits: far above any real state_dict pickle, far below what would exhaust memory.

/** Values on the stack at once (the pickler batches SETITEMS by 1000, so a real pickle stays in the thousands). */
export const MAX_STACK = 1_000_000;
/** Open MARKs at once (a tensor needs two). */
export const MAX_MARKS = 1000;
/**
 * Values one pickle may build: every object, container entry and memo slot counts one. A tensor costs 40 to
 * 50, so this allows about 100,000 tensors per file (real checkpoints have a few thousand at most) while
 * bounding memory whatever the file's size (a 256 MiB pickle of 1-byte TUPLE1s would otherwise build
 * 256 million objects). It also keeps every Map below V8's 2^24-entry limit.
 */
export const MAX_VALUES = 5_000_000;
/** A string or bytes value: keys and names are short. */
export const MAX_STRING_BYTES = 16 * 1024 * 1024;
/** A module or name in a GLOBAL line. */
const MAX_GLOBAL_LINE = 256;
/** Dimensions of one tensor. */
const MAX_DIMS = 64;
/** Digits of a LONG1/LONG4 integer: 16 bytes covers every size and offset, and the legacy magic number. */
const MAX_LONG_BYTES = 16;

/** Thrown when the bytes end before STOP: a caller reading a file by growing chunks reads more and retries. */
export class TruncatedPickle extends FormatError {}

// ---------------------------------------------------------------------------------------------------------
// Globals: exactly these may be named.

/** `torch.<X>Storage` → element dtype (undefined: a storage vramfit cannot size, refused when used). */
const STORAGE_TYPES: Record<string, string | undefined> = {
  DoubleStorage: 'float64',
  FloatStorage: 'float32',
  HalfStorage: 'float16',
  BFloat16Storage: 'bfloat16',
  LongStorage: 'int64',
  IntStorage: 'int32',
  ShortStorage: 'int16',
  CharStorage: 'int8',
  ByteStorage: 'uint8',
  BoolStorage: 'bool',
  UntypedStorage: 'uint8',
  ComplexDoubleStorage: undefined,
  ComplexFloatStorage: undefined,
  QInt8Storage: undefined,
  QUInt8Storage: undefined,
  QInt32Storage: undefined,
  QUInt4x2Storage: undefined,
  QUInt2x4Storage: undefined,
};

/** `torch.<dtype>` objects, as `_rebuild_tensor_v3` names them; the unknown ones are refused when used. */
const TORCH_DTYPES = new Set([
  'float64',
  'double',
  'float32',
  'float',
  'float16',
  'half',
  'bfloat16',
  'int64',
  'long',
  'int32',
  'int',
  'int16',
  'short',
  'int8',
  'uint8',
  'bool',
  'uint16',
  'uint32',
  'uint64',
  'float8_e4m3fn',
  'float8_e5m2',
  'complex32',
  'complex64',
  'complex128',
  'cfloat',
  'cdouble',
  'float8_e4m3fnuz',
  'float8_e5m2fnuz',
  'float8_e8m0fnu',
  'qint8',
  'quint8',
  'qint32',
  'quint4x2',
  'quint2x4',
]);

const CALLABLES = new Set([
  'collections.OrderedDict',
  'torch._utils._rebuild_tensor_v2',
  'torch._utils._rebuild_tensor_v3',
  'torch._utils._rebuild_parameter',
  'torch._utils._rebuild_parameter_with_state',
  'torch._tensor._rebuild_from_type_v2',
]);
/** Classes `_rebuild_from_type_v2` may name: a plain tensor or a parameter, nothing that runs code. */
const TENSOR_TYPES = new Set(['torch._tensor.Tensor', 'torch.Tensor', 'torch.nn.parameter.Parameter']);

function allowedGlobal(module: string, name: string): boolean {
  const full = `${module}.${name}`;
  if (CALLABLES.has(full) || TENSOR_TYPES.has(full)) return true;
  return module === 'torch' && (Object.hasOwn(STORAGE_TYPES, name) || TORCH_DTYPES.has(name));
}

// ---------------------------------------------------------------------------------------------------------
// Display of untrusted values in messages: short and one line.

function show(s: string): string {
  const q = JSON.stringify(s.slice(0, 81));
  return q.length > 82 ? `${q.slice(0, 80)}…"` : q;
}

/** What a value is, for messages (never recursing into it). */
export function describe(v: PValue): string {
  if (v === null) return 'None';
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  if (typeof v === 'number' || typeof v === 'bigint') return `the integer ${String(v).slice(0, 40)}`;
  if (typeof v === 'string') return `the string ${show(v)}`;
  switch (v.t) {
    case 'global':
      return `${v.module}.${v.name}`;
    case 'tuple':
      return `a ${v.items.length}-tuple`;
    case 'list':
      return `a list of ${v.items.length}`;
    case 'dict':
      return `a dict of ${v.map.size}`;
    case 'float':
      return `the float ${v.v}`;
    case 'bytes':
      return `${v.v.length} bytes`;
    case 'storage':
      return `storage ${show(v.key)}`;
    case 'tensor':
      return 'a tensor';
  }
}

// ---------------------------------------------------------------------------------------------------------
// The interpreter

export interface UnpickleResult {
  value: PValue;
  /** Offset just past the STOP opcode. */
  end: number;
}

export interface UnpickleOptions {
  /** Offset of the first opcode in `bytes`. */
  start?: number;
  /** Accept legacy (pre-1.6) persistent ids with a 6th element, the storage view. */
  legacy?: boolean;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
const ascii = new TextDecoder('latin1');

const isInt = (v: PValue): v is number => typeof v === 'number';
const isTuple = (v: PValue): v is PTuple => typeof v === 'object' && v !== null && v.t === 'tuple';
const isDict = (v: PValue): v is PDict => typeof v === 'object' && v !== null && v.t === 'dict';
const isList = (v: PValue): v is PList => typeof v === 'object' && v !== null && v.t === 'list';
const isGlobal = (v: PValue): v is PGlobal => typeof v === 'object' && v !== null && v.t === 'global';
const isTensor = (v: PValue): v is PTensor => typeof v === 'object' && v !== null && v.t === 'tensor';
const isStorage = (v: PValue): v is PStorage => typeof v === 'object' && v !== null && v.t === 'storage';

/**
 * Interprets one pickle starting at `opts.start` (default 0) up to its STOP. Throws FormatError (naming
 * `file`) for anything outside the state_dict subset, TruncatedPickle when the bytes end first.
 */
export function unpickle(bytes: Uint8Array, file: string, opts: UnpickleOptions = {}): UnpickleResult {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = opts.start ?? 0;
  const stack: PValue[] = [];
  const marks: number[] = [];
  const memo = new Map<number, PValue>();
  let built = 0;
  /** Counts `n` values built; refuses the pickle past MAX_VALUES. */
  const spend = (n: number): void => {
    built += n;
    if (built > MAX_VALUES) fail(`builds over ${MAX_VALUES} values: not a state_dict`);
  };

  const fail = (reason: string): never => {
    throw new FormatError(file, `pickle: ${reason}`);
  };
  const need = (n: number, what: string): void => {
    if (n > bytes.length - pos) throw new TruncatedPickle(file, `pickle is truncated: ${what} at byte ${pos} needs ${n} bytes, ${bytes.length - pos} remain`);
  };
  const u8 = (): number => {
    need(1, 'an argument');
    return bytes[pos++]!;
  };
  const u16 = (): number => {
    need(2, 'an argument');
    const v = view.getUint16(pos, true);
    pos += 2;
    return v;
  };
  const u32 = (): number => {
    need(4, 'an argument');
    const v = view.getUint32(pos, true);
    pos += 4;
    return v;
  };
  const i32 = (): number => {
    need(4, 'an argument');
    const v = view.getInt32(pos, true);
    pos += 4;
    return v;
  };
  /** A u64 length, checked against the remaining bytes (so it is exact when it passes). */
  const len64 = (what: string): number => {
    need(8, 'a length');
    const v = view.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(bytes.length - pos))
      throw new TruncatedPickle(file, `pickle is truncated: ${what} of ${v} bytes at byte ${pos} runs past the ${bytes.length - pos} remaining`);
    return Number(v);
  };
  const take = (n: number, what: string): Uint8Array => {
    need(n, what);
    if (n > MAX_STRING_BYTES) fail(`${what} of ${n} bytes at byte ${pos} is over the ${MAX_STRING_BYTES}-byte limit`);
    const out = bytes.subarray(pos, pos + n);
    pos += n;
    return out;
  };
  const text = (n: number): string => {
    const raw = take(n, 'a string');
    try {
      return utf8.decode(raw);
    } catch {
      return fail(`string at byte ${pos - n} is not valid UTF-8`);
    }
  };
  const line = (): string => {
    const limit = Math.min(bytes.length, pos + MAX_GLOBAL_LINE + 1);
    for (let p = pos; p < limit; p++) {
      if (bytes[p] === 0x0a) {
        const s = ascii.decode(bytes.subarray(pos, p));
        pos = p + 1;
        return s;
      }
    }
    if (limit === bytes.length) throw new TruncatedPickle(file, `pickle is truncated inside a GLOBAL at byte ${pos}`);
    return fail(`GLOBAL at byte ${pos} has a name over ${MAX_GLOBAL_LINE} characters`);
  };
  const push = (v: PValue): void => {
    if (stack.length >= MAX_STACK) fail(`stack holds over ${MAX_STACK} values`);
    // Objects cost one, tuples one per item too; numbers, booleans and None cost nothing to push.
    if (typeof v === 'object' && v !== null) spend(v.t === 'tuple' ? 1 + v.items.length : 1);
    else if (typeof v === 'string' || typeof v === 'bigint') spend(1);
    stack.push(v);
  };
  const pop = (): PValue => {
    const floor = marks.length > 0 ? marks[marks.length - 1]! : 0;
    if (stack.length <= floor) fail(`stack underflow at byte ${pos - 1}`);
    return stack.pop()!;
  };
  const top = (): PValue => {
    const floor = marks.length > 0 ? marks[marks.length - 1]! : 0;
    if (stack.length <= floor) fail(`stack underflow at byte ${pos - 1}`);
    return stack[stack.length - 1]!;
  };
  const popMark = (): PValue[] => {
    if (marks.length === 0) fail(`no MARK before the opcode at byte ${pos - 1}`);
    const at = marks.pop()!;
    return stack.splice(at);
  };
  const memoPut = (key: number, v: PValue): void => {
    if (!memo.has(key)) spend(1);
    memo.set(key, v);
  };
  const memoGet = (key: number): PValue => {
    if (!memo.has(key)) fail(`memo slot ${key} read at byte ${pos} was never written`);
    return memo.get(key)!;
  };
  const global = (module: string, name: string): PGlobal => {
    if (!allowedGlobal(module, name)) fail(`refusing to unpickle GLOBAL ${show(`${module}.${name}`).slice(1, -1)}: only state_dict tensors are read`);
    return { t: 'global', module, name };
  };
  const setItems = (dict: PValue, items: PValue[]): void => {
    if (!isDict(dict)) fail(`SETITEM on ${describe(dict)}, not a dict`);
    const d = dict as PDict;
    spend(items.length / 2);
    for (let i = 0; i + 1 < items.length; i += 2) d.map.set(items[i]!, items[i + 1]!);
  };
  const append = (list: PValue, items: PValue[]): void => {
    if (!isList(list)) fail(`APPEND on ${describe(list)}, not a list`);
    const l = list as PList;
    spend(items.length);
    for (const v of items) l.items.push(v);
  };
  const persistentLoad = (pid: PValue): PStorage => storageFromPid(pid, file, opts.legacy === true);

  for (;;) {
    const at = pos;
    if (pos >= bytes.length) throw new TruncatedPickle(file, `pickle is truncated: no STOP opcode before byte ${pos}`);
    const op = bytes[pos++]!;
    switch (op) {
      case 0x80: {
        // PROTO
        const v = u8();
        if (v < 2 || v > 5) fail(`protocol ${v} at byte ${at} is not one torch.save writes (2 to 5)`);
        break;
      }
      case 0x95: // FRAME: a hint for buffered readers; the whole pickle is in memory already.
        len64('a frame');
        break;
      case 0x2e: {
        // STOP
        if (marks.length > 0 || stack.length !== 1) fail(`STOP at byte ${at} with ${stack.length} values and ${marks.length} marks on the stack`);
        return { value: stack[0]!, end: pos };
      }
      case 0x28: // MARK
        if (marks.length >= MAX_MARKS) fail(`over ${MAX_MARKS} nested MARKs`);
        marks.push(stack.length);
        break;
      case 0x7d: // EMPTY_DICT
        push({ t: 'dict', map: new Map() });
        break;
      case 0x5d: // EMPTY_LIST
        push({ t: 'list', items: [] });
        break;
      case 0x29: // EMPTY_TUPLE
        push({ t: 'tuple', items: [] });
        break;
      case 0x4e: // NONE
        push(null);
        break;
      case 0x88: // NEWTRUE
        push(true);
        break;
      case 0x89: // NEWFALSE
        push(false);
        break;
      case 0x4b: // BININT1
        push(u8());
        break;
      case 0x4d: // BININT2
        push(u16());
        break;
      case 0x4a: // BININT
        push(i32());
        break;
      case 0x8a: // LONG1
      case 0x8b: {
        // LONG4
        const n = op === 0x8a ? u8() : u32();
        if (n > MAX_LONG_BYTES) fail(`integer of ${n} bytes at byte ${at} is absurdly large`);
        push(decodeLong(take(n, 'an integer')));
        break;
      }
      case 0x47: {
        // BINFLOAT (big-endian)
        need(8, 'a float');
        push({ t: 'float', v: view.getFloat64(pos, false) });
        pos += 8;
        break;
      }
      case 0x58: // BINUNICODE
        push(text(u32()));
        break;
      case 0x8c: // SHORT_BINUNICODE
        push(text(u8()));
        break;
      case 0x8d: // BINUNICODE8
        push(text(len64('a string')));
        break;
      case 0x43: // SHORT_BINBYTES
        push({ t: 'bytes', v: take(u8(), 'bytes') });
        break;
      case 0x42: // BINBYTES
        push({ t: 'bytes', v: take(u32(), 'bytes') });
        break;
      case 0x8e: // BINBYTES8
        push({ t: 'bytes', v: take(len64('bytes'), 'bytes') });
        break;
      case 0x74: // TUPLE
        push({ t: 'tuple', items: popMark() });
        break;
      case 0x85: // TUPLE1
        push({ t: 'tuple', items: [pop()] });
        break;
      case 0x86: {
        // TUPLE2
        const b = pop();
        const a = pop();
        push({ t: 'tuple', items: [a, b] });
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop();
        const b = pop();
        const a = pop();
        push({ t: 'tuple', items: [a, b, c] });
        break;
      }
      case 0x71: // BINPUT
        memoPut(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memoPut(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memoPut(memo.size, top());
        break;
      case 0x68: // BINGET
        push(memoGet(u8()));
        break;
      case 0x6a: // LONG_BINGET
        push(memoGet(u32()));
        break;
      case 0x73: {
        // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        if (items.length % 2 !== 0) fail(`SETITEMS at byte ${at} has an odd number of values`);
        setItems(top(), items);
        break;
      }
      case 0x61: {
        // APPEND
        const v = pop();
        append(top(), [v]);
        break;
      }
      case 0x65: {
        // APPENDS
        const items = popMark();
        append(top(), items);
        break;
      }
      case 0x63: {
        // GLOBAL
        const module = line();
        const name = line();
        push(global(module, name));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail(`STACK_GLOBAL at byte ${at} needs two strings`);
        push(global(module as string, name as string));
        break;
      }
      case 0x52: {
        // REDUCE
        const args = pop();
        const fn = pop();
        push(reduce(fn, args, file, at));
        break;
      }
      case 0x62: {
        // BUILD: OrderedDict state (`_metadata`) and tensor state are dropped; nothing else is built.
        const state = pop();
        const obj = top();
        if (!isDict(obj) && !isTensor(obj)) fail(`BUILD at byte ${at} on ${describe(obj)}`);
        if (state !== null && !isDict(state) && !isTuple(state)) fail(`BUILD at byte ${at} with state ${describe(state)}`);
        break;
      }
      case 0x51: // BINPERSID
        push(persistentLoad(pop()));
        break;
      default:
        fail(`opcode 0x${op.toString(16).padStart(2, '0')}${printable(op)} at byte ${at} is not one a state_dict needs`);
    }
  }
}

function printable(op: number): string {
  return op >= 0x20 && op < 0x7f ? ` (${JSON.stringify(String.fromCharCode(op))})` : '';
}

/** Two's-complement little-endian integer: a number when exact, else a bigint. */
function decodeLong(b: Uint8Array): number | bigint {
  if (b.length === 0) return 0;
  let v = 0n;
  for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
  if (b[b.length - 1]! & 0x80) v -= 1n << BigInt(8 * b.length);
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

function storageFromPid(pid: PValue, file: string, legacy: boolean): PStorage {
  const bad = (why: string): never => {
    throw new FormatError(file, `pickle: persistent id ${why}`);
  };
  if (!isTuple(pid)) return bad(`is ${describe(pid)}, not a tuple`);
  const items = pid.items;
  if (items[0] !== 'storage') return bad(`is not a storage (it starts with ${items.length > 0 ? describe(items[0]!) : 'nothing'})`);
  if (items.length !== 5 && !(legacy && items.length === 6)) return bad(`has ${items.length} elements, not ('storage', type, key, location, numel)`);
  const [, type, key, location, numel] = items;
  if (!isGlobal(type!) || type.module !== 'torch' || !Object.hasOwn(STORAGE_TYPES, type.name)) return bad(`names ${describe(type!)}, not a torch storage type`);
  if (typeof key !== 'string' || key.length === 0 || key.length > 256) return bad('has no storage key (a short string)');
  if (typeof location !== 'string') return bad(`has location ${describe(location!)}, not a string`);
  if (!isInt(numel!) || !Number.isSafeInteger(numel) || numel < 0) return bad(`gives storage ${show(key as string)} ${describe(numel!)} elements`);
  const dtype = STORAGE_TYPES[type.name];
  if (dtype === undefined) {
    throw new FormatError(file, `storage ${show(key as string)} is a torch.${type.name}: unknown dtype (vramfit reads float, int and bool storages)`);
  }
  const storage: PStorage = { t: 'storage', key: key as string, dtype, numel: numel as number, location: location as string };
  const v = items[5];
  if (v !== undefined && v !== null) {
    if (!isTuple(v) || v.items.length !== 3) return bad('has a view that is not (key, offset, size)');
    const [vkey, off, size] = v.items;
    if (typeof vkey !== 'string' || !isInt(off!) || !isInt(size!) || off < 0 || size < 0 || off + size > (numel as number)) {
      return bad(`has a view of storage ${show(key as string)} outside its ${numel} elements`);
    }
    storage.view = { key: vkey, offset: off, numel: size };
  }
  return storage;
}

function intTuple(v: PValue | undefined, what: string, fail: (r: string) => never): number[] {
  if (v === undefined || !isTuple(v)) return fail(`${what} is ${v === undefined ? 'missing' : describe(v)}, not a tuple`);
  if (v.items.length > MAX_DIMS) return fail(`${what} has ${v.items.length} dimensions, over ${MAX_DIMS}`);
  for (const x of v.items) {
    if (!isInt(x) || !Number.isSafeInteger(x) || x < 0) return fail(`${what} holds ${describe(x)}, not a non-negative integer`);
  }
  return v.items as number[];
}

function dtypeOfGlobal(v: PValue | undefined, fail: (r: string) => never): string {
  if (v === undefined || !isGlobal(v) || v.module !== 'torch' || !TORCH_DTYPES.has(v.name))
    return fail(`dtype is ${v === undefined ? 'missing' : describe(v)}`);
  const info = lookupDType(v.name);
  if (!info || info.kind === 'quantized') return fail(`unknown dtype torch.${v.name}`);
  return info.name;
}

/** "Calls" an allowed global: builds a description, runs nothing. */
function reduce(fn: PValue, args: PValue, file: string, at: number): PValue {
  const fail = (reason: string): never => {
    throw new FormatError(file, `pickle: ${reason}`);
  };
  if (!isGlobal(fn)) return fail(`REDUCE at byte ${at} calls ${describe(fn)}, not an allowed function`);
  if (!isTuple(args)) return fail(`REDUCE at byte ${at} with arguments ${describe(args)}, not a tuple`);
  const full = `${fn.module}.${fn.name}`;
  const a = args.items;
  const where =
    (what: string): ((r: string) => never) =>
    (r: string) =>
      fail(`${what} at byte ${at}: ${r}`);
  switch (full) {
    case 'collections.OrderedDict':
      if (a.length !== 0) return fail(`OrderedDict at byte ${at} is given arguments`);
      return { t: 'dict', map: new Map() };
    case 'torch._utils._rebuild_tensor_v2':
    case 'torch._utils._rebuild_tensor_v3': {
      const v3 = full.endsWith('v3');
      const f = where(`_rebuild_tensor_${v3 ? 'v3' : 'v2'}`);
      if (a.length < 4 || a.length > (v3 ? 8 : 7)) return f(`takes 4 to ${v3 ? 8 : 7} arguments, got ${a.length}`);
      const [storage, offset] = a;
      if (!isStorage(storage!)) return f(`first argument is ${describe(storage!)}, not a storage`);
      if (!isInt(offset!) || !Number.isSafeInteger(offset) || offset < 0) return f(`storage offset is ${describe(offset!)}`);
      const shape = intTuple(a[2], 'size', f);
      const strides = intTuple(a[3], 'stride', f);
      if (shape.length !== strides.length) return f(`size has ${shape.length} dimensions but stride ${strides.length}`);
      const dtype = v3 ? dtypeOfGlobal(a[6], f) : storage.dtype;
      return { t: 'tensor', storage, offset, shape, strides, dtype };
    }
    case 'torch._utils._rebuild_parameter':
    case 'torch._utils._rebuild_parameter_with_state': {
      const data = a[0];
      if (a.length < 3 || a.length > 4 || !isTensor(data!)) return fail(`${fn.name} at byte ${at} is not given a tensor`);
      return data;
    }
    case 'torch._tensor._rebuild_from_type_v2': {
      const [inner, type, innerArgs] = a;
      if (a.length !== 4 || !isGlobal(inner!) || !isGlobal(type!)) return fail(`_rebuild_from_type_v2 at byte ${at} has malformed arguments`);
      if (!TENSOR_TYPES.has(`${type.module}.${type.name}`)) return fail(`_rebuild_from_type_v2 at byte ${at} names class ${describe(type)}, not a tensor`);
      // Only the plain tensor rebuilds: no nesting, so no recursion an input could deepen.
      if (inner.module !== 'torch._utils' || (inner.name !== '_rebuild_tensor_v2' && inner.name !== '_rebuild_tensor_v3'))
        return fail(`_rebuild_from_type_v2 at byte ${at} calls ${describe(inner)}`);
      const out = reduce(inner, innerArgs!, file, at);
      if (!isTensor(out)) return fail(`_rebuild_from_type_v2 at byte ${at} does not build a tensor`);
      return out;
    }
    default:
      return fail(`REDUCE at byte ${at} calls ${full}, which a state_dict does not need`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// state_dict

export interface StateDictTensor {
  name: string;
  /** Canonical vramfit dtype of the tensor. */
  dtype: string;
  shape: number[];
  /** In elements, one per dimension. */
  strides: number[];
  storageKey: string;
  /** In elements of `dtype`, from the start of the storage (a legacy view's offset included). */
  storageOffset: number;
}

export interface StateDictStorage {
  key: string;
  /** Element dtype as the storage declares it (`uint8` for untyped storage). */
  dtype: string;
  numel: number;
  /** numel × element size. */
  bytes: number;
  location: string;
}

export interface StateDict {
  /** In the pickle's dict order. */
  tensors: StateDictTensor[];
  /** Every storage a tensor uses, by key (the root key for a legacy view). */
  storages: Map<string, StateDictStorage>;
  /** Offset just past the pickle's STOP. */
  end: number;
}

/** The state_dict in an unpickled value: a dict of names to tensors. */
export function stateDictFrom(result: UnpickleResult, file: string): StateDict {
  const root = result.value;
  if (!isDict(root)) throw new FormatError(file, `pickle holds ${describe(root)}, not a state_dict (a dict of tensors)`);
  const tensors: StateDictTensor[] = [];
  const storages = new Map<string, StateDictStorage>();
  for (const [k, v] of root.map) {
    if (typeof k !== 'string') throw new FormatError(file, `state_dict key ${describe(k)} is not a string`);
    if (!isTensor(v)) {
      const hint = isDict(v) ? ': only flat state_dicts are read (not training checkpoints holding one)' : '';
      throw new FormatError(file, `state_dict entry ${show(k)} is ${describe(v)}, not a tensor${hint}`);
    }
    const s = v.storage;
    // A legacy view's key is its root storage's: the view only shifts the offset.
    const rootKey = s.key;
    const elem = lookupDType(s.dtype)!.blockBytes;
    const declared: StateDictStorage = { key: rootKey, dtype: s.dtype, numel: s.numel, bytes: s.numel * elem, location: s.location };
    const seen = storages.get(rootKey);
    if (seen && seen.bytes !== declared.bytes) {
      throw new FormatError(file, `storage ${show(rootKey)} is declared as ${seen.bytes} bytes and as ${declared.bytes}`);
    }
    if (!seen) storages.set(rootKey, declared);
    const tensorElem = lookupDType(v.dtype)!.blockBytes;
    let offset = v.offset;
    if (s.view) {
      // A legacy view starts `view.offset` storage elements into its root.
      const bytes = s.view.offset * elem;
      if (bytes % tensorElem !== 0) throw new FormatError(file, `tensor ${show(k)}: its storage view is not aligned to its ${v.dtype} elements`);
      offset += bytes / tensorElem;
    }
    tensors.push({ name: k, dtype: v.dtype, shape: v.shape, strides: v.strides, storageKey: rootKey, storageOffset: offset });
  }
  return { tensors, storages, end: result.end };
}

/** Unpickles a state_dict pickle (data.pkl of a torch.save zip). */
export function parseStateDictPickle(bytes: Uint8Array, file: string, opts: UnpickleOptions = {}): StateDict {
  return stateDictFrom(unpickle(bytes, file, opts), file);
}

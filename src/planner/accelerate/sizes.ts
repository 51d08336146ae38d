/**
 * accelerate's `compute_module_sizes`: bytes per module, tensor and the whole model ('').
 */
import { bytesPerElement, dtypeInfo } from '../../reader/dtypes.js';
import { InputError } from '../../util/errors.js';
import type { AccelerateModel, ModuleNode, TensorNode } from './model.js';
import { namedTensors } from './model.js';
import { type PyNum, PY_ZERO, pyAdd, pyFloat, pyInt, pyMin, pyMul } from './pynum.js';

/** Sizes by name in accelerate's insertion order. Reads of absent names give int 0, like its defaultdict. */
export class ModuleSizes {
  private readonly map = new Map<string, PyNum>();

  get(name: string): PyNum {
    return this.map.get(name) ?? PY_ZERO;
  }

  has(name: string): boolean {
    return this.map.has(name);
  }

  add(name: string, size: PyNum): void {
    this.map.set(name, pyAdd(this.get(name), size));
  }

  entries(): IterableIterator<[string, PyNum]> {
    return this.map.entries();
  }

  /** Plain numbers, for output. */
  toRecord(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [k, v] of this.map) out[k] = v.value;
    return out;
  }
}

/** The dtype options both accelerate entry points take. */
export interface DtypeOptions {
  dtype?: string | null;
  specialDtypes?: Readonly<Record<string, string>> | null;
}

/**
 * accelerate's `dtype_byte_size`. QUIRK (compat only): bool costs 1/8 byte, as if bit-packed, though torch
 * stores one byte per bool. Everything else is the real element size.
 */
export function accelerateDtypeSize(dtype: string): PyNum {
  const info = dtypeInfo(dtype);
  if (info.kind === 'bool') return pyFloat(1 / 8);
  return pyInt(bytesPerElement(dtype));
}

function checkDtype(dtype: string, where: string): string {
  try {
    const info = dtypeInfo(dtype);
    if (info.kind === 'quantized') throw new Error('not a torch dtype');
    return info.name;
  } catch {
    throw new InputError(where, `'${dtype}' is not a torch dtype`);
  }
}

/** The size accelerate charges for one tensor (found under `lookupName` in special_dtypes). */
function tensorSize(tensor: TensorNode, lookupName: string, opts: DtypeOptions): PyNum {
  const count = pyInt(tensor.numel);
  const special = opts.specialDtypes?.[lookupName];
  if (special !== undefined && special !== null) return pyMul(count, accelerateDtypeSize(special));
  const own = accelerateDtypeSize(tensor.dtype);
  if (opts.dtype === undefined || opts.dtype === null) return pyMul(count, own);
  // Integer and bool tensors are never converted on load, so they keep their size; floats only ever shrink.
  const kind = dtypeInfo(tensor.dtype).kind;
  if (kind === 'int' || kind === 'bool') return pyMul(count, own);
  return pyMul(count, pyMin(accelerateDtypeSize(opts.dtype), own));
}

/** Checks the dtype options once, so the size functions can trust them. */
export function checkDtypeOptions(opts: DtypeOptions): DtypeOptions {
  const dtype = opts.dtype === undefined || opts.dtype === null ? null : checkDtype(opts.dtype, 'accelerate input: dtype');
  const specialDtypes: Record<string, string> = {};
  for (const [name, d] of Object.entries(opts.specialDtypes ?? {})) {
    specialDtypes[name] = checkDtype(d, `accelerate input: special_dtypes ${name}`);
  }
  return { dtype, specialDtypes };
}

/**
 * `compute_module_sizes(model, dtype, special_dtypes)`: every tensor (parameters, then buffers, tied ones once
 * under their first name) adds its size to itself and to each enclosing module, up to ''.
 */
export function computeModuleSizes(model: AccelerateModel, opts: DtypeOptions): ModuleSizes {
  const sizes = new ModuleSizes();
  for (const { relativeName, tensor } of namedTensors(model.root)) {
    addUpTheTree(sizes, relativeName, tensorSize(tensor, relativeName, opts));
  }
  return sizes;
}

/** Adds `size` to the module and every ancestor ('' included), walking the dots instead of re-joining parts. */
function addUpTheTree(sizes: ModuleSizes, name: string, size: PyNum): void {
  sizes.add('', size);
  for (let i = name.indexOf('.'); i >= 0; i = name.indexOf('.', i + 1)) sizes.add(name.slice(0, i), size);
  if (name !== '') sizes.add(name, size);
}

/**
 * `compute_module_total_buffer_size(module, dtype, special_dtypes)`: the buffers below one placed module.
 * QUIRK: accelerate runs this on the submodule, so buffer names are relative to it and a special_dtypes entry
 * (keyed by full name) only matches by accident.
 */
export function moduleBufferSize(module: ModuleNode, opts: DtypeOptions): PyNum {
  let total = PY_ZERO;
  for (const { relativeName, tensor } of namedTensors(module, 'buffers')) {
    total = pyAdd(total, tensorSize(tensor, relativeName, opts));
  }
  return total;
}

/**
 * transformers' keep-in-fp32 rule turned into special_dtypes: with a float16 load dtype, every parameter whose name
 * contains a listed module as whole dot-separated part(s) is counted as float32. Explicit special_dtypes come
 * first; these override them (transformers' update order). The module name goes into the pattern unescaped, as
 * transformers builds it.
 */
export function effectiveSpecialDtypes(
  model: AccelerateModel,
  dtype: string | null | undefined,
  specialDtypes: Readonly<Record<string, string>> | null | undefined,
  keepInFp32: readonly string[] | null | undefined,
): Record<string, string> {
  const out: Record<string, string> = { ...(specialDtypes ?? {}) };
  if (!keepInFp32 || keepInFp32.length === 0 || !dtype) return out;
  if (checkDtype(dtype, 'accelerate input: dtype') !== 'float16') return out;
  const pattern = new RegExp(keepInFp32.map((m) => `((^|\\.)${m}($|\\.))`).join('|'));
  for (const { relativeName, tensor } of namedTensors(model.root)) {
    if (tensor.kind === 'param' && pattern.test(relativeName)) out[relativeName] = 'float32';
  }
  return out;
}

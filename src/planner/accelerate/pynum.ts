/**
 * Python numbers as accelerate computes with them: a value, plus whether Python holds it as a float.
 *
 * Why track int-vs-float at all: accelerate behaves differently on the two. Its `fallback_allocate` passes a size
 * to `convert_file_size_to_int`, which takes the int branch for an int but calls `.upper()` on a float and dies
 * with AttributeError; and its messages print `1769472.0` for a float. Floats appear as soon as a bool tensor
 * (1/8 byte) is involved. Values themselves are plain doubles: exact for every size here (multiples of 1/8
 * far below 2^53).
 */
export interface PyNum {
  readonly value: number;
  readonly isFloat: boolean;
}

export const pyInt = (value: number): PyNum => ({ value, isFloat: false });
export const pyFloat = (value: number): PyNum => ({ value, isFloat: true });
export const PY_ZERO: PyNum = pyInt(0);

export function pyAdd(a: PyNum, b: PyNum): PyNum {
  return { value: a.value + b.value, isFloat: a.isFloat || b.isFloat };
}

export function pySub(a: PyNum, b: PyNum): PyNum {
  return { value: a.value - b.value, isFloat: a.isFloat || b.isFloat };
}

export function pyMul(a: PyNum, b: PyNum): PyNum {
  return { value: a.value * b.value, isFloat: a.isFloat || b.isFloat };
}

/** Python `a // b` (b > 0 here). Floats follow CPython's float_floor_div so the rounding matches too. */
export function pyFloorDiv(a: PyNum, b: PyNum): PyNum {
  if (!a.isFloat && !b.isFloat) {
    const r = a.value % b.value;
    const adjusted = r !== 0 && r < 0 !== b.value < 0 ? r + b.value : r;
    return pyInt((a.value - adjusted) / b.value);
  }
  const vx = a.value;
  const wx = b.value;
  // CPython's float_floor_div: the remainder's sign decides one step down (the adjusted mod itself is not needed).
  const mod = vx % wx;
  let div = (vx - mod) / wx;
  if (mod !== 0 && wx < 0 !== mod < 0) div -= 1;
  let floordiv: number;
  if (div !== 0) {
    floordiv = Math.floor(div);
    if (div - floordiv > 0.5) floordiv += 1;
  } else {
    floordiv = 0;
  }
  return pyFloat(floordiv);
}

/** Python `int(x)`: truncation toward zero. */
export function pyTrunc(a: PyNum): PyNum {
  return pyInt(Math.trunc(a.value));
}

/** Python `min(a, b)`: the first argument unless the second is strictly smaller (matters for int-vs-float). */
export function pyMin(a: PyNum, b: PyNum): PyNum {
  return b.value < a.value ? b : a;
}

/** Python `max(a, b)`: the first argument unless the second is strictly larger. */
export function pyMax(a: PyNum, b: PyNum): PyNum {
  return b.value > a.value ? b : a;
}

/** Python `sum(xs)` (start 0, left to right). */
export function pySum(xs: readonly PyNum[]): PyNum {
  return xs.reduce(pyAdd, PY_ZERO);
}

/** Python `str()` of the number, as f-strings print it: `5`, `5.0`, `0.125`, `1e+16`. */
export function pyStr(n: PyNum): string {
  const v = n.value;
  if (!n.isFloat) return String(v);
  if (Number.isNaN(v)) return 'nan';
  if (!Number.isFinite(v)) return v > 0 ? 'inf' : '-inf';
  const abs = Math.abs(v);
  if (abs !== 0 && (abs >= 1e16 || abs < 1e-4)) {
    // Python: shortest digits, exponent with a sign and at least two digits ("1.5e-05").
    const [mant = '', exp = ''] = v.toExponential().split('e');
    const sign = exp.startsWith('-') ? '-' : '+';
    const digits = exp.replace(/^[+-]/, '').padStart(2, '0');
    return `${mant}e${sign}${digits}`;
  }
  const s = String(v);
  return Number.isInteger(v) ? `${s}.0` : s;
}

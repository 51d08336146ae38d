/**
 * What accelerate tells the user while planning, as data plus accelerate's own wording.
 */
import type { AccelerateDevice } from './max-memory.js';
import { type PyNum, pyStr } from './pynum.js';

/** `warnings.warn` from infer_auto_device_map. */
export interface AccelerateWarning {
  kind: 'offloaded-buffers-do-not-fit';
  /** Bytes of buffers inside modules placed on cpu and disk. */
  bufferBytes: number;
  message: string;
}

/** `logger.info` from infer_auto_device_map. */
export interface AccelerateInfoLog {
  kind: 'devices-left-empty';
  /** Devices that got nothing, with what their first candidate needed (its size with ties plus the reserve). */
  devices: { device: AccelerateDevice; bytesRequired: number }[];
  message: string;
}

/**
 * Buffers of cpu/disk-placed modules are moved to a GPU at run time (unless offload_buffers); accelerate warns when
 * they would fit next to no GPU's planned use.
 */
export function offloadedBuffersWarning(bufferBytes: PyNum): AccelerateWarning {
  return {
    kind: 'offloaded-buffers-do-not-fit',
    bufferBytes: bufferBytes.value,
    message:
      `Current model requires ${pyStr(bufferBytes)} bytes of buffer for offloaded layers, which seems does not fit any ` +
      `GPU's remaining memory. If you are experiencing a OOM later, please consider using offload_buffers=True.`,
  };
}

export function devicesLeftEmptyLog(entries: ReadonlyArray<readonly [AccelerateDevice, PyNum]>): AccelerateInfoLog {
  const lines = entries.map(([device, mem]) => `  - ${device}: ${pyStr(mem)} bytes required`).join('\n');
  return {
    kind: 'devices-left-empty',
    devices: entries.map(([device, mem]) => ({ device, bytesRequired: mem.value })),
    message:
      'Based on the current allocation process, no modules could be assigned to the following devices due to ' +
      `insufficient memory:\n${lines}\nThese minimum requirements are specific to this allocation attempt and may vary. ` +
      'Consider increasing the available memory for these devices to at least the specified minimum, or adjusting the model config.',
  };
}

/** Python's repr of a list of strings (or of lists of strings), for the verbose trace. */
export function pyListRepr(xs: ReadonlyArray<string | readonly string[]>): string {
  const one = (x: string | readonly string[]): string => (typeof x === 'string' ? `'${x.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'` : pyListRepr(x));
  return `[${xs.map(one).join(', ')}]`;
}

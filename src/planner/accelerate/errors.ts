import { InputError } from '../../util/errors.js';

/** The Python exception types accelerate (or torch under it) raises on planning inputs. */
export type PythonErrorType = 'ValueError' | 'KeyError' | 'RuntimeError' | 'IndexError' | 'AttributeError' | 'OverflowError';

/** The accelerate / transformers function the exception escapes from. */
export type AccelerateStage = 'get_max_memory' | 'get_balanced_memory' | 'infer_auto_device_map' | 'fallback_allocate';

/**
 * accelerate raised here: compat mode fails exactly where accelerate fails, with the same type and `str(e)`.
 * It is bad input from the user's point of view (their budgets or options), hence an InputError.
 */
export class AcceleratePlannerError extends InputError {
  readonly pythonType: PythonErrorType;
  /** `str(exception)` as Python prints it, e.g. `0` for `KeyError(0)`. */
  readonly pythonMessage: string;
  readonly stage: AccelerateStage;

  constructor(pythonType: PythonErrorType, pythonMessage: string, stage: AccelerateStage) {
    super(`accelerate ${stage}`, `${pythonType}: ${pythonMessage}`, 'ACCELERATE_RAISED');
    this.pythonType = pythonType;
    this.pythonMessage = pythonMessage;
    this.stage = stage;
  }
}

/** The message accelerate's torch gives for `torch.device('disk')` (what a `disk` key hits in balanced modes). */
export const TORCH_DISK_DEVICE_MESSAGE =
  'Expected one of cpu, cuda, ipu, xpu, mkldnn, opengl, opencl, ideep, hip, ve, fpga, ort, xla, lazy, vulkan, mps, ' +
  'meta, hpu, privateuseone device type at start of device string: disk';

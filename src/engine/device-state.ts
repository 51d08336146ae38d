/**
 * Everything one device holds for a loaded model, in one place with one owner: its weights, its
 * layers' KV cache, its graph allocator and the compute buffer reserved for it. `releaseAll` frees
 * them (then the devices) both when a model is disposed and when a load fails half-way.
 */
import { closeDevices, liveResources, type Allocation, type EngineDevice } from './device.js';
import type { Ctx, Gallocr, Ggml } from './ggml/binding.js';
import { freeWeights, type DeviceWeights } from './weights.js';

export interface DeviceState {
  device: EngineDevice;
  weights?: DeviceWeights;
  /** One buffer holding the K and V caches of every layer on this device. */
  kv?: Allocation;
  /** The metadata context of the cache tensors. */
  kvCtx?: Ctx;
  galloc?: Gallocr;
  /** Bytes of compute buffer reserved on the device's allocator for its stage graphs. */
  computeBytes: number;
}

export function newDeviceState(device: EngineDevice): DeviceState {
  return { device, computeBytes: 0 };
}

/** Frees what each device holds, in the reverse order of acquisition, then closes the devices. */
export function releaseAll(g: Ggml, states: readonly DeviceState[]): void {
  for (const s of states) {
    if (s.galloc) {
      g.raw.ggml_gallocr_free(s.galloc);
      liveResources.graphAllocators--;
      delete s.galloc;
    }
    if (s.computeBytes) s.device.allocator.releaseExternal(s.computeBytes, 'compute');
    s.computeBytes = 0;
    if (s.kv) s.device.allocator.free(s.kv);
    delete s.kv;
    if (s.kvCtx) g.free(s.kvCtx);
    delete s.kvCtx;
    if (s.weights) freeWeights(g, s.device, s.weights);
    delete s.weights;
  }
  closeDevices(states.map((s) => s.device));
}

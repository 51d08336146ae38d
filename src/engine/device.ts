import { VramfitError } from '../util/errors.js';
import { cpuDevice, deviceMemory, devices, DEV_TYPE, loadGgml, type Backend, type Buffer_, type BufferType, type Ggml } from './ggml/binding.js';

/** A request that would take a device past its cap; nothing was allocated. */
export class OutOfDeviceMemory extends VramfitError {
  constructor(
    readonly device: string,
    readonly requested: number,
    readonly inUse: number,
    readonly cap: number,
    readonly purpose: string,
  ) {
    super(
      'OUT_OF_DEVICE_MEMORY',
      `device ${device}: ${purpose} needs ${requested} bytes on top of ${inUse} already in use or reserved, over its ${cap}-byte cap by ${requested + inUse - cap} bytes`,
      2,
    );
  }
}

/** Native resources this process holds, so tests can prove a failed or disposed load leaks nothing. */
export const liveResources = { buffers: 0, backends: 0, graphAllocators: 0, externalBytes: 0 };

export interface Allocation {
  buffer: Buffer_;
  bytes: number;
  purpose: string;
}

/**
 * Every buffer on a device is requested here. A request beyond the cap fails before ggml allocates
 * anything; peak use is tracked so a run can report what the device really held.
 */
export class CappedAllocator {
  private inUse = 0;
  private peakBytes = 0;
  private readonly live = new Set<Allocation>();
  private readonly external = new Map<string, number>();

  constructor(
    private readonly g: Ggml,
    readonly device: string,
    readonly cap: number,
    private readonly buft: BufferType,
  ) {}

  /** Fails like `allocate` would, without allocating: for checking a whole load up front. */
  check(bytes: number, purpose: string, alreadyReserved = 0): void {
    if (this.inUse + alreadyReserved + bytes > this.cap) throw new OutOfDeviceMemory(this.device, bytes, this.inUse + alreadyReserved, this.cap, purpose);
  }

  allocate(bytes: number, purpose: string): Allocation {
    if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new VramfitError('ALLOC', `device ${this.device}: bad allocation size ${bytes} for ${purpose}`, 1);
    this.check(bytes, purpose);
    const buffer = this.g.raw.ggml_backend_buft_alloc_buffer(this.buft, bytes) as Buffer_ | null;
    if (!buffer) throw new OutOfDeviceMemory(this.device, bytes, this.inUse, this.cap, `${purpose} (the backend refused the allocation)`);
    const real = this.g.raw.ggml_backend_buffer_get_size(buffer) as number;
    const a: Allocation = { buffer, bytes: real, purpose };
    liveResources.buffers++;
    this.live.add(a);
    this.inUse += real;
    this.peakBytes = Math.max(this.peakBytes, this.inUse);
    return a;
  }

  free(a: Allocation): void {
    if (!this.live.delete(a)) return;
    this.g.raw.ggml_backend_buffer_free(a.buffer);
    liveResources.buffers--;
    this.inUse -= a.bytes;
  }

  freeAll(): void {
    for (const a of [...this.live]) this.free(a);
  }

  /** Accounts a buffer ggml allocates itself (the graph allocator's), after checking the cap. */
  reserveExternal(bytes: number, purpose: string): void {
    this.check(bytes, purpose);
    this.inUse += bytes;
    liveResources.externalBytes += bytes;
    this.external.set(purpose, (this.external.get(purpose) ?? 0) + bytes);
    this.peakBytes = Math.max(this.peakBytes, this.inUse);
  }

  releaseExternal(bytes: number, purpose: string): void {
    const held = this.external.get(purpose) ?? 0;
    const n = Math.min(bytes, held);
    this.external.set(purpose, held - n);
    this.inUse -= n;
    liveResources.externalBytes -= n;
  }

  get used(): number {
    return this.inUse;
  }

  get peak(): number {
    return this.peakBytes;
  }

  /** What is allocated, by purpose, for reports. */
  breakdown(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const a of this.live) {
      const key = a.purpose.split(':')[0]!;
      out[key] = (out[key] ?? 0) + a.bytes;
    }
    for (const [k, v] of this.external) if (v > 0) out[k] = (out[k] ?? 0) + v;
    return out;
  }
}

export interface EngineDevice {
  /** The plan's id: '0', '1', … for virtual devices and GPUs, 'cpu' for host RAM. */
  id: string;
  kind: 'virtual' | 'cpu' | 'gpu';
  backend: Backend;
  buft: BufferType;
  alignment: number;
  allocator: CappedAllocator;
}

/**
 * N independent CPU backends, each with its own buffers and cap: the multi-device path runs where no
 * GPU exists. `caps` maps device ids to bytes.
 */
export function openVirtualDevices(ids: readonly string[], caps: ReadonlyMap<string, number>, threads: number): EngineDevice[] {
  const g = loadGgml();
  const dev = cpuDevice(g);
  return ids.map((id) => {
    const backend = g.raw.ggml_backend_dev_init(dev, null) as Backend | null;
    if (!backend) throw new VramfitError('GGML', `could not start a CPU backend for device ${id}`, 1);
    liveResources.backends++;
    g.setThreads(backend, threads);
    const buft = g.raw.ggml_backend_get_default_buffer_type(backend) as BufferType;
    const cap = caps.get(id) ?? Number.MAX_SAFE_INTEGER;
    return {
      id,
      kind: id === 'cpu' ? 'cpu' : 'virtual',
      backend,
      buft,
      alignment: g.raw.ggml_backend_buft_get_alignment(buft) as number,
      allocator: new CappedAllocator(g, id, cap, buft),
    };
  });
}

/** Free memory of GPU `index` as its backend reports it. */
export function gpuFreeBytes(index: number): number {
  const g = loadGgml();
  const dev = devices(g).filter((d) => d.type === DEV_TYPE.GPU)[index];
  return dev ? deviceMemory(g, dev.handle).free : 0;
}

/** GPUs ggml registered (from an installed CUDA or Vulkan package), in ggml's order. */
export function gpuDeviceCount(): number {
  const g = loadGgml();
  return devices(g).filter((d) => d.type === DEV_TYPE.GPU).length;
}

/**
 * One backend per GPU id ('0', '1', …), capped at `caps` or, without a cap, at the memory the device
 * reports free. Untested here (no GPU on the machines this was built on); the CPU path is the tested one.
 */
export function openGpuDevices(ids: readonly string[], caps: ReadonlyMap<string, number>): EngineDevice[] {
  const g = loadGgml();
  const gpus = devices(g).filter((d) => d.type === DEV_TYPE.GPU);
  const opened: EngineDevice[] = [];
  try {
    for (const id of ids) {
      const dev = gpus[Number(id)];
      if (!dev) throw new VramfitError('NO_GPU', `GPU ${id} is not available to ggml (${gpus.length} found)`, 2);
      const backend = g.raw.ggml_backend_dev_init(dev.handle, null) as Backend | null;
      if (!backend) throw new VramfitError('GGML', `could not start ${dev.name}`, 1);
      liveResources.backends++;
      const buft = g.raw.ggml_backend_dev_buffer_type(dev.handle) as BufferType;
      const cap = caps.get(id) ?? deviceMemory(g, dev.handle).free;
      opened.push({ id, kind: 'gpu', backend, buft, alignment: g.raw.ggml_backend_buft_get_alignment(buft) as number, allocator: new CappedAllocator(g, id, cap, buft) });
    }
  } catch (e) {
    closeDevices(opened);
    throw e;
  }
  return opened;
}

export function closeDevices(devices: readonly EngineDevice[]): void {
  const g = loadGgml();
  for (const d of devices) {
    d.allocator.freeAll();
    g.raw.ggml_backend_free(d.backend);
    liveResources.backends--;
  }
}

/**
 * The engine's device layer: one interface for every device a plan runs on (allocate within a cap,
 * compute a graph, report memory), with CPU-backed virtual devices and ggml GPUs as its two kinds.
 */
import { formatBytes } from '../planner/units.js';
import { VramfitError } from '../util/errors.js';
import { cpuDevice, deviceMemory, loadGgml, withCapturedLog, type Backend, type Buffer_, type BufferType, type Device, type Ggml } from './ggml/binding.js';

/** A request that would take a device past its cap (or that the backend itself refused); nothing was allocated. */
export class OutOfDeviceMemory extends VramfitError {
  constructor(
    readonly device: string,
    readonly requested: number,
    readonly inUse: number,
    readonly cap: number,
    readonly purpose: string,
    /** Set when the cap allowed the request but the backend could not allocate it. */
    readonly backendRefused?: { free: number | null; total: number | null },
  ) {
    super('OUT_OF_DEVICE_MEMORY', describe(device, requested, inUse, cap, purpose, backendRefused), 2);
  }
}

function describe(
  device: string,
  requested: number,
  inUse: number,
  cap: number,
  purpose: string,
  refused?: { free: number | null; total: number | null },
): string {
  const need = `${purpose} needs ${formatBytes(requested)} (${requested} B) on top of ${formatBytes(inUse)} already in use or reserved`;
  if (refused) {
    const memory =
      refused.free !== null && refused.total !== null ? `; the device reports ${formatBytes(refused.free)} free of ${formatBytes(refused.total)}` : '';
    return `device ${device}: ${need}; the cap (${formatBytes(cap)}) allows it, but the backend refused the allocation${memory}`;
  }
  return `device ${device}: ${need}, over its ${formatBytes(cap)} (${cap} B) cap by ${formatBytes(requested + inUse - cap)}`;
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
    /** The device's own memory reading, for a refusal's message. */
    private readonly memory: () => { free: number; total: number } | null = () => null,
    /** Left under the cap for the backend's own buffers (a GPU's context and scratch), never handed out. */
    readonly backendReserve = 0,
  ) {}

  /** Fails like `allocate` would, without allocating: for checking a whole load up front. */
  check(bytes: number, purpose: string, alreadyReserved = 0): void {
    const held = this.inUse + this.backendReserve + alreadyReserved;
    if (held + bytes > this.cap) throw new OutOfDeviceMemory(this.device, bytes, held, this.cap, purpose);
  }

  /** `buft`: another buffer type of the same memory (the CPU's repack buffer), counted under the same cap. */
  allocate(bytes: number, purpose: string, buft: BufferType = this.buft): Allocation {
    if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new VramfitError('ALLOC', `device ${this.device}: bad allocation size ${bytes} for ${purpose}`, 1);
    this.check(bytes, purpose);
    const { result: buffer } = withCapturedLog(() => this.g.raw.ggml_backend_buft_alloc_buffer(buft, bytes) as Buffer_ | null);
    if (!buffer) {
      const m = this.memory();
      throw new OutOfDeviceMemory(this.device, bytes, this.inUse + this.backendReserve, this.cap, purpose, { free: m?.free ?? null, total: m?.total ?? null });
    }
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
    for (const [purpose, bytes] of this.external) this.releaseExternal(bytes, purpose);
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

/**
 * What the device itself says it holds for this process: free memory before the backend started minus
 * the least free memory seen since (so CUDA's context, cuBLAS workspaces and Vulkan's own staging and
 * scratch buffers count). Other processes on the same GPU move it too. Null where the backend's free
 * memory never moves (lavapipe, and backends that report total as free).
 */
export class DeviceMemoryWatch {
  private minFree: number;
  private moved = false;

  constructor(
    private readonly read: () => { free: number; total: number },
    readonly freeBefore: number,
  ) {
    this.minFree = freeBefore;
  }

  sample(): void {
    const { free } = this.read();
    if (free !== this.freeBefore) this.moved = true;
    this.minFree = Math.min(this.minFree, free);
  }

  get peak(): number | null {
    return this.moved ? Math.max(0, this.freeBefore - this.minFree) : null;
  }
}

export interface EngineDevice {
  /** The plan's id: '0', '1', … for virtual devices and GPUs, 'cpu' for host RAM. */
  id: string;
  kind: 'virtual' | 'cpu' | 'gpu';
  /** ggml's device name (CPU, CUDA0, Vulkan1) and description, for reports. */
  name: string;
  description: string;
  backend: Backend;
  buft: BufferType;
  alignment: number;
  allocator: CappedAllocator;
  /** GPUs: the device's own memory reading. */
  watch?: DeviceMemoryWatch;
}

function openBackend(g: Ggml, dev: Device, label: string): Backend {
  const { result, said } = withCapturedLog(() => g.raw.ggml_backend_dev_init(dev, null) as Backend | null);
  if (!result)
    throw new VramfitError('GPU_BACKEND_FAILED', `${label} is present but its backend failed to start${said.length ? `: ${said.join(' ')}` : ''}`, 1);
  liveResources.backends++;
  return result;
}

function deviceOn(
  g: Ggml,
  id: string,
  kind: EngineDevice['kind'],
  dev: Device,
  backend: Backend,
  buft: BufferType,
  cap: number,
  watch?: DeviceMemoryWatch,
  reserve = 0,
): EngineDevice {
  const memory = watch ? () => deviceMemory(g, dev) : undefined;
  return {
    id,
    kind,
    name: g.raw.ggml_backend_dev_name(dev) as string,
    description: g.raw.ggml_backend_dev_description(dev) as string,
    backend,
    buft,
    alignment: g.raw.ggml_backend_buft_get_alignment(buft) as number,
    allocator: new CappedAllocator(g, id, cap, buft, memory, reserve),
    ...(watch ? { watch } : {}),
  };
}

/**
 * N independent CPU backends, each with its own buffers and cap: the multi-device path runs where no
 * GPU exists. `caps` maps device ids to bytes.
 */
export function openVirtualDevices(ids: readonly string[], caps: ReadonlyMap<string, number>, threads: number): EngineDevice[] {
  const g = loadGgml();
  const dev = cpuDevice(g);
  const opened: EngineDevice[] = [];
  try {
    for (const id of ids) {
      const backend = openBackend(g, dev, `CPU device ${id}`);
      g.setThreads(backend, threads);
      const buft = g.raw.ggml_backend_get_default_buffer_type(backend) as BufferType;
      opened.push(deviceOn(g, id, id === 'cpu' ? 'cpu' : 'virtual', dev, backend, buft, caps.get(id) ?? Number.MAX_SAFE_INTEGER));
    }
  } catch (e) {
    closeDevices(opened);
    throw e;
  }
  return opened;
}

/** A GPU to open: its plan id, ggml device and cap (already resolved against its memory). */
export interface GpuToOpen {
  id: string;
  backend: 'cuda' | 'vulkan';
  handle: Device;
  label: string;
  cap: number;
  /** Of the cap, what the backend's own buffers take (the plan's overhead): never given to vramfit's. */
  backendReserve: number;
}

/**
 * ggml-vulkan stores matrix tiles in F16 wherever the device has F16 arithmetic, whatever the weights
 * and the accumulation asked for: products over more than 8 tokens, and any with a strided operand,
 * then lose ~3e-4 (relative) — 2–4e-3 in the logits of the test models. With F16 arithmetic off
 * (GGML_VK_DISABLE_F16, read when the first Vulkan device starts) an F32 model matches the CPU to 2e-6
 * and an F16 model matches a float64 reference to 2e-6, closer than ggml's CPU backend, which rounds
 * activations to F16 for F16 weights. That costs speed where F16 math (and cooperative matrices) would
 * be used: VRAMFIT_VULKAN_FP16=1 keeps them; a user's own GGML_VK_DISABLE_F16 is left as it is.
 */
export function prepareVulkan(): void {
  if (process.env['VRAMFIT_VULKAN_FP16'] === '1' || process.env['GGML_VK_DISABLE_F16'] !== undefined) return;
  process.env['GGML_VK_DISABLE_F16'] = '1';
}

/** One backend per GPU, each capped; the device's free memory is read before its backend starts. */
export function openGpuDevices(gpus: readonly GpuToOpen[]): EngineDevice[] {
  const g = loadGgml();
  if (gpus.some((x) => x.backend === 'vulkan')) prepareVulkan();
  const opened: EngineDevice[] = [];
  try {
    for (const gpu of gpus) {
      const watch = new DeviceMemoryWatch(() => deviceMemory(g, gpu.handle), deviceMemory(g, gpu.handle).free);
      const backend = openBackend(g, gpu.handle, gpu.label);
      const buft = g.raw.ggml_backend_dev_buffer_type(gpu.handle) as BufferType;
      const d = deviceOn(g, gpu.id, 'gpu', gpu.handle, backend, buft, gpu.cap, watch, gpu.backendReserve);
      watch.sample();
      opened.push(d);
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

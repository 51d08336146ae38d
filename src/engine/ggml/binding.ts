/**
 * The one module that knows ggml's C ABI (ggml 0.25.1 as shipped in @node-llama-cpp/<platform>@3.22.1).
 * Every native declaration, enum value and struct offset lives here; the offsets are checked against
 * ggml itself at load time. Handles are branded bigints so one kind cannot be passed as another.
 * Nothing outside src/engine/ggml calls koffi.
 *
 * A GGML_ASSERT aborts the whole process, so callers validate shapes and types before any call
 * (graph.ts does it for ops); the abort callback only gets the message onto stderr first.
 */
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import koffi from 'koffi';
import { VramfitError } from '../../util/errors.js';
import { GPU_PACKAGES, packageVersion, releaseProblem, type GpuBackendName } from './packages.js';

export { gpuInstallCommand, type GpuBackendName } from './packages.js';

declare const brand: unique symbol;
type Handle<B extends string> = bigint & { readonly [brand]: B };
export type Ctx = Handle<'ggml_context'>;
export type Tensor = Handle<'ggml_tensor'>;
export type Graph = Handle<'ggml_cgraph'>;
export type Backend = Handle<'ggml_backend'>;
export type Buffer_ = Handle<'ggml_backend_buffer'>;
export type BufferType = Handle<'ggml_backend_buffer_type'>;
export type Device = Handle<'ggml_backend_dev'>;
export type Reg = Handle<'ggml_backend_reg'>;
export type Gallocr = Handle<'ggml_gallocr'>;
export type Ptr = Handle<'void*'>;

/** ggml_type values (ggml.h); re-check when the pinned package changes. */
export const GGML_TYPE = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q5_0: 6,
  Q5_1: 7,
  Q8_0: 8,
  Q8_1: 9,
  Q2_K: 10,
  Q3_K: 11,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  Q8_K: 15,
  IQ2_XXS: 16,
  IQ2_XS: 17,
  IQ3_XXS: 18,
  IQ1_S: 19,
  IQ4_NL: 20,
  IQ3_S: 21,
  IQ2_S: 22,
  IQ4_XS: 23,
  I8: 24,
  I16: 25,
  I32: 26,
  I64: 27,
  F64: 28,
  IQ1_M: 29,
  BF16: 30,
  TQ1_0: 34,
  TQ2_0: 35,
  MXFP4: 39,
} as const;
export type GgmlType = (typeof GGML_TYPE)[keyof typeof GGML_TYPE];

export const DEV_TYPE = { CPU: 0, GPU: 1, IGPU: 2, ACCEL: 3, META: 4 } as const;
export const ROPE_MODE = { NORMAL: 0, NEOX: 2 } as const;
/** enum ggml_sort_order (ggml.h). */
export const SORT_ORDER = { ASC: 0, DESC: 1 } as const;
export const GGML_STATUS_SUCCESS = 0;

/** struct ggml_tensor offsets for LP64 with GGML_MAX_DIMS 4, MAX_OP_PARAMS 64, MAX_SRC 10, MAX_NAME 64. */
const T_OFF = { type: 0, buffer: 8, ne: 16, nb: 48, data: 248, name: 256 } as const;

export class EngineUnavailableError extends VramfitError {
  constructor(reason: string) {
    super('ENGINE_UNAVAILABLE', `the ggml engine is not available: ${reason}`, 2);
  }
}

/** Raised when ggml's own check fails (it aborts right after); kept for the message. */
let lastAbort = '';
/** While a GPU library loads, ggml's log lines are collected here so a failure can say why. */
let captured: string[] | undefined;

const InitParams = koffi.struct('ggml_init_params', { mem_size: 'size_t', mem_buffer: 'void *', no_alloc: 'bool' });
const LogCallback = koffi.proto('void ggml_log_callback(int level, const char *text, void *user_data)');
const AbortCallback = koffi.proto('void ggml_abort_callback_t(const char *message)');
const SetThreads = koffi.proto('void ggml_backend_set_n_threads_t(void *backend, int n_threads)');
const GetExtraBufts = koffi.proto('void *ggml_backend_dev_get_extra_bufts_t(void *dev)');
const ToFloat = koffi.proto('void ggml_to_float_t(const void *x, _Out_ void *y, int64_t k)');
/** struct ggml_type_traits: type_name, blck_size, blck_size_interleave, type_size, is_quantized, then to_float. */
const TRAITS_TO_FLOAT_OFFSET = 40;

const BASE = {
  ggml_free: 'void ggml_free(void *ctx)',
  ggml_tensor_overhead: 'size_t ggml_tensor_overhead()',
  ggml_graph_overhead_custom: 'size_t ggml_graph_overhead_custom(size_t size, bool grads)',
  ggml_new_tensor_1d: 'void *ggml_new_tensor_1d(void *ctx, int type, int64_t ne0)',
  ggml_new_tensor_2d: 'void *ggml_new_tensor_2d(void *ctx, int type, int64_t ne0, int64_t ne1)',
  ggml_new_tensor_3d: 'void *ggml_new_tensor_3d(void *ctx, int type, int64_t ne0, int64_t ne1, int64_t ne2)',
  ggml_new_tensor_4d: 'void *ggml_new_tensor_4d(void *ctx, int type, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3)',
  ggml_set_name: 'void *ggml_set_name(void *t, const char *name)',
  ggml_get_name: 'const char *ggml_get_name(void *t)',
  ggml_set_input: 'void ggml_set_input(void *t)',
  ggml_set_output: 'void ggml_set_output(void *t)',
  ggml_nbytes: 'size_t ggml_nbytes(void *t)',
  ggml_type_size: 'size_t ggml_type_size(int type)',
  ggml_blck_size: 'int64_t ggml_blck_size(int type)',
  ggml_row_size: 'size_t ggml_row_size(int type, int64_t ne)',
  ggml_mul_mat: 'void *ggml_mul_mat(void *ctx, void *a, void *b)',
  ggml_add: 'void *ggml_add(void *ctx, void *a, void *b)',
  ggml_mul: 'void *ggml_mul(void *ctx, void *a, void *b)',
  ggml_scale: 'void *ggml_scale(void *ctx, void *a, float s)',
  ggml_silu: 'void *ggml_silu(void *ctx, void *a)',
  ggml_gelu: 'void *ggml_gelu(void *ctx, void *a)',
  ggml_tanh: 'void *ggml_tanh(void *ctx, void *a)',
  ggml_scale_bias: 'void *ggml_scale_bias(void *ctx, void *a, float s, float b)',
  ggml_rms_norm: 'void *ggml_rms_norm(void *ctx, void *a, float eps)',
  ggml_norm: 'void *ggml_norm(void *ctx, void *a, float eps)',
  ggml_soft_max_ext: 'void *ggml_soft_max_ext(void *ctx, void *a, void *mask, float scale, float max_bias)',
  ggml_flash_attn_ext: 'void *ggml_flash_attn_ext(void *ctx, void *q, void *k, void *v, void *mask, float scale, float max_bias, float logit_softcap)',
  ggml_prec_set_acc: 'bool ggml_prec_set_acc(void *a, int prec)',
  ggml_rope_ext:
    'void *ggml_rope_ext(void *ctx, void *a, void *pos, void *freq_factors, int n_dims, int mode, int n_ctx_orig, float freq_base, float freq_scale, float ext_factor, float attn_factor, float beta_fast, float beta_slow)',
  ggml_reshape_2d: 'void *ggml_reshape_2d(void *ctx, void *a, int64_t ne0, int64_t ne1)',
  ggml_reshape_3d: 'void *ggml_reshape_3d(void *ctx, void *a, int64_t ne0, int64_t ne1, int64_t ne2)',
  ggml_view_1d: 'void *ggml_view_1d(void *ctx, void *a, int64_t ne0, size_t offset)',
  ggml_view_2d: 'void *ggml_view_2d(void *ctx, void *a, int64_t ne0, int64_t ne1, size_t nb1, size_t offset)',
  ggml_view_3d: 'void *ggml_view_3d(void *ctx, void *a, int64_t ne0, int64_t ne1, int64_t ne2, size_t nb1, size_t nb2, size_t offset)',
  ggml_permute: 'void *ggml_permute(void *ctx, void *a, int ax0, int ax1, int ax2, int ax3)',
  ggml_cont: 'void *ggml_cont(void *ctx, void *a)',
  ggml_cpy: 'void *ggml_cpy(void *ctx, void *a, void *b)',
  ggml_get_rows: 'void *ggml_get_rows(void *ctx, void *a, void *b)',
  ggml_set_rows: 'void *ggml_set_rows(void *ctx, void *a, void *b, void *c)',
  ggml_mul_mat_id: 'void *ggml_mul_mat_id(void *ctx, void *as, void *b, void *ids)',
  ggml_argsort: 'void *ggml_argsort(void *ctx, void *a, int order)',
  ggml_sum_rows: 'void *ggml_sum_rows(void *ctx, void *a)',
  ggml_div: 'void *ggml_div(void *ctx, void *a, void *b)',
  ggml_new_graph_custom: 'void *ggml_new_graph_custom(void *ctx, size_t size, bool grads)',
  ggml_build_forward_expand: 'void ggml_build_forward_expand(void *gf, void *t)',
  ggml_graph_n_nodes: 'int ggml_graph_n_nodes(void *gf)',
  ggml_fp16_to_fp32_row: 'void ggml_fp16_to_fp32_row(const void *x, _Out_ void *y, int64_t n)',
  ggml_bf16_to_fp32_row: 'void ggml_bf16_to_fp32_row(const void *x, _Out_ void *y, int64_t n)',
  ggml_fp32_to_fp16_row: 'void ggml_fp32_to_fp16_row(const void *x, _Out_ void *y, int64_t n)',
  ggml_fp32_to_bf16_row: 'void ggml_fp32_to_bf16_row(const void *x, _Out_ void *y, int64_t n)',
  ggml_log_set: 'void ggml_log_set(void *cb, void *user_data)',
  ggml_set_abort_callback: 'void *ggml_set_abort_callback(void *cb)',
  ggml_gallocr_new: 'void *ggml_gallocr_new(void *buft)',
  ggml_gallocr_free: 'void ggml_gallocr_free(void *galloc)',
  ggml_gallocr_reserve: 'bool ggml_gallocr_reserve(void *galloc, void *gf)',
  ggml_gallocr_reserve_n_size: 'void ggml_gallocr_reserve_n_size(void *galloc, void *gf, void *node_ids, void *leaf_ids, _Out_ size_t *sizes)',
  ggml_gallocr_alloc_graph: 'bool ggml_gallocr_alloc_graph(void *galloc, void *gf)',
  ggml_gallocr_get_buffer_size: 'size_t ggml_gallocr_get_buffer_size(void *galloc, int buffer_id)',
  ggml_backend_name: 'const char *ggml_backend_name(void *backend)',
  ggml_backend_free: 'void ggml_backend_free(void *backend)',
  ggml_backend_get_default_buffer_type: 'void *ggml_backend_get_default_buffer_type(void *backend)',
  ggml_backend_synchronize: 'void ggml_backend_synchronize(void *backend)',
  ggml_backend_graph_compute: 'int ggml_backend_graph_compute(void *backend, void *gf)',
  ggml_backend_tensor_set: 'void ggml_backend_tensor_set(void *t, const void *data, size_t offset, size_t size)',
  ggml_backend_tensor_get: 'void ggml_backend_tensor_get(void *t, _Out_ void *data, size_t offset, size_t size)',
  ggml_backend_tensor_copy: 'void ggml_backend_tensor_copy(void *src, void *dst)',
  ggml_backend_tensor_alloc: 'int ggml_backend_tensor_alloc(void *buffer, void *t, void *addr)',
  ggml_backend_buffer_free: 'void ggml_backend_buffer_free(void *buf)',
  ggml_backend_buffer_get_size: 'size_t ggml_backend_buffer_get_size(void *buf)',
  ggml_backend_buffer_get_base: 'void *ggml_backend_buffer_get_base(void *buf)',
  ggml_backend_buffer_clear: 'void ggml_backend_buffer_clear(void *buf, uint8_t value)',
  ggml_backend_buffer_is_host: 'bool ggml_backend_buffer_is_host(void *buf)',
  ggml_get_data: 'void *ggml_get_data(void *t)',
  ggml_backend_buft_alloc_buffer: 'void *ggml_backend_buft_alloc_buffer(void *buft, size_t size)',
  ggml_backend_buft_get_alignment: 'size_t ggml_backend_buft_get_alignment(void *buft)',
  ggml_backend_buft_get_alloc_size: 'size_t ggml_backend_buft_get_alloc_size(void *buft, void *t)',
  ggml_backend_buft_name: 'const char *ggml_backend_buft_name(void *buft)',
  ggml_backend_cpu_buffer_from_ptr: 'void *ggml_backend_cpu_buffer_from_ptr(void *ptr, size_t size)',
  ggml_backend_dev_name: 'const char *ggml_backend_dev_name(void *dev)',
  ggml_backend_dev_description: 'const char *ggml_backend_dev_description(void *dev)',
  ggml_backend_dev_type: 'int ggml_backend_dev_type(void *dev)',
  ggml_backend_dev_memory: 'void ggml_backend_dev_memory(void *dev, _Out_ size_t *free, _Out_ size_t *total)',
  ggml_backend_dev_init: 'void *ggml_backend_dev_init(void *dev, const char *params)',
  ggml_backend_dev_buffer_type: 'void *ggml_backend_dev_buffer_type(void *dev)',
  ggml_backend_dev_backend_reg: 'void *ggml_backend_dev_backend_reg(void *dev)',
  ggml_backend_reg_get_proc_address: 'void *ggml_backend_reg_get_proc_address(void *reg, const char *name)',
  ggml_backend_reg_name: 'const char *ggml_backend_reg_name(void *reg)',
  ggml_backend_reg_dev_count: 'size_t ggml_backend_reg_dev_count(void *reg)',
  ggml_backend_reg_dev_get: 'void *ggml_backend_reg_dev_get(void *reg, size_t index)',
  ggml_backend_dev_get_props: 'void ggml_backend_dev_get_props(void *dev, _Out_ uint8_t *props)',
  ggml_backend_supports_op: 'bool ggml_backend_supports_op(void *backend, void *op)',
  ggml_get_type_traits: 'void *ggml_get_type_traits(int type)',
  ggml_quantize_requires_imatrix: 'bool ggml_quantize_requires_imatrix(int type)',
  ggml_quantize_chunk:
    'size_t ggml_quantize_chunk(int type, const float *src, _Out_ uint8_t *dst, int64_t start, int64_t nrows, int64_t n_per_row, const float *imatrix)',
} as const;

const REGISTRY = {
  ggml_backend_load: 'void *ggml_backend_load(const char *path)',
  ggml_backend_load_all_from_path: 'void ggml_backend_load_all_from_path(const char *dir)',
  ggml_backend_dev_count: 'size_t ggml_backend_dev_count()',
  ggml_backend_dev_get: 'void *ggml_backend_dev_get(size_t i)',
} as const;

type Fn = (...args: unknown[]) => unknown;

/** Typed facade over the raw functions; argument order and meaning as in ggml.h. */
export interface Ggml {
  readonly binsDir: string;
  init(memSize: number, noAlloc: boolean): Ctx;
  free(ctx: Ctx): void;
  tensorOverhead(): number;
  graphOverhead(size: number): number;
  newTensor(ctx: Ctx, type: GgmlType, ne: readonly number[]): Tensor;
  setName(t: Tensor, name: string): void;
  getName(t: Tensor): string;
  setInput(t: Tensor): void;
  setOutput(t: Tensor): void;
  nbytes(t: Tensor): number;
  typeSize(type: GgmlType): number;
  blockSize(type: GgmlType): number;
  rowSize(type: GgmlType, ne: number): number;
  ne(t: Tensor): [number, number, number, number];
  nb(t: Tensor): [number, number, number, number];
  type(t: Tensor): GgmlType;
  raw: Record<keyof typeof BASE | keyof typeof REGISTRY, Fn>;
  setThreads(backend: Backend, n: number): void;
  lastAbortMessage(): string;
  /**
   * Points ggml's process-wide log and abort hooks at this thread's callbacks. A hook registered by a
   * worker thread that has ended aborts the process the next time ggml logs, so whichever thread is
   * about to use ggml claims them (loadGgml does), and a worker releases them before it ends.
   */
  claimCallbacks(): void;
  /** Puts ggml's own hooks back (stderr logger, default abort) while this thread's are installed. */
  releaseCallbacks(): void;
  /** `n` values of a ggml type (block formats included) as float32, by the type's own to_float. */
  dequantize(type: GgmlType, src: Uint8Array, n: number): Float32Array;
  /** Rows of float32 values in a ggml type, by ggml_quantize_chunk (no importance matrix). */
  quantize(type: GgmlType, src: Float32Array, rows: number, perRow: number): Uint8Array;
  /**
   * `quantize` on a thread of libuv's pool (koffi's async call), so several row runs quantize at once while the
   * main thread reads the next; `src` must not be touched until the promise settles.
   */
  quantizeAsync(type: GgmlType, src: Float32Array, rows: number, perRow: number, into?: Uint8Array): Promise<Uint8Array>;
  /** float16/bfloat16 bytes widened into `out` as float32 by ggml's row function, on libuv's pool. */
  widenAsync(from: 'float16' | 'bfloat16', src: Uint8Array, out: Float32Array, n: number): Promise<void>;
  /**
   * Gives an unallocated tensor a placeholder data pointer (or clears it), so the graph allocator
   * treats it as already allocated while measuring a graph's compute buffer. Never computed with.
   */
  setPlaceholderData(t: Tensor, on: boolean): void;
  /** Whether the tensor has memory (a graph input the graph never reads is left unallocated). */
  isAllocated(t: Tensor): boolean;
}

let loaded: Ggml | undefined;

/** koffi's callback-style async form of a bound function. */
function asyncOf(fn: Fn): (...args: unknown[]) => void {
  return (fn as Fn & { async: (...args: unknown[]) => void }).async;
}

/** Where the pinned CPU package keeps its libraries (and a GPU package, when installed). */
function findBinsDir(): string {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw new EngineUnavailableError(`no prebuilt ggml for ${process.platform}-${process.arch} is wired up yet (linux-x64 only)`);
  }
  const require = createRequire(import.meta.url);
  let entry: string;
  try {
    entry = require.resolve('@node-llama-cpp/linux-x64');
  } catch {
    throw new EngineUnavailableError('the package @node-llama-cpp/linux-x64 is not installed (run npm install)');
  }
  const dir = join(dirname(entry), '..', 'bins', 'linux-x64');
  if (!existsSync(join(dir, 'libggml-base.so'))) throw new EngineUnavailableError(`libggml-base.so is missing from ${dir}`);
  return dir;
}

/** Loads ggml once per process: libraries, log/abort callbacks, the best CPU variant, and the ABI self-check. */
export function loadGgml(): Ggml {
  if (loaded) {
    loaded.claimCallbacks();
    return loaded;
  }
  try {
    // ggml's CPU thread 0 computes on koffi's call stack: raise it before the first library is loaded.
    koffi.config({ ...koffi.config(), sync_stack_size: 8 << 20, async_stack_size: 8 << 20 });
  } catch {
    // Another module loaded a library first; the default stacks still run small graphs.
  }
  const binsDir = findBinsDir();
  const regName = readdirSync(binsDir).find((f) => /^libggml(\.[a-z]+)?\.v[\d.]+\.so$/.test(f));
  if (!regName) throw new EngineUnavailableError(`no libggml.v*.so in ${binsDir}`);
  const base = koffi.load(join(binsDir, 'libggml-base.so'));
  const reg = koffi.load(join(binsDir, regName));
  const raw = {} as Ggml['raw'];
  for (const [name, decl] of Object.entries(BASE)) (raw as Record<string, Fn>)[name] = base.func(decl) as Fn;
  for (const [name, decl] of Object.entries(REGISTRY)) (raw as Record<string, Fn>)[name] = reg.func(decl) as Fn;
  const ggmlInit = base.func('ggml_init', 'void *', [InitParams]) as Fn;

  // Logging first: backends log while loading. Only warnings and errors reach stderr, and only with
  // VRAMFIT_GGML_LOG set, so normal runs print nothing of ggml's.
  const verbose = process.env['VRAMFIT_GGML_LOG'] !== undefined;
  const log = koffi.register((level: number, text: string) => {
    if (captured) captured.push(text);
    else if (verbose || level === 4) process.stderr.write(`[ggml] ${text}`);
    if (captured && verbose) process.stderr.write(`[ggml] ${text}`);
  }, koffi.pointer(LogCallback));
  const abort = koffi.register((message: string) => {
    lastAbort = message;
    process.stderr.write(`vramfit: ggml aborted: ${message}\n`);
  }, koffi.pointer(AbortCallback));
  const claimCallbacks = (): void => {
    raw.ggml_log_set(log, null);
    raw.ggml_set_abort_callback(abort);
  };
  claimCallbacks();
  raw.ggml_backend_load_all_from_path(binsDir);

  const typeSizes = new Map<number, number>();
  const blockSizes = new Map<number, number>();
  const g: Ggml = {
    binsDir,
    raw,
    init: (memSize, noAlloc) => {
      const ctx = ggmlInit({ mem_size: memSize, mem_buffer: null, no_alloc: noAlloc }) as Ctx | null;
      if (!ctx) throw new VramfitError('GGML', `ggml_init failed for a ${memSize}-byte context`, 1);
      return ctx;
    },
    free: (ctx) => void raw.ggml_free(ctx),
    tensorOverhead: () => raw.ggml_tensor_overhead() as number,
    graphOverhead: (size) => raw.ggml_graph_overhead_custom(size, false) as number,
    newTensor: (ctx, type, ne) => {
      const t =
        ne.length === 1
          ? raw.ggml_new_tensor_1d(ctx, type, ne[0])
          : ne.length === 2
            ? raw.ggml_new_tensor_2d(ctx, type, ne[0], ne[1])
            : ne.length === 3
              ? raw.ggml_new_tensor_3d(ctx, type, ne[0], ne[1], ne[2])
              : raw.ggml_new_tensor_4d(ctx, type, ne[0], ne[1], ne[2], ne[3]);
      if (!t) throw new VramfitError('GGML', 'ggml context is out of tensor slots', 1);
      return t as Tensor;
    },
    setName: (t, name) => void raw.ggml_set_name(t, name.slice(0, 63)),
    getName: (t) => raw.ggml_get_name(t) as string,
    setInput: (t) => void raw.ggml_set_input(t),
    setOutput: (t) => void raw.ggml_set_output(t),
    nbytes: (t) => raw.ggml_nbytes(t) as number,
    // Pure functions of the type, asked hundreds of times per graph: answered from JS after the first call.
    typeSize: (type) => typeSizes.get(type) ?? typeSizes.set(type, raw.ggml_type_size(type) as number).get(type)!,
    blockSize: (type) => blockSizes.get(type) ?? blockSizes.set(type, Number(raw.ggml_blck_size(type))).get(type)!,
    // ggml_row_size: type_size · ne / blck_size, in integers.
    rowSize: (type, ne) => Math.floor((g.typeSize(type) * ne) / g.blockSize(type)),
    ne: (t) => Array.from(koffi.decode(t, T_OFF.ne, 'int64_t', 4) as ArrayLike<number | bigint>, Number) as [number, number, number, number],
    nb: (t) => Array.from(koffi.decode(t, T_OFF.nb, 'uint64_t', 4) as ArrayLike<number | bigint>, Number) as [number, number, number, number],
    type: (t) => koffi.decode(t, T_OFF.type, 'int') as GgmlType,
    setThreads: () => undefined,
    lastAbortMessage: () => lastAbort,
    claimCallbacks,
    releaseCallbacks: () => {
      raw.ggml_log_set(null, null);
      raw.ggml_set_abort_callback(null);
    },
    dequantize: (type, src, n) => {
      // ggml asserts (aborting the process) on a count that is not whole blocks: checked here first.
      if (n % g.blockSize(type) !== 0 || src.length < g.rowSize(type, n))
        throw new VramfitError('GGML', `cannot dequantize ${n} values of ggml type ${type} from ${src.length} bytes`, 1);
      const toFloat = koffi.decode(koffi.decode(raw.ggml_get_type_traits(type), TRAITS_TO_FLOAT_OFFSET, 'void *'), ToFloat) as Fn | null;
      if (!toFloat) throw new VramfitError('GGML', `ggml type ${type} has no conversion to float`, 1);
      const out = new Float32Array(n);
      toFloat(src, out, n);
      return out;
    },
    quantize: (type, src, rows, perRow) => {
      const out = quantizeOutput(type, src, rows, perRow);
      raw.ggml_quantize_chunk(type, src, out, 0, rows, perRow, null);
      return out;
    },
    quantizeAsync: (type, src, rows, perRow, into) =>
      new Promise((resolve, reject) => {
        const out = quantizeOutput(type, src, rows, perRow, into);
        asyncOf(raw.ggml_quantize_chunk)(type, src, out, 0, rows, perRow, null, (err: unknown) => (err ? reject(err) : resolve(out)));
      }),
    widenAsync: (from, src, out, n) =>
      new Promise((resolve, reject) => {
        if (src.byteLength < n * 2 || out.length < n) throw new VramfitError('GGML', `cannot widen ${n} ${from} values from ${src.byteLength} bytes`, 1);
        const fn = from === 'float16' ? raw.ggml_fp16_to_fp32_row : raw.ggml_bf16_to_fp32_row;
        asyncOf(fn)(src, out, n, (err: unknown) => (err ? reject(err) : resolve()));
      }),
    isAllocated: (t) => (koffi.decode(t, T_OFF.buffer, 'void *') as bigint | null) !== null,
    setPlaceholderData: (t, on) => {
      const current = koffi.decode(t, T_OFF.data, 'void *') as bigint | null;
      if (on && current) throw new VramfitError('GGML', 'placeholder data on a tensor that has data', 1);
      koffi.encode(t, T_OFF.data, 'uint64_t', on ? 4096n : 0n);
    },
  };
  // ggml asserts (aborting the process) on rows that are not whole blocks: checked here, before the native call.
  const quantizeOutput = (type: GgmlType, src: Float32Array, rows: number, perRow: number, into?: Uint8Array): Uint8Array => {
    if (raw.ggml_quantize_requires_imatrix(type) as boolean) throw new VramfitError('GGML', `ggml type ${type} cannot be made without an importance matrix`, 2);
    if (perRow % g.blockSize(type) !== 0 || src.length !== rows * perRow)
      throw new VramfitError('GGML', `cannot quantize ${rows} rows of ${perRow} values to ggml type ${type}`, 1);
    const bytes = rows * g.rowSize(type, perRow);
    if (!into) return new Uint8Array(bytes);
    if (into.length < bytes) throw new VramfitError('GGML', `${rows} rows of ggml type ${type} need ${bytes} bytes, the buffer has ${into.length}`, 1);
    return into.subarray(0, bytes);
  };
  checkTensorLayout(g);
  const cpu = firstCpuDevice(g);
  if (cpu) {
    const regHandle = raw.ggml_backend_dev_backend_reg(cpu) as Reg;
    const fn = raw.ggml_backend_reg_get_proc_address(regHandle, 'ggml_backend_set_n_threads');
    if (fn) {
      const setThreads = koffi.decode(fn, SetThreads) as Fn;
      g.setThreads = (backend, n) => void setThreads(backend, n);
    }
  }
  loaded = g;
  return g;
}

/** What became of one optional GPU package when vramfit tried to use it. */
export interface GpuPackageStatus {
  backend: GpuBackendName;
  /** npm package name, with the version vramfit needs. */
  package: string;
  /**
   * absent: not installed; mismatch: installed at another release than the CPU package; failed: its
   * library did not load (a system library such as libcudart is missing); no-device: loaded, but the
   * driver offered no usable device; ready: at least one device registered.
   */
  state: 'absent' | 'mismatch' | 'failed' | 'no-device' | 'ready';
  /** Why, in words a user can act on (ggml's own lines where it gave some). */
  detail: string;
  reg?: Reg;
}

let gpuStatuses: GpuPackageStatus[] | undefined;

/**
 * Runs `fn` with ggml's log lines collected instead of printed, so a failure can say what ggml said
 * (a missing library, no Vulkan device) in the one error message the user sees.
 */
export function withCapturedLog<T>(fn: () => T): { result: T; said: string[] } {
  const outer = captured;
  const lines: string[] = (captured = []);
  try {
    const result = fn();
    return { result, said: lines.map((l) => l.trim()).filter((l) => l && !/^load_backend: loaded/.test(l)) };
  } finally {
    captured = outer;
  }
}

/**
 * GPU backends come from the optional packages of the same pinned release (`gpuInstallCommand`): their
 * libggml-<gpu>.so registers one ggml device per GPU. They are loaded only when a GPU is asked for or
 * listed (a CPU run never touches them), once per process, and each package's outcome is kept so the
 * caller can tell "not installed" from "no device" from "failed to load".
 */
export function loadGpuBackends(g: Ggml): GpuPackageStatus[] {
  if (gpuStatuses) return gpuStatuses;
  const cpuVersion = packageVersion('@node-llama-cpp/linux-x64')?.version;
  gpuStatuses = GPU_PACKAGES.map(({ backend, pkg, lib, looksFor }) => {
    const installed = packageVersion(pkg);
    const wanted = `${pkg}@${cpuVersion ?? '?'}`;
    const refused = releaseProblem(backend, installed?.version, cpuVersion);
    if (refused || !installed) return { backend, package: wanted, ...(refused ?? { state: 'absent', detail: '' }) };
    const path = join(installed.dir, 'bins', pkg.split('/')[1]!, lib);
    if (!existsSync(path)) return { backend, package: wanted, state: 'failed', detail: `${path} is missing from the installed package` };
    const { result: reg, said } = withCapturedLog(() => g.raw.ggml_backend_load(path) as Reg | null);
    if (!reg) {
      return { backend, package: wanted, state: 'failed', detail: `${lib} did not load: ${said.join(' ') || 'no reason given'} (it needs ${looksFor})` };
    }
    const count = g.raw.ggml_backend_reg_dev_count(reg) as number;
    if (count === 0) {
      return {
        backend,
        package: wanted,
        state: 'no-device',
        detail: `${pkg} is installed but found no usable device${said.length ? ` (${said.join(' ')})` : ''}; it looked for ${looksFor}`,
        reg,
      };
    }
    return { backend, package: wanted, state: 'ready', detail: `${count} device(s)`, reg };
  });
  return gpuStatuses;
}

/** Fails fast when struct ggml_tensor's layout differs from the offsets this module reads. */
function checkTensorLayout(g: Ggml): void {
  const ctx = g.init(g.tensorOverhead() * 2, true);
  try {
    const t = g.newTensor(ctx, GGML_TYPE.F32, [7, 5, 3]);
    g.setName(t, 'abi_probe');
    const ok =
      g.type(t) === GGML_TYPE.F32 &&
      g.ne(t).join() === '7,5,3,1' &&
      g.nb(t).join() === '4,28,140,420' &&
      koffi.decode(t, T_OFF.name, 'char', 9) === 'abi_probe' &&
      g.nbytes(t) === 420;
    if (!ok)
      throw new EngineUnavailableError('struct ggml_tensor does not have the layout this vramfit was built for (check the pinned @node-llama-cpp version)');
  } finally {
    g.free(ctx);
  }
}

export function devices(g: Ggml): { handle: Device; name: string; description: string; type: number }[] {
  const n = g.raw.ggml_backend_dev_count() as number;
  const out = [];
  for (let i = 0; i < n; i++) {
    const handle = g.raw.ggml_backend_dev_get(i) as Device;
    out.push({
      handle,
      name: g.raw.ggml_backend_dev_name(handle) as string,
      description: g.raw.ggml_backend_dev_description(handle) as string,
      type: g.raw.ggml_backend_dev_type(handle) as number,
    });
  }
  return out;
}

function firstCpuDevice(g: Ggml): Device | undefined {
  return devices(g).find((d) => d.type === DEV_TYPE.CPU)?.handle;
}

let repackBuft: BufferType | null | undefined;

/**
 * The CPU backend's repacking buffer type (CPU_REPACK: quantized matrices interleaved for its SIMD GEMM kernels, as
 * llama.cpp puts them), or null where this build has none.
 */
export function cpuRepackBufferType(g: Ggml): BufferType | null {
  // VRAMFIT_CPU_REPACK=0 keeps every matrix in ggml's plain layout (to compare, or to rule the repacking out).
  if (process.env['VRAMFIT_CPU_REPACK'] === '0') return null;
  if (repackBuft !== undefined) return repackBuft;
  repackBuft = null;
  const dev = firstCpuDevice(g);
  if (!dev) return null;
  const reg = g.raw.ggml_backend_dev_backend_reg(dev) as Reg;
  const fn = g.raw.ggml_backend_reg_get_proc_address(reg, 'ggml_backend_dev_get_extra_bufts');
  if (!fn) return null;
  const list = (koffi.decode(fn, GetExtraBufts) as Fn)(dev) as unknown;
  if (!list) return null;
  for (let i = 0; i < 16; i++) {
    const buft = koffi.decode(list, i * 8, 'void *') as BufferType | null;
    if (!buft) break;
    if ((g.raw.ggml_backend_buft_name(buft) as string) === 'CPU_REPACK') repackBuft = buft;
  }
  return repackBuft;
}

const repackCache = new Map<string, boolean>();

/**
 * Whether the CPU backend repacks a matrix of this type and shape for ggml_mul_mat, asked the way llama.cpp asks: a
 * mul_mat whose weight claims the repack buffer (a zero-size one: no data needed), checked by supports_op.
 */
export function cpuRepacks(g: Ggml, backend: Backend, type: GgmlType, ne0: number, ne1: number): boolean {
  const buft = cpuRepackBufferType(g);
  if (!buft) return false;
  const key = `${type}:${ne0}:${ne1}`;
  const known = repackCache.get(key);
  if (known !== undefined) return known;
  const ctx = g.init(g.tensorOverhead() * 4 + 1024, true);
  const dummy = g.raw.ggml_backend_buft_alloc_buffer(buft, 0) as Buffer_ | null;
  let answer = false;
  try {
    if (dummy) {
      const w = g.newTensor(ctx, type, [ne0, ne1]);
      const x = g.newTensor(ctx, GGML_TYPE.F32, [ne0, 1]);
      const op = g.raw.ggml_mul_mat(ctx, w, x) as Tensor;
      koffi.encode(w, T_OFF.buffer, 'void *', dummy);
      answer = g.raw.ggml_backend_supports_op(backend, op) as boolean;
      koffi.encode(w, T_OFF.buffer, 'void *', null);
    }
  } finally {
    if (dummy) g.raw.ggml_backend_buffer_free(dummy);
    g.free(ctx);
  }
  repackCache.set(key, answer);
  return answer;
}

export function cpuDevice(g: Ggml): Device {
  const d = firstCpuDevice(g);
  if (!d) throw new EngineUnavailableError('ggml registered no CPU device');
  return d;
}

export interface DeviceProps {
  name: string;
  description: string;
  type: number;
  free: number;
  total: number;
  /** Lower-case PCI bus id ("0000:c1:00.0") where the backend knows it, else null. */
  pciBusId: string | null;
}

/** struct ggml_backend_dev_props (ggml-backend.h): name, description, free, total, type, device_id, caps. */
const PROPS = { size: 64, free: 16, total: 24, type: 32, deviceId: 40 } as const;

export function deviceProps(g: Ggml, dev: Device): DeviceProps {
  const buf = Buffer.alloc(PROPS.size);
  g.raw.ggml_backend_dev_get_props(dev, buf);
  const idPtr = buf.readBigUInt64LE(PROPS.deviceId);
  return {
    name: g.raw.ggml_backend_dev_name(dev) as string,
    description: g.raw.ggml_backend_dev_description(dev) as string,
    type: buf.readInt32LE(PROPS.type),
    free: Number(buf.readBigUInt64LE(PROPS.free)),
    total: Number(buf.readBigUInt64LE(PROPS.total)),
    pciBusId: idPtr === 0n ? null : (koffi.decode(idPtr, 'const char *') as string).toLowerCase(),
  };
}

/** Device memory (free, total) as the backend reports it. */
export function deviceMemory(g: Ggml, dev: Device): { free: number; total: number } {
  const free = [0];
  const total = [0];
  g.raw.ggml_backend_dev_memory(dev, free, total);
  return { free: Number(free[0]), total: Number(total[0]) };
}

/** Address of a JS typed array for `_Out_`-less pointer parameters. */
export function addressOf(view: ArrayBufferView): bigint {
  return koffi.address(view) as bigint;
}

/** A read-only private mapping of a whole file (weights used in place from disk). */
export interface MappedFile {
  ptr: bigint;
  size: number;
  unmap(): void;
}

let libc: { mmap: (...a: unknown[]) => unknown; munmap: (...a: unknown[]) => unknown } | undefined;

const PROT_READ = 1;
const MAP_PRIVATE = 2;

/** mmap through libc: ggml's CPU kernels then read the tensors straight from the page cache. */
export function mapFile(fd: number, size: number): MappedFile {
  if (!libc) {
    const lib = koffi.load('libc.so.6');
    libc = {
      mmap: lib.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)') as Fn,
      munmap: lib.func('int munmap(void *addr, size_t length)') as Fn,
    };
  }
  const ptr = libc.mmap(null, size, PROT_READ, MAP_PRIVATE, fd, 0) as bigint | null;
  if (ptr === null || ptr === 0xffffffffffffffffn || ptr === -1n) throw new VramfitError('MMAP', `could not map ${size} bytes of a weights file`, 1);
  const lc = libc;
  let mapped = true;
  return {
    ptr,
    size,
    unmap: () => {
      if (mapped) lc.munmap(ptr, size);
      mapped = false;
    },
  };
}

let advise: ((addr: bigint, length: number, advice: number) => number) | undefined;
const MADV_POPULATE_WRITE = 23;
const PAGE = 4096n;

/**
 * Faults in [ptr, ptr + length) for writing in one system call (MADV_POPULATE_WRITE, Linux 5.14+),
 * instead of one page fault per 4 KiB page as a copy first touches it. Best effort: an older kernel
 * refuses it and the pages fault in as usual.
 */
export function prefaultForWrite(ptr: bigint, length: number): void {
  if (process.platform !== 'linux' || length <= 0) return;
  if (!advise) {
    const fn = koffi.load('libc.so.6').func('int madvise(void *addr, size_t length, int advice)') as Fn;
    advise = (addr, len, advice) => fn(addr, len, advice) as number;
  }
  // madvise wants a page-aligned start; the partial pages at either end fault in on their own.
  const start = ((ptr + PAGE - 1n) / PAGE) * PAGE;
  const end = ((ptr + BigInt(length)) / PAGE) * PAGE;
  if (end > start) advise(start, Number(end - start), MADV_POPULATE_WRITE);
}

/** `length` bytes of host memory at `ptr` as a Uint8Array, without a copy (CPU buffers only). */
export function hostBytes(ptr: bigint, length: number): Uint8Array {
  return new Uint8Array(koffi.view(ptr, length));
}

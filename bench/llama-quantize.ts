/**
 * llama.cpp's own quantizer, `llama_model_quantize` (what the llama-quantize tool runs), from the libllama of the
 * pinned @node-llama-cpp package the engine already loads ggml from: a GGUF file in, a quantized GGUF file out,
 * on `nthread` threads. The struct is llama.h's llama_model_quantize_params at that package's llama.cpp tag; its
 * defaults come from llama_model_quantize_default_params, only nthread and ftype are changed.
 */
import { join } from 'node:path';
import koffi from 'koffi';
import { loadGgml } from '../src/engine/ggml/binding.js';

/** llama_ftype: the file types the quantize bench compares (llama.h). */
export const LLAMA_FTYPE = { q8_0: 7, q4_k: 14 } as const;

const Params = koffi.struct('llama_model_quantize_params', {
  nthread: 'int32_t',
  ftype: 'int',
  output_tensor_type: 'int',
  token_embedding_type: 'int',
  allow_requantize: 'bool',
  quantize_output_tensor: 'bool',
  only_copy: 'bool',
  pure: 'bool',
  keep_split: 'bool',
  dry_run: 'bool',
  imatrix: 'void *',
  kv_overrides: 'void *',
  tt_overrides: 'void *',
  prune_layers: 'void *',
  max_buf_size: 'size_t',
});

// llama.cpp logs every tensor it converts to stderr: a callback that drops them keeps the bench's output readable.
const LogCallback = koffi.proto('void llama_quiet_log(int level, const char *text, void *user_data)');

let lib: { defaults: () => Record<string, unknown>; quantize: (inp: string, out: string, p: Record<string, unknown>) => number } | undefined;

function llama(): NonNullable<typeof lib> {
  if (lib) return lib;
  const g = loadGgml();
  const l = koffi.load(join(g.binsDir, 'libllama.v0.5.0.so'));
  lib = {
    defaults: l.func('llama_model_quantize_params llama_model_quantize_default_params()') as () => Record<string, unknown>,
    quantize: l.func('uint32_t llama_model_quantize(const char *inp, const char *out, const llama_model_quantize_params *params)') as (
      inp: string,
      out: string,
      p: Record<string, unknown>,
    ) => number,
  };
  void Params;
  const quiet = koffi.register(() => {}, koffi.pointer(LogCallback));
  (l.func('void llama_log_set(void *cb, void *user_data)') as (cb: unknown, u: null) => void)(quiet, null);
  return lib;
}

/** Quantizes `input` (a GGUF) into `output` as llama-quantize would; milliseconds taken. */
export function llamaQuantize(input: string, output: string, type: keyof typeof LLAMA_FTYPE, threads: number): number {
  const l = llama();
  const params = { ...l.defaults(), nthread: threads, ftype: LLAMA_FTYPE[type] };
  const t0 = performance.now();
  const rc = l.quantize(input, output, params);
  if (rc !== 0) throw new Error(`llama_model_quantize failed (${rc})`);
  return performance.now() - t0;
}

/**
 * The optional GPU packages, found without loading anything native: which are installed, at which
 * release, and the command that installs one matching the pinned CPU package.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

export type GpuBackendName = 'cuda' | 'vulkan';

export const GPU_PACKAGES: readonly { backend: GpuBackendName; pkg: string; lib: string; looksFor: string }[] = [
  {
    backend: 'cuda',
    pkg: '@node-llama-cpp/linux-x64-cuda',
    lib: 'libggml-cuda.so',
    looksFor: 'an NVIDIA driver (libcuda.so.1) and the CUDA 13 runtime (libcudart.so.13, libcublas.so.13) on the library path',
  },
  {
    backend: 'vulkan',
    pkg: '@node-llama-cpp/linux-x64-vulkan',
    lib: 'libggml-vulkan.so',
    looksFor: 'the Vulkan loader (libvulkan.so.1) and an ICD for the GPU (e.g. /usr/share/vulkan/icd.d/*.json)',
  },
];

/** The version of an installed package, or undefined when it is not installed. */
export function packageVersion(pkg: string): { version: string; dir: string } | undefined {
  const require = createRequire(import.meta.url);
  let entry: string;
  try {
    // The packages export only their entry (dist/index.js), not package.json.
    entry = require.resolve(pkg);
  } catch {
    return undefined;
  }
  const dir = join(dirname(entry), '..');
  const parsed = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { version?: unknown };
  return { version: String(parsed.version), dir };
}

/** The exact command that installs GPU support matching the pinned CPU package. */
export function gpuInstallCommand(backend: GpuBackendName): string {
  const version = packageVersion('@node-llama-cpp/linux-x64')?.version ?? '3.22.1';
  return `npm install --save-exact @node-llama-cpp/linux-x64-${backend}@${version}`;
}

/** The GPU packages installed here (whatever their release), without loading them. */
export function installedGpuPackages(): GpuBackendName[] {
  return GPU_PACKAGES.filter((p) => packageVersion(p.pkg) !== undefined).map((p) => p.backend);
}

/**
 * Why a GPU package cannot be used as installed: absent, or another release than the CPU package (its
 * libggml-<gpu>.so is built against that release's libggml-base.so, which is already loaded).
 */
export function releaseProblem(
  backend: GpuBackendName,
  installed: string | undefined,
  cpu: string | undefined,
): { state: 'absent' | 'mismatch'; detail: string } | null {
  const pkg = `@node-llama-cpp/linux-x64-${backend}`;
  if (installed === undefined) return { state: 'absent', detail: `${pkg} is not installed (${gpuInstallCommand(backend)})` };
  if (installed !== cpu)
    return {
      state: 'mismatch',
      detail: `${pkg} is ${installed} but the CPU package @node-llama-cpp/linux-x64 is ${cpu ?? 'missing'}: both must be the same release (${gpuInstallCommand(backend)})`,
    };
  return null;
}

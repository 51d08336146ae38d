/**
 * Tests that need GPU devices run on ggml's real Vulkan backend. In CI that is Mesa's lavapipe (a CPU
 * implementation of Vulkan), presented as two devices: ggml-vulkan hides CPU-type Vulkan devices unless
 * GGML_VK_VISIBLE_DEVICES names them, and `0,0` opens the one lavapipe device twice (Vulkan0, Vulkan1,
 * separate buffers). On a machine without Vulkan the tests skip with the reason; where
 * VRAMFIT_REQUIRE_VULKAN=1 (CI) a missing device fails instead, so CI cannot pass with them skipped.
 */
import { loadGgml, loadGpuBackends, devices, DEV_TYPE } from '../../src/engine/ggml/binding.js';

process.env['GGML_VK_VISIBLE_DEVICES'] ??= '0,0';

let found: { ready: boolean; detail: string; count: number } | undefined;

/** `false` when at least `n` Vulkan devices are open to ggml, else the reason to skip (or a thrown error in CI). */
export function vulkanSkip(n = 2): string | false {
  if (found === undefined) {
    const g = loadGgml();
    const vk = loadGpuBackends(g).find((s) => s.backend === 'vulkan')!;
    found = { ready: vk.state === 'ready', detail: vk.detail, count: devices(g).filter((d) => d.name.startsWith('Vulkan') && d.type !== DEV_TYPE.CPU).length };
  }
  const reason = !found.ready ? `no Vulkan device: ${found.detail}` : found.count < n ? `${found.count} Vulkan device(s), the test needs ${n}` : false;
  if (reason && process.env['VRAMFIT_REQUIRE_VULKAN'] === '1') throw new Error(`VRAMFIT_REQUIRE_VULKAN=1 but ${reason}`);
  return reason;
}

/**
 * Imported before ./vulkan.js by tests that need four GPUs: lavapipe's one device opened four times
 * (GGML_VK_VISIBLE_DEVICES is read when ggml-vulkan starts, so it must be set before anything loads it).
 */
process.env['GGML_VK_VISIBLE_DEVICES'] ??= '0,0,0,0';

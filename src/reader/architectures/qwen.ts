import { InputError } from '../../util/errors.js';
import { KEYS } from '../config.js';
import { ModuleTree } from '../module-builder.js';
import { decoderLayout, type ArchitectureSpec } from './spec.js';

/** Length of QWenAttention's `logn_tensor`: `range(1, 32768)`, whatever the config says. */
const LOGN_POSITIONS = 32767;

/**
 * Qwen v1 (Qwen-1.8B/7B/14B/72B, remote code `QWenLMHeadModel`):
 * `transformer.{wte, drop, rotary_emb, h[N].{ln_1, attn.{c_attn, c_proj, attn_dropout}, ln_2,
 * mlp.{w1, w2, c_proj}}, ln_f}` then `lm_head`. `intermediate_size` counts both SwiGLU branches, so
 * w1 and w2 are half of it wide.
 *
 * The model casts itself (buffers included) to bf16/fp16 after building, so its non-persistent
 * buffers (`masked_bias`, `logn_tensor`, `inv_freq`) take the 16-bit dtype too. With flash-attn
 * installed each attention also gets a `core_attention_flash` module; it holds no tensors and is left out.
 */
export const qwen: ArchitectureSpec = {
  family: 'qwen',
  architectures: ['QWenLMHeadModel'],
  modelTypes: ['qwen'],
  // With bf16/fp16/fp32 all false the model picks bf16 on any GPU that has it, and the checkpoints are bf16.
  defaultDtype: 'bfloat16',
  build(cfg, dtype) {
    const layers = cfg.int(KEYS.layers, 'layer count');
    const hidden = cfg.int('hidden_size', 'hidden size');
    const heads = cfg.int('num_attention_heads', 'attention heads');
    const vocab = cfg.int(KEYS.vocab, 'vocab size');
    const kvChannels = cfg.optInt('kv_channels', 128);
    const intermediate = cfg.optInt('intermediate_size', 22016);
    const bias = !cfg.bool('no_bias', true);
    const rotaryPct = cfg.optNumber('rotary_pct') ?? 1;
    if (rotaryPct <= 0 || rotaryPct > 1) throw new InputError(cfg.file, `rotary_pct must be in (0, 1], got ${rotaryPct}`, 'BAD_CONFIG');
    const rotaryDim = rotaryPct === 1 ? kvChannels : Math.trunc(kvChannels * rotaryPct);
    const projection = kvChannels * heads;
    const ffn = Math.floor(intermediate / 2);
    const bufferDtype = dtype === 'bfloat16' || dtype === 'float16' ? dtype : 'float32';
    const tie = cfg.bool('tie_word_embeddings', false);

    const tree = new ModuleTree(dtype);
    tree.root.child('transformer', 'QWenModel', (t) => {
      t.embedding('wte', vocab, hidden);
      t.leaf('drop', 'Dropout');
      t.child('rotary_emb', 'RotaryEmbedding', (r) => r.buffer('inv_freq', [Math.floor((rotaryDim + 1) / 2)], bufferDtype, false));
      t.list('h', layers, 'QWenBlock', (block) => {
        block.norm('ln_1', 'RMSNorm', hidden);
        block.child('attn', 'QWenAttention', (a) => {
          a.buffer('masked_bias', [], bufferDtype, false);
          a.buffer('logn_tensor', [1, LOGN_POSITIONS, 1, 1], bufferDtype, false);
          a.linear('c_attn', hidden, 3 * projection, true);
          // Registered as Linear(hidden_size, projection_size): the weight is [projection, hidden].
          a.linear('c_proj', hidden, projection, bias);
          a.leaf('attn_dropout', 'Dropout');
        });
        block.norm('ln_2', 'RMSNorm', hidden);
        block.child('mlp', 'QWenMLP', (m) => {
          m.linear('w1', hidden, ffn, bias);
          m.linear('w2', hidden, ffn, bias);
          m.linear('c_proj', ffn, hidden, bias);
        });
      });
      t.norm('ln_f', 'RMSNorm', hidden);
    });
    tree.root.linear('lm_head', hidden, vocab, false);

    return decoderLayout({
      rootClass: 'QWenLMHeadModel',
      tree,
      tie: tie ? ['transformer.wte.weight', 'lm_head.weight'] : undefined,
      blocks: { prefix: 'transformer.h', count: layers, class: 'QWenBlock' },
      attention: {
        hiddenSize: hidden,
        vocabSize: vocab,
        numHeads: heads,
        numKvHeads: heads,
        headDim: kvChannels,
        intermediateSize: ffn,
        maxPositionEmbeddings: cfg.optInt(KEYS.maxPositions),
      },
    });
  },
};

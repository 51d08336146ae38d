/**
 * vramfit's tokenizer from GGUF metadata against llama.cpp's own tokenizer, on the same GGUF files and real
 * vocabularies: Llama 2 (SentencePiece), Llama 3, Qwen3 and GPT-2 (byte-level BPE), each written into a
 * vocabulary-only GGUF as llama.cpp's converter writes it (test/helpers/gguf-vocab.ts). llama.cpp runs through
 * node-llama-cpp, installed on demand into bench/.peer as the engine benchmark does, in a CHILD process so its
 * own ggml never loads into a process that loaded vramfit's.
 *
 * Both sides tokenize without adding BOS/EOS and with special-token text parsed as special tokens:
 * node-llama-cpp's `model.tokenize(text, true)` is llama.cpp's `common_tokenize(vocab, text, add_special = false,
 * parse_special = true)`, and vramfit's `encode(text, { addSpecialTokens: false })`. A report: it exits 0 even when
 * ids differ, 1 only when llama.cpp could not be installed or run, or refused to load one of the GGUFs.
 *
 *   node --import tsx scripts/tokenizer-parity.ts [--texts N] [--seed S] [--only NAME[,NAME]] [--show K] [--no-install] [--keep]
 *
 * --texts N     random texts per vocabulary besides the fixed set (default 300)
 * --seed S      seed of the random texts (default: per vocabulary, as test/gguf-tokenizer.test.ts seeds them)
 * --only        vocabularies to run (llama2, llama3, qwen3, gpt2; default all)
 * --show K      differences shown per vocabulary (default 5)
 * --no-install  fail when bench/.peer lacks node-llama-cpp instead of installing it
 * --keep        keep the temporary folder (GGUFs, texts and ids)
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensurePeer, PEER_DIR, PEER_PACKAGE, PEER_VERSION } from '../bench/engine.js';
import { markdownTable } from '../bench/common.js';
import { gv, writeGguf, type GgufWriteValue } from '../src/reader/formats/gguf-writer.js';
import { loadGgufTokenizer } from '../src/engine/text/gguf-tokenizer.js';
import { loadTokenizer, type TextTokenizer } from '../src/engine/text/tokenizer.js';
import { ggufVocabMetadata, lenmlModels } from '../test/helpers/gguf-vocab.js';
import { PARITY_TEXTS, randomTexts } from '../test/helpers/tokenizer-texts.js';

interface Vocabulary {
  name: string;
  /** tokenizer.ggml.pre, as llama.cpp's converter detects it for the byte-level vocabularies. */
  pre?: string;
}

const VOCABULARIES: Vocabulary[] = [{ name: 'llama2' }, { name: 'llama3', pre: 'llama-bpe' }, { name: 'qwen3', pre: 'qwen2' }, { name: 'gpt2', pre: 'gpt-2' }];

const MiB = 2 ** 20;

/**
 * The hyper-parameters llama.cpp's loader reads for architecture `llama` before it looks at the vocabulary (it
 * reads them even with vocab_only), tiny; there are no tensors.
 */
function vocabOnlyGgufMetadata(vocab: Vocabulary): Record<string, GgufWriteValue> {
  const meta = ggufVocabMetadata(lenmlModels(vocab.name), vocab.pre ? { pre: vocab.pre } : {});
  const tokens = meta['tokenizer.ggml.tokens'] as { value: unknown[] } | undefined;
  const vocabSize = Array.isArray(tokens?.value) ? tokens.value.length : 0;
  return {
    'general.architecture': 'llama',
    'general.name': `vramfit tokenizer parity ${vocab.name}`,
    'llama.context_length': gv.u32(128),
    'llama.embedding_length': gv.u32(8),
    'llama.block_count': gv.u32(1),
    'llama.feed_forward_length': gv.u32(16),
    'llama.attention.head_count': gv.u32(2),
    'llama.attention.head_count_kv': gv.u32(2),
    'llama.attention.layer_norm_rms_epsilon': gv.f32(1e-5),
    'llama.rope.dimension_count': gv.u32(4),
    'llama.vocab_size': gv.u32(vocabSize),
    ...meta,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// The child: node-llama-cpp, one process for all vocabularies.

interface ChildInput {
  version: string;
  vocabularies: { name: string; modelPath: string; texts: string[] }[];
}

interface ChildVocabResult {
  name: string;
  ok: boolean;
  /** Why llama.cpp did not load the vocabulary (its error and last log lines). */
  error?: string;
  ids?: number[][];
  vocabularyType?: string;
  /** llama.cpp's add_bos for the vocabulary (tokenize does not apply it). */
  shouldPrependBosToken?: boolean;
  bos?: number | null;
}

interface ChildOutput {
  info: { llamaCppRelease?: unknown; buildType?: string; gpu?: unknown; systemInfo?: string };
  vocabularies: ChildVocabResult[];
}

const RUNNER = String.raw`// Written by scripts/tokenizer-parity.ts: llama.cpp's tokenizer (node-llama-cpp) on vocabulary-only GGUFs.
import { readFileSync, writeFileSync } from 'node:fs';
import { getLlama } from 'node-llama-cpp';
const [inputPath, outputPath] = process.argv.slice(2);
const input = JSON.parse(readFileSync(inputPath, 'utf8'));
const logs = [];
const why = (e) => (e && e.message && e.message !== e.name ? (e.name ? e.name + ': ' : '') + e.message : String(e && e.name ? e.name : e));
let llama;
try {
  llama = await getLlama({
    gpu: false, build: 'never', skipDownload: true, progressLogs: false, logLevel: 'warn',
    logger: (level, message) => { logs.push(level + ': ' + String(message).trim()); if (logs.length > 200) logs.shift(); },
  });
} catch (e) {
  process.stderr.write('@@FATAL@@getLlama failed: ' + why(e) + (logs.length ? ' | ' + logs.slice(-3).join(' | ') : '') + '\n');
  process.exit(1);
}
const out = {
  info: { llamaCppRelease: llama.llamaCppRelease, buildType: llama.buildType, gpu: llama.gpu, systemInfo: llama.systemInfo },
  vocabularies: [],
};
for (const v of input.vocabularies) {
  logs.length = 0;
  let model;
  try {
    model = await llama.loadModel({ modelPath: v.modelPath, vocabOnly: true, gpuLayers: 0 });
  } catch (e) {
    out.vocabularies.push({ name: v.name, ok: false, error: why(e) + (logs.length ? ' | ' + logs.slice(-6).join(' | ') : '') });
    continue;
  }
  try {
    // specialTokens = true: llama.cpp's parse_special; add_special is always false here (no BOS/EOS added).
    const ids = v.texts.map((t) => Array.from(model.tokenize(t, true)));
    out.vocabularies.push({
      name: v.name, ok: true, ids, vocabularyType: model.vocabularyType,
      shouldPrependBosToken: model.tokens.shouldPrependBosToken, bos: model.tokens.bos,
    });
  } catch (e) {
    out.vocabularies.push({ name: v.name, ok: false, error: why(e) });
  } finally {
    await model.dispose();
  }
}
writeFileSync(outputPath, JSON.stringify(out));
await llama.dispose();
`;

function peerInstalled(): boolean {
  const pkg = join(PEER_DIR, 'node_modules', PEER_PACKAGE, 'package.json');
  if (!existsSync(pkg)) return false;
  const version = (JSON.parse(readFileSync(pkg, 'utf8')) as { version?: string }).version;
  return version === PEER_VERSION && existsSync(join(PEER_DIR, 'node_modules', '@node-llama-cpp', `${process.platform}-${process.arch}`, 'package.json'));
}

function runChild(dir: string, input: ChildInput): ChildOutput {
  const runner = join(PEER_DIR, 'tokenizer-parity-runner.mjs');
  writeFileSync(runner, RUNNER);
  const inputPath = join(dir, 'llamacpp-input.json');
  const outputPath = join(dir, 'llamacpp-output.json');
  writeFileSync(inputPath, JSON.stringify(input));
  const r = spawnSync(process.execPath, [runner, inputPath, outputPath], { cwd: PEER_DIR, encoding: 'utf8', timeout: 600_000, maxBuffer: 64 * MiB });
  if (r.error || r.status !== 0 || !existsSync(outputPath)) {
    const why = r.error ? r.error.message : r.signal ? `killed by ${r.signal}` : `exit ${r.status}`;
    // The runner's own line when getLlama failed, else node's line naming an uncaught error, else the last lines.
    const lines = `${r.stderr ?? ''}${r.stdout ?? ''}`
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean);
    const fatal = lines.find((l) => l.startsWith('@@FATAL@@'));
    const uncaught = lines.find((l) => /^[\w.]*(Error|Exception)\b/.test(l));
    const shown = fatal ? fatal.slice('@@FATAL@@'.length) : (uncaught ?? lines.slice(-3).join(' | '));
    throw new Error(`node-llama-cpp run failed (${why})${shown ? `: ${shown}` : ''}`);
  }
  return JSON.parse(readFileSync(outputPath, 'utf8')) as ChildOutput;
}

// ---------------------------------------------------------------------------------------------------------------

interface Options {
  texts: number;
  seed: number | undefined;
  only: string[] | undefined;
  show: number;
  install: boolean;
  keep: boolean;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { texts: 300, seed: undefined, only: undefined, show: 5, install: true, keep: false };
  const int = (flag: string, v: string | undefined, min: number): number => {
    const n = Number(v);
    if (v === undefined || !Number.isSafeInteger(n) || n < min) throw new Error(`${flag} needs an integer ≥ ${min}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--texts') o.texts = int(a, argv[++i], 0);
    else if (a === '--seed') o.seed = int(a, argv[++i], 0);
    else if (a === '--show') o.show = int(a, argv[++i], 0);
    else if (a === '--only') {
      o.only = (argv[++i] ?? '').split(',').filter(Boolean);
      const unknown = o.only.filter((n) => !VOCABULARIES.some((v) => v.name === n));
      if (o.only.length === 0 || unknown.length > 0) throw new Error(`--only takes ${VOCABULARIES.map((v) => v.name).join(', ')}`);
    } else if (a === '--no-install') o.install = false;
    else if (a === '--keep') o.keep = true;
    else throw new Error(`unknown argument ${a} (usage: --texts N, --seed S, --only NAME[,NAME], --show K, --no-install, --keep)`);
  }
  return o;
}

const same = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((x, i) => x === b[i]);
const ids = (a: readonly number[], n = 20): string => `[${a.slice(0, n).join(',')}${a.length > n ? `,… (${a.length})` : ''}]`;

async function main(): Promise<number> {
  let o: Options;
  try {
    o = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error((e as Error).message);
    return 2;
  }
  const vocabularies = VOCABULARIES.filter((v) => !o.only || o.only.includes(v.name));

  let install: string;
  if (peerInstalled()) install = `found ${PEER_PACKAGE}@${PEER_VERSION} in bench/.peer`;
  else if (!o.install) {
    console.log(`llama.cpp unavailable: ${PEER_PACKAGE}@${PEER_VERSION} is not installed in bench/.peer (--no-install; run without it to install)`);
    return 1;
  } else {
    try {
      install = ensurePeer();
    } catch (e) {
      console.log(`llama.cpp unavailable: could not install ${PEER_PACKAGE}@${PEER_VERSION}: ${(e as Error).message.replace(/\s*\n\s*/g, ' | ')}`);
      return 1;
    }
  }

  const dir = mkdtempSync(join(tmpdir(), 'vramfit-tokenizer-parity-'));
  try {
    const input: ChildInput = { version: PEER_VERSION, vocabularies: [] };
    for (const v of vocabularies) {
      const modelPath = join(dir, `${v.name}.gguf`);
      writeGguf(modelPath, { metadata: vocabOnlyGgufMetadata(v), tensors: [] });
      const seed = o.seed ?? v.name.length * 7919;
      input.vocabularies.push({ name: v.name, modelPath, texts: [...PARITY_TEXTS, ...randomTexts(o.texts, seed)] });
    }

    let child: ChildOutput;
    const t0 = performance.now();
    try {
      child = runChild(dir, input);
    } catch (e) {
      console.log(`llama.cpp unavailable: ${(e as Error).message}`);
      return 1;
    }
    const childMs = performance.now() - t0;

    const release = child.info.llamaCppRelease as { repo?: string; release?: string } | undefined;
    console.log(`# tokenizer parity: vramfit (GGUF metadata) vs llama.cpp`);
    console.log(
      `${PEER_PACKAGE} ${PEER_VERSION} (${install}); llama.cpp ${release?.repo ?? '?'} ${release?.release ?? '?'}, ${child.info.buildType ?? '?'} build, gpu ${String(child.info.gpu)}`,
    );
    if (child.info.systemInfo) console.log(`llama.cpp system info: ${child.info.systemInfo.trim()}`);
    console.log(
      `texts per vocabulary: ${PARITY_TEXTS.length} fixed + ${o.texts} random (seed ${o.seed ?? 'name length × 7919, as the test'}); ` +
        `llama.cpp: model.tokenize(text, true) = common_tokenize(add_special = false, parse_special = true); ` +
        `vramfit: encode(text, { addSpecialTokens: false }); llama.cpp ran ${(childMs / 1000).toFixed(1)} s`,
    );
    console.log('');

    const rows: string[][] = [];
    const details: string[] = [];
    const refused: string[] = [];
    for (const v of input.vocabularies) {
      const theirs = child.vocabularies.find((c) => c.name === v.name);
      if (!theirs?.ok || !theirs.ids) {
        rows.push([v.name, String(v.texts.length), '—', '—', `llama.cpp could not load it: ${theirs?.error ?? 'no result'}`]);
        refused.push(v.name);
        continue;
      }
      const gguf = loadGgufTokenizer(v.modelPath);
      let json: TextTokenizer | undefined;
      let equal = 0;
      const diffs: { text: string; ours: number[]; theirs: number[] }[] = [];
      v.texts.forEach((text, i) => {
        const ours = gguf.encode(text, { addSpecialTokens: false });
        const other = theirs.ids![i] ?? [];
        if (same(ours, other)) equal++;
        else diffs.push({ text, ours, theirs: other });
      });
      rows.push([
        v.name,
        String(v.texts.length),
        String(equal),
        String(diffs.length),
        `${theirs.vocabularyType ?? '?'}; llama.cpp add_bos ${String(theirs.shouldPrependBosToken)} (bos ${String(theirs.bos)}), not applied by tokenize`,
      ]);
      if (diffs.length === 0 || o.show === 0) continue;
      details.push(`## ${v.name}: first ${Math.min(o.show, diffs.length)} of ${diffs.length} differences`);
      for (const d of diffs.slice(0, o.show)) {
        // Which side the tokenizer.json path (Hugging Face tokenizers) agrees with, as a hint of who is right.
        json ??= loadTokenizer(lenmlModels(v.name));
        const hf = json.encode(d.text, { addSpecialTokens: false });
        const verdict = same(hf, d.ours) ? 'vramfit' : same(hf, d.theirs) ? 'llama.cpp' : `neither: ${ids(hf)}`;
        details.push(`- ${JSON.stringify(d.text).slice(0, 60)}`);
        details.push(`  vramfit   ${ids(d.ours)}`);
        details.push(`  llama.cpp ${ids(d.theirs)}`);
        details.push(`  tokenizer.json agrees with: ${verdict}`);
      }
      details.push('');
    }
    console.log(markdownTable(['vocabulary', 'texts', 'equal', 'differ', 'llama.cpp vocabulary'], rows));
    console.log('');
    if (details.length > 0) console.log(details.join('\n'));
    if (refused.length > 0) {
      // Not a tokenizer difference: llama.cpp did not run on these files at all (see their rows).
      console.log(`llama.cpp could not load the GGUF of ${refused.join(', ')}`);
      return 1;
    }
    return 0;
  } finally {
    if (o.keep) console.log(`kept ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
}

process.exitCode = await main();

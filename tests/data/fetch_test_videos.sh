#!/usr/bin/env bash
# Puts four real sample videos from Debian's opencv-doc package into DEST_DIR (the build
# directory's test_videos/) for tests/data/video_decoder_test.cc. They are the awkward cases that
# generated files lack (../shared/research/data-pipeline.md §3):
#   vtest.avi          msmpeg4v3, 768x576, 10 fps, 795 frames
#   Megamind.avi       MPEG-4 ASP with packed B-frames, 23.976 fps, and an AC-3 audio stream
#   Megamind_bugy.avi  MPEG-4 ASP, packed B-frames, packets without pts, 30 fps
#   tree.avi           Cinepak, 15 fps: the header counts 444 frames, 68 are real (zero-size repeats)
# ctest runs this as the FIXTURES_SETUP test `fetch_test_videos`; it downloads once (apt-get
# download, ~96 MB, no root needed) and keeps only these four files (11 MB).
#
#   tests/data/fetch_test_videos.sh build/test_videos
#
# Without apt-get or dpkg-deb, or when the package cannot be downloaded, it says so and exits 0:
# the tests that need the files then skip, naming them. A file whose checksum differs is an error.
set -euo pipefail

dest=${1:?usage: fetch_test_videos.sh DEST_DIR}
package=opencv-doc
member=./usr/share/doc/opencv-doc/examples/data
# sha256 of the files in opencv-doc 4.6.0+dfsg-12 (Debian bookworm).
declare -A sha256=(
  [vtest.avi]=45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf
  [Megamind.avi]=0057387cb7e75c8fd1663b62cfdc51fa53f527795d0fe3c1fea2fd159d3130b5
  [Megamind_bugy.avi]=b82dd32d5444031d1a46a133e7554be7b80c54d12e3503a1b1332a540218e22c
  [tree.avi]=4666099d0f704e310047b2f0a5ec9f936cb76a7271de9a2e70a0c57f82ac82dc
)

say() { echo "fetch_test_videos: $*"; }

all_present() {
  local name
  for name in "${!sha256[@]}"; do
    [[ -f $dest/$name ]] && sha256sum "$dest/$name" | grep -q "^${sha256[$name]} " || return 1
  done
}

if all_present; then
  say "the sample videos are present in $dest"
  exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  say "apt-get or dpkg-deb is missing, so the tests that need $dest/*.avi will skip"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
say "downloading $package with apt-get download"
if ! (cd "$tmp" && timeout 600 apt-get download "$package" >download.log 2>&1); then
  tail -n 5 "$tmp/download.log" || true
  say "apt-get could not download $package, so the tests that need $dest/*.avi will skip"
  exit 0
fi
members=()
for name in "${!sha256[@]}"; do members+=("$member/$name"); done
dpkg-deb --fsys-tarfile "$tmp"/"$package"_*.deb | tar -x -C "$tmp" "${members[@]}"
mkdir -p "$dest"
for name in "${!sha256[@]}"; do
  file=$tmp/$member/$name
  if ! sha256sum "$file" | grep -q "^${sha256[$name]} "; then
    say "FAILED: $name of $package does not have sha256 ${sha256[$name]}" >&2
    exit 1
  fi
  mv "$file" "$dest/$name.tmp"
  mv "$dest/$name.tmp" "$dest/$name"
done
say "wrote ${!sha256[*]} to $dest"

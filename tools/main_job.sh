#!/usr/bin/env bash
# The main job: a tiny B-VLLM learns to answer questions about videos, on the CPU, end to end.
#
#   tools/setup.sh && tools/main_job.sh
#
# 1. bvllm_synth writes synthetic videos with known content (colour, shape, motion direction,
#    event order, object count), their captions and questions, a train/test split, and the small
#    vocabularies of the tiny model;
# 2. bvllm_prep stores their 1-fps frames in LMDB shards (stage 1, stage 2, test);
# 3. bvllm_train runs recipes/tiny_stage1.pb (captions) and recipes/tiny_stage2.pb (questions,
#    LoRA, starting from every stage-1 weight);
# 4. bvllm_eval scores the held-out questions per type against chance;
# 5. plot_metrics draws the loss and lr curves; bvllm_chat answers one question about a test video.
#
# Everything goes under runs/ (or $BVLLM_RUNS). The job is resumable: re-running it skips finished
# steps and continues an interrupted training run from its last checkpoint. Set BVLLM_FRESH=1 to
# start over (deletes the runs directory first). For a quick check of the plumbing (ctest's
# main_job_smoke): BVLLM_TRAIN_VIDEOS, BVLLM_TEST_VIDEOS and BVLLM_STEPS (optimizer steps per stage).
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

RUNS=${BVLLM_RUNS:-runs}
BIN=${BVLLM_BIN:-build/bin}
TRAIN_VIDEOS=${BVLLM_TRAIN_VIDEOS:-4800}
TEST_VIDEOS=${BVLLM_TEST_VIDEOS:-240}
FRAME_SIZE=96
# One thread: the tiny model's ops are too small to gain from a second one, and OpenMP threads
# that spin while another process holds the core make them many times slower.
THREADS=${BVLLM_THREADS:-1}

say() { echo "main_job: $*"; }
die() {
  echo "main_job: FAILED: $*" >&2
  exit 1
}
for program in bvllm_synth bvllm_prep bvllm_train bvllm_eval plot_metrics bvllm_chat; do
  [[ -x $BIN/$program ]] || die "$BIN/$program is missing: run tools/setup.sh first"
done
[[ ${BVLLM_FRESH:-0} == 1 ]] && rm -rf "$RUNS"
mkdir -p "$RUNS"
start=$SECONDS
elapsed() { echo "$((SECONDS - start))s"; }

# The recipes name runs/...; a different $BVLLM_RUNS is passed to them with --set.
paths=() eval_paths=()
[[ -n ${BVLLM_STEPS:-} ]] && paths+=(--set "steps=$BVLLM_STEPS")
if [[ $RUNS != runs ]]; then
  paths+=(--set "model.tokenizer=$RUNS/synth/tokenizer.json" --set "model.qformer.bert_vocab=$RUNS/synth/bert_vocab.txt")
  eval_paths=(--tokenizer "$RUNS/synth/tokenizer.json" --bert_vocab "$RUNS/synth/bert_vocab.txt")
fi

say "1/6 synthetic videos -> $RUNS/synth ($(elapsed))"
if [[ ! -f $RUNS/synth/test.json ]]; then
  "$BIN/bvllm_synth" --out "$RUNS/synth" --train "$TRAIN_VIDEOS" --test "$TEST_VIDEOS"
fi

say "2/6 frames into LMDB shards -> $RUNS/shards ($(elapsed))"
for split in stage1 stage2 test; do
  "$BIN/bvllm_prep" --manifest "$RUNS/synth/$split.json" --media_root "$RUNS/synth" \
    --out "$RUNS/shards/$split" --frame_size "$FRAME_SIZE" --progress_seconds 10
done

# Trains a recipe into a run directory, continuing it when it already has a checkpoint.
train() {
  local recipe=$1 run_dir=$2
  shift 2
  local resume=()
  [[ -f $run_dir/checkpoints/latest ]] && resume=(--resume)
  "$BIN/bvllm_train" "$recipe" --run_dir "$run_dir" --threads "$THREADS" "${resume[@]}" "${paths[@]}" "$@"
}

say "3/6 stage 1: captions (recipes/tiny_stage1.pb) -> $RUNS/tiny_stage1 ($(elapsed))"
train recipes/tiny_stage1.pb "$RUNS/tiny_stage1" --set "data.shards=$RUNS/shards/stage1"

say "4/6 stage 2: questions with LoRA (recipes/tiny_stage2.pb) -> $RUNS/tiny_stage2 ($(elapsed))"
train recipes/tiny_stage2.pb "$RUNS/tiny_stage2" --set "data.shards=$RUNS/shards/stage2" \
  --set "checkpoint.init_from=$RUNS/tiny_stage1/checkpoints"

say "5/6 evaluation on the held-out videos ($(elapsed))"
"$BIN/bvllm_eval" --checkpoint "$RUNS/tiny_stage2/checkpoints" --shards "$RUNS/shards/test" \
  --manifest "$RUNS/synth/test.json" --out "$RUNS/tiny_stage2/eval.json" --threads "$THREADS" "${eval_paths[@]}" \
  --gumbel_seed 0
"$BIN/plot_metrics" --metrics "$RUNS/tiny_stage1/metrics.jsonl,$RUNS/tiny_stage2/metrics.jsonl" \
  --out "$RUNS/tiny_stage2/loss.png" --title "tiny B-VLLM: stage 1 then stage 2"

say "6/6 one chat answer ($(elapsed))"
video=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[0]["video"])' "$RUNS/synth/test.json")
[[ -n $video ]] || die "no video in $RUNS/synth/test.json"
echo "Q: What colour is the object?  ($RUNS/synth/$video)"
printf 'A: '
"$BIN/bvllm_chat" --model "$RUNS/tiny_stage2/checkpoints" --video "$RUNS/synth/$video" --frame_size "$FRAME_SIZE" \
  --prompt "What colour is the object?" --greedy --max_new_tokens 8 --threads "$THREADS" "${eval_paths[@]}" \
  --gumbel_seed 0

say "done in $(elapsed)"
echo "  metrics:    $RUNS/tiny_stage1/metrics.jsonl, $RUNS/tiny_stage2/metrics.jsonl"
echo "  plot:       $RUNS/tiny_stage2/loss.png"
echo "  evaluation: $RUNS/tiny_stage2/eval.json"
echo "  checkpoint: $RUNS/tiny_stage2/checkpoints/$(cat "$RUNS/tiny_stage2/checkpoints/latest")"

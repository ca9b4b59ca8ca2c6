#!/usr/bin/python3
"""Tiny LAVIS weight files, written by torch.save (zip) with the real key names, and what a
B-VLLM model holds after loading them (tests/layers/bvllm_checkpoint_test.cc).

Run with Debian's python:  /usr/bin/python3 tests/reference/make_lavis_fixtures.py

research/bvllm.md §4 and §12.6: B-VLLM initializes
  - the vision tower from LAVIS's eva_vit_g.pth: a plain VisionTransformer state dict whose
    pos_embed is on the 224 px grid (interpolated bicubically to the model's grid at load) and
    which holds a block more than the 39 that B-VLLM builds (strict=False ignores it);
  - both Q-Formers, both query-token sets and both vlm_att_ln_* from
    instruct_blip_vicuna7b_trimmed.pth: {'model': {'Qformer.bert.*', 'query_tokens', 'ln_vision.*',
    ...}} with the Q-Former's position_ids buffer and InstructBLIP's own llm_proj.* beside them.

Writes tests/reference/fixtures/lavis/{eva_vit_g_tiny.pth, instruct_blip_tiny.pth, expected.safetensors};
expected.safetensors holds the interpolated pos_embed the vision tower must end up with.
"""
import collections
import os

import torch

import bvllm_reference as R
from make_bvllm_fixtures import eva_params, norm_params, qformer_params, randn
from safetensors_writer import save_safetensors

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "lavis")


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(404)
    eva_cfg, qf_cfg = R.EVA_TINY, R.QFORMER_TINY
    # One block more than the tiny model's depth, as eva_vit_g.pth has 40 for B-VLLM's 39.
    deeper = R.EvaConfig(eva_cfg.img, eva_cfg.patch, eva_cfg.width, eva_cfg.depth + 1, eva_cfg.heads)
    eva = eva_params(deeper, R.EVA_TINY_CHECKPOINT_GRID)
    torch.save(collections.OrderedDict(eva), os.path.join(OUT, "eva_vit_g_tiny.pth"))

    qf = qformer_params(qf_cfg, prefix="Qformer.bert.")
    blip = collections.OrderedDict(qf)
    blip["Qformer.bert.embeddings.position_ids"] = torch.arange(qf_cfg.max_positions)[None]
    blip["query_tokens"] = randn(1, qf_cfg.num_query, qf_cfg.hidden, std=0.5)
    ln = {}
    norm_params(ln, "ln_vision", eva_cfg.width)
    blip.update(ln)
    blip["llm_proj.weight"] = randn(16, qf_cfg.hidden)
    blip["llm_proj.bias"] = randn(16)
    torch.save({"model": blip, "epoch": 9}, os.path.join(OUT, "instruct_blip_tiny.pth"))

    # The loader's one computation; every other value is the file's own (the test reads them with
    # load_pth, which tests/runtime/pth_test.cc checks against PyTorch).
    expected = {"model.vision_tower.vision_tower.pos_embed":
                R.eva_interpolate_pos_embed(eva["pos_embed"], eva_cfg.grid * eva_cfg.grid)}
    save_safetensors(os.path.join(OUT, "expected.safetensors"), {k: v.contiguous() for k, v in expected.items()})
    for name in sorted(os.listdir(OUT)):
        print(name, os.path.getsize(os.path.join(OUT, name)), "bytes")


if __name__ == "__main__":
    main()

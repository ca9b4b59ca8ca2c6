#!/usr/bin/python3
"""Reference fixtures for runtime/optim: AdamW, lr schedules with warmup, grad-norm clipping.

Run with Debian's python, which has torch 1.13 (not the python3 first on PATH):

    /usr/bin/python3 tests/reference/optim_reference.py

Writes, into tests/reference/fixtures/ (with tests/reference/safetensors_writer.py; read in C++
with runtime/io/safetensors.h):

  optim_adamw.safetensors     torch.optim.AdamW driven by LambdaLR with each schedule, two param
                              groups (the second with weight_decay 0 and its own lr), a param
                              without grad on some steps, clip_grad_norm_ on some steps; f64 and f32.
  optim_schedule.safetensors  tables of the three schedule lambdas over (W, T, step) and of
                              warmup_steps_from_ratio.
  optim_clip.safetensors      clip_grad_norm_ with norm types 2, 1, 3 and inf, clipping and not.

transformers is not installed next to this torch, so the three lr lambdas below are copied from
transformers src/transformers/optimization.py @005edacb (research/models-formats.md §6.2);
LambdaLR, AdamW and clip_grad_norm_ are torch's own.
"""

import math
import os
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR

from safetensors_writer import save_safetensors

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


# --- transformers optimization.py (verbatim bodies) ------------------------------------------
def _get_constant_schedule_with_warmup_lr_lambda(current_step: int, *, num_warmup_steps: int):
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1.0, num_warmup_steps))
    return 1.0


def _get_linear_schedule_with_warmup_lr_lambda(current_step: int, *, num_warmup_steps: int, num_training_steps: int):
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    return max(0.0, float(num_training_steps - current_step) / float(max(1, num_training_steps - num_warmup_steps)))


def _get_cosine_schedule_with_warmup_lr_lambda(
    current_step: int, *, num_warmup_steps: int, num_training_steps: int, num_cycles: float
):
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    progress = float(current_step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


def make_lambda(kind, warmup, total, num_cycles=0.5):
    if kind == "constant_with_warmup":
        return partial(_get_constant_schedule_with_warmup_lr_lambda, num_warmup_steps=warmup)
    if kind == "linear":
        return partial(_get_linear_schedule_with_warmup_lr_lambda, num_warmup_steps=warmup, num_training_steps=total)
    if kind == "cosine":
        return partial(
            _get_cosine_schedule_with_warmup_lr_lambda,
            num_warmup_steps=warmup,
            num_training_steps=total,
            num_cycles=num_cycles,
        )
    raise ValueError(kind)


def warmup_steps_from_ratio(total, ratio):
    # transformers TrainingArguments.get_warmup_steps when warmup_steps == 0.
    return math.ceil(total * ratio)


# --- writing ----------------------------------------------------------------------------------
def save(path, tensors):
    save_safetensors(path, tensors, {"format": "pt", "generator": "tests/reference/optim_reference.py"})
    print(f"wrote {path}: {len(tensors)} tensors, {os.path.getsize(path)} bytes")


def f64(values):
    return torch.tensor(values, dtype=torch.float64)


# --- AdamW ------------------------------------------------------------------------------------
# Hyperparameters per schedule case: constant uses torch's AdamW defaults.
ADAMW_CASES = {
    "constant_with_warmup": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, lr1=5e-4),
    "linear": dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1, lr1=2e-2),
    "cosine": dict(lr=3e-2, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.05, lr1=3e-2),
}
TOTAL_STEPS = 8  # the schedule's T
NUM_STEPS = 6  # optimizer steps run
WARMUP_RATIO = 0.3  # W = ceil(8 * 0.3) = 3
PARAM_SHAPES = {"w": (3, 4), "u": (5,), "b": (4,)}  # groups: [w, u] decay, [b] no decay
NO_GRAD_STEPS = {"u": {0, 3}}  # u has grad None on these steps (skipped, step count unchanged)
MAX_NORM = {1: 0.5, 2: 1e3, 4: 1.0}  # clip_grad_norm_ before these steps (1e3: no clipping)


def adamw_fixture(tensors):
    warmup = warmup_steps_from_ratio(TOTAL_STEPS, WARMUP_RATIO)
    for dtype in (torch.float64, torch.float32):
        dname = "f64" if dtype == torch.float64 else "f32"
        for kind, hp in ADAMW_CASES.items():
            gen = torch.Generator().manual_seed(1234)
            init = {n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in PARAM_SHAPES.items()}
            grads = [
                {n: (0.5 + k) * torch.randn(s, generator=gen, dtype=torch.float64) for n, s in PARAM_SHAPES.items()}
                for k in range(NUM_STEPS)
            ]
            params = {n: init[n].to(dtype).clone().requires_grad_(True) for n in PARAM_SHAPES}
            opt = torch.optim.AdamW(
                [
                    {"params": [params["w"], params["u"]]},
                    {"params": [params["b"]], "lr": hp["lr1"], "weight_decay": 0.0},
                ],
                lr=hp["lr"],
                betas=hp["betas"],
                eps=hp["eps"],
                weight_decay=hp["weight_decay"],
            )
            sched = LambdaLR(opt, make_lambda(kind, warmup, TOTAL_STEPS))
            prefix = f"{dname}/{kind}/"
            tensors[prefix + "hparams"] = f64(
                [hp["lr"], hp["betas"][0], hp["betas"][1], hp["eps"], hp["weight_decay"], hp["lr1"], 0.0,
                 TOTAL_STEPS, WARMUP_RATIO, warmup, NUM_STEPS]
            )
            for n in PARAM_SHAPES:
                tensors[prefix + f"init/{n}"] = params[n].detach().clone()
            lrs, max_norms, total_norms = [], [], []
            for k in range(NUM_STEPS):
                for n in PARAM_SHAPES:
                    if k in NO_GRAD_STEPS.get(n, ()):
                        params[n].grad = None
                    else:
                        params[n].grad = grads[k][n].to(dtype).clone()
                        tensors[prefix + f"step{k}/grad/{n}"] = params[n].grad.clone()
                lrs.append([g["lr"] for g in opt.param_groups])
                if k in MAX_NORM:
                    total = torch.nn.utils.clip_grad_norm_(list(params.values()), MAX_NORM[k])
                    max_norms.append(MAX_NORM[k])
                    total_norms.append(float(total))
                else:
                    max_norms.append(-1.0)
                    total_norms.append(float("nan"))
                opt.step()
                sched.step()
                for n in PARAM_SHAPES:
                    tensors[prefix + f"step{k}/param/{n}"] = params[n].detach().clone()
            tensors[prefix + "lr"] = f64(lrs)
            tensors[prefix + "max_norm"] = f64(max_norms)
            tensors[prefix + "total_norm"] = f64(total_norms)
            for n in PARAM_SHAPES:
                st = opt.state[params[n]]
                tensors[prefix + f"state/{n}/step"] = f64([float(st["step"])])
                tensors[prefix + f"state/{n}/exp_avg"] = st["exp_avg"].clone()
                tensors[prefix + f"state/{n}/exp_avg_sq"] = st["exp_avg_sq"].clone()


# --- schedules --------------------------------------------------------------------------------
def schedule_fixture(tensors):
    shapes = [(0, 10), (3, 10), (10, 10), (1, 1), (5, 3), (0, 0), (4, 7)]
    for kind in ("constant_with_warmup", "linear", "cosine"):
        cycles = (0.5, 1.0, 0.25, 2.0) if kind == "cosine" else (0.5,)
        rows = []
        for c in cycles:
            for w, t in shapes:
                fn = make_lambda(kind, w, t, c)
                for s in range(0, max(w, t) + 4):
                    rows.append([w, t, c, s, fn(s)])
        tensors[f"schedule/{kind}"] = f64(rows)  # columns: W, T, num_cycles, step, lambda
    ratios = []
    for total in (0, 1, 7, 8, 100, 1000, 12345):
        for ratio in (0.0, 0.01, 0.03, 0.1, 0.3, 0.5, 1.0):
            ratios.append([total, ratio, warmup_steps_from_ratio(total, ratio)])
    tensors["schedule/warmup_from_ratio"] = f64(ratios)  # columns: total, ratio, W


# --- clipping ---------------------------------------------------------------------------------
CLIP_SHAPES = {"a": (3, 4), "b": (7,), "c": (2, 2)}  # c has no grad
CLIP_CASES = [(2.0, 1.0), (2.0, 100.0), (1.0, 2.0), (3.0, 0.5), (float("inf"), 0.3), (float("inf"), 10.0)]


def clip_fixture(tensors):
    for dtype in (torch.float64, torch.float32):
        dname = "f64" if dtype == torch.float64 else "f32"
        gen = torch.Generator().manual_seed(99)
        grads = {n: torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for n, s in CLIP_SHAPES.items()}
        for n in ("a", "b"):
            tensors[f"{dname}/grad/{n}"] = grads[n].clone()
        for j, (norm_type, max_norm) in enumerate(CLIP_CASES):
            params = {n: torch.zeros(s, dtype=dtype, requires_grad=True) for n, s in CLIP_SHAPES.items()}
            for n in ("a", "b"):
                params[n].grad = grads[n].clone()
            total = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm, norm_type)
            prefix = f"{dname}/case{j}/"
            tensors[prefix + "config"] = f64([norm_type, max_norm])
            tensors[prefix + "total"] = f64([float(total)])
            for n in ("a", "b"):
                tensors[prefix + f"grad/{n}"] = params[n].grad.clone()


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT_DIR, exist_ok=True)
    for name, build in (("optim_adamw", adamw_fixture), ("optim_schedule", schedule_fixture), ("optim_clip", clip_fixture)):
        tensors = {}
        build(tensors)
        save(os.path.join(OUT_DIR, name + ".safetensors"), tensors)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Ten training steps in PyTorch 1.13 that bvllm must reproduce (tests/runtime/train_parity_test.cc).

Run with Debian's python:  /usr/bin/python3 tests/reference/make_train_fixtures.py
Two models, each trained with torch.optim.AdamW (weight decay on matrices only, as the HF Trainer
groups them), transformers' cosine schedule with warmup (as a LambdaLR, stepped after the
optimizer), and clip_grad_norm_(1.0):
  train_mlp:         Linear(10, 32) -> GELU -> Linear(32, 4) -> cross-entropy
  train_qwen2_block: embedding -> one Qwen2 decoder layer (RMSNorm, GQA attention with RoPE,
                     q/k/v bias, SwiGLU) -> RMSNorm -> lm_head -> cross-entropy with ignored labels
The block follows transformers' modeling_qwen2.py, written out here because PyTorch 1.13 has no
Qwen2 module. Fixtures hold the inputs, initial and final parameters, and per-step loss, lr and
gradient norm.
"""
import math
import os

import torch
import torch.nn.functional as F

from safetensors_writer import save_safetensors

STEPS, WARMUP, LR, WEIGHT_DECAY, MAX_NORM = 10, 3, 3e-3, 0.01, 1.0
HERE = os.path.dirname(os.path.abspath(__file__))


def cosine_with_warmup(step):  # transformers get_cosine_schedule_with_warmup, num_cycles 0.5
    if step < WARMUP:
        return step / max(1, WARMUP)
    progress = (step - WARMUP) / max(1, STEPS - WARMUP)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def train(name, params, loss_fn, inputs):
    decay = [p for n, p in params.items() if p.dim() >= 2]
    no_decay = [p for n, p in params.items() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}], lr=LR)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup)
    out = {f"init.{n}": p.detach().clone() for n, p in params.items()}
    out.update({f"input.{n}": t for n, t in inputs.items()})
    losses, norms, lrs = [], [], []
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(list(params.values()), MAX_NORM)))
        lrs.append(opt.param_groups[0]["lr"])
        losses.append(float(loss))
        opt.step()
        sched.step()
    out.update({f"final.{n}": p.detach().clone() for n, p in params.items()})
    out["losses"] = torch.tensor(losses, dtype=torch.float64)
    out["grad_norms"] = torch.tensor(norms, dtype=torch.float64)
    out["lrs"] = torch.tensor(lrs, dtype=torch.float64)
    save_safetensors(os.path.join(HERE, "fixtures", f"{name}.safetensors"), out)
    print(name, "losses", [round(l, 5) for l in losses])


def leaf(t):
    return t.clone().requires_grad_(True)


# --- 2-layer MLP -------------------------------------------------------------------------------
torch.manual_seed(1)
mlp = {"fc1.weight": leaf(torch.randn(32, 10) * 0.3), "fc1.bias": leaf(torch.randn(32) * 0.1),
       "fc2.weight": leaf(torch.randn(4, 32) * 0.3), "fc2.bias": leaf(torch.randn(4) * 0.1)}
x = torch.randn(16, 10)
y = torch.randint(0, 4, (16,))
train("train_mlp", mlp,
      lambda: F.cross_entropy(F.linear(F.gelu(F.linear(x, mlp["fc1.weight"], mlp["fc1.bias"])),
                                       mlp["fc2.weight"], mlp["fc2.bias"]), y),
      {"x": x, "y": y})

# --- embedding + Qwen2 decoder layer + norm + lm_head ---------------------------------------------
torch.manual_seed(2)
V, H, NH, NKV, FFN, B, L, EPS, THETA = 48, 32, 4, 2, 88, 2, 16, 1e-6, 1e6
HD = H // NH


def mat(rows, cols):
    return leaf(torch.randn(rows, cols) * 0.1)


def vec(n, scale=0.1, base=0.0):
    return leaf(base + torch.randn(n) * scale)


lm = {"embed_tokens.weight": mat(V, H),
      "input_layernorm.weight": vec(H, base=1.0),
      "self_attn.q_proj.weight": mat(NH * HD, H), "self_attn.q_proj.bias": vec(NH * HD),
      "self_attn.k_proj.weight": mat(NKV * HD, H), "self_attn.k_proj.bias": vec(NKV * HD),
      "self_attn.v_proj.weight": mat(NKV * HD, H), "self_attn.v_proj.bias": vec(NKV * HD),
      "self_attn.o_proj.weight": mat(H, NH * HD),
      "post_attention_layernorm.weight": vec(H, base=1.0),
      "mlp.gate_proj.weight": mat(FFN, H), "mlp.up_proj.weight": mat(FFN, H), "mlp.down_proj.weight": mat(H, FFN),
      "norm.weight": vec(H, base=1.0),
      "lm_head.weight": mat(V, H)}
tokens = torch.randint(0, V, (B, L))
labels = torch.full((B, L), -100, dtype=torch.int64)
labels[:, :-1] = tokens[:, 1:]
labels[1, :4] = -100  # a prompt whose tokens are not trained on


def rms_norm(x, w):  # Qwen2RMSNorm
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)
    return w * x.to(dtype)


def rotate_half(x):
    return torch.cat((-x[..., HD // 2:], x[..., : HD // 2]), dim=-1)


# Position ids 997 apart: with consecutive ids the slowest rotary pairs barely turn over 16 tokens,
# so softmax's shift invariance leaves k_proj.bias there a gradient of pure rounding noise, which
# Adam's normalized update then amplifies differently in any two implementations.
positions = torch.arange(L, dtype=torch.int64) * 997
inv_freq = 1.0 / (THETA ** (torch.arange(0, HD, 2, dtype=torch.int64).float() / HD))
freqs = positions.float()[:, None] * inv_freq
cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()


def decoder_layer(h):
    r = h
    h = rms_norm(h, lm["input_layernorm.weight"])
    q = F.linear(h, lm["self_attn.q_proj.weight"], lm["self_attn.q_proj.bias"]).view(B, L, NH, HD).transpose(1, 2)
    k = F.linear(h, lm["self_attn.k_proj.weight"], lm["self_attn.k_proj.bias"]).view(B, L, NKV, HD).transpose(1, 2)
    v = F.linear(h, lm["self_attn.v_proj.weight"], lm["self_attn.v_proj.bias"]).view(B, L, NKV, HD).transpose(1, 2)
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    k, v = k.repeat_interleave(NH // NKV, dim=1), v.repeat_interleave(NH // NKV, dim=1)
    s = (q @ k.transpose(2, 3)) / math.sqrt(HD)
    s = s.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
    a = (F.softmax(s.float(), dim=-1) @ v).transpose(1, 2).reshape(B, L, H)
    h = r + F.linear(a, lm["self_attn.o_proj.weight"])
    r = h
    h = rms_norm(h, lm["post_attention_layernorm.weight"])
    return r + F.linear(F.silu(F.linear(h, lm["mlp.gate_proj.weight"])) * F.linear(h, lm["mlp.up_proj.weight"]),
                        lm["mlp.down_proj.weight"])


def lm_loss():
    h = F.embedding(tokens, lm["embed_tokens.weight"])
    h = rms_norm(decoder_layer(h), lm["norm.weight"])
    logits = F.linear(h, lm["lm_head.weight"])
    return F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100)


train("train_qwen2_block", lm, lm_loss, {"tokens": tokens, "labels": labels, "positions": positions})

#!/usr/bin/python3
"""Reference values for every runtime op, computed by PyTorch 1.13 (Debian's python3-torch).

Run with Debian's python:  /usr/bin/python3 tests/reference/make_op_fixtures.py
Writes tests/reference/fixtures/ops.safetensors. For each case NAME it stores the inputs
NAME.in0, NAME.in1, ..., the output NAME.out, an upstream gradient NAME.gout and the input
gradients NAME.grad0, ... (for inputs that are differentiable). All float data is f32.
Formulas that PyTorch 1.13 has no op for (RMSNorm, rotary, GQA attention) are written here the
way transformers and EVA write them, so the C++ ops are checked against those definitions.
"""
import math
import os

import torch
import torch.nn.functional as F

from safetensors_writer import save_safetensors

torch.manual_seed(0)
OUT = {}


def case(name, fn, inputs, differentiable=None):
    differentiable = differentiable if differentiable is not None else [t.is_floating_point() for t in inputs]
    leaves = []
    for t, d in zip(inputs, differentiable):
        leaves.append(t.clone().requires_grad_(True) if d else t.clone())
    out = fn(*leaves)
    gout = torch.randn_like(out)
    grads = torch.autograd.grad(out, [l for l, d in zip(leaves, differentiable) if d], gout, allow_unused=True)
    for i, t in enumerate(inputs):
        OUT[f"{name}.in{i}"] = t
    OUT[f"{name}.out"] = out.detach()
    OUT[f"{name}.gout"] = gout
    it = iter(grads)
    for i, d in enumerate(differentiable):
        if d:
            g = next(it)
            OUT[f"{name}.grad{i}"] = g if g is not None else torch.zeros_like(inputs[i])


def r(*shape):
    return torch.randn(*shape, dtype=torch.float32)


def pos(*shape):
    return torch.rand(*shape, dtype=torch.float32) + 0.5


# elementwise
case("add", torch.add, [r(3, 4), r(4)])
case("sub", torch.sub, [r(2, 1, 4), r(3, 1)])
case("mul", torch.mul, [r(3, 4), r(3, 1)])
case("div", torch.div, [r(3, 4), pos(4)])
case("exp", torch.exp, [r(5, 6)])
case("log", torch.log, [pos(5, 6)])
case("sqrt", torch.sqrt, [pos(5, 6)])
case("rsqrt", torch.rsqrt, [pos(5, 6)])
case("pow", lambda x: torch.pow(x, 1.7), [pos(5, 6)])
case("tanh", torch.tanh, [r(5, 6)])
case("sigmoid", torch.sigmoid, [r(5, 6)])
case("silu", F.silu, [r(5, 6)])
case("gelu", F.gelu, [r(5, 6)])
case("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), [r(5, 6)])
case("relu", F.relu, [r(5, 6)])
case("neg", torch.neg, [r(5, 6)])
case("scalar_affine", lambda x: 2.5 - (x * 3.0 + 0.5), [r(5, 6)])
# reductions
case("sum_dims", lambda x: x.sum(dim=(0, 2)), [r(3, 4, 5)])
case("mean_keepdim", lambda x: x.mean(dim=1, keepdim=True), [r(3, 4, 5)])
case("mean_all", torch.mean, [r(3, 4, 5)])
case("max_dim", lambda x: x.max(dim=1).values, [r(3, 7)])
case("softmax", lambda x: F.softmax(x, dim=-1), [r(4, 9)])
case("softmax_dim0", lambda x: F.softmax(x, dim=0), [r(4, 9)])
case("log_softmax", lambda x: F.log_softmax(x, dim=-1), [r(4, 9)])
# products
case("matmul_batched", torch.matmul, [r(2, 1, 3, 4), r(3, 4, 5)])
case("linear", F.linear, [r(2, 3, 8), r(6, 8), r(6)])
# norms
case("layer_norm", lambda x, w, b: F.layer_norm(x, (8,), w, b, 1e-5), [r(2, 3, 8), r(8), r(8)])


def qwen2_rms_norm(x, w, eps=1e-6):  # transformers Qwen2RMSNorm.forward
    dtype = x.dtype
    x = x.to(torch.float32)
    var = x.pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(var + eps)
    return w * x.to(dtype)


case("rms_norm", qwen2_rms_norm, [r(2, 3, 8), r(8)])


# rotary: Qwen2 (half split, cat(freqs, freqs)) and EVA02 (interleaved pairs)
def rope_tables(positions, dim, theta, interleaved):
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    freqs = positions.float()[..., None] * inv_freq
    emb = freqs.repeat_interleave(2, dim=-1) if interleaved else torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def rotate_interleaved(x):
    x = x.reshape(*x.shape[:-1], -1, 2)
    x1, x2 = x.unbind(-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


positions = torch.tensor([[0, 1, 2, 5, 9], [3, 4, 5, 6, 7]], dtype=torch.int64)
for style, interleaved, rot in (("half", False, rotate_half), ("interleaved", True, rotate_interleaved)):
    cos, sin = rope_tables(positions, 8, 10000.0, interleaved)
    OUT[f"rope_{style}.cos"], OUT[f"rope_{style}.sin"] = cos, sin
    case(f"rope_{style}", lambda x, p, c=cos, s=sin, rot=rot: x * c[:, None] + rot(x) * s[:, None],
         [r(2, 3, 5, 8), positions], [True, False])


# attention: GQA by repeating kv heads; causal aligned bottom-right; key padding
def attention(q, k, v, mask, causal):
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    lq, lk = q.shape[2], k.shape[2]
    visible = mask[:, None, None, :].expand(-1, 1, lq, lk)
    if causal:
        visible = visible & torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)
    s = s.masked_fill(~visible, float("-inf"))
    return F.softmax(s, dim=-1) @ v


mask = torch.ones(2, 150, dtype=torch.bool)
mask[1, 140:] = False
mask[0, 7] = False
# 150 keys and 130 queries cross the 64/128 block edges of the C++ kernel.
for causal in (False, True):
    case(f"attention_{'causal' if causal else 'full'}", lambda q, k, v, m, c=causal: attention(q, k, v, m, c),
         [r(2, 4, 130, 16), r(2, 2, 150, 16), r(2, 2, 150, 16), mask], [True, True, True, False])

# embedding and loss
case("embedding", lambda w, ids: F.embedding(ids, w), [r(11, 6), torch.tensor([[1, 3, 3], [10, 0, 1]])],
     [True, False])
targets = torch.tensor([2, -100, 0, 6, 6, -100])
case("cross_entropy", lambda x, t: F.cross_entropy(x, t, ignore_index=-100), [r(6, 7), targets], [True, False])
# joining, indexing
case("concat", lambda a, b: torch.cat([a, b], dim=1), [r(2, 3), r(2, 5)])
case("stack", lambda a, b: torch.stack([a, b], dim=0), [r(2, 3), r(2, 3)])
case("index_select", lambda a, i: torch.index_select(a, 0, i), [r(5, 3), torch.tensor([4, 0, 4, 2])], [True, False])
case("gather", lambda a, i: torch.gather(a, 1, i), [r(3, 5), torch.tensor([[0, 4], [1, 1], [3, 2]])], [True, False])
cond = torch.tensor([[True, False, True, False]])
case("where", lambda c, a, b: torch.where(c, a, b), [cond, r(3, 4), r(4)], [False, True, True])
case("masked_fill", lambda a, m: a.masked_fill(m, -2.0), [r(3, 4), cond], [True, False])
case("split", lambda a: torch.split(a, [2, 3], dim=1)[1], [r(3, 5)])
case("topk", lambda a: torch.topk(a, 3, dim=-1).values, [r(4, 9)])
case("cosine_similarity", lambda a, b: F.cosine_similarity(a, b, dim=-1), [r(4, 6), r(4, 6)])
case("bicubic", lambda x: F.interpolate(x, size=(7, 5), mode="bicubic", align_corners=False), [r(1, 2, 4, 6)])
case("bicubic_down", lambda x: F.interpolate(x, size=(3, 2), mode="bicubic", align_corners=False), [r(1, 1, 8, 5)])
# Cases added later go here, after every other draw, so that the cases above keep their inputs.
case("swiglu", lambda g, u: F.silu(g) * u, [r(5, 6), r(5, 6)])  # the Qwen2 MLP's act_fn(gate) * up

here = os.path.dirname(os.path.abspath(__file__))
save_safetensors(os.path.join(here, "fixtures", "ops.safetensors"), OUT)
print(f"wrote {len(OUT)} tensors")

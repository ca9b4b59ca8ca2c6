#!/usr/bin/env python3
"""PyTorch timings of bvllm_bench's GPU cases: same work, same JSON lines (run on the GPU machine).

  python3 tests/reference/bench_torch_gpu.py [--case all|gemm_bf16_gpu|attention_gpu|block_train_gpu] [--iters N]

gemm_bf16_gpu is torch.matmul (cuBLAS) on bf16 8192^3; attention_gpu is
F.scaled_dot_product_attention (causal, GQA by repeating K/V, as transformers' sdpa path does)
forward + backward; block_train_gpu is one step of a Qwen2-7B decoder layer written as
transformers' modeling_qwen2.py computes it, with torch.optim.AdamW on bf16 params, and its peak
memory from torch.cuda.max_memory_allocated.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

DEV = "cuda"


def timed(work, warmup, iters):
    for _ in range(warmup):
        work()
    torch.cuda.synchronize()
    ms = []
    for _ in range(iters):
        start = time.perf_counter()
        work()
        torch.cuda.synchronize()
        ms.append((time.perf_counter() - start) * 1e3)
    return ms


def report(name, ms, **extra):
    line = {"case": name, "median_ms": statistics.median(ms), "min_ms": min(ms), "iters": len(ms),
            "impl": f"pytorch {torch.__version__}", "gpu": torch.cuda.get_device_name()}
    line.update(extra)
    print(json.dumps(line), flush=True)


def gemm_bf16_gpu(args):
    n = 8192
    a = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    with torch.no_grad():
        ms = timed(lambda: torch.matmul(a, b), args.warmup, args.iters)
    report("gemm_bf16_gpu", ms, tflops=2 * n ** 3 / (statistics.median(ms) * 1e9))


def attention_gpu(args):
    b, hq, hkv, l, d = 4, 28, 4, 4096, 128
    q = torch.randn(b, hq, l, d, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(b, hkv, l, d, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(b, hkv, l, d, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(b, hq, l, d, device=DEV, dtype=torch.bfloat16)

    def step():
        kk, vv = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
        F.scaled_dot_product_attention(q, kk, vv, is_causal=True).backward(g)

    ms = timed(step, args.warmup, args.iters)
    forward = 4.0 * b * hq * l * l * d / 2
    report("attention_gpu", ms, tflops=3.5 * forward / (statistics.median(ms) * 1e9))


def block_train_gpu(args):
    hidden, heads, kv_heads, ffn, seq, eps, theta = 3584, 28, 4, 18944, 4096, 1e-6, 1e6
    hd = hidden // heads

    def p(*shape, std=0.02):
        return (torch.randn(*shape, device=DEV) * std).to(torch.bfloat16).requires_grad_(True)

    w = {"ln1": torch.ones(hidden, device=DEV, dtype=torch.bfloat16, requires_grad=True),
         "wq": p(hidden, hidden), "bq": p(hidden, std=0.0), "wk": p(kv_heads * hd, hidden),
         "bk": p(kv_heads * hd, std=0.0), "wv": p(kv_heads * hd, hidden), "bv": p(kv_heads * hd, std=0.0),
         "wo": p(hidden, hidden), "ln2": torch.ones(hidden, device=DEV, dtype=torch.bfloat16, requires_grad=True),
         "wg": p(ffn, hidden), "wu": p(ffn, hidden), "wd": p(hidden, ffn)}
    opt = torch.optim.AdamW(list(w.values()), lr=1e-5)
    x = torch.randn(1, seq, hidden, device=DEV, dtype=torch.bfloat16)
    g = torch.randn(1, seq, hidden, device=DEV, dtype=torch.bfloat16)
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64, device=DEV).float() / hd))
    freqs = torch.arange(seq, device=DEV).float()[:, None] * inv_freq
    cos = torch.cat((freqs, freqs), -1).cos().to(torch.bfloat16)
    sin = torch.cat((freqs, freqs), -1).sin().to(torch.bfloat16)

    def rms(t, weight):
        t32 = t.float()
        return weight * (t32 * torch.rsqrt(t32.pow(2).mean(-1, keepdim=True) + eps)).to(t.dtype)

    def rot(t):
        return t * cos + torch.cat((-t[..., hd // 2:], t[..., : hd // 2]), -1) * sin

    def step():
        opt.zero_grad(set_to_none=True)
        h = rms(x, w["ln1"])
        q = F.linear(h, w["wq"], w["bq"]).view(1, seq, heads, hd).transpose(1, 2)
        k = F.linear(h, w["wk"], w["bk"]).view(1, seq, kv_heads, hd).transpose(1, 2)
        v = F.linear(h, w["wv"], w["bv"]).view(1, seq, kv_heads, hd).transpose(1, 2)
        q, k = rot(q), rot(k)
        k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        r = x + F.linear(a.transpose(1, 2).reshape(1, seq, hidden), w["wo"])
        m = rms(r, w["ln2"])
        y = r + F.linear(F.silu(F.linear(m, w["wg"])) * F.linear(m, w["wu"]), w["wd"])
        y.backward(g)
        opt.step()

    step()
    torch.cuda.reset_peak_memory_stats()
    ms = timed(step, args.warmup, args.iters)
    report("block_train_gpu", ms, peak_allocated_gib=torch.cuda.max_memory_allocated() / 2 ** 30,
           peak_reserved_gib=torch.cuda.max_memory_reserved() / 2 ** 30,
           tokens_per_s=seq / (statistics.median(ms) / 1e3))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", default="all")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    for name, fn in (("gemm_bf16_gpu", gemm_bf16_gpu), ("attention_gpu", attention_gpu),
                     ("block_train_gpu", block_train_gpu)):
        if args.case in ("all", name):
            fn(args)


if __name__ == "__main__":
    main()

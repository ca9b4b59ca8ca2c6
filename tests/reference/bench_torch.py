#!/usr/bin/python3
"""PyTorch timings of the bvllm_bench CPU cases, same work, same thread count, same JSON lines.

  /usr/bin/python3 tests/reference/bench_torch.py [--case all|matmul_cpu|block_train_cpu|qwen2_decode_cpu|vision_cpu]
                                                  [--iters N] [--warmup N] [--threads N]

block_train_cpu is one forward+backward+AdamW step of a Qwen2 decoder layer written as
transformers' modeling_qwen2.py computes it (PyTorch 1.13 has no fused SDPA on the CPU, so
attention is matmul-softmax-matmul, which is also what transformers' eager path does).

qwen2_decode_cpu is greedy decoding with a KV cache through a random Qwen2-0.5B-shaped model (f32,
tied embeddings): the prompt's forward pass, then one token at a time, keys and values appended
with torch.cat as transformers' DynamicCache does, logits of the last position only
(transformers' logits_to_keep=1), under torch.no_grad().
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F


def timed(work, warmup, iters):
    for _ in range(warmup):
        work()
    ms = []
    for _ in range(iters):
        start = time.perf_counter()
        work()
        ms.append((time.perf_counter() - start) * 1e3)
    return ms


def report(name, ms, **extra):
    line = {"case": name, "median_ms": statistics.median(ms), "min_ms": min(ms), "iters": len(ms),
            "threads": torch.get_num_threads(), "impl": f"pytorch {torch.__version__}"}
    line.update(extra)
    print(json.dumps(line), flush=True)


def matmul_cpu(args):
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    with torch.no_grad():
        ms = timed(lambda: torch.matmul(a, b), args.warmup, args.iters)
    report("matmul_cpu", ms, gflops=2 * n ** 3 / (statistics.median(ms) * 1e6))


def block_train_cpu(args):
    hidden, heads, kv_heads, ffn, batch, seq, eps, theta = 512, 8, 2, 1408, 4, 256, 1e-6, 1e6
    hd = hidden // heads

    def p(*shape, std=0.02):
        return (torch.randn(*shape) * std).requires_grad_(True)

    w = {"ln1": torch.ones(hidden, requires_grad=True), "wq": p(hidden, hidden), "bq": p(hidden, std=0.0),
         "wk": p(kv_heads * hd, hidden), "bk": p(kv_heads * hd, std=0.0), "wv": p(kv_heads * hd, hidden),
         "bv": p(kv_heads * hd, std=0.0), "wo": p(hidden, hidden), "ln2": torch.ones(hidden, requires_grad=True),
         "wg": p(ffn, hidden), "wu": p(ffn, hidden), "wd": p(hidden, ffn)}
    opt = torch.optim.AdamW(list(w.values()), lr=1e-4)
    x, g = torch.randn(batch, seq, hidden), torch.randn(batch, seq, hidden)
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    freqs = torch.arange(seq).float()[:, None] * inv_freq
    cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()

    def rms(t, weight):
        t32 = t.float()
        return weight * (t32 * torch.rsqrt(t32.pow(2).mean(-1, keepdim=True) + eps)).to(t.dtype)

    def rot(t):
        return t * cos + torch.cat((-t[..., hd // 2:], t[..., : hd // 2]), -1) * sin

    def step():
        opt.zero_grad(set_to_none=True)
        h = rms(x, w["ln1"])
        q = F.linear(h, w["wq"], w["bq"]).view(batch, seq, heads, hd).transpose(1, 2)
        k = F.linear(h, w["wk"], w["bk"]).view(batch, seq, kv_heads, hd).transpose(1, 2)
        v = F.linear(h, w["wv"], w["bv"]).view(batch, seq, kv_heads, hd).transpose(1, 2)
        q, k = rot(q), rot(k)
        k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
        s = (q @ k.transpose(2, 3)) / math.sqrt(hd)
        a = F.softmax(s.masked_fill(~causal, float("-inf")), dim=-1) @ v
        r = x + F.linear(a.transpose(1, 2).reshape(batch, seq, hidden), w["wo"])
        m = rms(r, w["ln2"])
        y = r + F.linear(F.silu(F.linear(m, w["wg"])) * F.linear(m, w["wu"]), w["wd"])
        (y * g).sum().backward()
        opt.step()

    report("block_train_cpu", timed(step, args.warmup, args.iters), tokens=batch * seq)


def qwen2_decode_cpu(args):
    vocab, hidden, inter, layers, heads, kv_heads, hd, eps, theta = 151936, 896, 4864, 24, 14, 2, 64, 1e-6, 1e6
    prompt_len, new_tokens = 32, 64

    def mat(rows, cols):
        return torch.randn(rows, cols) * 0.02

    embed = mat(vocab, hidden)
    blocks = [{"ln1": torch.ones(hidden), "wq": mat(heads * hd, hidden), "bq": torch.zeros(heads * hd),
               "wk": mat(kv_heads * hd, hidden), "bk": torch.zeros(kv_heads * hd),
               "wv": mat(kv_heads * hd, hidden), "bv": torch.zeros(kv_heads * hd), "wo": mat(hidden, heads * hd),
               "ln2": torch.ones(hidden), "wg": mat(inter, hidden), "wu": mat(inter, hidden),
               "wd": mat(hidden, inter)} for _ in range(layers)]
    norm = torch.ones(hidden)
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    prompt = torch.randint(0, vocab, (1, prompt_len))

    def rms(t, weight):
        t32 = t.float()
        return weight * (t32 * torch.rsqrt(t32.pow(2).mean(-1, keepdim=True) + eps)).to(t.dtype)

    def rot(t, cos, sin):
        return t * cos + torch.cat((-t[..., hd // 2:], t[..., : hd // 2]), -1) * sin

    def forward(ids, cache):
        b, l = ids.shape
        past = cache[0][0].shape[2] if cache[0] is not None else 0
        freqs = torch.arange(past, past + l).float()[:, None] * inv_freq
        cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()
        mask = None
        if l > 1:
            mask = torch.full((l, past + l), float("-inf")).triu(past + 1)
        h = F.embedding(ids, embed)
        for i, w in enumerate(blocks):
            x = rms(h, w["ln1"])
            q = F.linear(x, w["wq"], w["bq"]).view(b, l, heads, hd).transpose(1, 2)
            k = F.linear(x, w["wk"], w["bk"]).view(b, l, kv_heads, hd).transpose(1, 2)
            v = F.linear(x, w["wv"], w["bv"]).view(b, l, kv_heads, hd).transpose(1, 2)
            q, k = rot(q, cos, sin), rot(k, cos, sin)
            if cache[i] is not None:
                k, v = torch.cat((cache[i][0], k), 2), torch.cat((cache[i][1], v), 2)
            cache[i] = (k, v)
            k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
            s = (q @ k.transpose(2, 3)) / math.sqrt(hd)
            if mask is not None:
                s = s + mask
            a = F.softmax(s, dim=-1, dtype=torch.float32) @ v
            h = h + F.linear(a.transpose(1, 2).reshape(b, l, heads * hd), w["wo"])
            x = rms(h, w["ln2"])
            h = h + F.linear(F.silu(F.linear(x, w["wg"])) * F.linear(x, w["wu"]), w["wd"])
        return F.linear(rms(h[:, -1:], norm), embed)  # logits_to_keep=1

    prefill_ms, step_ms = [], []

    def generate():
        cache = [None] * layers
        start = time.perf_counter()
        logits = forward(prompt, cache)
        prefill_ms.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        tokens = []
        while True:
            token = int(torch.argmax(logits[0, -1]))
            tokens.append(token)
            if len(tokens) == new_tokens:
                break
            logits = forward(torch.tensor([[token]]), cache)
        step_ms.append((time.perf_counter() - start) * 1e3 / (new_tokens - 1))

    with torch.no_grad():
        ms = timed(generate, args.warmup, args.iters)
    report("qwen2_decode_cpu", ms, prompt_tokens=prompt_len, new_tokens=new_tokens,
           tokens_per_s=new_tokens / (statistics.median(ms) / 1e3),
           prefill_ms=statistics.median(prefill_ms[args.warmup:]), decode_step_ms=statistics.median(step_ms[args.warmup:]))


def vision_cpu(args):
    """bvllm_bench's vision_cpu: the B-VLLM visual path of bvllm_reference.py (the code the C++ is
    checked against) for one 16-frame video, no grad, noise-free selection, no temporal merge."""
    import bvllm_reference as R
    from make_bvllm_fixtures import eva_params, qformer_params

    frames, question = 16, 24
    eva = R.EvaConfig(img=224, patch=14, width=384, depth=6, heads=6)
    qf = R.QFormerConfig(vocab=30523, hidden=256, layers=6, heads=4, intermediate=1024, max_positions=512,
                         encoder_width=384, num_query=32)
    head = R.HeadConfig(temporal_queries=16, threshold=1.0)  # (cos + 1) / 2 never exceeds 1: no merge
    hidden = 512
    p = eva_params(eva, eva.grid, R.EVA_PREFIX)
    for which in ("temporal", "spatial"):
        p.update(qformer_params(qf, prefix=f"model.vlm_att_encoder_{which}.bert."))
        p[f"model.vlm_att_query_{which}"] = torch.randn(1, 32, 256) * 0.02
    p["model.vlm_att_ln_temporal.weight"], p["model.vlm_att_ln_temporal.bias"] = torch.ones(384), torch.zeros(384)
    for name, shape in (("vlm_att_projector_temporal", (384, 256)), ("vlm_att_projector_spatial", (384, 256)),
                        ("vlm_att_val_projector_spatial", (hidden, 384))):
        p[f"model.{name}.weight"], p[f"model.{name}.bias"] = torch.randn(*shape) * 0.02, torch.zeros(shape[0])
    pixels = torch.randn(frames, 3, 224, 224)
    ids = torch.randint(1000, 30000, (1, question))
    mask = torch.ones(1, question, dtype=torch.int64)
    noise = torch.zeros(head.temporal_queries, frames)

    def run():
        z, info = R.visual_tokens(p, pixels, noise, ids, mask, eva, qf, head, chain_resolved=True)
        assert info["kept"].numel() == frames

    with torch.no_grad():
        ms = timed(run, args.warmup, args.iters)
    report("vision_cpu", ms, frames=frames, frames_per_s=frames / (statistics.median(ms) / 1e3))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", default="all")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name, fn in (("matmul_cpu", matmul_cpu), ("block_train_cpu", block_train_cpu),
                     ("qwen2_decode_cpu", qwen2_decode_cpu), ("vision_cpu", vision_cpu)):
        if args.case in ("all", name):
            fn(args)


if __name__ == "__main__":
    main()

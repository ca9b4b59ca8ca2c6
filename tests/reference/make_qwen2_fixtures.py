#!/usr/bin/python3
"""Tiny random Qwen2 checkpoints in Hugging Face layout and what PyTorch computes with them
(tests/layers/qwen2_test.cc, tests/layers/generate_test.cc).

Run with Debian's python:  /usr/bin/python3 tests/reference/make_qwen2_fixtures.py

transformers is not installed (PyTorch 1.13 has no Qwen2 module), so the model is written out
here as transformers' modeling_qwen2.py computes it (../shared/research/models-formats.md §1.3):
RMSNorm in f32 cast back before the weight, half-split RoPE with inv_freq = 1/theta^(2j/D) in
f32, repeat_kv GQA, eager attention with an f32 softmax, SwiGLU, tied or untied lm_head, and the
causal-LM loss of ForCausalLMLoss. LoRA follows peft's Linear: base + lora_B(lora_A(x)) * alpha/r.

Two checkpoints, each a directory of config.json + safetensors and a reference file beside it:
  fixtures/qwen2_tied/     tied embeddings, 4 heads / 2 kv heads (n_rep 2), rope_theta 1e6 at the
                           top level, f32, one model.safetensors (transformers 4.x style config)
  fixtures/qwen2_untied/   untied lm_head, 7 heads / 1 kv head (n_rep 7), explicit head_dim 8
                           (q dim 56 != hidden 48), rope_parameters.rope_theta 1e6 (transformers v5
                           style), bf16, sharded with model.safetensors.index.json
  fixtures/qwen2_<name>.safetensors: input ids, labels, logits (bf16 weights widened to f32 and
  computed in f32), loss and every parameter's gradient of one step, greedy generation (8 tokens,
  recomputing the whole sequence each step: no cache), and for qwen2_tied a LoRA adapter on
  q_proj, v_proj and down_proj with its logits, gradients (base frozen) and merged weights.
"""
import json
import math
import os

import torch
import torch.nn.functional as F

from safetensors_writer import save_safetensors

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
GREEDY_STEPS = 8
LORA_RANK, LORA_ALPHA = 4, 8.0
LORA_TARGETS = ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")


class Config:
    def __init__(self, vocab, hidden, inter, layers, heads, kv_heads, head_dim, theta, eps, tied):
        self.vocab, self.hidden, self.inter, self.layers = vocab, hidden, inter, layers
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.theta, self.eps, self.tied = theta, eps, tied


def init_params(c, gen):
    """State dict in transformers' order. Larger than Qwen2's 0.02 init so that logits spread
    and greedy choices are not near-ties."""
    def mat(rows, cols, std=0.15):
        return torch.randn(rows, cols, generator=gen) * std

    def vec(n, base=0.0, std=0.1):
        return base + torch.randn(n, generator=gen) * std

    q, kv = c.heads * c.head_dim, c.kv_heads * c.head_dim
    p = {"model.embed_tokens.weight": mat(c.vocab, c.hidden, 0.3)}
    for i in range(c.layers):
        pre = f"model.layers.{i}."
        p[pre + "self_attn.q_proj.weight"] = mat(q, c.hidden)
        p[pre + "self_attn.q_proj.bias"] = vec(q)
        p[pre + "self_attn.k_proj.weight"] = mat(kv, c.hidden)
        p[pre + "self_attn.k_proj.bias"] = vec(kv)
        p[pre + "self_attn.v_proj.weight"] = mat(kv, c.hidden)
        p[pre + "self_attn.v_proj.bias"] = vec(kv)
        p[pre + "self_attn.o_proj.weight"] = mat(c.hidden, q)
        p[pre + "mlp.gate_proj.weight"] = mat(c.inter, c.hidden)
        p[pre + "mlp.up_proj.weight"] = mat(c.inter, c.hidden)
        p[pre + "mlp.down_proj.weight"] = mat(c.hidden, c.inter)
        p[pre + "input_layernorm.weight"] = vec(c.hidden, 1.0)
        p[pre + "post_attention_layernorm.weight"] = vec(c.hidden, 1.0)
    p["model.norm.weight"] = vec(c.hidden, 1.0)
    if not c.tied:
        p["lm_head.weight"] = mat(c.vocab, c.hidden)
    return p


# --- modeling_qwen2.py, written out -------------------------------------------------------------

def rms_norm(x, w, eps):  # Qwen2RMSNorm
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return w * x.to(dtype)


def rotary(c, positions, dtype):  # Qwen2RotaryEmbedding (rope_type "default")
    inv_freq = 1.0 / (c.theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.int64).float() / c.head_dim))
    freqs = (inv_freq[None, :, None].float() @ positions[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def repeat_kv(x, n_rep):
    b, kv, l, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, kv, n_rep, l, d).reshape(b, kv * n_rep, l, d)


def linear(p, name, x, lora):
    y = F.linear(x, p[name + ".weight"], p.get(name + ".bias"))
    if lora is not None and name + ".lora_A.weight" in lora:
        y = y + F.linear(F.linear(x, lora[name + ".lora_A.weight"]), lora[name + ".lora_B.weight"]) * (
            LORA_ALPHA / LORA_RANK)
    return y


def forward(c, p, ids, lora=None):
    return forward_embeds(c, p, F.embedding(ids, p["model.embed_tokens.weight"]), lora)


def forward_embeds(c, p, h, lora=None):
    """Qwen2ForCausalLM from inputs_embeds h [b, l, hidden] (what a VLM splices visual tokens into)."""
    b, l, _ = h.shape
    positions = torch.arange(l, dtype=torch.int64)[None, :].expand(b, l)
    cos, sin = rotary(c, positions, h.dtype)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    causal = torch.full((l, l), torch.finfo(h.dtype).min).triu(1)
    for i in range(c.layers):
        pre = f"model.layers.{i}."
        r = h
        x = rms_norm(h, p[pre + "input_layernorm.weight"], c.eps)
        q = linear(p, pre + "self_attn.q_proj", x, lora).view(b, l, -1, c.head_dim).transpose(1, 2)
        k = linear(p, pre + "self_attn.k_proj", x, lora).view(b, l, -1, c.head_dim).transpose(1, 2)
        v = linear(p, pre + "self_attn.v_proj", x, lora).view(b, l, -1, c.head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = repeat_kv(k, c.heads // c.kv_heads), repeat_kv(v, c.heads // c.kv_heads)
        w = torch.matmul(q, k.transpose(2, 3)) * c.head_dim ** -0.5 + causal
        w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        a = torch.matmul(w, v).transpose(1, 2).reshape(b, l, -1)
        h = r + linear(p, pre + "self_attn.o_proj", a, lora)
        r = h
        x = rms_norm(h, p[pre + "post_attention_layernorm.weight"], c.eps)
        gated = F.silu(linear(p, pre + "mlp.gate_proj", x, lora)) * linear(p, pre + "mlp.up_proj", x, lora)
        h = r + linear(p, pre + "mlp.down_proj", gated, lora)
    h = rms_norm(h, p["model.norm.weight"], c.eps)
    return F.linear(h, p["model.embed_tokens.weight"] if c.tied else p["lm_head.weight"])


def causal_lm_loss(logits, labels):  # transformers ForCausalLMLoss
    logits = logits.float()
    labels = F.pad(labels, (0, 1), value=-100)[..., 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def greedy(c, p, prompt):
    """Greedy tokens, recomputing the whole sequence each step; asserts no near-ties."""
    ids, out, margin = prompt.clone(), [], float("inf")
    with torch.no_grad():
        for _ in range(GREEDY_STEPS):
            last = forward(c, p, ids)[0, -1]
            top = torch.topk(last, 2).values
            margin = min(margin, float(top[0] - top[1]))
            token = int(torch.argmax(last))
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return torch.tensor(out, dtype=torch.int64), margin


# --- files --------------------------------------------------------------------------------------

def config_json(c, style, eos):
    j = {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": eos,
         "hidden_act": "silu", "hidden_size": c.hidden, "initializer_range": 0.02,
         "intermediate_size": c.inter, "max_position_embeddings": 512, "max_window_layers": c.layers,
         "model_type": "qwen2", "num_attention_heads": c.heads, "num_hidden_layers": c.layers,
         "num_key_value_heads": c.kv_heads, "rms_norm_eps": c.eps, "sliding_window": None,
         "tie_word_embeddings": c.tied, "use_cache": True, "use_sliding_window": False,
         "vocab_size": c.vocab}
    if style == "v4":  # transformers 4.x: rope_theta at the top level, torch_dtype
        j.update({"rope_scaling": None, "rope_theta": c.theta, "torch_dtype": "float32",
                  "transformers_version": "4.45.0"})
    else:  # transformers 5: rope_parameters, dtype, explicit head_dim
        j.update({"rope_parameters": {"rope_type": "default", "rope_theta": c.theta}, "dtype": "bfloat16",
                  "head_dim": c.head_dim, "transformers_version": "5.0.0"})
    return json.dumps(j, indent=2, sort_keys=True) + "\n"


def save_checkpoint(directory, params, config_text, max_shard_bytes=None):
    os.makedirs(directory, exist_ok=True)
    for f in os.listdir(directory):
        os.remove(os.path.join(directory, f))
    with open(os.path.join(directory, "config.json"), "w") as f:
        f.write(config_text)
    if max_shard_bytes is None:
        save_safetensors(os.path.join(directory, "model.safetensors"), params)
        return
    # huggingface_hub split_state_dict_into_shards_factory: fill shards in state-dict order.
    shards, current, size = [], {}, 0
    for name, t in params.items():
        n = t.numel() * t.element_size()
        if current and size + n > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += n
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_safetensors(os.path.join(directory, fname), shard)
        weight_map.update({name: fname for name in shard})
    total = sum(t.numel() * t.element_size() for t in params.values())
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
        f.write("\n")


def make(name, c, style, eos, file_dtype, seed, shard_bytes=None, with_lora=False):
    gen = torch.Generator().manual_seed(seed)
    stored = {n: t.to(file_dtype) for n, t in init_params(c, gen).items()}
    save_checkpoint(os.path.join(FIXTURES, name), stored, config_json(c, style, eos), shard_bytes)
    params = {n: t.float().requires_grad_(True) for n, t in stored.items()}  # loaded into f32 compute

    ids = torch.randint(0, c.vocab, (2, 12), generator=gen)
    labels = ids.clone()
    labels[0, :3] = -100  # a prompt
    labels[1, 7:] = -100  # padding
    out = {"input_ids": ids, "labels": labels}
    logits = forward(c, params, ids)
    loss = causal_lm_loss(logits, labels)
    loss.backward()
    out["logits"] = logits.detach()
    out["loss"] = loss.detach().reshape(1)
    out.update({f"grad.{n}": p.grad for n, p in params.items()})

    prompt = ids[:1, :6]
    tokens, margin = greedy(c, params, prompt)
    assert margin > 1e-3, f"{name}: greedy near-tie (margin {margin}); pick another seed"
    out["generate.prompt"] = prompt.reshape(-1)
    out["generate.tokens"] = tokens
    print(name, "loss", float(loss), "greedy", tokens.tolist(), "min top-2 margin", round(margin, 4))

    if with_lora:
        lora = {}
        for i in range(c.layers):
            for target in LORA_TARGETS:
                base = params[f"model.layers.{i}.{target}.weight"]
                out_f, in_f = base.shape
                m = f"model.layers.{i}.{target}"
                bound = 1.0 / math.sqrt(in_f)  # kaiming_uniform_(a=sqrt(5))
                lora[m + ".lora_A.weight"] = ((torch.rand(LORA_RANK, in_f, generator=gen) * 2 - 1) * bound)
                lora[m + ".lora_B.weight"] = torch.randn(out_f, LORA_RANK, generator=gen) * 0.1  # trained: nonzero
        for t in lora.values():
            t.requires_grad_(True)
        frozen = {n: p.detach() for n, p in params.items()}
        lora_logits = forward(c, frozen, ids, lora)
        causal_lm_loss(lora_logits, labels).backward()
        out["lora.logits"] = lora_logits.detach()
        out.update({f"lora.{n}": t.detach() for n, t in lora.items()})
        out.update({f"lora.grad.{n}": t.grad for n, t in lora.items()})
        merged = dict(frozen)
        with torch.no_grad():
            for i in range(c.layers):
                for target in LORA_TARGETS:
                    m = f"model.layers.{i}.{target}"
                    # peft get_delta_weight: (B @ A) * scaling; merge: W + delta
                    delta = (lora[m + ".lora_B.weight"] @ lora[m + ".lora_A.weight"]) * (LORA_ALPHA / LORA_RANK)
                    merged[m + ".weight"] = frozen[m + ".weight"] + delta
                    out[f"lora.merged.{m}.weight"] = merged[m + ".weight"]
            out["lora.merged_logits"] = forward(c, merged, ids)

    save_safetensors(os.path.join(FIXTURES, f"{name}.safetensors"),
                     {k: v.detach().contiguous() for k, v in out.items()})


if __name__ == "__main__":  # bvllm_reference.py imports the model functions
    torch.manual_seed(0)
    make("qwen2_tied", Config(vocab=96, hidden=32, inter=64, layers=2, heads=4, kv_heads=2, head_dim=8, theta=1e6,
                              eps=1e-6, tied=True),
         style="v4", eos=2, file_dtype=torch.float32, seed=11, with_lora=True)
    make("qwen2_untied", Config(vocab=80, hidden=48, inter=96, layers=2, heads=7, kv_heads=1, head_dim=8, theta=1e6,
                                eps=1e-5, tied=False),
         style="v5", eos=[2, 3], file_dtype=torch.bfloat16, seed=12, shard_bytes=40000)

#!/usr/bin/python3
"""Fixtures for the B-VLLM vision side and the whole model (tests/layers/*, tests/model/*), computed
with bvllm_reference.py in f32 (as the C++ computes) and saved as f32 (ids and indices i64).

Run with Debian's python:  /usr/bin/python3 tests/reference/make_bvllm_fixtures.py

Writes tests/reference/fixtures/<name>.safetensors for name in eva_vit, eva_pos_embed, qformer,
frame_selection, temporal_merge, token_merge, bvllm_forward (keys: see each make_* function).
Each file has its own torch.manual_seed, so a re-run reproduces the files bit for bit. Weights are
random normal at moderate scales (LayerNorm weights 1 + noise, small nonzero biases) so that every
path matters. Before writing, the script checks the reference itself: torch.autograd.gradcheck in
f64 on the Q-Former and the frame selection, the selection and the chain-resolved merge against
hand-expanded formulas, and the margins of every discrete decision (merges, ToMe matches, orders)
so that an f32 port with other rounding makes the same ones.
"""
import math
import os

import torch

import bvllm_reference as R
from make_qwen2_fixtures import forward as qwen2_forward
from make_qwen2_fixtures import init_params as qwen2_init_params
from safetensors_writer import save_safetensors

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
DECISION_MARGIN = 1e-3  # merge similarities stay this far from the threshold; ToMe and sort gaps too


def save(name, tensors):
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), (name, k, v.dtype)
    path = os.path.join(FIXTURES, f"{name}.safetensors")
    save_safetensors(path, tensors)
    print(f"{name}: {len(tensors)} tensors, {os.path.getsize(path)} bytes")


def randn(*shape, std=1.0):
    return torch.randn(*shape) * std


def norm_params(p, name, n):
    p[name + ".weight"] = 1.0 + randn(n, std=0.1)
    p[name + ".bias"] = randn(n, std=0.1)


def linear_params(p, name, out_f, in_f, std, bias_std=0.05):
    p[name + ".weight"] = randn(out_f, in_f, std=std)
    p[name + ".bias"] = randn(out_f, std=bias_std)


def eva_params(cfg, grid, prefix=""):
    """LAVIS VisionTransformer state dict with pos_embed at the checkpoint grid."""
    w, hid, patch = cfg.width, cfg.mlp_hidden, cfg.patch
    p = {"cls_token": randn(1, 1, w, std=0.5), "pos_embed": randn(1, 1 + grid * grid, w, std=0.5),
         "patch_embed.proj.weight": randn(w, 3, patch, patch, std=0.05), "patch_embed.proj.bias": randn(w, std=0.1)}
    for i in range(cfg.depth):
        pre = f"blocks.{i}."
        norm_params(p, pre + "norm1", w)
        p[pre + "attn.qkv.weight"] = randn(3 * w, w, std=0.25)
        p[pre + "attn.q_bias"] = randn(w, std=0.1)
        p[pre + "attn.v_bias"] = randn(w, std=0.1)
        linear_params(p, pre + "attn.proj", w, w, 0.2)
        norm_params(p, pre + "norm2", w)
        linear_params(p, pre + "mlp.fc1", cfg.mlp_hidden, w, 0.2, 0.1)
        linear_params(p, pre + "mlp.fc2", w, hid, 0.1)
    return {prefix + k: v for k, v in p.items()}


def qformer_params(cfg, prefix="bert."):
    """LAVIS BertModel state dict (no position_ids buffer)."""
    h, inter = cfg.hidden, cfg.intermediate
    p = {"embeddings.word_embeddings.weight": randn(cfg.vocab, h, std=0.5),
         "embeddings.position_embeddings.weight": randn(cfg.max_positions, h, std=0.3)}
    norm_params(p, "embeddings.LayerNorm", h)
    for i in range(cfg.layers):
        pre = f"encoder.layer.{i}."
        for m in ("query", "key", "value"):
            linear_params(p, pre + "attention.self." + m, h, h, 0.25)
        linear_params(p, pre + "attention.output.dense", h, h, 0.2)
        norm_params(p, pre + "attention.output.LayerNorm", h)
        if i % cfg.cross_attention_freq == 0:
            linear_params(p, pre + "crossattention.self.query", h, h, 0.25)
            linear_params(p, pre + "crossattention.self.key", h, cfg.encoder_width, 0.25)
            linear_params(p, pre + "crossattention.self.value", h, cfg.encoder_width, 0.25)
            linear_params(p, pre + "crossattention.output.dense", h, h, 0.2)
            norm_params(p, pre + "crossattention.output.LayerNorm", h)
        for inter_name, out_name in (("intermediate", "output"), ("intermediate_query", "output_query")):
            linear_params(p, pre + inter_name + ".dense", inter, h, 0.2)
            linear_params(p, pre + out_name + ".dense", h, inter, 0.15)
            norm_params(p, pre + out_name + ".LayerNorm", h)
    return {prefix + k: v for k, v in p.items()}


def gumbel(*shape):
    """F.gumbel_softmax's noise: -log(E), E ~ Exp(1) (§12.2)."""
    return -torch.empty(*shape).exponential_().log()


def assert_merge_margins(weights, threshold, where):
    node_max, _, _ = R.merge_plan(weights, threshold)
    gaps = (node_max[1:] - threshold).abs()
    assert weights.shape[0] == 1 or float(gaps.min()) > DECISION_MARGIN, (where, node_max)


# --- eva_vit, eva_pos_embed ---------------------------------------------------------------------

def make_eva_vit():
    """param.<EVA name> (pos_embed at the checkpoint grid 2: [1,5,24]); input.pixels [2,3,42,42];
    output.pos_embed [1,10,24] (interpolated); output.features [2,10,24]."""
    torch.manual_seed(101)
    cfg = R.EVA_TINY
    p = eva_params(cfg, R.EVA_TINY_CHECKPOINT_GRID)
    pixels = randn(2, 3, cfg.img, cfg.img)
    out = {f"param.{k}": v for k, v in p.items()}
    out["input.pixels"] = pixels
    out["output.pos_embed"] = R.eva_interpolate_pos_embed(p["pos_embed"], cfg.grid * cfg.grid)
    with torch.no_grad():
        out["output.features"] = R.eva_vit(p, cfg, pixels)
    assert out["output.pos_embed"].shape == (1, 10, 24) and out["output.features"].shape == (2, 10, 24)
    save("eva_vit", out)


def make_eva_pos_embed():
    """input.pos_embed [1,1+16*16,8] -> output.pos_embed [1,1+24*24,8] (the real 224 -> 336 resize)."""
    torch.manual_seed(102)
    pos = randn(1, 1 + 16 * 16, 8)
    new = R.eva_interpolate_pos_embed(pos, 24 * 24)
    assert torch.equal(new[:, 0], pos[:, 0])
    save("eva_pos_embed", {"input.pos_embed": pos, "output.pos_embed": new})


# --- qformer ------------------------------------------------------------------------------------

def qformer_gradcheck(p, cfg, query, ids, mask, encoder):
    names = sorted(p)
    p64 = [p[n].double().requires_grad_(True) for n in names]
    q64 = query.double().requires_grad_(True)
    e64 = encoder.double().requires_grad_(True)

    def fn(q, e, *params):
        return R.qformer(dict(zip(names, params)), cfg, q, ids, mask, e)

    # every parameter (fast mode: one random direction per input) and the inputs entry by entry
    assert torch.autograd.gradcheck(fn, (q64, e64, *p64), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
    frozen = [t.detach() for t in p64]
    assert torch.autograd.gradcheck(lambda q, e: fn(q, e, *frozen), (q64, e64), eps=1e-6, atol=1e-6, rtol=1e-4)


def make_qformer():
    """param.bert.* ; input.query [1,6,32], input.ids [2,5] (row 1 right-padded with 0),
    input.text_mask [2,5] i64, input.encoder [2,7,24]; output.query_states [2,6,32];
    input.grad_weight [2,6,32]; for loss = sum(out * grad_weight): grad.<param name>,
    grad.input.query, grad.input.encoder."""
    torch.manual_seed(103)
    cfg = R.QFORMER_TINY
    p = qformer_params(cfg)
    query = randn(1, cfg.num_query, cfg.hidden, std=0.5)
    ids = torch.randint(1, cfg.vocab, (2, 5))
    ids[1, 3:] = 0
    mask = (ids != 0).to(torch.int64)
    encoder = randn(2, 7, cfg.encoder_width)
    grad_weight = randn(2, cfg.num_query, cfg.hidden)

    qformer_gradcheck(p, cfg, query, ids, mask, encoder)

    leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    q, e = query.clone().requires_grad_(True), encoder.clone().requires_grad_(True)
    states = R.qformer(leaves, cfg, q, ids, mask, e)
    (states * grad_weight).sum().backward()

    # Padding must not leak: the same row unpadded gives the same query states.
    short = R.qformer(p, cfg, query, ids[1:, :3], mask[1:, :3], encoder[1:])
    assert torch.allclose(short, states[1:].detach(), atol=1e-5, rtol=1e-5)

    out = {f"param.{k}": v for k, v in p.items()}
    out.update({"input.query": query, "input.ids": ids, "input.text_mask": mask, "input.encoder": encoder,
                "output.query_states": states, "input.grad_weight": grad_weight,
                "grad.input.query": q.grad, "grad.input.encoder": e.grad})
    out.update({f"grad.{k}": v.grad for k, v in leaves.items()})
    save("qformer", out)


# --- frame_selection ----------------------------------------------------------------------------

def selection_by_hand(p, vision, h_t, g, tau, eps):
    """S, W, F written out element by element (f64)."""
    t_n, n1, cv = vision.shape
    k_n = h_t.shape[0]
    wp, bp = p["vlm_att_projector_temporal.weight"], p["vlm_att_projector_temporal.bias"]
    a = torch.stack([torch.stack([(wp[c] * h_t[k]).sum() + bp[c] for c in range(cv)]) for k in range(k_n)])
    s = torch.zeros(k_n, t_n, dtype=vision.dtype)
    for k in range(k_n):
        for t in range(t_n):
            s[k, t] = (a[k] * vision[t, 0]).sum() / math.sqrt(cv)
    w = torch.zeros_like(s)
    for k in range(k_n):
        e = [math.exp((float(s[k, t]) + float(g[k, t])) / tau) for t in range(t_n)]
        for t in range(t_n):
            w[k, t] = e[t] / sum(e)
    x = vision[:, 1:]
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    patches = (x - mu) / torch.sqrt(var + eps) * p["vlm_att_ln_temporal.weight"] + p["vlm_att_ln_temporal.bias"]
    frames = torch.zeros(k_n, n1 - 1, cv, dtype=vision.dtype)
    for k in range(k_n):
        for t in range(t_n):
            frames[k] += w[k, t] * patches[t]
    return s, w, frames


def make_frame_selection():
    """K=4, T=5, P=9, Cv=24, Cq=32. param.vlm_att_projector_temporal.*, param.vlm_att_ln_temporal.*;
    input.vision [T,1+P,Cv], input.temporal_states [K,Cq], input.gumbel [K,T]; output.scores,
    output.weights, output.frames, output.weights_noise_free, output.frames_noise_free,
    output.chronological_order; input.grad_weight [K,P,Cv]; for loss = sum(frames * grad_weight):
    grad.<param name>, grad.input.temporal_states, grad.input.vision."""
    torch.manual_seed(106)
    head = R.HEAD_TINY
    k_n, t_n, p_n, cv, cq = 4, 5, 9, 24, 32
    p = {}
    linear_params(p, "vlm_att_projector_temporal", cv, cq, 0.15, 0.1)
    norm_params(p, "vlm_att_ln_temporal", cv)
    vision = randn(t_n, 1 + p_n, cv)
    h_t = randn(k_n, cq)
    g = gumbel(k_n, t_n)
    grad_weight = randn(k_n, p_n, cv)

    # the reference against the formulas, and its gradients against finite differences (f64)
    p64 = {k: v.double() for k, v in p.items()}
    ref64 = R.frame_selection(p64, vision.double(), h_t.double(), g.double(), head.tau, head.ln_eps)
    s, w, frames = selection_by_hand(p64, vision.double(), h_t.double(), g.double(), head.tau, head.ln_eps)
    for got, want in ((ref64["scores"], s), (ref64["weights"], w), (ref64["frames"], frames)):
        assert torch.allclose(got, want, atol=1e-12, rtol=1e-12)
    names = sorted(p)

    def fn(v, h, *params):
        return R.frame_selection(dict(zip(names, params)), v, h, g.double(), head.tau, head.ln_eps)["frames"]

    args = (vision.double().requires_grad_(True), h_t.double().requires_grad_(True),
            *[p64[n].clone().requires_grad_(True) for n in names])
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-4)

    leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    v, h = vision.clone().requires_grad_(True), h_t.clone().requires_grad_(True)
    sel = R.frame_selection(leaves, v, h, g, head.tau, head.ln_eps)
    (sel["frames"] * grad_weight).sum().backward()
    free = R.frame_selection(p, vision, h_t, torch.zeros_like(g), head.tau, head.ln_eps)
    order, expected = R.chronological_order(sel["weights"].detach())
    gaps = expected.sort().values.diff()
    assert float(gaps.min()) > DECISION_MARGIN, expected
    wmax = sel["weights"].max(dim=-1).values
    print("frame_selection: weights row max", [round(float(x), 3) for x in wmax], "order", order.tolist())
    assert float(wmax.max()) < 0.98 and float(wmax.min()) > 0.3, "selection weights one-hot or flat"

    out = {f"param.{k}": t for k, t in p.items()}
    out.update({"input.vision": vision, "input.temporal_states": h_t, "input.gumbel": g,
                "output.scores": sel["scores"], "output.weights": sel["weights"], "output.frames": sel["frames"],
                "output.weights_noise_free": free["weights"], "output.frames_noise_free": free["frames"],
                "output.chronological_order": order, "input.grad_weight": grad_weight,
                "grad.input.temporal_states": h.grad, "grad.input.vision": v.grad})
    out.update({f"grad.{k}": t.grad for k, t in leaves.items()})
    save("frame_selection", out)


# --- temporal_merge -----------------------------------------------------------------------------

def rows(*values):
    """Selection-like rows: strictly positive, each summing to 1."""
    w = torch.tensor(values, dtype=torch.float32) + 0.01
    return w / w.sum(dim=-1, keepdim=True)


def make_temporal_merge():
    """caseN.weights [K,T], caseN.frames [K,3,4], caseN.kept i64 [K'], caseN.merged [K',3,4]
    (chains resolved), caseN.released [K',3,4] (the released code's output)."""
    torch.manual_seed(105)
    threshold = R.HEAD_TINY.threshold
    cases = []
    # case0: random softmax rows with merges (searched draws; the first that merges and has margins)
    while True:
        w = (randn(6, 5) * 2.0).softmax(dim=-1)
        node_max, _, merged = R.merge_plan(w, threshold)
        if 0 < int(merged.sum()) < 5 and float((node_max[1:] - threshold).abs().min()) > DECISION_MARGIN:
            break
    cases.append(w)
    # case1: 1 merges into 0 and 2 merges into 1 (a chain 2 -> 1 -> 0); 3 stays
    cases.append(rows([1.0, 0.0, 0.0, 0.0, 0.0], [0.6, 0.4, 0.0, 0.0, 0.0], [0.2, 0.8, 0.0, 0.0, 0.0],
                      [0.0, 0.0, 0.0, 0.1, 0.9]))
    # case2: no merge (each row on its own frame)
    cases.append(rows([0.9, 0.1, 0.0, 0.0, 0.0], [0.0, 0.0, 0.9, 0.1, 0.0], [0.0, 0.0, 0.0, 0.1, 0.9]))
    # case3: all rows equal (every row merges into row 0: ties go to the first index)
    cases.append(rows([0.5, 0.2, 0.1, 0.1, 0.1]).expand(4, -1).contiguous())
    # case4: K = 1
    cases.append(rows([0.3, 0.5, 0.2]))

    out = {}
    for n, w in enumerate(cases):
        frames = randn(w.shape[0], 3, 4)
        assert_merge_margins(w, threshold, f"temporal_merge case{n}")
        kept, merged = R.temporal_merge_chained(w, frames, threshold)
        kept_r, released = R.temporal_merge_released(w, frames, threshold)
        assert torch.equal(kept, kept_r)
        out.update({f"case{n}.weights": w, f"case{n}.frames": frames, f"case{n}.kept": kept,
                    f"case{n}.merged": merged, f"case{n}.released": released})
        _, node_idx, m = R.merge_plan(w, threshold)
        print(f"temporal_merge case{n}: K={w.shape[0]} kept={kept.tolist()} targets="
              f"{[int(node_idx[i]) if m[i] else None for i in range(w.shape[0])]} chain={R.has_chain(w, threshold)}")
        if n == 1:  # the hand-expanded chain
            f = frames
            assert kept.tolist() == [0, 3] and R.has_chain(w, threshold)
            assert torch.allclose(merged[0], (f[0] + f[1] + f[2]) / 3, atol=1e-6)
            assert torch.allclose(merged[1], f[3], atol=1e-6)
            assert torch.allclose(released[0], (f[0] + f[1]) / 2, atol=1e-6)
            assert not torch.allclose(released, merged, atol=1e-3)
        if n == 2:
            assert kept.tolist() == [0, 1, 2] and torch.equal(merged, frames)
        if n == 3:
            assert kept.tolist() == [0] and torch.allclose(merged[0], frames.mean(0), atol=1e-6)
            assert torch.allclose(released, merged, atol=1e-6)
        if n == 4:
            assert kept.tolist() == [0] and torch.equal(merged, frames)
    save("temporal_merge", out)


# --- token_merge --------------------------------------------------------------------------------

def assert_tome_margins(tokens, target):
    """Walk multi_layer_merge's rounds and check that no match or order is a near-tie."""
    def check(m, r):
        if r <= 0:
            return
        mn = m / m.norm(dim=-1, keepdim=True)
        scores = mn[..., ::2, :] @ mn[..., 1::2, :].transpose(-1, -2)
        if scores.shape[-1] > 1:
            top = scores.topk(2, dim=-1).values
            assert float((top[..., 0] - top[..., 1]).min()) > DECISION_MARGIN
        node_max = scores.max(dim=-1).values.sort(dim=-1).values
        assert float(node_max.diff(dim=-1).min()) > DECISION_MARGIN

    m = tokens
    while m.shape[1] // 2 > target:
        check(m, m.shape[1] // 2)
        m, _ = R.merge_wavg(R.bipartite_soft_matching(m, m.shape[1] // 2), m)
    check(m, m.shape[1] - target)


def make_token_merge():
    """caseN.tokens [F,n,C], caseN.budget i64 [1], caseN.merged [F,budget,C] (multi_layer_merge)."""
    torch.manual_seed(106)
    out = {}
    for n, (tokens_n, budget) in enumerate(((32, 20), (32, 7), (10, 10), (9, 4))):
        while True:  # a draw without near-ties in any round
            tokens = randn(2, tokens_n, 8)
            try:
                assert_tome_margins(tokens, budget)
                break
            except AssertionError:
                continue
        merged = R.multi_layer_merge(tokens, budget)
        assert merged.shape == (2, budget, 8)
        if tokens_n == budget:
            assert torch.equal(merged, tokens)
        out.update({f"case{n}.tokens": tokens, f"case{n}.budget": torch.tensor([budget], dtype=torch.int64),
                    f"case{n}.merged": merged})
    # one round by hand: n=9, N=4 merges all five a tokens into the four b tokens
    t = out["case3.tokens"]
    mn = t / t.norm(dim=-1, keepdim=True)
    dst = (mn[:, ::2] @ mn[:, 1::2].transpose(-1, -2)).argmax(dim=-1)
    want = t[:, 1::2].clone()
    count = torch.ones(2, 4, 1)
    for f in range(2):
        for i in range(5):
            want[f, dst[f, i]] += t[f, 2 * i]
            count[f, dst[f, i]] += 1
    assert torch.allclose(out["case3.merged"], want / count, atol=1e-6)
    save("token_merge", out)


# --- bvllm_forward ------------------------------------------------------------------------------

BVLLM_SEED = 2  # searched: sample 0 keeps 1 < K' < 4 rows, no chain, margins, soft weights


def lora_params(cfg, gen):
    p = {}
    q, kv = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    shapes = {"self_attn.q_proj": (q, cfg.hidden), "self_attn.k_proj": (kv, cfg.hidden),
              "self_attn.v_proj": (kv, cfg.hidden), "self_attn.o_proj": (cfg.hidden, q),
              "mlp.gate_proj": (cfg.inter, cfg.hidden), "mlp.up_proj": (cfg.inter, cfg.hidden),
              "mlp.down_proj": (cfg.hidden, cfg.inter)}
    for i in range(cfg.layers):
        for target in R.LORA_TARGETS:
            out_f, in_f = shapes[target]
            m = f"model.layers.{i}.{target}"
            bound = 1.0 / math.sqrt(in_f)  # kaiming_uniform_(a=sqrt(5))
            p[m + ".lora_A.weight"] = (torch.rand(4, in_f, generator=gen) * 2 - 1) * bound
            p[m + ".lora_B.weight"] = torch.randn(out_f, 4, generator=gen) * 0.1  # trained: nonzero
    return p


def bvllm_params(seed):
    eva, qf, qw = R.EVA_TINY, R.QFORMER_TINY, R.QWEN2_TINY
    p = eva_params(eva, R.EVA_TINY_CHECKPOINT_GRID, R.EVA_PREFIX)
    # the model's parameter after load_model's interpolation (the checkpoint grid is in eva_vit)
    p[R.EVA_PREFIX + "pos_embed"] = R.eva_interpolate_pos_embed(p[R.EVA_PREFIX + "pos_embed"], eva.grid * eva.grid)
    p.update(qformer_params(qf, R.QF_TEMPORAL_PREFIX))
    p.update(qformer_params(qf, R.QF_SPATIAL_PREFIX))
    p["model.vlm_att_query_temporal"] = randn(1, qf.num_query, qf.hidden, std=0.5)
    p["model.vlm_att_query_spatial"] = randn(1, qf.num_query, qf.hidden, std=0.5)
    norm_params(p, "model.vlm_att_ln_temporal", eva.width)
    norm_params(p, "model.vlm_att_ln_spatial", eva.width)
    linear_params(p, "model.vlm_att_projector_temporal", eva.width, qf.hidden, 0.15, 0.1)
    linear_params(p, "model.vlm_att_projector_spatial", eva.width, qf.hidden, 0.15)
    linear_params(p, "model.vlm_att_val_projector_spatial", qw.hidden, eva.width, 0.15)
    gen = torch.Generator().manual_seed(seed + 1000)
    p.update(qwen2_init_params(qw, gen))
    p.update(lora_params(qw, gen))
    return p


def trainable(name):
    if name.startswith("model.vlm_att_"):
        return not name.startswith("model.vlm_att_ln_spatial")  # unused, as released
    return ".lora_" in name


def bvllm_inputs():
    vocab = R.QWEN2_TINY.vocab
    text = lambda n: torch.randint(1, vocab, (n,))
    eva = R.EVA_TINY
    # sample 0: video, sample 1: image, sample 2: text only; the first tokens are the prompt
    ids0 = torch.cat((text(3), torch.tensor([R.VIDEO_TOKEN]), text(6)))
    ids1 = torch.cat((text(2), torch.tensor([R.IMAGE_TOKEN]), text(5)))
    ids2 = text(9)
    labels = []
    for ids, prompt in ((ids0, 5), (ids1, 4), (ids2, 3)):
        lab = ids.clone()
        lab[:prompt] = R.IGNORE_INDEX
        labels.append(lab)
    samples = [
        {"ids": ids0, "labels": labels[0], "pixels": randn(5, 3, eva.img, eva.img),
         "gumbel": gumbel(R.HEAD_TINY.temporal_queries, 5)},
        {"ids": ids1, "labels": labels[1], "pixels": randn(1, 3, eva.img, eva.img),
         "gumbel": gumbel(R.HEAD_TINY.temporal_queries, 1)},
        {"ids": ids2, "labels": labels[2], "pixels": None, "gumbel": None},
    ]
    bvocab = R.QFORMER_TINY.vocab
    bert_ids = torch.zeros(3, 6, dtype=torch.int64)
    for s, n in enumerate((6, 4, 2)):
        bert_ids[s, :n] = torch.randint(1, bvocab, (n,))
    bert_mask = (bert_ids != 0).to(torch.int64)
    return samples, bert_ids, bert_mask


def bvllm_case(seed):
    torch.manual_seed(seed)
    p = bvllm_params(seed)
    samples, bert_ids, bert_mask = bvllm_inputs()
    return p, samples, bert_ids, bert_mask


def bvllm_case_ok(p, samples, bert_ids, bert_mask):
    with torch.no_grad():
        r = R.bvllm_forward(p, samples, bert_ids, bert_mask)
    info = r["infos"][0]
    w = info["weights"]
    node_max, _, _ = R.merge_plan(w, R.HEAD_TINY.threshold)
    kept = info["kept"].numel()
    wmax = w.max(dim=-1).values
    return (1 < kept < 4 and not R.has_chain(w, R.HEAD_TINY.threshold)
            and float((node_max[1:] - R.HEAD_TINY.threshold).abs().min()) > 0.01
            and float(wmax.max()) < 0.97), r


def make_bvllm_forward():
    """param.<whole-model name> (EVA pos_embed already interpolated: [1,10,24]); input.pixels.0
    [5,3,42,42], input.gumbel.0 [4,5], input.pixels.1 [1,3,42,42], input.gumbel.1 [4,1];
    input.ids.S / input.labels.S i64 [L_S] unpadded with the -201/-200 placeholder;
    input.bert_ids [3,6], input.bert_mask [3,6]; output.kept.0, output.weights.0 (sample 0's
    selection weights, for diagnosis), output.lengths i64 [3], output.logits [3,Lmax,64] (right
    padded with id 0), output.loss [1]; grad.<name> of every trainable parameter."""
    p, samples, bert_ids, bert_mask = bvllm_case(BVLLM_SEED)
    ok, r = bvllm_case_ok(p, samples, bert_ids, bert_mask)
    assert ok, f"seed {BVLLM_SEED} no longer gives a usable sample 0; search another"
    leaves = {k: v.clone().requires_grad_(trainable(k)) for k, v in p.items()}
    r = R.bvllm_forward(leaves, samples, bert_ids, bert_mask)
    r["loss"].backward()
    info0 = r["infos"][0]
    kept0 = info0["kept"]
    print(f"bvllm_forward: sample 0 K'={kept0.numel()} kept={kept0.tolist()} weights=\n{info0['weights']}")
    print("bvllm_forward: scores spread over frames", [round(float(x), 3) for x in info0["scores"].std(dim=-1)])
    print("bvllm_forward: lengths", r["lengths"].tolist(), "loss", float(r["loss"]))
    assert 1 < kept0.numel() < 4
    # the chain-resolved variant agrees here (no chain), so either merge serves this fixture
    with torch.no_grad():
        chained = R.bvllm_forward(p, samples, bert_ids, bert_mask, chain_resolved=True)
    assert torch.allclose(chained["logits"], r["logits"].detach(), atol=1e-5)
    # right padding does not reach real positions: each sample alone gives the same logits, and the
    # text-only sample is plain Qwen2 + LoRA on its ids
    lengths = r["lengths"].tolist()
    with torch.no_grad():
        for s in range(len(samples)):
            alone = R.bvllm_forward(p, samples[s:s + 1], bert_ids[s:s + 1], bert_mask[s:s + 1])["logits"][0]
            assert torch.allclose(alone, r["logits"][s, :lengths[s]].detach(), atol=1e-5)
        text_only = qwen2_forward(R.QWEN2_TINY, p, samples[2]["ids"][None], lora=p)[0]
        assert torch.allclose(text_only, r["logits"][2, :lengths[2]].detach(), atol=1e-5)

    out = {f"param.{k}": v for k, v in p.items()}
    for s, sample in enumerate(samples):
        out[f"input.ids.{s}"] = sample["ids"]
        out[f"input.labels.{s}"] = sample["labels"]
        if sample["pixels"] is not None:
            out[f"input.pixels.{s}"] = sample["pixels"]
            out[f"input.gumbel.{s}"] = sample["gumbel"]
    out.update({"input.bert_ids": bert_ids, "input.bert_mask": bert_mask, "output.kept.0": kept0,
                "output.weights.0": info0["weights"], "output.lengths": r["lengths"], "output.logits": r["logits"],
                "output.loss": r["loss"].reshape(1)})
    for k, v in leaves.items():
        if v.requires_grad:
            assert v.grad is not None, k
            out[f"grad.{k}"] = v.grad
    nonzero = [k for k, v in leaves.items() if v.requires_grad and float(v.grad.abs().max()) > 0]
    print(f"bvllm_forward: {len(nonzero)} of {sum(v.requires_grad for v in leaves.values())} trainable "
          "tensors get a nonzero gradient")
    save("bvllm_forward", out)


def search_bvllm_seed(limit=200):
    """How BVLLM_SEED was found (not run by default)."""
    for seed in range(limit):
        if bvllm_case_ok(*bvllm_case(seed))[0]:
            return seed
    raise RuntimeError("no seed")


if __name__ == "__main__":
    torch.set_num_threads(1)
    os.makedirs(FIXTURES, exist_ok=True)
    make_eva_vit()
    make_eva_pos_embed()
    make_qformer()
    make_frame_selection()
    make_temporal_merge()
    make_token_merge()
    make_bvllm_forward()

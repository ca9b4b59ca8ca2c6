#!/usr/bin/python3
"""PyTorch reference for the B-VLLM vision side and the whole model, written out as plain torch
functions over name -> tensor dicts (the LAVIS / Hugging Face / B-VLLM state-dict names), so that
make_bvllm_fixtures.py can write what it computes for the C++ tests to compare against.

It follows the released code (zhuqiangLu/B-VLLM @ b604b70), as ../shared/research/bvllm.md
describes it; the sections and files below are where each function comes from:

  eva_interpolate_pos_embed  bvlm/model/eva_vit.py interpolate_pos_embed (L393-414; §2.2): the
                             checkpoint's grid tokens resized bicubically (align_corners=False) in
                             f32, the extra (CLS) token kept.
  eva_vit                    eva_vit.py VisionTransformer.forward_features, Block, Attention,
                             PatchEmbed, Mlp (L245-351, L434-514; §2.2): Conv2d patch embedding,
                             [CLS] + patches + pos_embed, pre-LN blocks (eps 1e-6) with
                             qkv bias = cat(q_bias, zeros, v_bias), q scaled by head_dim^-0.5
                             before q k^T, exact GELU MLP; no final norm (output of the last block).
  qformer                    bvlm/model/qformer.py (the LAVIS Qformer.py copy) BertModel.forward,
                             BertEmbeddings, BertLayer, BertSelfAttention, BertSelfOutput,
                             BertIntermediate/BertOutput (L51-110, L113-486, L805-965; §2.3):
                             LayerNorm(cat[query_embeds; word + position embeddings]); per layer a
                             joint bidirectional self-attention with the additive mask
                             (1 - mask) * -10000 (get_extended_attention_mask, is_decoder=False),
                             scores / sqrt(head_dim); cross-attention for the query slice only on
                             layers with layer_num % cross_attention_freq == 0 (the encoder mask is
                             all ones, so it adds nothing); FFN intermediate_query/output_query on
                             the query slice and intermediate/output on the text slice; post-LN;
                             returns last_hidden_state[:, :n_query].
  frame_selection            bvlm/model/bvlm_arch.py vlm_attention L402-461 (§2.4, §12.2/12.5):
                             cls = V[:, 0], P = LN_t(V[:, 1:]) (vlm_att_ln_temporal, eps 1e-5),
                             A = vlm_att_projector_temporal(H_t), S = A cls^T / sqrt(C_v),
                             W = softmax((S + G) / tau) (F.gumbel_softmax, hard=False, with the
                             noise G given), F = W @ P.
  merge_plan,                bvlm_arch.py merge_temporal L40-50 -> bvlm/model/merge.py
  temporal_merge_released    threshold_soft_matching + merge_wavg (L37-112, L202-216; §2.5, §12.5):
                             sim = (cos(W_i, W_j) + 1) / 2 on the strict lower triangle, row i is
                             merged into argmax_j when the max > 0.75, kept rows (ascending) become
                             (F_u + sum of the rows merged directly into u) / (1 + their count); a
                             row merged into a row that is itself merged is lost (no chaining).
  temporal_merge_chained     the chain-resolved variant (not in the released code): a merged row
                             joins the kept row at the end of its chain; each kept row is the plain
                             mean of its group.
  bipartite_soft_matching,   merge.py L18-36, L114-216 (§2.7): ToMe as released (no class token,
  merge_wavg,                sizes reset to 1 on every call), output [unmerged a tokens in
  multi_layer_merge          descending-score order, b tokens].
  token_budget               bvlm_arch.py L416, L464-468 (§2.7): 32 for an image, else
                             int(max(1, (576 // 32) / K' * 32)).
  bvllm_forward              bvlm_arch.py vlm_attention + prepare_inputs_labels_for_multimodal
                             (L357-550, L609-717; §1, §2.6, §2.8, §2.9) and the Qwen2 of
                             make_qwen2_fixtures.py (with peft LoRA and ForCausalLMLoss): per sample,
                             EVA (no grad) on its frames; a video (T > 1) runs the temporal
                             Q-Former on the T frame CLS tokens with the first L* temporal queries
                             and the sample's BERT text, the selection and the temporal merge; an
                             image (T = 1) keeps F = P (the released softmax over one frame is
                             exactly 1); the spatial Q-Former per kept frame with the same text
                             repeated; the ToMe budget; Z = val_projector(projector_spatial(H_s));
                             Z replaces the -201/-200 placeholder (labels -100 there), text-only
                             samples get no visual tokens; right padding (pad id 0, labels -100);
                             one causal-LM loss (mean over every supervised token of the batch).
"""
import math
import warnings

import torch
import torch.nn.functional as F

from make_qwen2_fixtures import Config as Qwen2Config
from make_qwen2_fixtures import causal_lm_loss
from make_qwen2_fixtures import forward_embeds as qwen2_forward_embeds

warnings.filterwarnings("ignore", message="scatter_reduce\\(\\) is in beta")  # ToMe's scatter_reduce, torch 1.13

IGNORE_INDEX = -100
IMAGE_TOKEN, VIDEO_TOKEN = -200, -201  # bvlm/constants.py MODAL_INDEX_MAP


class EvaConfig:
    def __init__(self, img, patch, width, depth, heads, mlp_ratio=4.3637, eps=1e-6):
        self.img, self.patch, self.width, self.depth, self.heads = img, patch, width, depth, heads
        self.grid = img // patch
        self.mlp_hidden = int(width * mlp_ratio)  # Block: int(dim * mlp_ratio)
        self.eps = eps


class QFormerConfig:
    def __init__(self, vocab, hidden, layers, heads, intermediate, max_positions, encoder_width, num_query,
                 cross_attention_freq=2, eps=1e-12):
        self.vocab, self.hidden, self.layers, self.heads = vocab, hidden, layers, heads
        self.intermediate, self.max_positions, self.encoder_width = intermediate, max_positions, encoder_width
        self.num_query, self.cross_attention_freq, self.eps = num_query, cross_attention_freq, eps


class HeadConfig:
    """What vlm_attention hard-codes: 16 of the 32 temporal queries (L*), tau 0.5, threshold 0.75,
    nn.LayerNorm's eps 1e-5 for vlm_att_ln_temporal, and the ToMe budget of 576 tokens at 32 per
    frame (max_T = 576 // 32), 32 for an image."""

    def __init__(self, temporal_queries, tau=0.5, threshold=0.75, ln_eps=1e-5, budget_tokens=576,
                 budget_per_frame=32):
        self.temporal_queries, self.tau, self.threshold, self.ln_eps = temporal_queries, tau, threshold, ln_eps
        self.budget_tokens, self.budget_per_frame = budget_tokens, budget_per_frame


# The tiny configurations that the C++ tests use too.
EVA_TINY = EvaConfig(img=42, patch=14, width=24, depth=2, heads=4)  # grid 3, mlp hidden 104
EVA_TINY_CHECKPOINT_GRID = 2
QFORMER_TINY = QFormerConfig(vocab=40, hidden=32, layers=4, heads=4, intermediate=48, max_positions=24,
                             encoder_width=24, num_query=6)
HEAD_TINY = HeadConfig(temporal_queries=4)
QWEN2_TINY = Qwen2Config(vocab=64, hidden=48, inter=96, layers=2, heads=4, kv_heads=2, head_dim=12, theta=1e6,
                         eps=1e-6, tied=False)
LORA_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

EVA_PREFIX = "model.vision_tower.vision_tower."
QF_TEMPORAL_PREFIX = "model.vlm_att_encoder_temporal.bert."
QF_SPATIAL_PREFIX = "model.vlm_att_encoder_spatial.bert."


def _linear(p, name, x):
    return F.linear(x, p[name + ".weight"], p.get(name + ".bias"))


def _layer_norm(p, name, x, eps):
    return F.layer_norm(x, (x.shape[-1],), p[name + ".weight"], p[name + ".bias"], eps)


# --- EVA ViT (LAVIS eva_vit.py) -----------------------------------------------------------------

def eva_interpolate_pos_embed(pos_embed, num_patches, num_extra_tokens=1):
    """interpolate_pos_embed: the grid tokens resized bicubically in f32, the CLS token kept."""
    pos = pos_embed.float()
    dim = pos.shape[-1]
    orig_size = int((pos.shape[-2] - num_extra_tokens) ** 0.5)
    new_size = int(num_patches ** 0.5)
    if orig_size == new_size:
        return pos
    extra = pos[:, :num_extra_tokens]
    tokens = pos[:, num_extra_tokens:].reshape(-1, orig_size, orig_size, dim).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens, size=(new_size, new_size), mode="bicubic", align_corners=False)
    tokens = tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((extra, tokens), dim=1)


def _eva_attention(p, pre, x, heads):
    b, n, _ = x.shape
    q_bias, v_bias = p[pre + "q_bias"], p[pre + "v_bias"]
    qkv_bias = torch.cat((q_bias, torch.zeros_like(v_bias), v_bias))
    qkv = F.linear(x, p[pre + "qkv.weight"], qkv_bias).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * q.shape[-1] ** -0.5
    attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
    x = (attn @ v).transpose(1, 2).reshape(b, n, -1)
    return _linear(p, pre + "proj", x)


def eva_vit(p, cfg, pixels, prefix=""):
    """VisionTransformer.forward: pixels [B, 3, img, img] -> [B, 1 + grid^2, width] (block output)."""
    x = F.conv2d(pixels, p[prefix + "patch_embed.proj.weight"], p[prefix + "patch_embed.proj.bias"],
                 stride=cfg.patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat((p[prefix + "cls_token"].expand(x.shape[0], -1, -1), x), dim=1)
    pos = p[prefix + "pos_embed"]
    if pos.shape[1] != x.shape[1]:  # a checkpoint grid: what load_model does before load_state_dict
        pos = eva_interpolate_pos_embed(pos, cfg.grid * cfg.grid)
    x = x + pos
    for i in range(cfg.depth):
        pre = f"{prefix}blocks.{i}."
        x = x + _eva_attention(p, pre + "attn.", _layer_norm(p, pre + "norm1", x, cfg.eps), cfg.heads)
        h = _layer_norm(p, pre + "norm2", x, cfg.eps)
        x = x + _linear(p, pre + "mlp.fc2", F.gelu(_linear(p, pre + "mlp.fc1", h)))
    return x


# --- Q-Former (LAVIS Qformer.py BertModel) ------------------------------------------------------

def _bert_attention(p, pre, cfg, hidden, context, additive_mask):
    """BertSelfAttention (+ BertSelfOutput): keys/values from context (= hidden for self-attention)."""
    b, lq, _ = hidden.shape
    lk = context.shape[1]
    heads = cfg.heads
    d = cfg.hidden // heads
    q = _linear(p, pre + "self.query", hidden).view(b, lq, heads, d).permute(0, 2, 1, 3)
    k = _linear(p, pre + "self.key", context).view(b, lk, heads, d).permute(0, 2, 1, 3)
    v = _linear(p, pre + "self.value", context).view(b, lk, heads, d).permute(0, 2, 1, 3)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
    if additive_mask is not None:
        scores = scores + additive_mask
    probs = scores.softmax(dim=-1)
    ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(b, lq, cfg.hidden)
    return _layer_norm(p, pre + "output.LayerNorm", _linear(p, pre + "output.dense", ctx) + hidden, cfg.eps)


def _bert_ffn(p, pre, cfg, x, intermediate, output):
    h = F.gelu(_linear(p, pre + intermediate + ".dense", x))
    return _layer_norm(p, pre + output + ".LayerNorm", _linear(p, pre + output + ".dense", h) + x, cfg.eps)


def qformer(p, cfg, query, ids, text_mask, encoder, prefix="bert."):
    """BertModel(input_ids=ids, query_embeds=query, attention_mask=[1]*n_q ++ text_mask,
    encoder_hidden_states=encoder, encoder_attention_mask=ones)[:, :n_q].

    query [1 or B, n_q, H], ids/text_mask [B, L] (i64), encoder [B, S, encoder_width]."""
    b, length = ids.shape
    nq = query.shape[1]
    query = query.expand(b, -1, -1)
    emb = F.embedding(ids, p[prefix + "embeddings.word_embeddings.weight"])
    emb = emb + p[prefix + "embeddings.position_embeddings.weight"][:length]
    x = _layer_norm(p, prefix + "embeddings.LayerNorm", torch.cat((query, emb), dim=1), cfg.eps)
    mask = torch.cat((torch.ones(b, nq, dtype=text_mask.dtype), text_mask), dim=1).to(x.dtype)
    additive = (1.0 - mask[:, None, None, :]) * -10000.0
    for i in range(cfg.layers):
        pre = f"{prefix}encoder.layer.{i}."
        a = _bert_attention(p, pre + "attention.", cfg, x, x, additive)
        qa = a[:, :nq]
        if i % cfg.cross_attention_freq == 0:
            qa = _bert_attention(p, pre + "crossattention.", cfg, qa, encoder, None)
        out = _bert_ffn(p, pre, cfg, qa, "intermediate_query", "output_query")
        if a.shape[1] > nq:
            out = torch.cat((out, _bert_ffn(p, pre, cfg, a[:, nq:], "intermediate", "output")), dim=1)
        x = out
    return x[:, :nq]


# --- frame selection and temporal merge (bvlm_arch.py, merge.py) --------------------------------

def frame_selection(p, vision, temporal_states, gumbel, tau=0.5, ln_eps=1e-5, prefix=""):
    """vision [T, 1+P, Cv] (EVA output, CLS at 0), temporal_states H_t [K, Cq], gumbel G [K, T].
    Returns scores S, weights W, frames F = W @ LN_t(patches) [K, P, Cv]."""
    cls = vision[:, 0]
    patches = _layer_norm(p, prefix + "vlm_att_ln_temporal", vision[:, 1:], ln_eps)
    a = _linear(p, prefix + "vlm_att_projector_temporal", temporal_states)
    scores = (a @ cls.transpose(0, 1)) / math.sqrt(cls.shape[-1])
    weights = ((scores + gumbel) / tau).softmax(dim=-1)
    t, n, c = patches.shape
    frames = (weights @ patches.reshape(t, n * c)).reshape(-1, n, c)
    return {"scores": scores, "weights": weights, "frames": frames, "patches": patches}


def chronological_order(weights):
    """Stable ascending argsort of the expected frame index sum_t W[k, t] * t (not in the released
    code, which keeps query order)."""
    expected = weights @ torch.arange(weights.shape[1], dtype=weights.dtype)
    return torch.sort(expected, stable=True).indices, expected


def merge_plan(weights, threshold=0.75):
    """threshold_soft_matching's decisions on the detached selection rows: (node_max, node_idx,
    merged), merged[i] = node_max[i] > threshold; node_idx[i] < i is the row i merges into."""
    with torch.no_grad():
        metric = weights.detach().clone()
        sims = F.cosine_similarity(metric[None], metric[:, None], dim=-1)
        sims = (sims + 1) / 2
        sims = torch.tril(sims.to(torch.float), diagonal=-1)
        node_max, node_idx = sims.max(dim=-1)
        merged = node_max > threshold
    return node_max, node_idx, merged


def temporal_merge_released(weights, frames, threshold=0.75):
    """merge_temporal as released: returns (kept indices, merged frames [K', ...])."""
    _, node_idx, merged = merge_plan(weights, threshold)
    k = frames.shape[0]
    x = frames.reshape(k, -1)
    adj = torch.eye(k, dtype=x.dtype)
    for i in range(k):
        if merged[i]:
            adj[node_idx[i], i] += 1  # to_dense_adj(edge=[dst; src]) + I
    aggregated = (adj @ x) / adj.sum(dim=-1, keepdim=True)
    kept = (~merged).nonzero().squeeze(-1)
    return kept, aggregated[kept].reshape(-1, *frames.shape[1:])


def chain_roots(weights, threshold=0.75):
    """The kept row at the end of each row's merge chain (node_idx[i] < i, so one ascending pass)."""
    _, node_idx, merged = merge_plan(weights, threshold)
    roots = []
    for i in range(weights.shape[0]):
        roots.append(roots[int(node_idx[i])] if merged[i] else i)
    return roots


def temporal_merge_chained(weights, frames, threshold=0.75):
    """Chain-resolved merge: each kept row becomes the plain mean of every row whose chain ends there."""
    roots = chain_roots(weights, threshold)
    k = frames.shape[0]
    kept = sorted(set(roots))
    groups = torch.zeros(len(kept), k, dtype=frames.dtype)
    for i, r in enumerate(roots):
        groups[kept.index(r), i] = 1.0
    groups = groups / groups.sum(dim=-1, keepdim=True)
    merged = (groups @ frames.reshape(k, -1)).reshape(-1, *frames.shape[1:])
    return torch.tensor(kept, dtype=torch.int64), merged


def has_chain(weights, threshold=0.75):
    _, node_idx, merged = merge_plan(weights, threshold)
    return any(bool(merged[i]) and bool(merged[node_idx[i]]) for i in range(weights.shape[0]))


# --- ToMe (merge.py, as released) ---------------------------------------------------------------

def bipartite_soft_matching(metric, r):
    """Returns merge(x, mode) for [F, n, C] tokens: a = even, b = odd tokens; the r a-tokens with
    the best cosine match are reduced into their b match."""
    if r <= 0:
        return lambda x, mode="mean": x
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[..., ::2, :], metric[..., 1::2, :]
        scores = a @ b.transpose(-1, -2)
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx = edge_idx[..., r:, :]
        src_idx = edge_idx[..., :r, :]
        dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)

    def merge(x, mode="mean"):
        src, dst = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    return merge


def merge_wavg(merge, x, size=None):
    if size is None:
        size = torch.ones_like(x[..., 0, None])
    size = size.to(x.dtype)
    x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    return x / size, size


def multi_layer_merge(metrics, target_num_tokens):
    """ToMe rounds of r = n // 2 while n // 2 > target, then one round of r = n - target."""
    while metrics.shape[1] // 2 > target_num_tokens:
        metrics, _ = merge_wavg(bipartite_soft_matching(metrics, metrics.shape[1] // 2), metrics)
    offset = metrics.shape[1] - target_num_tokens
    if offset <= 0:
        return metrics
    metrics, _ = merge_wavg(bipartite_soft_matching(metrics, offset), metrics)
    return metrics


def token_budget(head, kept_frames, is_video):
    if not is_video:
        return head.budget_per_frame
    max_t = head.budget_tokens // head.budget_per_frame
    return int(max(1, (max_t / kept_frames) * head.budget_per_frame))


# --- the whole model ----------------------------------------------------------------------------

def visual_tokens(p, pixels, gumbel, bert_ids, bert_mask, eva_cfg, qf_cfg, head, chain_resolved=False):
    """One sample's visual tokens Z [K' * n_q, hidden] (and the kept rows / selection for checks).
    bert_ids/bert_mask: this sample's BERT text [1, Lb]."""
    with torch.no_grad():  # EVA is frozen and runs under @torch.no_grad
        vision = eva_vit(p, eva_cfg, pixels, EVA_PREFIX)
    info = {"vision": vision}
    t = vision.shape[0]
    if t > 1:  # bvlm_arch.py: image_counts[_idx] > 1 takes the video branch
        cls = vision[:, 0]
        temporal_query = p["model.vlm_att_query_temporal"][:, :head.temporal_queries]
        h_t = qformer(p, qf_cfg, temporal_query, bert_ids, bert_mask, cls[None], QF_TEMPORAL_PREFIX)[0]
        sel = frame_selection(p, vision, h_t, gumbel, head.tau, head.ln_eps, prefix="model.")
        merge = temporal_merge_chained if chain_resolved else temporal_merge_released
        kept, frames = merge(sel["weights"], sel["frames"], head.threshold)
        info.update(sel)
        info["temporal_states"] = h_t
    else:  # a softmax over one frame is exactly 1: F = P
        frames = _layer_norm(p, "model.vlm_att_ln_temporal", vision[:, 1:], head.ln_eps)
        kept = torch.zeros(1, dtype=torch.int64)
    info["kept"] = kept
    k = frames.shape[0]
    spatial_query = p["model.vlm_att_query_spatial"]
    h_s = qformer(p, qf_cfg, spatial_query, bert_ids.repeat(k, 1), bert_mask.repeat(k, 1), frames,
                  QF_SPATIAL_PREFIX)
    h_s = multi_layer_merge(h_s, token_budget(head, k, t > 1))
    z = _linear(p, "model.vlm_att_val_projector_spatial", _linear(p, "model.vlm_att_projector_spatial", h_s))
    return z.reshape(-1, z.shape[-1]), info


def bvllm_forward(p, samples, bert_ids, bert_mask, eva_cfg=EVA_TINY, qf_cfg=QFORMER_TINY, head=HEAD_TINY,
                  qwen_cfg=QWEN2_TINY, chain_resolved=False):
    """samples: list of dicts with ids, labels (i64 [L], unpadded, one -201/-200 placeholder or none),
    pixels ([T, 3, H, W] or None for text only) and gumbel ([L*, T] or None).
    p holds every parameter by its whole-model name, LoRA adapters included.
    Returns logits [B, Lmax, vocab], loss, lengths, labels (padded) and per-sample info."""
    embed = p["model.embed_tokens.weight"]
    rows, label_rows, infos = [], [], []
    for s, sample in enumerate(samples):
        ids, labels = sample["ids"], sample["labels"]
        placeholder = ((ids == IMAGE_TOKEN) | (ids == VIDEO_TOKEN)).nonzero().squeeze(-1)
        if placeholder.numel() == 0:
            rows.append(F.embedding(ids, embed))
            label_rows.append(labels)
            infos.append(None)
            continue
        assert placeholder.numel() == 1 and sample["pixels"] is not None
        z, info = visual_tokens(p, sample["pixels"], sample["gumbel"], bert_ids[s:s + 1], bert_mask[s:s + 1],
                                eva_cfg, qf_cfg, head, chain_resolved)
        at = int(placeholder[0])
        rows.append(torch.cat((F.embedding(ids[:at], embed), z, F.embedding(ids[at + 1:], embed)), dim=0))
        label_rows.append(torch.cat((labels[:at], torch.full((z.shape[0],), IGNORE_INDEX, dtype=labels.dtype),
                                     labels[at + 1:])))
        infos.append(info)
    lengths = torch.tensor([r.shape[0] for r in rows], dtype=torch.int64)
    lmax = int(lengths.max())
    pad = F.embedding(torch.zeros(1, dtype=torch.int64), embed)  # right padding with id 0
    h = torch.stack([torch.cat((r, pad.expand(lmax - r.shape[0], -1)), dim=0) for r in rows])
    labels = torch.stack([F.pad(l, (0, lmax - l.shape[0]), value=IGNORE_INDEX) for l in label_rows])
    logits = qwen2_forward_embeds(qwen_cfg, p, h, lora=p)
    loss = causal_lm_loss(logits, labels)
    return {"logits": logits, "loss": loss, "lengths": lengths, "labels": labels, "infos": infos}

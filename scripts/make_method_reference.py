#!/usr/bin/env python3
"""Authors'-code references for tokenlens' selections: PiToMe, EViT, CLS top-K
(FasterVLM), HiPrune and FastV; on the language side SparseVLM and MMTok.

Writes tests/fixtures/methods_reference.json and (the language side)
tests/fixtures/llm_methods_reference.json, read by tests/methods_reference.rs;
`--llm` writes only the second. Needs numpy, torch (CPU) and einops (SparseVLM). Built like make_reducer_reference.py: each method's
function is copied from the authors' repository with its body unchanged (the
commit, file and licence are named above it); everything else (inputs, shims,
JSON) is ours. Inputs are rounded to 4 decimals and cast to float32 (or, for
attention, recorded as the float32 values the authors' code produced), so the
Rust side reads exactly what the reference was fed. Every selection is computed
in float32 and float64 and the script aborts if they differ, so no recorded
selection hinges on rounding (ties: none are allowed, see `min_gap` fields,
except where a tie rule is written down: SparseVLM's density ties, MMTok's zero gains).

Run from the repository root:  python3 scripts/make_method_reference.py
"""

import inspect
import json
import math
import os
import sys
import types
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_reducer_reference import closure_vars, f32s, rounded  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "methods_reference.json"


def do_nothing(x, mode=None):
    return x


# ---------------------------------------------------------------------------
# PiToMe
# Source: hchautran/PiToMe @ 550b5deed94aadfeac28bfbe381d87e672044a40
# (HEAD), algo/pitome/merge.py: functions pitome, pitome_bsm, pitome_vision
# merge_wavg, merge_source (verbatim).
# Licence: CC BY-NC 4.0 (the repository's LICENSE); copied here for testing only.
# The ViT recipe is algo/pitome/patch/deit.py (apply_patch + make_pitome_class)
# with timm.py's PiToMeBlock: margins = [.75 - .75*(i/num_layers)],
# use_bsm_pitome = [True] * ceil(L * 0.5) + [False] * rest, and the block calls
# self.attn(self.norm1(x)) without sizes (no proportional attention). Those
# two list expressions are copied verbatim in pitome_recipe() below.
# ---------------------------------------------------------------------------

def pitome(
    metric=None,
    class_token: bool = False,
    indices:torch.Tensor=None, 
    scores:torch.Tensor=None,
    r:int=None
) -> Tuple[Callable, Callable]:
    B, T, T = scores.shape
    # seperate protected token and mergeable tokens  
    merge_idx = indices[..., :2*r]
    protected_idx = indices[..., 2*r:]
    a_idx, b_idx = merge_idx[..., ::2], merge_idx[..., 1::2] 

    # get similarity scores between mergeable tokens
    scores = scores.gather(dim=-1, index=b_idx.unsqueeze(-2).expand(B, T, r)) 
    scores = scores.gather(dim=-2, index=a_idx.unsqueeze(-1).expand(B, r, r ))
    _, dst_idx = scores.max(dim=-1) 
    
    def merge(x: torch.Tensor, mode="mean") -> torch.Tensor:
        if class_token:
            x_cls=x[:,0,:].unsqueeze(1)
            x=x[:,1:,:]

        B, T, C = x.shape
        batch_idx = torch.arange(B).unsqueeze_(1).to(metric.device)
        protected = x[batch_idx, protected_idx, :]
        src, dst = x[batch_idx, a_idx, :], x[batch_idx,  b_idx, :]
        if mode != "prune":
            dst = dst.scatter_reduce(-2, dst_idx.unsqueeze(2).expand(B, r, C), src, reduce=mode)

        if class_token:
            return torch.cat([x_cls, protected, dst], dim=1)
        return torch.cat([protected, dst], dim=1)

    return merge


def pitome_bsm(
    metric=None,
    class_token: bool = False,
    indices:torch.Tensor=None,
    scores:torch.Tensor=None,
    r:int=None
) -> Tuple[Callable, Callable]:

    with torch.no_grad():
        B, T, _ = scores.shape
        a_idx, b_idx = indices[..., ::2], indices[..., 1::2] 
        batch_idx = torch.arange(B).unsqueeze_(1).to(metric.device)
        scores = scores.gather(dim=-1, index=b_idx.unsqueeze(-2).expand(B, T, b_idx.shape[-1])) 
        scores = scores.gather(dim=-2, index=a_idx.unsqueeze(-1).expand(B, a_idx.shape[-1], b_idx.shape[-1]))
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx = edge_idx[..., r:, :]  # Unmerged Tokens
        src_idx = edge_idx[..., :r, :]  # Merged Tokens
        dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)

    def merge(x: torch.Tensor, mode="mean") -> torch.Tensor:
        if class_token:
            x_cls=x[:,0,:].unsqueeze(1)
            x=x[:,1:,:]

        src, dst = x[batch_idx, a_idx, :], x[batch_idx, b_idx, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        if mode != "prune":
            src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
            dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)

        if class_token:
            return torch.cat([x_cls, unm, dst], dim=1)
        return torch.cat([unm, dst], dim=1)
    return merge


def pitome_vision(
    metric: torch.Tensor, 
    ratio:float=1.0,
    margin:torch.Tensor=0.5,
    class_token: bool = False,
    alpha=1.0,
    use_bsm=False,
    use_bsm_pitome=False,
):
    if use_bsm:
        return bsm(metric=metric, ratio=ratio, class_token=class_token)
    with torch.no_grad():
        if class_token:
            metric=metric[:,1:,:]
        B,T,C = metric.shape
        if ratio < 1.0:
            r = math.floor(T- T*ratio)
        else:
            return do_nothing, do_nothing

        # calculate energy score  
        metric = F.normalize(metric, p=2, dim=-1) 
        sim = metric@metric.transpose(-1,-2)
        energy_score = F.elu((sim - margin), alpha=alpha).mean(dim=-1)
        indices =  torch.argsort(energy_score, descending=True)
        if use_bsm_pitome:
            return pitome_bsm(metric=metric, class_token=class_token, indices=indices, scores=sim, r=r)
        else:
            return pitome(metric=metric, class_token=class_token, indices=indices, scores=sim, r=r)


def merge_wavg(
    merge: Callable, x: torch.Tensor, size: torch.Tensor = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Applies the merge function by taking a weighted average based on token size.
    Returns the merged tensor and the new token sizes.
    """
    if size is None:
        size = torch.ones_like(x[..., 0, None])

    x = merge(x*size, mode="sum")
    size = merge(size, mode="sum")
    x = x / size

    return x, size


def merge_source(
    merge: Callable, x: torch.Tensor, source: torch.Tensor = None
) -> torch.Tensor:
    """
    For source tracking. Source is an adjacency matrix between the initial tokens and final merged groups.
    x is used to find out how many tokens there are in case the source is None.
    """
    if source is None:
        n, t, _ = x.shape
        source = torch.eye(t, device=x.device)[None, ...].expand(n, t, t)

    source = merge(source, mode="amax")
    return source


def pitome_recipe(num_layers):
    # deit.py apply_patch / make_pitome_class, verbatim expressions.
    margins = [.75 - .75*(i/num_layers) for i in range(num_layers)]
    num_bsm_layers = math.ceil(num_layers * 0.5)
    use_bsm_pitome = [True] * (num_bsm_layers) + [False] * (num_layers-num_bsm_layers)
    return margins, use_bsm_pitome


# ---------------------------------------------------------------------------
# EViT
# Source: youweiliang/evit @ 5ca95a7cf4a8637193284895c5bc0dd9dc365982 (HEAD),
# evit.py classes Attention and Block, helpers.py complement_idx (verbatim).
# Licence: Apache-2.0. Mlp and DropPath come from timm in the original; the
# stand-ins below are ours (timm's Mlp is fc1 -> GELU -> fc2; DropPath(0) is
# the identity), so timm is not needed.
# ---------------------------------------------------------------------------

class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features, act_layer=nn.GELU, drop=0.):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


DropPath = None  # only used when drop_path > 0


def complement_idx(idx, dim):
    """
    Compute the complement: set(range(dim)) - set(idx).
    idx is a multi-dimensional tensor, find the complement for its trailing dimension,
    all other dimension is considered batched.
    Args:
        idx: input index, shape: [N, *, K]
        dim: the max index for complement
    """
    a = torch.arange(dim, device=idx.device)
    ndim = idx.ndim
    dims = idx.shape
    n_idx = dims[-1]
    dims = dims[:-1] + (-1, )
    for i in range(1, ndim):
        a = a.unsqueeze(0)
    a = a.expand(*dims)
    masked = torch.scatter(a, -1, idx, 0)
    compl, _ = torch.sort(masked, dim=-1, descending=False)
    compl = compl.permute(-1, *tuple(range(ndim - 1)))
    compl = compl[n_idx:].permute(*(tuple(range(1, ndim)) + (0,)))
    return compl


class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, attn_drop=0., proj_drop=0., keep_rate=1.):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim ** -0.5

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.keep_rate = keep_rate
        assert 0 < keep_rate <= 1, "keep_rate must > 0 and <= 1, got {0}".format(keep_rate)

    def forward(self, x, keep_rate=None, tokens=None):
        if keep_rate is None:
            keep_rate = self.keep_rate
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]   # make torchscript happy (cannot use tensor as tuple)

        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)

        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        x = self.proj_drop(x)

        left_tokens = N - 1
        if self.keep_rate < 1 and keep_rate < 1 or tokens is not None:  # double check the keep rate
            left_tokens = math.ceil(keep_rate * (N - 1))
            if tokens is not None:
                left_tokens = tokens
            if left_tokens == N - 1:
                return x, None, None, None, left_tokens
            assert left_tokens >= 1
            cls_attn = attn[:, :, 0, 1:]  # [B, H, N-1]
            cls_attn = cls_attn.mean(dim=1)  # [B, N-1]
            _, idx = torch.topk(cls_attn, left_tokens, dim=1, largest=True, sorted=True)  # [B, left_tokens]
            # cls_idx = torch.zeros(B, 1, dtype=idx.dtype, device=idx.device)
            # index = torch.cat([cls_idx, idx + 1], dim=1)
            index = idx.unsqueeze(-1).expand(-1, -1, C)  # [B, left_tokens, C]

            return x, index, idx, cls_attn, left_tokens

        return  x, None, None, None, left_tokens


class Block(nn.Module):

    def __init__(self, dim, num_heads, mlp_ratio=4., qkv_bias=False, drop=0., attn_drop=0.,
                 drop_path=0., act_layer=nn.GELU, norm_layer=nn.LayerNorm, keep_rate=0.,
                 fuse_token=False):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias,
                              attn_drop=attn_drop, proj_drop=drop, keep_rate=keep_rate)
        # NOTE: drop path for stochastic depth, we shall see if this is better than dropout here
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        mlp_hidden_dim = int(dim * mlp_ratio)
        self.mlp = Mlp(in_features=dim, hidden_features=mlp_hidden_dim, act_layer=act_layer, drop=drop)
        self.keep_rate = keep_rate
        self.mlp_hidden_dim = mlp_hidden_dim
        self.fuse_token = fuse_token

    def forward(self, x, keep_rate=None, tokens=None, get_idx=False):
        if keep_rate is None:
            keep_rate = self.keep_rate  # this is for inference, use the default keep rate
        B, N, C = x.shape

        tmp, index, idx, cls_attn, left_tokens = self.attn(self.norm1(x), keep_rate, tokens)
        x = x + self.drop_path(tmp)

        if index is not None:
            # B, N, C = x.shape
            non_cls = x[:, 1:]
            x_others = torch.gather(non_cls, dim=1, index=index)  # [B, left_tokens, C]

            if self.fuse_token:
                compl = complement_idx(idx, N - 1)  # [B, N-1-left_tokens]
                non_topk = torch.gather(non_cls, dim=1, index=compl.unsqueeze(-1).expand(-1, -1, C))  # [B, N-1-left_tokens, C]

                non_topk_attn = torch.gather(cls_attn, dim=1, index=compl)  # [B, N-1-left_tokens]
                extra_token = torch.sum(non_topk * non_topk_attn.unsqueeze(-1), dim=1, keepdim=True)  # [B, 1, C]
                x = torch.cat([x[:, 0:1], x_others, extra_token], dim=1)
            else:
                x = torch.cat([x[:, 0:1], x_others], dim=1)

        x = x + self.drop_path(self.mlp(self.norm2(x)))
        n_tokens = x.shape[1] - 1
        if get_idx and index is not None:
            return x, n_tokens, idx
        return x, n_tokens, None


# ---------------------------------------------------------------------------
# CLS top-K: FasterVLM
# Source: Theia-4869/FasterVLM @ f5d5f12037e105a51865ecb4b28a73cd86eb4921
# (HEAD), llava/model/multimodal_encoder/clip_encoder.py feature_select and
# llava/model/llava_arch.py encode_images (verbatim, as methods).
# Licence: Apache-2.0. The shim object (ours) stands for the vision tower and
# the model: attentions in, an identity projector.
# ---------------------------------------------------------------------------

# [FasterVLM] Select image features and attentions
def feature_select(self, image_forward_outs):
    image_features = image_forward_outs.hidden_states[self.select_layer]
    image_attentions = image_forward_outs.attentions[self.select_layer]
    if self.select_feature == 'patch':
        image_features = image_features[:, 1:]
        image_attentions = image_attentions[:, :, 0, 1:]
    elif self.select_feature == 'cls_patch':
        image_features = image_features
        image_attentions = image_attentions
    else:
        raise ValueError(f'Unexpected select feature: {self.select_feature}')
    return image_features, image_attentions


# [FasterVLM] Generate index masks using visual attentions
def encode_images(self, images):
    image_features, image_attentions = self.get_model().get_vision_tower()(images) # (B, N, C), (B, M, N)

    B, N, C = image_features.shape
    visual_token_num = self.get_visual_token_num() # T

    # prune visual tokens by attention scores
    image_attentions = image_attentions.mean(dim=1) # (B, N)
    token_indices = torch.topk(image_attentions, k=visual_token_num, dim=1)[1] # (B, T)

    # generate index mask
    index_masks = torch.zeros(B, N, dtype=torch.bool, device=image_features.device) # (B, N)
    index_masks.scatter_(1, token_indices, True) # (B, N)

    image_features = self.get_model().mm_projector(image_features) # (B, N, D)
    
    return image_features, index_masks, image_attentions


fastervlm_encode_images = encode_images




# ---------------------------------------------------------------------------
# HiPrune
# Source: Danielement321/HiPrune @ 6e83a1240874e99a25df34f54221a29bb24b7bc2
# (HEAD), LLaVA/llava/model/llava_arch.py encode_images (verbatim, as a
# method). Licence: MIT. It reads its budget, object layer and alpha from
# os.environ and moves tensors with .cuda(); the shim sets the environment and
# makes .cuda() the identity on this CPU-only machine. Its 24 x 24 grid is
# written as literals (24, 575): hiprune_encode_for_grid() makes a copy for
# another grid by replacing exactly those literals in the source text.
# ---------------------------------------------------------------------------

def encode_images(self, images):
    # assert images.shape[0] == 1, "Only support for batch_size = 1"
    image_features, all_image_attentions = self.get_model().get_vision_tower()(images) # (B, N, C), (B, M, N) = (1, 576, 1024), (1, 16, 576)
    B, N = image_features.shape[:2]
    visual_token_num = int(int(os.environ['HIPRUNE_RETENTION']) / B)
    # image_attentions = image_attentions.max(dim=1)[0] # (B, N) = (1, 576)
    deep_attention = all_image_attentions[self.config.mm_vision_select_layer].cuda()
    # deep_attention = deep_attention.mean(dim=1)[:, 0, 1:] # [cls] attention
    deep_attention = deep_attention.mean(dim=1).mean(dim=1)[:, 1:] # Global attention

    shallow_attention = all_image_attentions[int(os.environ['HIPRUNE_OBJECT_LAYER']) - 1].cuda()
    # shallow_attention = shallow_attention.mean(dim=1)[:, 0, 1:] # [cls] attention
    shallow_attention = shallow_attention.mean(dim=1).mean(dim=1)[:, 1:] # Global attention
    shallow_token_num = round(visual_token_num * float(os.environ['HIPRUNE_ALPHA']) / 5)

    index_masks = []
    for i in range(B):
        shallow_token_indices = torch.topk(shallow_attention[i].unsqueeze(0), k=shallow_token_num, dim=1)[1]
        shallow_token_indices = torch.cat([shallow_token_indices,
                                        shallow_token_indices - 1,
                                        shallow_token_indices + 1,
                                        shallow_token_indices - 24,
                                        shallow_token_indices + 24], dim=1) # (B, T * 5)
        shallow_token_indices = shallow_token_indices.clamp(0, 575)
        shallow_token_indices = torch.unique(shallow_token_indices, sorted=False).unsqueeze(0)
        deep_token_num = visual_token_num - shallow_token_indices.shape[1]

        available_index_mask = torch.zeros(1, N, dtype=torch.bool, device=image_features.device) # (B, N)
        available_index_mask.scatter_(1, shallow_token_indices, 1)

        deep_attention[i] -= available_index_mask.int().squeeze()

        deep_token_indices = torch.topk(deep_attention[i].unsqueeze(0), k=deep_token_num, dim=1)[1] # (B, T)
        token_indices = torch.cat([shallow_token_indices, deep_token_indices], dim=1)
        token_indices = torch.sort(token_indices, dim=1)[0] # (B, T)

        # generate index mask
        index_mask = torch.zeros(1, N, dtype=torch.bool, device=image_features.device) # (B, N)
        index_mask.scatter_(1, token_indices, True) # (B, N)
        index_masks.append(index_mask)

    index_masks = torch.cat(index_masks, dim=0)
    image_features = self.get_model().mm_projector(image_features) # (B, N, D)

    return image_features, index_masks


hiprune_encode_images = encode_images


# ---------------------------------------------------------------------------
# FastV
# Source: pkunlp-icler/FastV @ d1659729b5bf1be225e99ee15783deeea80f63b1 (HEAD),
# src/transformers/src/transformers/models/llama/fastv_forward.py, LlamaModel.forward,
# the `idx==AGG_LAYER` branch (lines 113-125, verbatim; the repository has no
# licence file). The authors' code scores by the LAST token only; `text` and
# `all` (tokenlens options) get an independent numpy definition below (ours).
# layer_outputs[1] is the previous layer's (K-1) attention [B, heads, n, n].
# ---------------------------------------------------------------------------

def fastv_mask(layer_outputs, SYS_LENGTH, IMAGE_TOKEN_LENGTH, ATTENTION_RANK, batch_size, seq_length_with_past,
               inputs_embeds):
    last_layer_attention = layer_outputs[1]
    # compute average attention over different head
    last_layer_attention_avg = torch.mean(last_layer_attention, dim=1)[0]
    # generate new attention mask based on the average attention, sample the top 144 tokens with highest attention
    last_layer_attention_avg_last_tok = last_layer_attention_avg[-1]
    # get the attention in image token
    last_layer_attention_avg_last_tok_image = last_layer_attention_avg_last_tok[SYS_LENGTH:SYS_LENGTH+IMAGE_TOKEN_LENGTH]
    # get the indexs of the top ATTENTION_RANK tokens
    top_attention_rank_index = last_layer_attention_avg_last_tok_image.topk(ATTENTION_RANK).indices + SYS_LENGTH
    # generate new attention mask
    gen_attention_mask = torch.ones((batch_size, seq_length_with_past), dtype=torch.bool, device=inputs_embeds.device)
    gen_attention_mask[:,SYS_LENGTH:SYS_LENGTH+IMAGE_TOKEN_LENGTH] = False
    gen_attention_mask[:,top_attention_rank_index] = True
    return gen_attention_mask


# ---------------------------------------------------------------------------
# SparseVLM
# Source: Gumpest/SparseVLMs @ 26a5f48813c46cd1c7364160354e7fdd3febaa67 (HEAD,
# version 1_0, the default USE_VERSION). Licence: Apache-2.0.
# - llava/model/language_model/score.py: attn_postprocess_topk (verbatim; its
#   sparse_token_dict / layer_dict tables are module globals, set per case by
#   sparsevlm_tables() below to the case's kept counts and sites).
# - llava/model/language_model/utils.py: batch_index_select, index_points,
#   cluster_and_merge (verbatim).
# - llava/model/language_model/modelling_sparse_llama.py, LlamaDynamicvitModel.forward:
#   the rater lines ("Select Text Raters") and the pruning-site lines from
#   `pred_score_vis, s_flag, ...` to the two `v_token_num = ...` updates, verbatim
#   inside sparsevlm_raters() / sparsevlm_site() (the decoder layer around them
#   is replaced by the case's recorded attention and layer output).
# cluster_and_merge adds torch.rand noise (1e-6) to its densities; every case is
# run under two seeds and in float64, and must agree (where a cluster has one
# centre by noise alone, i.e. cluster_num == 1, only its members are recorded).
# ---------------------------------------------------------------------------

import einops as ein  # noqa: E402  (cluster_and_merge uses it)

RETAIN_TOKN = 0
layer_dict = {}
sparse_token_dict = {}


def sparsevlm_tables(sites, kept):
    """The score.py globals for one case (ours): sites -> slot, RETAIN_TOKN -> kept list."""
    layer_dict.clear()
    layer_dict.update({l: i for i, l in enumerate(sites)})
    sparse_token_dict.clear()
    sparse_token_dict[RETAIN_TOKN] = list(kept)


def attn_postprocess_topk(self_attn_weights, v_token_start, v_token_num, text_token_start, t_token_idx, layer_idx):
    '''
    self_attn_weights: [B, H, L, L]
    '''
    self_attn_weights = self_attn_weights.mean(1) # B, L[Q], L[K]

    t_token_idx = t_token_idx[1] + text_token_start
    relation_vis_text = self_attn_weights[:, t_token_idx , v_token_start: v_token_start+v_token_num] # B, L2, L1

    relation_vis_text = relation_vis_text.mean(1) # B, L1

    relation_vis = relation_vis_text
    s_flag = True       # s_flag controls whether token merge is needed.

    sparse_token_list = sparse_token_dict[RETAIN_TOKN]

    if v_token_num != 0:
        mask = torch.zeros_like(relation_vis, dtype=bool)
        _, indices = torch.topk(relation_vis, min(sparse_token_list[layer_dict[layer_idx]], v_token_num - 1), dim=1)
        mask[0][indices] = 1
    else:
        mask = torch.ones_like(relation_vis_text, dtype=bool)
        s_flag = False
    return mask, s_flag, relation_vis_text


def batch_index_select(x, idx):

    if len(x.size()) == 4:
        B, H, N, C = x.size()
        N_new = idx.size(1)
        offset = torch.arange(B, dtype=torch.long, device=x.device).view(B, 1) * N
        idx = idx + offset
        out = x.reshape(B*N, H, C)[idx.reshape(-1)].reshape(B, H, N_new, C)
        return out
    elif len(x.size()) == 3:
        # in this condition
        B, N, C = x.size()
        N_new = idx.size(1)
        offset = torch.arange(B, dtype=torch.long, device=x.device).view(B, 1) * N
        idx = idx + offset
        out = x.reshape(B*N, C)[idx.reshape(-1)].reshape(B, N_new, C)
        return out
    elif len(x.size()) == 2:
        B, N = x.size()
        N_new = idx.size(1)
        offset = torch.arange(B, dtype=torch.long, device=x.device).view(B, 1) * N
        idx = idx + offset
        out = x.reshape(B*N)[idx.reshape(-1)].reshape(B, N_new)
        return out
    else:
        raise NotImplementedError


def index_points(points, idx):
    """Sample features following the index.
    Returns:
        new_points:, indexed points data, [B, S, C]

    Args:
        points: input points data, [B, N, C]
        idx: sample index data, [B, S]
    """
    device = points.device
    B = points.shape[0]
    view_shape = list(idx.shape)
    view_shape[1:] = [1] * (len(view_shape) - 1)
    repeat_shape = list(idx.shape)
    repeat_shape[0] = 1
    batch_indices = torch.arange(B, dtype=torch.long).to(device).view(view_shape).repeat(repeat_shape)
    new_points = points[batch_indices, idx, :]
    return new_points


def cluster_and_merge(x, cluster_num):
    
    B, N, C = x.shape

    x1 = ein.rearrange(x, "b l r -> b l () r")
    x2 = ein.rearrange(x, "b l r -> b () l r")
    distance = (x1 - x2).norm(dim=-1, p=2)
    dist_matrix = distance / (C ** 0.5)        
    # get local density
    dist_nearest, index_nearest = torch.topk(dist_matrix, k=cluster_num, dim=-1, largest=False)
    density = (-(dist_nearest ** 2).mean(dim=-1)).exp()
    # add a little noise to ensure no tokens have the same density.
    density = density + torch.rand(
        density.shape, device=density.device, dtype=density.dtype) * 1e-6

    # get distance indicator
    mask = density[:, None, :] > density[:, :, None]
    mask = mask.type(x.dtype)
    dist_max = dist_matrix.flatten(1).max(dim=-1)[0][:, None, None]
    dist, index_parent = (dist_matrix * mask + dist_max * (1 - mask)).min(dim=-1)

    # select clustering center according to score
    score = dist * density
    _, index_down = torch.topk(score, k=cluster_num, dim=-1)        

    # assign tokens to the nearest center
    dist_matrix = index_points(dist_matrix, index_down)     

    idx_cluster = dist_matrix.argmin(dim=1)    

    # make sure cluster center merge to itself 
    idx_batch = torch.arange(B, device=x.device)[:, None].expand(B, cluster_num)
    idx_tmp = torch.arange(cluster_num, device=x.device)[None, :].expand(B, cluster_num)
    idx_cluster[idx_batch.reshape(-1), index_down.reshape(-1)] = idx_tmp.reshape(-1)

    # merge tokens

    B, N, C = x.shape
    device = dist_matrix.device
    idx_token = torch.arange(N)[None, :].repeat(B, 1).to(device)
    agg_weight = x.new_ones(B, N, 1)
    
    token_weight = x.new_ones(B, N, 1)
    
    idx_batch = torch.arange(B, device=x.device)[:, None]
    idx = idx_cluster + idx_batch * cluster_num     

    all_weight = token_weight.new_zeros(B * cluster_num, 1)
    all_weight.index_add_(dim=0, index=idx.reshape(B * N),      
                            source=token_weight.reshape(B * N, 1))      
    all_weight = all_weight + 1e-6
    norm_weight = token_weight / all_weight[idx]       

    # average token features
    x_merged = x.new_zeros(B * cluster_num, C)
    source = x * norm_weight
    x_merged.index_add_(dim=0, index=idx.reshape(B * N),        
                        source=source.reshape(B * N, C).type(x.dtype))
    x_merged = x_merged.reshape(B, cluster_num, C)
    
    return x_merged


def sparsevlm_raters(hidden_states, v_token_start, text_token_start):
    """modelling_sparse_llama.py, "Select Text Raters, from SparseVLM 3.2" (verbatim body)."""
    v_t = hidden_states[:, v_token_start: text_token_start, :]
    t_t = hidden_states[:, text_token_start: , :]
    m_v_t = v_t @ t_t.transpose(1, 2) # [1, 576, 53]
    m_v_t = m_v_t.softmax(2).mean(1) # [1, 53]
    t_token_idx = torch.where(m_v_t > m_v_t.mean())
    return t_token_idx, m_v_t


def sparsevlm_site(attn_logits, layer_outputs, position_ids, layer_idx, v_token_start, v_token_num, text_token_start,
                   t_token_idx, image_shape, pre_prompt_length_list, hidden_states):
    """One pruning site of LlamaDynamicvitModel.forward (inference, version 1_0): the lines from
    attn_postprocess_topk to the `v_token_num` update, verbatim; `attn_logits` (the layer's
    softmax attention) and `layer_outputs` (the layer's output) come from the case. Returns what
    the lines computed, plus the locals the reference records (ours)."""
    B = 1
    V2_0 = False
    cluster_num = 0
    merge_token_stage2_idx = None
    pred_score_vis, s_flag, relation_vis_text = attn_postprocess_topk(attn_logits, v_token_start, v_token_num, text_token_start, t_token_idx, layer_idx) # B, L_v
    policy = torch.ones(B, hidden_states.shape[1], dtype=hidden_states.dtype, device=hidden_states.device)
    policy[:, v_token_start:text_token_start] = pred_score_vis.type(dtype = hidden_states.dtype)

    for batch in range(len(pre_prompt_length_list)):
        # keep pre prompt     
        prompt_length = pre_prompt_length_list[batch]
        policy[batch,:prompt_length,] = 1
        # keep question
        text_token_start = prompt_length + image_shape
        policy[batch, text_token_start:,] = 1

    total_sparse_token_idx = torch.where(policy == 0)[1].unsqueeze(0)  
    # merge and cluster
    if V2_0:
        s_flag = False # idea1: Cancel Merge
    if s_flag and total_sparse_token_idx.shape[1]>0:

        total_sparse_token_idx = torch.where(policy == 0)[1].unsqueeze(0)  
        total_sparse_token = batch_index_select(layer_outputs[0], total_sparse_token_idx) 
        
        merge_token_idx_stage1 = torch.where(pred_score_vis==0)[1]
        merge_token_stage1 = relation_vis_text[0][merge_token_idx_stage1]
        merge_token_num_stage1 = int(merge_token_idx_stage1.shape[0] * 0.3 ) + 1 # Top 30%
        merge_token_stage2_idx = merge_token_stage1.topk(merge_token_num_stage1)[1]
       
        merge_token_stage2 = total_sparse_token[:,merge_token_stage2_idx,:]
        cluster_num = int(merge_token_stage2.shape[1] / 10) + 1       
        if (cluster_num == 0) :
            cluster_num = merge_token_stage2.shape[1]
        
        merge_sparse_token = cluster_and_merge(merge_token_stage2, cluster_num)  

        select_token_idx = torch.where(policy == 1)[1].unsqueeze(0)  # B, L_new
        select_token = batch_index_select(layer_outputs[0], select_token_idx)
        select_vis_token_num = pred_score_vis.sum()
        select_and_merge_token = torch.cat((select_token[:,:v_token_start+select_vis_token_num,:] ,
                merge_sparse_token,
                select_token[:,v_token_start+select_vis_token_num:,:])
                ,dim=1
        )

        layer_outputs = (select_and_merge_token, layer_outputs[1])  # B, L, C
        position_ids = position_ids[:, :len(select_token_idx[0]) + cluster_num]
        prev_decision = policy
        # update
        v_token_num = pred_score_vis.sum() + cluster_num # B == 1
        # print(layer_idx, v_token_num)
        text_token_start = v_token_start + v_token_num
    else:
        select_token_idx = torch.where(policy == 1)[1].unsqueeze(0)  # B, L_new
        layer_outputs = (batch_index_select(layer_outputs[0], select_token_idx), layer_outputs[1])  # B, L, C
        if V2_0:
            position_ids = batch_index_select(position_ids, select_token_idx) # idea1: Keep Position ID
        else:
            position_ids = position_ids[:, :len(select_token_idx[0])]   
        prev_decision = policy
        
        # update
        v_token_num = pred_score_vis.sum() # B == 1
        # print(layer_idx, v_token_num)
        text_token_start = v_token_start + v_token_num
    return {
        "layer_outputs": layer_outputs, "v_token_num": int(v_token_num), "text_token_start": int(text_token_start),
        "pred_score_vis": pred_score_vis, "relation_vis_text": relation_vis_text,
        "merge_token_stage2_idx": merge_token_stage2_idx, "cluster_num": cluster_num,
        "merge_token_idx_stage1": torch.where(pred_score_vis == 0)[1],
    }


# ---------------------------------------------------------------------------
# MMTok
# Source: Ironieser/MMTok @ d1522cda0ac4470589446b5f220534d892db4c62 (HEAD),
# mmtok/core/semantic_selector.py: greedy_merged_jit_kernel and
# SemanticTokenSelector.mm_coverage_selection (verbatim; the class keeps only
# what the method reads). Licence: Apache-2.0 (Copyright (c) 2025 Zoom
# Communications, Inc.). Defaults from mmtok/llava/llava_inject.py: alpha 0.5,
# softmax_tv_temperature 0.02, softmax_vv_temperature 0.2. eval_logger (loguru)
# is not used by these lines.
# ---------------------------------------------------------------------------

@torch.jit.script
def greedy_merged_jit_kernel(
    Combined: torch.Tensor,
    k_max: int,
    exclude_indices: torch.Tensor,
) -> torch.Tensor:
    """
    Greedy maximum-coverage selection (JIT). Combined = [P; Q*alpha]:
    P = text–vision coverage, Q = vision–vision coverage (diversity).

    Args:
        Combined: [m+n, n] Float32, rows = text tokens + vision tokens, cols = vision tokens
        k_max: Number of vision tokens to select
        exclude_indices: 1D Long tensor of indices to exclude (e.g. padding); use empty tensor if none
    Returns:
        selected_indices: [k_max] Long, indices of selected vision tokens
    """
    total_rows, n = Combined.shape
    device = Combined.device
    dtype = Combined.dtype

    best_Combined = torch.zeros(total_rows, device=device, dtype=dtype)
    score_mask = torch.zeros(n, device=device, dtype=dtype)

    neg_inf_tensor = torch.tensor(float('-inf'), dtype=dtype, device=device)

    if exclude_indices.numel() > 0:
        score_mask.index_fill_(0, exclude_indices, neg_inf_tensor.item())

    selected_indices = torch.zeros(k_max, dtype=torch.long, device=device)

    for i in range(k_max):
        delta = (Combined - best_Combined.unsqueeze(1)).clamp_min_(0).sum(dim=0)
        delta.add_(score_mask)
        best_idx = torch.argmax(delta)
        idx_1d = best_idx.view(1)
        selected_indices[i] = best_idx
    
        current_col = Combined.index_select(1, idx_1d).squeeze(1)
        score_mask.scatter_(0, idx_1d, neg_inf_tensor)
        best_Combined = torch.maximum(best_Combined, current_col)

    return selected_indices


class SemanticTokenSelector:
    def __init__(
        self,
        target_vision_tokens: int = 32,
        alpha: float = 0.5,
    ):
        self.target_vision_tokens = target_vision_tokens
        self.alpha: float = alpha

    @staticmethod
    def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    
    def mm_coverage_selection(
        self,
        text_token_embedding: torch.Tensor,
        vision_tokens: torch.Tensor,
        vision_tokens_clip: torch.Tensor,
            tv_temp: float = 0.01,
            vv_temp: float = 0.2,
        padding_patch_indices: Optional[List[int]] = None,
    ) -> Tuple[List[int], torch.Tensor]:
        """
        Greedy maximum-coverage subset selection.
        Combined = [P; Q*alpha]: cover text tokens (P) and vision tokens (Q).
        Uses JIT kernel for large n/k_max; optional padding exclusion via exclude_indices.
        Returns (selected_indices, selected_vision_tokens).
        """
        device = vision_tokens.device
        x_norm = self._l2_normalize(vision_tokens).float()
        x_clip_norm = self._l2_normalize(vision_tokens_clip).float()
        z_norm = self._l2_normalize(text_token_embedding).float()  # question/keywords embedding

        P = z_norm @ x_norm.T   # text–vision coverage [m, n]
        Q = x_clip_norm @ x_clip_norm.T   # vision–vision coverage [n, n]
        m, n = P.shape
        inv_tv_temp = 1.0 / tv_temp
        inv_vv_temp = 1.0 / vv_temp
        P = F.softmax(P * inv_tv_temp, dim=1) / m
        Q = F.softmax(Q * inv_vv_temp, dim=1) / n
        k_max = min(self.target_vision_tokens, n)
        alpha = getattr(self, "alpha", 0.5)
        Q_weighted = Q * alpha
        Combined = torch.cat([P, Q_weighted], dim=0)   # [m+n, n] for maximum-coverage greedy
        
        n_threshold = int(os.getenv("MMTok_JIT_N_THRESHOLD", "500"))
        k_max_threshold = int(os.getenv("MMTok_JIT_K_MAX_THRESHOLD", "20"))
  
        use_jit = (n >= n_threshold) or (k_max >= k_max_threshold)
        if padding_patch_indices is not None:
            exclude_indices = torch.tensor(padding_patch_indices, device=device, dtype=torch.long)
        else:
            exclude_indices = torch.empty(0, dtype=torch.long, device=device)

        if use_jit:
            selected_indices = greedy_merged_jit_kernel(Combined, k_max, exclude_indices)
        else:
            best_Combined = torch.zeros(m + n, device=device, dtype=torch.float32)
            score_mask = torch.zeros(n, device=device, dtype=torch.float32)
            if padding_patch_indices is not None:
                score_mask[exclude_indices] = float("-inf")
            selected_indices = torch.empty(k_max, dtype=torch.long, device=device)
            neg_inf = float("-inf")
            for i in range(k_max):
                delta = (Combined - best_Combined.unsqueeze(1)).clamp_min_(0).sum(0)
                delta.add_(score_mask)
                best_idx = torch.argmax(delta)
                selected_indices[i] = best_idx
                torch.maximum(best_Combined, Combined[:, best_idx], out=best_Combined) 
                score_mask[best_idx] = neg_inf
        
        selected_indices, _ = selected_indices.sort()
        selected_tokens = vision_tokens[selected_indices]
        return selected_indices.tolist(), selected_tokens


# ---------------------------------------------------------------------------
# Fixture drivers (ours)
# ---------------------------------------------------------------------------

def tensor_json(a):
    """{"shape", "data"} like the encoder fixtures' reference.json, float32 exact."""
    a = np.asarray(a, dtype=np.float32)
    return {"shape": list(a.shape), "data": f32s(a.reshape(-1))}


def source_groups(source):
    return [sorted(np.nonzero(row)[0].tolist()) for row in source]


def run_pitome(metric_np, x_np, size_np, r, margin, class_token, bsm, dtype):
    metric = torch.tensor(metric_np, dtype=dtype)[None]
    x = torch.tensor(x_np, dtype=dtype)[None]
    size = None if size_np is None else torch.tensor(size_np, dtype=dtype)[None, :, None]
    t = metric.shape[1] - int(class_token)
    # pitome_vision takes a keep ratio: r = floor(T - T * ratio) is exactly r here.
    ratio = (t - r - 0.5) / t
    merge = pitome_vision(metric, ratio=ratio, margin=margin, class_token=class_token, use_bsm_pitome=bsm)
    assert closure_vars(merge)["r"] == r
    source = merge_source(merge, x, None)
    x_out, size_out = merge_wavg(merge, x, size)
    # The energy PiToMe sorts by (a local of pitome_vision; recomputed with its statements).
    m = F.normalize(metric[:, int(class_token):], p=2, dim=-1)
    energy = F.elu((m @ m.transpose(-1, -2) - margin), alpha=1.0).mean(dim=-1)[0]
    order = torch.argsort(energy, descending=True)
    return {
        "source_groups": source_groups(source[0].numpy()),
        "x": x_out[0].numpy(),
        "size": size_out[0, :, 0].numpy(),
        "energy": energy.numpy(),
        "energy_gap": float(np.diff(np.sort(energy.numpy())).min()),
        "order": order.tolist(),
    }


def pitome_case(name, note, metric, x, size, r, margin, class_token, bsm):
    out = run_pitome(metric, x, size, r, margin, class_token, bsm, torch.float32)
    out64 = run_pitome(metric, x, size, r, margin, class_token, bsm, torch.float64)
    if out["source_groups"] != out64["source_groups"] or out["order"] != out64["order"]:
        raise SystemExit(f"pitome {name}: selection differs between float32 and float64")
    return {
        "name": name,
        "note": note,
        "inputs": {
            "metric": f32s(metric),
            "x": f32s(x),
            "size": None if size is None else f32s(size),
            "r": r,
            "margin": margin,
            "class_token": class_token,
            "use_bsm_pitome": bsm,
        },
        "outputs": {
            "source_groups": out["source_groups"],
            "x": f32s(out["x"]),
            "size": f32s(out["size"]),
            "energy": f32s(out["energy"]),
            "min_energy_gap": out64["energy_gap"],
        },
    }


def pitome_cases():
    cases = []
    specs = [
        # name, seed, tokens, dim, r, margin, cls, bsm, sizes, clusters
        ("bsm_t17_r4", 4017, 17, 8, 4, 0.5625, True, True, False, 0),
        ("energy_t17_r4", 4017, 17, 8, 4, 0.5625, True, False, False, 0),
        ("bsm_t17_r8_max", 4117, 17, 8, 8, 0.75, True, True, False, 0),
        ("bsm_t65_r20_sizes", 4065, 65, 16, 20, 0.6875, True, True, True, 0),
        ("energy_t65_r12_sizes", 4165, 65, 16, 12, 0.1875, True, False, True, 0),
        ("bsm_t49_r16_clusters", 4049, 49, 16, 16, 0.375, True, True, False, 4),
        ("energy_t49_r16_clusters", 4049, 49, 16, 16, 0.375, True, False, False, 4),
        ("bsm_t24_r6_nocls", 4024, 24, 8, 6, 0.5, False, True, False, 0),
        ("energy_t24_r6_nocls", 4024, 24, 8, 6, 0.5, False, False, False, 0),
    ]
    for name, seed, t, c, r, margin, cls, bsm, sized, clusters in specs:
        rng = np.random.default_rng(seed)
        if clusters:
            centres = rng.standard_normal((clusters, c)) * 2.0
            metric = centres[rng.integers(0, clusters, size=t)] + rng.standard_normal((t, c))
            metric = rounded(metric)
        else:
            metric = rounded(rng.standard_normal((t, c)))
        x = rounded(rng.standard_normal((t, 4)))
        size = rng.integers(1, 5, size=t).astype(np.float32) if sized else None
        note = f"numpy default_rng({seed}); metric [t,c] = round(N(0,1),4)"
        if clusters:
            note += f" around {clusters} centres 2*N(0,1)"
        note += "; x [t,4] = round(N(0,1),4)" + ("; size = integers(1,5)" if sized else "")
        cases.append(pitome_case(name, note, metric, x, size, r, margin, cls, bsm))
    return cases


def run_evit(x_np, heads, tokens, fuse, seed, dtype):
    torch.manual_seed(seed)
    c = x_np.shape[1]
    blk = Block(dim=c, num_heads=heads, mlp_ratio=2., qkv_bias=True, keep_rate=0.5, fuse_token=fuse)
    blk = blk.to(dtype).eval()
    seen = {}
    blk.attn.attn_drop.register_forward_hook(lambda m, i, o: seen.__setitem__("attn", o))
    blk.attn.register_forward_hook(lambda m, i, o: seen.__setitem__("attn_out", o[0]))
    blk.norm2.register_forward_hook(lambda m, i, o: seen.__setitem__("fused", i[0]))
    x = torch.tensor(x_np, dtype=dtype)[None]
    with torch.no_grad():
        _, n_tokens, idx = blk(x, tokens=tokens, get_idx=True)
    return {
        "attn": seen["attn"][0].numpy(),
        "mid": (x + seen["attn_out"])[0].numpy(),
        "idx": idx[0].tolist(),
        "fused": seen["fused"][0].numpy(),
        "n_tokens": n_tokens,
    }


def evit_cases():
    cases = []
    for name, seed, n, c, heads, tokens, fuse in [
        ("t17_h2_keep8_fuse", 5017, 17, 16, 2, 8, True),
        ("t65_h4_keep20_fuse", 5065, 65, 32, 4, 20, True),
        ("t65_h4_keep20_drop", 5065, 65, 32, 4, 20, False),
        ("t65_h4_keep1_fuse", 5165, 65, 32, 4, 1, True),
    ]:
        rng = np.random.default_rng(seed)
        x = rounded(rng.standard_normal((n, c)) * 2.0)
        out = run_evit(x, heads, tokens, fuse, seed, torch.float32)
        out64 = run_evit(x, heads, tokens, fuse, seed, torch.float64)
        if sorted(out["idx"]) != sorted(out64["idx"]):
            raise SystemExit(f"evit {name}: selection differs between float32 and float64")
        cls_attn = out64["attn"][:, 0, 1:].mean(0)
        s = np.sort(cls_attn)[::-1]
        cases.append({
            "name": name,
            "note": f"numpy default_rng({seed}) x [n,c] = round(2 N(0,1),4); Block weights torch.manual_seed({seed}), "
                    "nn defaults; attn and mid recorded from the authors' Attention (hooks)",
            "inputs": {
                "heads": heads,
                "tokens": tokens,
                "fuse_token": fuse,
                "attn": tensor_json(out["attn"][None]),
                "mid": tensor_json(out["mid"][None]),
            },
            "outputs": {
                "idx": out["idx"],
                "fused": tensor_json(out["fused"][None]),
                "n_tokens": out["n_tokens"],
                "min_gap_at_cut": float(s[tokens - 1] - s[tokens]),
            },
        })
    return cases


class Shim:
    """Stands for the LLaVA model and its vision tower (ours): `images` are ignored,
    the tower returns the recorded features/attentions, the projector is the identity."""

    def __init__(self, tower_out, select_layer=-1, keep=None):
        self.tower_out = tower_out
        self.select_layer = select_layer
        self.select_feature = "patch"
        self.config = types.SimpleNamespace(mm_vision_select_layer=select_layer)
        self.keep = keep

    def get_model(self):
        return self

    def get_vision_tower(self):
        return lambda images: self.tower_out(self)

    def get_visual_token_num(self):
        return self.keep

    def mm_projector(self, x):
        return x


def fixture_attentions(folder):
    ref = json.loads((ROOT / "tests/fixtures/encoders" / folder / "reference.json").read_text())
    return [np.asarray(a["data"], dtype=np.float32).reshape(a["shape"]) for a in ref["attentions"]]


def random_attentions(seed, layers, heads, n, sharpness=3.0, key_bias=None):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(layers):
        logits = rng.standard_normal((1, heads, n, n)) * sharpness
        if key_bias is not None:
            logits = logits + key_bias[None, None, None, :]
        out.append(torch.tensor(logits).softmax(-1).numpy().astype(np.float32))
    return out


def fastervlm_select(attns, layer, keep, dtype):
    hs = [torch.zeros(1, attns[0].shape[-1], 1, dtype=dtype)] * (len(attns) + 1)
    at = tuple(torch.tensor(a, dtype=dtype) for a in attns)
    shim = Shim(lambda s: feature_select(s, types.SimpleNamespace(hidden_states=hs, attentions=at)), layer, keep)
    _, mask, scores = fastervlm_encode_images(shim, None)
    return np.nonzero(mask[0].numpy())[0].tolist(), scores[0].numpy()


def cls_topk_cases():
    cases = []
    sources = [
        ("vit_fixture", "tests/fixtures/encoders/vit reference attentions (transformers)", fixture_attentions("vit")),
        ("dinov2_fixture", "tests/fixtures/encoders/dinov2 reference attentions (transformers)",
         fixture_attentions("dinov2")),
        ("random_t65_h3", "softmax(3 N(0,1)) logits, numpy default_rng(6065)", random_attentions(6065, 2, 3, 65)),
    ]
    for src, note, attns in sources:
        for layer in range(len(attns)):
            for keep in (4, 8, 12):
                kept, scores = fastervlm_select(attns, layer, keep, torch.float32)
                kept64, _ = fastervlm_select(attns, layer, keep, torch.float64)
                if kept != kept64:
                    raise SystemExit(f"cls_topk {src}: selection differs between float32 and float64")
                s = np.sort(scores)[::-1]
                cases.append({
                    "name": f"{src}_layer{layer}_keep{keep}",
                    "note": note,
                    "inputs": {"source": src, "layer": layer, "keep": keep},
                    "outputs": {"kept": kept, "min_gap_at_cut": float(s[keep - 1] - s[keep])},
                })
        if src.startswith("random"):
            random_cls = [tensor_json(a) for a in attns]
    return cases, random_cls


def hiprune_encode_for_grid(cols, num_patches):
    """The authors' encode_images with its 24 x 24 literals replaced for another grid (ours)."""
    src = inspect.getsource(hiprune_encode_images)
    for old, new in [("shallow_token_indices - 24,", f"shallow_token_indices - {cols},"),
                     ("shallow_token_indices + 24]", f"shallow_token_indices + {cols}]"),
                     ("clamp(0, 575)", f"clamp(0, {num_patches - 1})")]:
        assert src.count(old) == 1, old
        src = src.replace(old, new)
    ns = dict(globals())
    exec(src, ns)
    return ns["encode_images"]


def hiprune_select(attns, object_layer, select_layer, keep, alpha, dtype, grid_cols=24):
    n = attns[0].shape[-1] - 1
    fn = hiprune_encode_images if grid_cols == 24 else hiprune_encode_for_grid(grid_cols, n)
    feats = torch.zeros(1, n, 1, dtype=dtype)
    at = tuple(torch.tensor(a, dtype=dtype) for a in attns)
    shim = Shim(lambda s: (feats, at), select_layer)
    os.environ["HIPRUNE_RETENTION"] = str(keep)
    os.environ["HIPRUNE_OBJECT_LAYER"] = str(object_layer + 1)
    os.environ["HIPRUNE_ALPHA"] = repr(alpha)
    _, mask = fn(shim, None)
    kept = np.nonzero(mask[0].numpy())[0].tolist()
    obj = at[object_layer].mean(dim=1).mean(dim=1)[:, 1:][0]
    anchors = torch.topk(obj, k=round(keep * alpha / 5))[1].tolist()
    return kept, anchors


def hiprune_cases():
    torch.Tensor.cuda = lambda self, *a, **k: self  # CPU only: .cuda() is the identity here
    cases = []

    def add(name, note, attns, object_layer, select_layer, keep, alpha, cols, record):
        kept, anchors = hiprune_select(attns, object_layer, select_layer, keep, alpha, torch.float32, cols)
        kept64, _ = hiprune_select(attns, object_layer, select_layer, keep, alpha, torch.float64, cols)
        if kept != kept64:
            raise SystemExit(f"hiprune {name}: selection differs between float32 and float64")
        rows = attns[0].shape[-1] - 1
        rows //= cols
        border = any(a // cols in (0, rows - 1) or a % cols in (0, cols - 1) for a in anchors)
        scores = {
            "object": f32s(attns[object_layer].mean(1).mean(1)[0, 1:]),
            "register": f32s(attns[select_layer].mean(1).mean(1)[0, 1:]),
        }
        cases.append({
            "name": name,
            "note": note,
            "inputs": {"grid": [rows, cols], "object_layer": object_layer, "register_layer": select_layer % len(attns),
                       "keep": keep, "alpha": alpha, "source": record, "scores": scores},
            "outputs": {"kept": kept, "anchors": anchors, "anchor_on_border": border},
        })

    for folder, cols in (("vit", 4), ("dinov2", 6)):
        attns = fixture_attentions(folder)
        n = attns[0].shape[-1] - 1
        for keep, alpha in [(6, 1.0), (10, 1.0), (8, 0.5), (12, 1.0)]:
            add(f"{folder}_fixture_keep{keep}_alpha{alpha}", f"{folder} fixture attentions; literals 24/575 -> "
                f"{cols}/{n - 1}", attns, 0, -1, keep, alpha, cols, f"{folder}_fixture")
    # 24 x 24 grids, as the authors' code is written: random attention, some with extra logit
    # mass on border patches so anchors sit on the border.
    border = np.zeros(577)
    for p in (0, 11, 23, 24 * 7, 24 * 9 + 23, 24 * 23 + 5, 575):
        border[1 + p] = 6.0
    for name, seed, bias, keep, alpha in [
        ("grid24_keep64_alpha0.5", 7001, None, 64, 0.5),
        ("grid24_keep144_alpha0.5_border", 7002, border, 144, 0.5),
        ("grid24_keep64_alpha1.0_border", 7003, border, 64, 1.0),
        ("grid24_keep25_alpha0.1", 7004, None, 25, 0.1),
        ("grid24_keep192_alpha0.1", 7005, border, 192, 0.1),
    ]:
        attns = random_attentions(seed, 3, 2, 577, 1.0, bias)
        add(name, f"softmax(N(0,1) + key bias) logits, numpy default_rng({seed}); object layer 0, register layer 1 "
            "(select_layer -2 of 3)", attns, 0, -2, keep, alpha, 24, None)
    return cases


def fastv_cases():
    cases = []
    for name, seed, heads, sys_len, img, tail, rank in [
        ("n40_img24_keep8", 8040, 2, 5, 24, 11, 8),
        ("n90_img64_keep16", 8090, 3, 10, 64, 16, 16),
        ("n90_img64_keep48", 8190, 3, 10, 64, 16, 48),
    ]:
        rng = np.random.default_rng(seed)
        n = sys_len + img + tail
        logits = rng.standard_normal((1, heads, n, n)) * 2.0
        logits = np.where(np.tril(np.ones((n, n), dtype=bool)), logits, -np.inf)
        attn = torch.tensor(logits).softmax(-1).numpy().astype(np.float32)
        kept = {}
        for dtype in (torch.float32, torch.float64):
            mask = fastv_mask((None, torch.tensor(attn, dtype=dtype)), sys_len, img, rank, 1, n,
                              torch.zeros(1, n, 1, dtype=dtype))
            kept[dtype] = [i - sys_len for i in np.nonzero(mask[0].numpy())[0].tolist() if sys_len <= i < sys_len + img]
        if kept[torch.float32] != kept[torch.float64]:
            raise SystemExit(f"fastv {name}: selection differs between float32 and float64")
        # Ours (not the authors'): mean over heads, then over a query set, zeros included.
        mean = attn.astype(np.float64).mean(axis=1)[0]
        text_rows = [i for i in range(n) if not sys_len <= i < sys_len + img]
        query_sets = {"last": [n - 1], "text": text_rows, "all": list(range(n))}
        outputs = {"last": kept[torch.float32]}
        for q in ("text", "all"):
            score = mean[query_sets[q]].mean(axis=0)[sys_len:sys_len + img]
            order = np.argsort(-score, kind="stable")
            outputs[q] = sorted(order[:rank].tolist())
            srt = np.sort(score)[::-1]
            outputs[f"{q}_gap_at_cut"] = float(srt[rank - 1] - srt[rank])
        cases.append({
            "name": name,
            "note": f"causal softmax(2 N(0,1)) logits, numpy default_rng({seed}); rows = {sys_len} text, {img} image, "
                    f"{tail} text",
            "inputs": {"sys_length": sys_len, "image_length": img, "rank": rank, "attn": tensor_json(attn[0])},
            "outputs": outputs,
        })
    return cases


def proportional_attention_case():
    """ToMe's proportional attention on block 0 of the vit encoder fixture, with token sizes
    1..n: the attention lines of ToMe's ToMeAttention.forward (facebookresearch/ToMe
    tome/patch/timm.py @ 049a70550eb6fb8a4b7ddd45b7fa4fe8bebe97ca, the same lines as PiToMe's
    timm.py PiToMeAttention above) on the transformers layer's q/k/v (ours around them)."""
    from transformers import ViTModel
    model = ViTModel.from_pretrained(ROOT / "tests/fixtures/encoders/vit", add_pooling_layer=False).eval()
    ref = json.loads((ROOT / "tests/fixtures/encoders/vit/reference.json").read_text())
    pixels = torch.tensor(np.asarray(ref["pixel_values"]["data"], dtype=np.float32).reshape(ref["pixel_values"]["shape"]))
    layer = model.layers[0]
    heads = model.config.num_attention_heads
    with torch.no_grad():
        x = model.embeddings(pixels)
        B, N, C = x.shape
        h = layer.layernorm_before(x)
        split = lambda t: t.reshape(B, N, heads, C // heads).transpose(1, 2)
        q, k, v = split(layer.attention.q_proj(h)), split(layer.attention.k_proj(h)), split(layer.attention.v_proj(h))
        scale = (C // heads) ** -0.5
        size = torch.arange(1, N + 1, dtype=torch.float32)[None, :, None]
        # --- ToMeAttention.forward, verbatim (self.scale -> scale):
        attn = (q @ k.transpose(-2, -1)) * scale

        # Apply proportional attention
        if size is not None:
            attn = attn + size.log()[:, None, None, :, 0]

        attn = attn.softmax(dim=-1)
        # ---
        out = x + layer.attention.o_proj((attn @ v).transpose(1, 2).reshape(B, N, C))
        out = out + layer.mlp(layer.layernorm_after(out))
    return {
        "note": "vit fixture, block 0, sizes = 1..n; probs and the block's output hidden state",
        "sizes": list(range(1, N + 1)),
        "probs": tensor_json(attn.numpy()),
        "hidden": tensor_json(out.numpy()),
    }


def evit_run_case(tokens=7, evit_layer=0):
    """EViT through the whole vit fixture (ViTForImageClassification, 2 blocks; EViT in block 0,
    so block 1 reads the fused token): block `evit_layer` runs the authors' selection and fusion (the lines of evit.py's Attention.forward
    and Block.forward, on this block's transformers weights) between its attention and its MLP;
    the classifier reads the final norm of CLS. Blocks written out with the transformers
    modules (ours; checked against the fixture's recorded logits without EViT)."""
    from transformers import ViTForImageClassification
    model = ViTForImageClassification.from_pretrained(ROOT / "tests/fixtures/encoders/vit").eval()
    ref = json.loads((ROOT / "tests/fixtures/encoders/vit/reference.json").read_text())
    pixels = torch.tensor(np.asarray(ref["pixel_values"]["data"], dtype=np.float32).reshape(ref["pixel_values"]["shape"]))
    heads = model.config.num_attention_heads

    def block(layer, x, evit_tokens):
        B, N, C = x.shape
        h = layer.layernorm_before(x)
        split = lambda t: t.reshape(B, N, heads, C // heads).transpose(1, 2)
        q, k, v = split(layer.attention.q_proj(h)), split(layer.attention.k_proj(h)), split(layer.attention.v_proj(h))
        attn = ((q @ k.transpose(-2, -1)) * (C // heads) ** -0.5).softmax(dim=-1)
        x = x + layer.attention.o_proj((attn @ v).transpose(1, 2).reshape(B, N, C))
        idx = None
        if evit_tokens is not None:
            # evit.py Attention.forward (tokens given) and Block.forward with fuse_token, verbatim:
            left_tokens = evit_tokens
            cls_attn = attn[:, :, 0, 1:]  # [B, H, N-1]
            cls_attn = cls_attn.mean(dim=1)  # [B, N-1]
            _, idx = torch.topk(cls_attn, left_tokens, dim=1, largest=True, sorted=True)  # [B, left_tokens]
            index = idx.unsqueeze(-1).expand(-1, -1, C)  # [B, left_tokens, C]
            non_cls = x[:, 1:]
            x_others = torch.gather(non_cls, dim=1, index=index)  # [B, left_tokens, C]
            compl = complement_idx(idx, N - 1)  # [B, N-1-left_tokens]
            non_topk = torch.gather(non_cls, dim=1, index=compl.unsqueeze(-1).expand(-1, -1, C))  # [B, N-1-left_tokens, C]
            non_topk_attn = torch.gather(cls_attn, dim=1, index=compl)  # [B, N-1-left_tokens]
            extra_token = torch.sum(non_topk * non_topk_attn.unsqueeze(-1), dim=1, keepdim=True)  # [B, 1, C]
            x = torch.cat([x[:, 0:1], x_others, extra_token], dim=1)
        x = x + layer.mlp(layer.layernorm_after(x))
        return x, idx

    def run(evit):
        with torch.no_grad():
            x = model.vit.embeddings(pixels)
            kept = None
            for l, layer in enumerate(model.vit.layers):
                x, idx = block(layer, x, tokens if evit and l == evit_layer else None)
                kept = idx if idx is not None else kept
            logits = model.classifier(model.vit.layernorm(x)[:, 0])
        return logits, kept

    plain, _ = run(False)
    want = np.asarray(ref["logits"]["data"], dtype=np.float32)
    assert np.abs(plain.numpy().reshape(-1) - want).max() < 1e-4, "the written-out blocks are not the model"
    logits, idx = run(True)
    return {
        "note": f"vit fixture, EViT in block {evit_layer} keeping {tokens} patches + the fused token",
        "layer": evit_layer,
        "tokens": tokens,
        "kept": sorted(idx[0].tolist()),
        "probs": f32s(logits.softmax(-1)[0].numpy()),
    }



# ---------------------------------------------------------------------------
# Language-side drivers (ours): fixed inputs as tokenlens' LlmView gives them,
# the authors' lines above on them, and the JSON for tests/methods_reference.rs.
# ---------------------------------------------------------------------------

LLM_OUT = ROOT / "tests" / "fixtures" / "llm_methods_reference.json"


def causal_attention(rng, heads, n, scale=2.0):
    logits = rng.standard_normal((1, heads, n, n)) * scale
    logits = np.where(np.tril(np.ones((n, n), dtype=bool)), logits, -np.inf)
    return torch.tensor(logits).softmax(-1).numpy().astype(np.float32)


def traced(fn, code, *args, **kwargs):
    """Runs fn and returns (result, the locals of the last frame of `code` at its return):
    how the reference reads cluster_and_merge's clusters without changing its text."""
    seen = {}

    def prof(frame, event, arg):
        if event == "return" and frame.f_code is code:
            seen.clear()
            seen.update(frame.f_locals)

    sys.setprofile(prof)
    try:
        out = fn(*args, **kwargs)
    finally:
        sys.setprofile(None)
    return out, seen


def fixed_noise(size, device=None, dtype=None):
    """Stands for torch.rand in cluster_and_merge (ours): 1 - i/N for the i-th recycled row, so
    among equal densities the earlier row (higher score) counts as denser, the fixed order
    tokenlens uses. Exact density ties are common there (with k = 2 neighbours, two rows that
    are each other's nearest have the same density), and the authors' random noise then decides."""
    n = size[-1]
    return (1.0 - torch.arange(n, dtype=dtype) / n).expand(size)


def sparsevlm_run(case, dtype, seed):
    """The authors' rater selection, then every site in turn, on the case's recorded inputs
    (torch.rand -> fixed_noise while they run)."""
    torch.manual_seed(seed)
    real_rand, torch.rand = torch.rand, fixed_noise
    try:
        return sparsevlm_sites(case, dtype)
    finally:
        torch.rand = real_rand


def sparsevlm_sites(case, dtype):
    pre, image, sites, kept = case["pre"], case["image"], case["sites"], case["kept"]
    sparsevlm_tables(sites, kept)
    emb = torch.tensor(case["embeds"], dtype=dtype)[None]
    t_token_idx, m_v_t = sparsevlm_raters(emb, pre, pre + image)
    v_token_num, text_token_start = image, pre + image
    out = {"raters": t_token_idx[1].tolist(), "rater_relevance": m_v_t[0].double().numpy(), "sites": []}
    for j, layer in enumerate(sites[:len(case["attn"])]):  # the sites built so far
        attn = torch.tensor(case["attn"][j], dtype=dtype)
        hidden = torch.tensor(case["hidden"][j], dtype=dtype)[None]
        n = hidden.shape[1]
        position_ids = torch.arange(n)[None]
        res, loc = traced(sparsevlm_site, cluster_and_merge.__code__, attn, (hidden, None), position_ids, layer, pre,
                          v_token_num, text_token_start, t_token_idx, image, [pre], hidden)
        keep_mask = res["pred_score_vis"][0].numpy().astype(bool)
        site = {
            "kept": np.nonzero(keep_mask)[0].tolist(),
            "relation": res["relation_vis_text"][0].double().numpy(),
            "groups": [],
            "merged": None,
            "rows_after": res["v_token_num"],
        }
        if res["cluster_num"]:
            pruned = res["merge_token_idx_stage1"].tolist()
            stage2 = [pruned[i] for i in res["merge_token_stage2_idx"].tolist()]
            idx_cluster = loc["idx_cluster"][0].tolist()
            centres = loc["index_down"][0].tolist()
            for c, centre in enumerate(centres):
                members = sorted(stage2[i] for i in range(len(stage2)) if idx_cluster[i] == c)
                site["groups"].append({"centre": stage2[centre], "members": members})
            site["recycled"] = stage2
            # Density gaps (float64 run): exact ties differ by the noise alone (< 1e-6); any other
            # pair must differ by far more, or float rounding could reorder them.
            d = np.sort(loc["density"][0].double().numpy())
            site["density_gaps"] = [float(g) for g in np.diff(d) if g > 1.01e-6]
            site["merged"] = res["layer_outputs"][0][0, pre + len(site["kept"]):pre + res["v_token_num"]].double().numpy()
        out["sites"].append(site)
        v_token_num, text_token_start = res["v_token_num"], res["text_token_start"]
    return out


def sparsevlm_gaps(run):
    """Smallest margins the float64 run decided by (raters, kept cut, recycled cut)."""
    rel = run["rater_relevance"]
    gaps = [float(np.abs(rel - rel.mean()).min())]
    for s in run["sites"]:
        gaps.extend(s.get("density_gaps", []))
        r = np.sort(s["relation"])[::-1]
        k = len(s["kept"])
        gaps.append(float(r[k - 1] - r[k]))
        if s["groups"]:
            nr = len(s["recycled"])
            pr = np.sort(np.delete(s["relation"], s["kept"]))[::-1]
            if nr < len(pr):
                gaps.append(float(pr[nr - 1] - pr[nr]))
    return min(gaps)


def sparsevlm_cases():
    cases = []
    for name, seed, pre, image, text, heads, dim, sites, kept in [
        ("p3_v64_t9_sites1_3_5", 9064, 3, 64, 9, 2, 16, [1, 3, 5], [24, 12, 6]),
        ("p5_v90_t8_sites2_6_15", 9090, 5, 90, 8, 2, 16, [2, 6, 15], [24, 12, 6]),
        ("p4_v36_t7_site0", 9036, 4, 36, 7, 2, 8, [0], [4]),
    ]:
        rng = np.random.default_rng(seed)
        case = {"pre": pre, "image": image, "sites": sites, "kept": kept,
                "embeds": rounded(rng.standard_normal((pre + image + text, dim)) * 0.5), "attn": [], "hidden": []}
        v = image
        for j in range(len(sites)):
            n = pre + v + text
            case["attn"].append(causal_attention(rng, heads, n))
            case["hidden"].append(rounded(rng.standard_normal((n, dim))))
            # The next site's image rows: what this one leaves (run once to know it).
            v = sparsevlm_run(case, torch.float64, 0)["sites"][j]["rows_after"]
        runs = [sparsevlm_run(case, torch.float32, 0), sparsevlm_run(case, torch.float32, 1),
                sparsevlm_run(case, torch.float64, 2)]
        strip = lambda r: json.dumps({"raters": r["raters"], "sites": [
            {k: s[k] for k in ("kept", "groups", "rows_after")} for s in r["sites"]]})
        if len({strip(r) for r in runs}) != 1:
            raise SystemExit(f"sparsevlm {name}: selection differs between seeds or float32/float64")
        ref = runs[0]
        cases.append({
            "name": name,
            "note": f"numpy default_rng({seed}): embeds = round(0.5 N(0,1),4); per site attn = causal softmax(2 N(0,1)), "
                    "hidden = round(N(0,1),4); kept = the authors' sparse_token_list for these sites",
            "inputs": {
                "pre_prompt": pre, "image": image, "text": text, "sites": sites, "kept": kept,
                "embeds": f32s(case["embeds"]),
                "attn": [tensor_json(a[0]) for a in case["attn"]],
                "hidden": [f32s(h) for h in case["hidden"]],
            },
            "outputs": {
                "raters": ref["raters"],
                "sites": [{
                    "kept": s["kept"],
                    "relation": f32s(s["relation"]),
                    "recycled": s.get("recycled", []),
                    "groups": s["groups"],
                    "merged": None if s["merged"] is None else f32s(s["merged"]),
                    "rows_after": s["rows_after"],
                } for s in ref["sites"]],
                "min_gap": sparsevlm_gaps(runs[2]),
            },
        })
    return cases


def mmtok_greedy64(text, vision, clip, k, alpha, tv, vv):
    """The same formula in float64 numpy (ours), to reject near-ties."""
    nz = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)
    sm = lambda x: np.exp(x - x.max(1, keepdims=True)) / np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)
    z, x, xc = nz(text.astype(np.float64)), nz(vision.astype(np.float64)), nz(clip.astype(np.float64))
    P = sm(z @ x.T / tv) / len(z)
    Q = sm(xc @ xc.T / vv) / len(x)
    C = np.concatenate([P, alpha * Q])
    best, picked, gap = np.zeros(len(C)), [], np.inf
    for _ in range(k):
        delta = np.clip(C - best[:, None], 0, None).sum(0)
        delta[picked] = -np.inf
        order = np.argsort(-delta, kind="stable")
        gap = min(gap, delta[order[0]] - delta[order[1]]) if len(order) > len(picked) + 1 else gap
        picked.append(int(order[0]))
        best = np.maximum(best, C[:, order[0]])
    return picked, float(gap)


def mmtok_cases():
    cases = []
    for name, seed, text_rows, image, dim, keep, alpha, tv, vv, jit_env in [
        ("t6_v48_keep8", 10048, 6, 48, 16, 8, 0.5, 0.02, 0.2, False),
        ("t11_v96_keep24_jit", 10096, 11, 96, 24, 24, 0.5, 0.02, 0.2, True),
        ("t4_v64_keep12_alpha2", 10064, 4, 64, 16, 12, 2.0, 0.05, 0.3, False),
        ("t9_v40_keep30_alpha0", 10040, 9, 40, 8, 30, 0.0, 0.02, 0.2, True),
    ]:
        rng = np.random.default_rng(seed)
        text = rounded(rng.standard_normal((text_rows, dim)))
        # Image rows in a few clusters, so coverage has structure.
        centres = rng.standard_normal((6, dim)) * 1.5
        vision = rounded(centres[rng.integers(0, 6, size=image)] + rng.standard_normal((image, dim)))
        sel = SemanticTokenSelector(target_vision_tokens=keep, alpha=alpha)
        # DEVIATION (ours, see src/reduce/llm/mmtok.rs): vision-vision coverage on the decoder
        # input embeddings, as tokenlens' LlmView has no tower features: clip = the same rows.
        kept, _ = sel.mm_coverage_selection(torch.tensor(text), torch.tensor(vision), torch.tensor(vision),
                                            tv_temp=tv, vv_temp=vv)
        assert (keep >= 20) == jit_env, "the case should exercise the path it names"
        order64, gap = mmtok_greedy64(text, vision, vision, keep, alpha, tv, vv)
        if sorted(order64) != kept:
            raise SystemExit(f"mmtok {name}: selection differs between float32 and float64")
        cases.append({
            "name": name,
            "note": f"numpy default_rng({seed}): text = round(N(0,1),4); image rows = round(one of 6 centres "
                    "1.5 N(0,1) + N(0,1), 4)",
            "inputs": {"text": f32s(text), "image": f32s(vision), "keep": keep, "alpha": alpha,
                       "tv_temperature": tv, "vv_temperature": vv},
            "outputs": {"kept": kept, "order_float64": order64, "min_gain_gap": gap},
        })
    return cases


def llm_main():
    doc = {
        "format": "tokenlens language-side methods reference v1",
        "generator": "scripts/make_method_reference.py",
        "torch": torch.__version__.split("+")[0],
        "numpy": np.__version__,
        "conventions": {
            "indices": "0-based",
            "sparsevlm": (
                "Sequence = pre_prompt text rows, image rows, text rows (the authors' layout, one image block). "
                "embeds = decoder input embeddings (raters are chosen on them: indices into the text rows after "
                "the image). Per site j: attn [h,n,n] = that layer's softmax attention, hidden [n,d] = the layer's "
                "output, kept[j] = the authors' sparse_token_list entry. Indices in outputs are into the site's "
                "image block. Site j+1's image block is the authors' order after site j: the kept rows "
                "(ascending), then the merged rows (cluster order). groups: clusters of the recycled rows in "
                "cluster_and_merge's centre order, torch.rand replaced by fixed_noise (ties: the earlier recycled row is denser). "
                "merged = the authors' merged rows; relation = the per-image-row score."
            ),
            "mmtok": (
                "text [m,d] and image [n,d]: decoder input embeddings of the text and image rows; kept = the "
                "authors' selection (ascending), with the image rows also as their clip features (our DEVIATION). "
                "order_float64 = greedy order in float64 (ours)."
            ),
        },
        "sparsevlm": sparsevlm_cases(),
        "mmtok": mmtok_cases(),
    }
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    LLM_OUT.write_text(text + "\n")
    print(f"wrote {LLM_OUT} ({len(text)} bytes)")


def main():
    if "--llm" in sys.argv[1:]:
        return llm_main()
    cls_topk, random_cls = cls_topk_cases()
    doc = {
        "format": "tokenlens methods reference v1",
        "generator": "scripts/make_method_reference.py",
        "torch": torch.__version__.split("+")[0],
        "numpy": np.__version__,
        "conventions": {
            "indices": "0-based",
            "pitome": (
                "metric [t,c] raw keys averaged over heads (pitome_vision normalises). Token 0 is CLS when "
                "class_token. source_groups[row] = original tokens merged into output row, rows in the authors' "
                "order: CLS, then protected tokens (pitome: energy order) or unmerged A (pitome_bsm: edge order), "
                "then B in energy order. x/size from merge_wavg. energy over patch tokens; min_energy_gap (float64) "
                "= closest pair of energies."
            ),
            "pitome_recipe": "margins and use_bsm_pitome lists of deit.py for num_layers L.",
            "evit": (
                "attn [1,h,n,n] = the authors' attention probabilities, mid [1,n,c] = x + attention output "
                "(the block's stream where EViT selects). idx = top-k patch indices (0 = first patch) in "
                "torch.topk order; fused [1, 1+k(+1), c] = the stream the MLP reads: CLS, the kept patches in idx "
                "order, then the fused token when fuse_token."
            ),
            "cls_topk": (
                "FasterVLM keeps the top `keep` by mean-over-heads attention of CLS at attentions[layer]; kept = "
                "patch indices (0 = first patch), ascending. source names the attentions: the encoder fixture's "
                "reference.json or random_cls_attentions here."
            ),
            "fastv": (
                "attn [h,n,n] = layer K-1's attention (causal). Rows: sys_length text, image_length image, the "
                "rest text. last = the authors' selection (image indices, 0 = first image row, ascending); "
                "text / all = ours in numpy: mean over heads, then over the text rows / all rows (queries "
                "that cannot see a row add 0), top rank."
            ),
            "hiprune": (
                "kept = patch indices, ascending, from the authors' encode_images (anchors round(K alpha / 5) by "
                "mean received attention at object_layer, buffers at flat offsets +-1, +-cols clamped to "
                "0..n-1, registers by register_layer). scores = the two per-patch score vectors the code ranks "
                "by. anchor_on_border: whether any anchor is on the grid's border (there the authors' flat "
                "buffers differ from true grid neighbours)."
            ),
        },
        "pitome": pitome_cases(),
        "pitome_recipe": {str(layers): dict(zip(("margins", "use_bsm_pitome"), pitome_recipe(layers)))
                          for layers in (2, 12, 24)},
        "evit": evit_cases(),
        "cls_topk": cls_topk,
        "random_cls_attentions": random_cls,
        "hiprune": hiprune_cases(),
        "fastv": fastv_cases(),
        "proportional_attention": proportional_attention_case(),
        "evit_run": evit_run_case(),
    }
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    OUT.write_text(text + "\n")
    print(f"wrote {OUT} ({len(text)} bytes)")
    llm_main()


if __name__ == "__main__":
    sys.exit(main())

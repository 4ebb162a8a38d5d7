#!/usr/bin/env python3
"""Authors'-code references for tokenlens' selections: PiToMe, EViT, CLS top-K
(FasterVLM), HiPrune and FastV; on the language side SparseVLM and MMTok.

Writes tests/fixtures/methods_reference.json and (the language side)
tests/fixtures/llm_methods_reference.json, read by tests/methods_reference.rs;
`--llm` writes only the second. Needs numpy, torch (CPU) and einops (SparseVLM), and
clones of the authors' repositories (scripts/authors.py says where). Built like
make_reducer_reference.py: each method's functions (or, inside a long forward, its
lines) are read from the authors' repository at a pinned commit and run unchanged
(the repository, commit, file and licence are named at each); everything else
(inputs, shims, wrappers, JSON) is ours. Inputs are rounded to 4 decimals and cast to float32 (or, for
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
import authors  # noqa: E402
from make_reducer_reference import closure_vars, f32s, rounded  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "methods_reference.json"


# ---------------------------------------------------------------------------
# PiToMe
# Source: hchautran/PiToMe @ 550b5deed94aadfeac28bfbe381d87e672044a40 (HEAD),
# algo/pitome/merge.py: do_nothing, pitome, pitome_bsm, pitome_vision, merge_wavg,
# merge_source, run unchanged (read by scripts/authors.py from a clone; licence
# CC BY-NC 4.0, so none of it is copied here).
# The ViT recipe is algo/pitome/patch/deit.py (apply_patch + make_pitome_class)
# with timm.py's PiToMeBlock: margins = [.75 - .75*(i/num_layers)],
# use_bsm_pitome = [True] * ceil(L * 0.5) + [False] * rest, and the block calls
# self.attn(self.norm1(x)) without sizes (no proportional attention).
# pitome_recipe() below restates those two expressions (deit.py lines 33-34, 98).
# ---------------------------------------------------------------------------

authors.run(
    authors.defs("pitome", "algo/pitome/merge.py",
                 "do_nothing", "pitome", "pitome_bsm", "pitome_vision", "merge_wavg", "merge_source"),
    globals(), "pitome")


def pitome_recipe(num_layers):
    """The authors' ViT schedule: margin per layer, and which layers use pitome_bsm (ours,
    restating deit.py's expressions with len(self.blocks) -> num_layers)."""
    margins = [.75 - .75*(i/num_layers) for i in range(num_layers)]
    num_bsm_layers = math.ceil(num_layers * 0.5)
    use_bsm_pitome = [True] * (num_bsm_layers) + [False] * (num_layers-num_bsm_layers)
    return margins, use_bsm_pitome


# ---------------------------------------------------------------------------
# EViT
# Source: youweiliang/evit @ 5ca95a7cf4a8637193284895c5bc0dd9dc365982 (HEAD),
# evit.py: drop_path, DropPath, Mlp, Attention, Block; helpers.py: complement_idx
# (run unchanged, read by scripts/authors.py; licence Apache-2.0). Nothing of timm
# is needed: evit.py's own Mlp and DropPath are the ones its Block uses.
# ---------------------------------------------------------------------------

authors.run(authors.defs("evit", "helpers.py", "complement_idx"), globals(), "evit-helpers")
authors.run(authors.defs("evit", "evit.py", "drop_path", "DropPath", "Mlp", "Attention", "Block"), globals(), "evit")


# ---------------------------------------------------------------------------
# CLS top-K: FasterVLM
# Source: Theia-4869/FasterVLM @ f5d5f12037e105a51865ecb4b28a73cd86eb4921
# (HEAD), llava/model/multimodal_encoder/clip_encoder.py CLIPVisionTower.feature_select
# and llava/model/llava_arch.py LlavaMetaForCausalLM.encode_images (run unchanged as
# functions of `self`, read by scripts/authors.py; licence Apache-2.0). The shim object
# (ours) stands for the vision tower and the model: attentions in, an identity projector.
# ---------------------------------------------------------------------------

authors.run(authors.defs("fastervlm", "llava/model/multimodal_encoder/clip_encoder.py", "feature_select",
                         within="CLIPVisionTower"), globals(), "fastervlm-tower")
fastervlm_encode_images = authors.run(
    authors.defs("fastervlm", "llava/model/llava_arch.py", "encode_images", within="LlavaMetaForCausalLM"),
    dict(globals()), "fastervlm")["encode_images"]


# ---------------------------------------------------------------------------
# HiPrune
# Source: Danielement321/HiPrune @ 6e83a1240874e99a25df34f54221a29bb24b7bc2
# (HEAD), LLaVA/llava/model/llava_arch.py LlavaMetaForCausalLM.encode_images (run
# unchanged as a function of `self`, read by scripts/authors.py; licence MIT). It reads
# its budget, object layer and alpha from os.environ and moves tensors with .cuda();
# the shim sets the environment and makes .cuda() the identity on this CPU-only
# machine. Its 24 x 24 grid is written as literals (24, 575): hiprune_encode_for_grid()
# makes a copy for another grid by replacing exactly those literals in the source text.
# ---------------------------------------------------------------------------

hiprune_encode_images = authors.run(
    authors.defs("hiprune", "LLaVA/llava/model/llava_arch.py", "encode_images", within="LlavaMetaForCausalLM"),
    dict(globals()), "hiprune")["encode_images"]


# ---------------------------------------------------------------------------
# FastV
# Source: pkunlp-icler/FastV @ d1659729b5bf1be225e99ee15783deeea80f63b1 (HEAD),
# src/transformers/src/transformers/models/llama/fastv_forward.py, LlamaModel.forward:
# the body of the `idx==AGG_LAYER` branch (lines 113-125, run unchanged inside our
# fastv_mask(); read by scripts/authors.py; the repository states no licence, so none
# of it is copied here). The authors' code scores by the LAST token only; `text` and
# `all` (tokenlens options) get an independent numpy definition below (ours).
# layer_outputs[1] is the previous layer's (K-1) attention [B, heads, n, n].
# ---------------------------------------------------------------------------

authors.run(
    "def fastv_mask(layer_outputs, SYS_LENGTH, IMAGE_TOKEN_LENGTH, ATTENTION_RANK, batch_size,\n"
    "               seq_length_with_past, inputs_embeds):\n"
    + authors.lines("fastv", "src/transformers/src/transformers/models/llama/fastv_forward.py", 113, 125, "1266e34b913710ac", indent=4)
    + "    return gen_attention_mask\n",
    globals(), "fastv")


# ---------------------------------------------------------------------------
# SparseVLM
# Source: Gumpest/SparseVLMs @ 26a5f48813c46cd1c7364160354e7fdd3febaa67 (HEAD,
# version 1_0, the default USE_VERSION). Licence: Apache-2.0. Run unchanged, read by
# scripts/authors.py from a clone (none of it is copied here):
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




authors.run(authors.defs("sparsevlm", "llava/model/language_model/score.py", "attn_postprocess_topk"),
            globals(), "sparsevlm-score")
authors.run(authors.defs("sparsevlm", "llava/model/language_model/utils.py",
                         "batch_index_select", "index_points", "cluster_and_merge"),
            globals(), "sparsevlm-utils")

# modelling_sparse_llama.py, "Select Text Raters, from SparseVLM 3.2" (lines 200-204).
authors.run(
    "def sparsevlm_raters(hidden_states, v_token_start, text_token_start):\n"
    + authors.lines("sparsevlm", "llava/model/language_model/modelling_sparse_llama.py", 200, 204, "e02b79c6c89d10de", indent=4)
    + "    return t_token_idx, m_v_t\n",
    globals(), "sparsevlm-raters")

# One pruning site of LlamaDynamicvitModel.forward (inference, version 1_0): lines 259-320,
# from attn_postprocess_topk to the `v_token_num` update. `attn_logits` (the layer's softmax
# attention) and `layer_outputs` (the layer's output) come from the case; the preamble and
# the returned dict (what the lines computed, plus the locals the reference records) are ours.
authors.run(
    "def sparsevlm_site(attn_logits, layer_outputs, position_ids, layer_idx, v_token_start, v_token_num,\n"
    "                   text_token_start, t_token_idx, image_shape, pre_prompt_length_list, hidden_states):\n"
    "    B = 1\n"
    "    V2_0 = False\n"
    "    cluster_num = 0\n"
    "    merge_token_stage2_idx = None\n"
    + authors.lines("sparsevlm", "llava/model/language_model/modelling_sparse_llama.py", 259, 320, "b1a38b6ac9f44ffd", indent=4)
    + "    return {\n"
    "        'layer_outputs': layer_outputs, 'v_token_num': int(v_token_num),\n"
    "        'text_token_start': int(text_token_start), 'pred_score_vis': pred_score_vis,\n"
    "        'relation_vis_text': relation_vis_text, 'merge_token_stage2_idx': merge_token_stage2_idx,\n"
    "        'cluster_num': cluster_num, 'merge_token_idx_stage1': torch.where(pred_score_vis == 0)[1],\n"
    "    }\n",
    globals(), "sparsevlm-site")


# ---------------------------------------------------------------------------
# MMTok
# Source: Ironieser/MMTok @ d1522cda0ac4470589446b5f220534d892db4c62 (HEAD),
# mmtok/core/semantic_selector.py: greedy_merged_jit_kernel and SemanticTokenSelector
# (run unchanged, read by scripts/authors.py; licence Apache-2.0, Copyright (c) 2025 Zoom
# Communications, Inc.). Defaults from mmtok/llava/llava_inject.py: alpha 0.5,
# softmax_tv_temperature 0.02, softmax_vv_temperature 0.2. eval_logger (loguru)
# is not used by these lines.
# ---------------------------------------------------------------------------

authors.run(authors.defs("mmtok", "mmtok/core/semantic_selector.py",
                         "greedy_merged_jit_kernel", "SemanticTokenSelector"), globals(), "mmtok")


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
# Language-side drivers (ours): fixed inputs as tokenlens' decoder SiteView gives them,
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
        # input embeddings, as tokenlens' decoder SiteView has no tower features: clip = the same rows.
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

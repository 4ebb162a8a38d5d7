#!/usr/bin/env python3
"""Reference fixtures for tokenlens' Rust token reducers (ToMe, DivPrune).

Writes tests/fixtures/reducers_reference.json. Needs numpy and torch (CPU is
enough); the Rust tests only read the JSON, they never run this script.

The reducer functions are the authors' own, read from clones of their
repositories at pinned commits and run unchanged (scripts/authors.py says
where the clones go); see the "Source:" comment above each. Everything else
(data generation, JSON writing, self-checks) is ours.

Run from the repository root:  python3 scripts/make_reducer_reference.py

Determinism: all data comes from numpy.random.default_rng(seed) with fixed
seeds; torch runs single-threaded. Every random case is computed twice, in
float32 (the recorded outputs) and in float64, and the script aborts if any
index output differs between the two, so the recorded selections do not hinge
on rounding. Inputs are rounded to 4 decimals and cast to float32 before use;
parsing the JSON text of an input as f32 gives exactly the value fed to the
reference. Outputs are written with the shortest text that round-trips f32.
"""

import json
import math
import sys
from pathlib import Path
from typing import Callable, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import authors  # noqa: E402

torch.set_num_threads(1)

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "reducers_reference.json"


# ---------------------------------------------------------------------------
# ToMe
# Source: facebookresearch/ToMe @ af95e4b1befa172dadccd8c81e223b10090f9579 (HEAD),
# tome/merge.py: do_nothing, bipartite_soft_matching, merge_wavg, merge_source, run
# unchanged (read by scripts/authors.py from a clone; licence CC BY-NC 4.0, so none of it
# is copied here).
# Caller: tome/patch/timm.py (@ 049a70550eb6fb8a4b7ddd45b7fa4fe8bebe97ca):
# ToMeAttention returns `k.mean(1)` (keys averaged over heads, NOT normalised) as
# `metric`; ToMeBlock calls bipartite_soft_matching(metric, r, class_token, distill_token)
# between the attention residual and the MLP, then merge_source (if trace_source) and
# merge_wavg(merge, x, size). The L2 normalisation happens inside
# bipartite_soft_matching (`metric = metric / metric.norm(dim=-1, keepdim=True)`),
# so the fixtures record the raw, un-normalised metric.
# ---------------------------------------------------------------------------

authors.run(
    authors.defs("tome", "tome/merge.py", "do_nothing", "bipartite_soft_matching", "merge_wavg", "merge_source"),
    globals(), "tome")


def closure_vars(fn):
    """Read the variables a closure captured (here: merge's unm_idx, src_idx,
    dst_idx, r), so the authors' ToMe function needs no instrumentation."""
    return {name: cell.cell_contents for name, cell in zip(fn.__code__.co_freevars, fn.__closure__)}




# ---------------------------------------------------------------------------
# DivPrune
# Source: vbdi/divprune (CVPR 2025), LLaVA/llava/model/llava_arch.py, methods
# LlavaMetaForCausalLM.pairwise_cosine_similarity and LlavaMetaForCausalLM.DivPrune.
# That repository is not reachable here; the functions run (unchanged, read by
# scripts/authors.py) are the module-level copy in
#   ModelTC/llmc @ 50da6b61c4c577441c7d45e45652719f237955c5 (licence Apache-2.0),
#   llmc/compression/token_reduction/divprune.py (functions pairwise_cosine_similarity, divprune)
# whose body matches, line for line, the method quoted in several LLaVA forks of
# the vbdi code (same `threshold_terms = int(round(threshold_ratio*image_feature_length))`,
# topk(.., 2, largest=False).values[1,:] on the first step, min over the selected
# rows afterwards, argmax), with `self` dropped.
# pairwise_cosine_similarity is the authors' own helper (NOT torchmetrics'):
# row-normalise with matrix.norm(dim=1) (no epsilon) and one matmul.
# The caller (divprune_post_hook in llmc; same in vbdi) adds the offset of the
# first image token and SORTS the kept indices (`keep_indexs.sort()`), so the
# tokens reach the LLM in raster order; `s` itself is in selection order.
# ---------------------------------------------------------------------------

authors.run(
    authors.defs("divprune", "llmc/compression/token_reduction/divprune.py", "pairwise_cosine_similarity", "divprune"),
    globals(), "divprune")


# ---------------------------------------------------------------------------
# Fixture helpers (ours)
# ---------------------------------------------------------------------------

def f32s(a):
    """float32 array -> nested lists of Python floats with the shortest text
    that round-trips the float32 value."""
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 0:
        v = float(a)
        if not math.isfinite(v):
            return None
        return float(np.format_float_positional(np.float32(a), unique=True, trim="-"))
    return [f32s(v) for v in a]


def rounded(rng_values, decimals=4):
    return np.round(rng_values, decimals).astype(np.float32)


def run_tome(metric_np, x_np, size_np, r, class_token, dtype):
    metric = torch.tensor(metric_np, dtype=dtype)[None]
    x = torch.tensor(x_np, dtype=dtype)[None]
    size = None if size_np is None else torch.tensor(size_np, dtype=dtype)[None, :, None]
    merge, _ = bipartite_soft_matching(metric, r, class_token, False)
    if merge is do_nothing:
        raise SystemExit("r clamped to 0; pick other parameters")
    cv = closure_vars(merge)
    source = merge_source(merge, x, None)
    x_out, size_out = merge_wavg(merge, x, size)
    # node_max / node_idx are locals of bipartite_soft_matching; recompute them
    # with the same statements (ours, for the fixture only).
    with torch.no_grad():
        m = metric / metric.norm(dim=-1, keepdim=True)
        scores = m[..., ::2, :] @ m[..., 1::2, :].transpose(-1, -2)
        if class_token:
            scores[..., 0, :] = -math.inf
        node_max, node_idx = scores.max(dim=-1)
    return {
        "r_effective": int(cv["r"]),
        "node_max": node_max[0].numpy(),
        "node_idx": node_idx[0].tolist(),
        "unm_idx": cv["unm_idx"][0, :, 0].tolist(),
        "src_idx": cv["src_idx"][0, :, 0].tolist(),
        "dst_idx": cv["dst_idx"][0, :, 0].tolist(),
        "x": x_out[0].numpy(),
        "size": size_out[0, :, 0].numpy(),
        "source": source[0].numpy(),
    }


def tome_case(name, note, metric, x, size, r, class_token, dense_source_max_t=40):
    t = metric.shape[0]
    out32 = run_tome(metric, x, size, r, class_token, torch.float32)
    out64 = run_tome(metric, x, size, r, class_token, torch.float64)
    for k in ("r_effective", "node_idx", "unm_idx", "src_idx", "dst_idx"):
        if out32[k] != out64[k]:
            raise SystemExit(f"{name}: {k} differs between float32 and float64")
    if not np.array_equal(out32["source"], out64["source"]):
        raise SystemExit(f"{name}: source differs between float32 and float64")

    # Independent check of ToMe's output layout: rows = A[unm_idx] then all of B.
    unm, src, dst = out32["unm_idx"], out32["src_idx"], out32["dst_idx"]
    nb = t // 2
    out_tokens = [2 * i for i in unm] + [2 * j + 1 for j in range(nb)]
    groups = [[tok] for tok in out_tokens]
    for s_, d_ in zip(src, dst):
        groups[len(unm) + d_].append(2 * s_)
    groups = [sorted(g) for g in groups]
    src_groups = [sorted(np.nonzero(row)[0].tolist()) for row in out32["source"]]
    assert groups == src_groups, (name, groups, src_groups)
    w = np.ones(t) if size is None else size.astype(np.float64)
    x_chk = np.stack([(w[g, None] * x[g].astype(np.float64)).sum(0) / w[g].sum() for g in groups])
    assert np.allclose(x_chk, out32["x"], rtol=1e-5, atol=1e-5), name
    assert np.allclose([w[g].sum() for g in groups], out32["size"]), name

    # Margins (float64, ours): how far each decision is from a tie.
    with torch.no_grad():
        m = torch.tensor(metric, dtype=torch.float64)
        m = m / m.norm(dim=-1, keepdim=True)
        sc = (m[::2] @ m[1::2].T).numpy()
    rows = range(1, sc.shape[0]) if class_token else range(sc.shape[0])
    best = np.array([np.sort(sc[i])[::-1] for i in rows])
    argmax_gap = float((best[:, 0] - best[:, 1]).min()) if best.shape[1] > 1 else None
    rank_gap = float(np.diff(np.sort(best[:, 0])).min()) if best.shape[0] > 1 else None

    rec = {
        "name": name,
        "note": note,
        "inputs": {
            "t": t,
            "c": int(metric.shape[1]),
            "metric": f32s(metric),
            "x": f32s(x),
            "size": None if size is None else f32s(size),
            "r": r,
            "class_token": class_token,
            "distill_token": False,
        },
        "outputs": {
            "r_effective": out32["r_effective"],
            "node_max": f32s(out32["node_max"]),
            "node_idx": out32["node_idx"],
            "unm_idx": unm,
            "src_idx": src,
            "dst_idx": dst,
            "out_tokens": out_tokens,
            "x": f32s(out32["x"]),
            "size": f32s(out32["size"]),
            "source_groups": src_groups,
            "source": (out32["source"].astype(int).tolist() if t <= dense_source_max_t else None),
            "min_argmax_gap": argmax_gap,
            "min_rank_gap": rank_gap,
        },
    }
    return rec


def divprune_selection(features_np, k, dtype, distance_np=None):
    if distance_np is not None:
        feats = torch.zeros(distance_np.shape[0], 1, dtype=dtype)  # only device/len are used
        cos = torch.tensor(distance_np, dtype=dtype)
        n = distance_np.shape[0]
    else:
        feats = torch.tensor(features_np, dtype=dtype)
        cos = None
        n = features_np.shape[0]
    # threshold_ratio chosen so that int(round(ratio * n)) == k exactly.
    s, dist = divprune(feats, n, cos, threshold_ratio=k / n)
    assert s.shape[0] == k
    return s.tolist(), dist.numpy()


def divprune_margins(dist, s):
    """Smallest gap between the winning score and the runner-up at each step,
    recomputed in float64 (to show the selection is not a near-tie)."""
    gaps = []
    for i in range(len(s)):
        if i == 0:
            sc = np.sort(dist, axis=0)[1, :]
        else:
            sc = dist[s[:i], :].min(axis=0)
        srt = np.sort(sc)[::-1]
        gaps.append(float(srt[0] - srt[1]))
    return min(gaps)


def divprune_case(name, note, features=None, distance=None, k=None):
    s32, _ = divprune_selection(features, k, torch.float32, distance)
    s64, d64 = divprune_selection(features, k, torch.float64, distance)
    if s32 != s64:
        raise SystemExit(f"{name}: selection differs between float32 and float64")
    n = (features if features is not None else distance).shape[0]
    return {
        "name": name,
        "note": note,
        "inputs": {
            "n": int(n),
            "d": None if features is None else int(features.shape[1]),
            "features": None if features is None else f32s(features),
            "distance": None if distance is None else f32s(distance),
            "k": k,
        },
        "outputs": {
            "s": s32,
            "kept_sorted": sorted(s32),
            "min_step_gap": divprune_margins(d64, s64),
        },
    }


def main():
    tome = []

    # (a) hand-sized toy. Token 0 = CLS; A = {0, 2, 4}, B = {1, 3, 5}.
    # Unit-ish keys in 3-D so the cosine table is easy to read:
    #   token 2 best matches token 3 (cos 0.9950; vs 1: 0, vs 5: 0.62),
    #   token 4 best matches token 5 (cos 0.9939; vs 1 and 3: 0.71);
    #   the CLS row is masked (-inf). With r = 2 both A patch tokens merge,
    #   edge order by similarity: 2 -> 3 first, then 4 -> 5.
    metric = np.array([
        [0.0, 0.0, 1.0],   # 0 CLS
        [1.0, 0.0, 0.0],   # 1 (B0)
        [0.0, 1.0, 0.1],   # 2 (A1)
        [0.0, 1.0, 0.0],   # 3 (B1)
        [1.0, 1.0, 0.0],   # 4 (A2)
        [1.0, 0.8, 0.0],   # 5 (B2)
    ], dtype=np.float32)
    x = np.array([[100, -100], [10, 1], [20, 2], [30, 3], [40, 4], [50, 5]], dtype=np.float32)
    tome.append(tome_case(
        "toy_cls_t6_r2",
        "A=even tokens (0=CLS,2,4), B=odd (1,3,5). Expected: 2->3, 4->5; output rows = [0, 1, 3+2, 5+4].",
        metric, x, None, 2, True))

    # (b) seeded random cases.
    specs = [
        # name, seed, t, c, c2, r, class_token, int sizes
        ("rand_t17_c8_r5", 1017, 17, 8, 4, 5, True, False),
        ("rand_t33_c64_r8_sizes", 1033, 33, 64, 3, 8, True, True),
        ("rand_t33_c8_r100_clamped", 2033, 33, 8, 3, 100, True, False),
        ("rand_t257_c8_r1", 1257, 257, 8, 2, 1, True, False),
        ("rand_t17_c8_r5_nocls", 3017, 17, 8, 2, 5, False, False),
    ]
    for name, seed, t, c, c2, r, cls, int_sizes in specs:
        rng = np.random.default_rng(seed)
        metric = rounded(rng.standard_normal((t, c)))
        x = rounded(rng.standard_normal((t, c2)))
        size = rng.integers(1, 5, size=t).astype(np.float32) if int_sizes else None
        note = f"numpy default_rng({seed}); metric=round(N(0,1),4) [t,c], x=round(N(0,1),4) [t,c2]"
        if int_sizes:
            note += "; size=integers(1,5) [t]"
        if not cls:
            note += "; class_token=False: unm_idx keeps argsort order (NOT sorted)"
        tome.append(tome_case(name, note, metric, x, size, r, cls))

    div = []
    # Hand-sized case given directly as the distance matrix (DivPrune accepts
    # `cosine_matrix=` = the distance 1 - cos). Column nearest-neighbour
    # distances are [.1,.1,.2,.3,.2] -> first pick 3; then farthest from {3} is 0
    # (0.9); then min-dist to {3,0} is [0,.1,.3,0,.35] -> 4; then {3,0,4} -> 2.
    D = np.array([
        [0.00, 0.10, 0.50, 0.90, 0.60],
        [0.10, 0.00, 0.45, 0.80, 0.70],
        [0.50, 0.45, 0.00, 0.30, 0.20],
        [0.90, 0.80, 0.30, 0.00, 0.35],
        [0.60, 0.70, 0.20, 0.35, 0.00],
    ], dtype=np.float32)
    div.append(divprune_case("toy_distance_5x5_k4",
                             "distance matrix given directly; expected s = [3, 0, 4, 2]",
                             distance=D, k=4))
    dspecs = [
        ("rand_n16_d384_k6", 2016, 16, 384, 6),
        ("rand_n64_d8_k16", 2064, 64, 8, 16),
        ("rand_n256_d8_k64", 2256, 256, 8, 64),
        ("rand_n64_d8_k64_all", 3064, 64, 8, 64),
    ]
    for name, seed, n, d, k in dspecs:
        rng = np.random.default_rng(seed)
        feats = rounded(rng.standard_normal((n, d)))
        div.append(divprune_case(
            name, f"numpy default_rng({seed}); features=round(N(0,1),4) [n,d]", features=feats, k=k))

    doc = {
        "format": "tokenlens reducers reference v1",
        "generator": "scripts/make_reducer_reference.py",
        "torch": torch.__version__.split("+")[0],
        "numpy": np.__version__,
        "conventions": {
            "indices": "0-based",
            "tome": (
                "metric [t,c] is the RAW metric (ToMe's caller passes k.mean(over heads)); "
                "bipartite_soft_matching L2-normalises it. Tokens include the CLS token at index 0 "
                "when class_token is true. A = tokens 0,2,4,... (A[i] = token 2i), B = tokens 1,3,5,... "
                "(B[j] = token 2j+1). unm_idx/src_idx index A, dst_idx indexes B, node_idx indexes B "
                "(per A row, argmax); node_max has null for the masked CLS row (-inf). src_idx[k] merges "
                "into dst_idx[k]. src_idx is in descending node_max order; unm_idx is sorted ascending iff "
                "class_token. Output rows (x, size, source) are [A[unm_idx] in that order] followed by ALL "
                "of B in order; out_tokens gives the original token index each output row sits on. "
                "source_groups[row] lists the original tokens merged into that row (ascending); "
                "source is the dense 0/1 [t-r, t] matrix (null when t > 40). min_argmax_gap / min_rank_gap "
                "(float64) = smallest best-vs-second-best similarity gap over A rows / smallest gap between "
                "sorted node_max values, i.e. distance from a tie. r_effective = "
                "min(r, (t - protected) // 2). Outputs computed in float32; index outputs checked equal in float64."
            ),
            "divprune": (
                "features [n,d] (or, for toy cases, the distance matrix [n,n] = 1 - cos given directly). "
                "s = selection order exactly as DivPrune returns it (unsorted); kept_sorted = the order "
                "the caller feeds to the LLM. k = int(round(ratio * n)) in the original (Python round, "
                "half to even); here ratio = k / n. min_step_gap = smallest winner/runner-up gap over "
                "the greedy steps (float64), to show no step is a near-tie."
            ),
        },
        "tome": tome,
        "divprune": div,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    OUT.write_text(text + "\n")
    print(f"wrote {OUT} ({len(text)} bytes)")


if __name__ == "__main__":
    sys.exit(main())

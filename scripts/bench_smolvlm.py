#!/usr/bin/env python3
"""tokenlens against onnxruntime and transformers on SmolVLM-256M's shapes, alternating.

Issue 17, target 4, on a random-weight checkpoint with SmolVLM-256M-Instruct's published config
(scripts/make_random_smolvlm.py; timings do not depend on the weights):

    tower    the SigLIP vision tower (Idefics3VisionTransformer: 512 px, patch 16, 1024 patches,
             12 layers, hidden 768, final LayerNorm) exported from transformers to ONNX
             (torch.onnx.export) and run by onnxruntime, against `tokenlens bench --part tower`
             on the same image (its unsplit 512 x 512 square)
    decoder  the language model (30 layers): a prefill of P fixed token ids ((37 i + 11) mod
             vocab) plus the head's last row, then D greedy decode steps against the KV cache,
             in transformers (torch, CPU) against `tokenlens bench --part decoder`

Each round starts tokenlens as a subprocess (its load is not timed) with the same thread count.
The tower alternates call by call: `tokenlens bench --part tower --paced` waits after its
warm-up and runs one call per line it is sent, so each of a round's calls is paired with an
onnxruntime call made just before or after it (the order swapping pair by pair, a pause of
PAUSE_S between calls so neither side's threads still spin). This machine's load comes in
bursts of seconds that slow every operator alike; two calls next to each other see the same
burst, where two sets of calls made a few seconds apart did not. A round's ratio is the median
of its pairs' ratios. The decoder runs the reference side, then tokenlens. Ratios are computed
per round, then the median over rounds (with the spread). Tower: tokenlens ms / onnxruntime ms
(below 1.0 tokenlens is faster). Decoder: tokenlens tokens/s / transformers tokens/s (above 1.0
tokenlens is faster), for the prefill (P / prefill time) and the decode (D / decode time).

The pixels onnxruntime sees are the image resized to 512 x 512 and scaled to [-1, 1], as the
Idefics3 processor does without splitting (tokenlens makes them itself); timings do not depend on
the values.

Usage:
    /opt/pyenv/bin/python scripts/make_random_smolvlm.py      # once: target/smolvlm-256m-random
    python scripts/bench_smolvlm.py [--part tower|decoder|both] [--rounds 4] [--repeats 3] [--ort-profile]
    (also: python scripts/bench_vs_onnxruntime.py --smolvlm [DIR] ...)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# Between two paired tower calls: onnxruntime's intra-op threads spin for up to ~50 ms of CPU
# after a run (measured here), which would otherwise land on the tokenlens call after it.
PAUSE_S = 0.2
DEFAULT_DIR = REPO / "target" / "smolvlm-256m-random"


def time_ms(f):
    t = time.perf_counter()
    f()
    return (time.perf_counter() - t) * 1e3


def spread(ratios):
    return f"{statistics.median(ratios):.2f}x  (rounds {min(ratios):.2f}-{max(ratios):.2f})"


def load_model(model_dir):
    import torch
    from transformers import AutoModelForImageTextToText

    # float32, as tokenlens computes (the checkpoint is stored in bfloat16).
    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()


def export_tower(model, image_size, path):
    import torch

    class Tower(torch.nn.Module):
        """Idefics3VisionTransformer.forward for one whole image (no patch mask): the same
        modules, with position ids 0..patches written out (the embeddings' bucketize of a
        boundary mask does not export) and no attention mask (all patches are real)."""

        def __init__(self, vision):
            super().__init__()
            self.vision = vision

        def forward(self, pixel_values):
            v = self.vision
            patches = v.embeddings.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
            hidden = patches + v.embeddings.position_embedding.weight[None]
            hidden = v.encoder(inputs_embeds=hidden, attention_mask=None).last_hidden_state
            return v.post_layernorm(hidden)

    x = torch.rand(1, 3, image_size, image_size) * 2 - 1
    with torch.no_grad():
        want = model.model.vision_model(pixel_values=x).last_hidden_state
        if (Tower(model.model.vision_model)(x) - want).abs().max() > 1e-4:
            sys.exit("the export wrapper does not compute what Idefics3VisionTransformer computes")
        torch.onnx.export(
            Tower(model.model.vision_model).eval(),
            (x,),
            str(path),
            input_names=["pixel_values"],
            output_names=["features"],
            opset_version=18,
            dynamo=False,
        )


def ort_session(path, threads, spin, profile=False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(os.environ.get("TMPDIR", "/tmp")) / "tokenlens_ort_profile")
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def ort_op_times(path, threads, spin, x, calls):
    """onnxruntime's own profile of `calls` tower calls: milliseconds per call by operator type
    (after its graph optimisations fused what they fuse), largest first, and the whole run."""
    sess = ort_session(path, threads, spin, profile=True)
    sess.run(None, {"pixel_values": x})  # warm-up, profiled too: dropped below
    for _ in range(calls):
        sess.run(None, {"pixel_values": x})
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][1:]
    start = runs[0]["ts"]
    ops = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            ops[e["args"]["op_name"]] = ops.get(e["args"]["op_name"], 0) + e["dur"] / 1e3 / len(runs)
    return sorted(ops.items(), key=lambda kv: -kv[1]), statistics.median(e["dur"] / 1e3 for e in runs)


def tower_pixels(image, size):
    from PIL import Image

    with Image.open(REPO / image) as im:
        im = im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    x = np.asarray(im, np.float32) / 255.0 * 2.0 - 1.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def tokenlens(args, *extra):
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    cmd = [args.binary, "bench", "--model", str(args.model), "--repeats", str(args.repeats), *extra]
    done = subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def tower_round(args, ort_call):
    """One round of the tower, call by call: `args.repeats` (onnxruntime ms, tokenlens ms) pairs,
    onnxruntime first in even pairs and second in odd ones."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    cmd = [args.binary, "bench", "--model", str(args.model), "--repeats", str(args.repeats)]
    cmd += ["--part", "tower", "--paced", args.image]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )

    def ours():
        proc.stdin.write("\n")
        proc.stdin.flush()
        return float(proc.stdout.readline())

    def theirs():
        return time_ms(ort_call)

    try:
        if not any(line.strip() == "ready" for line in proc.stdout):  # loaded and warmed up
            sys.exit(f"{' '.join(cmd)} ended before it was ready (exit {proc.wait()})")
        pairs = []
        for i in range(args.repeats):
            ms = {}
            for side in (theirs, ours) if i % 2 == 0 else (ours, theirs):
                ms[side] = side()
                time.sleep(PAUSE_S)
            pairs.append((ms[theirs], ms[ours]))
        proc.stdin.close()
        proc.stdout.read()
    except BaseException:
        proc.kill()
        raise
    if proc.wait() != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode})")
    return pairs


def torch_decoder_round(model, ids, decode, repeats):
    import torch

    text, head = model.model.text_model, model.lm_head
    prefill_ms, decode_ms = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            t = time.perf_counter()
            out = text(input_ids=ids, use_cache=True)
            past = out.past_key_values
            nxt = head(out.last_hidden_state[:, -1:]).argmax(-1)
            prefill_ms.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            for _ in range(decode):
                out = text(input_ids=nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = head(out.last_hidden_state).argmax(-1)
            decode_ms.append((time.perf_counter() - t) * 1e3)
    return prefill_ms, decode_ms


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--part", choices=["tower", "decoder", "both"], default="both")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per side per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image", default="assets/chelsea.png")
    ap.add_argument("--prefill-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--ort-no-spin", action="store_true", help="onnxruntime workers sleep instead of spinning")
    ap.add_argument(
        "--ort-profile", action="store_true", help="after the rounds, onnxruntime's time per operator type"
    )
    ap.add_argument("--binary", default=str(REPO / "target" / "release" / "tokenlens"))
    args = ap.parse_args()
    if not (args.model / "model.safetensors").is_file():
        sys.exit(f"{args.model} has no model.safetensors: run scripts/make_random_smolvlm.py first")

    import onnxruntime
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    parts = ["tower", "decoder"] if args.part == "both" else [args.part]
    ort, ids = None, None
    if "tower" in parts:
        size = model.config.vision_config.image_size
        onnx_path = Path(os.environ.get("TMPDIR", "/tmp")) / "tokenlens_bench_smolvlm_tower.onnx"
        export_tower(model, size, onnx_path)
        ort = ort_session(onnx_path, args.threads, not args.ort_no_spin)
        x = tower_pixels(args.image, size)
        with torch.no_grad():
            want = model.model.vision_model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
        err = np.abs(ort.run(None, {"pixel_values": x})[0] - want).max()  # also the warm-up
        if err > 1e-3:
            sys.exit(f"onnxruntime's tower differs from transformers' by {err:.2e}")
        tokenlens(args, "--part", "tower", args.image)
    if "decoder" in parts:
        vocab = model.config.text_config.vocab_size
        ids = torch.tensor([[(37 * i + 11) % vocab for i in range(args.prefill_tokens)]])
        dec = ["--part", "decoder", "--prefill-tokens", str(args.prefill_tokens)]
        dec += ["--decode-tokens", str(args.decode_tokens)]
        torch_decoder_round(model, ids, args.decode_tokens, 1)  # warm-up

    tower, prefill, decode, ref_tower = [], [], [], []
    for r in range(args.rounds):
        line = f"round {r + 1}/{args.rounds}:"
        if "tower" in parts:
            pairs = tower_round(args, lambda: ort.run(None, {"pixel_values": x}))
            o, t = (statistics.median(side) for side in zip(*pairs))
            tower.append(statistics.median(b / a for a, b in pairs))
            ref_tower.append(o)
            line += f" tower onnxruntime {o:.0f} ms, tokenlens {t:.0f} ms (pairs {tower[-1]:.2f}x);"
        if "decoder" in parts:
            p_ms, d_ms = torch_decoder_round(model, ids, args.decode_tokens, args.repeats)
            tl = tokenlens(args, *dec)
            # tokens/s ratio = reference time / tokenlens time
            prefill.append(statistics.median(p_ms) / statistics.median(tl["prefill"]))
            decode.append(statistics.median(d_ms) / statistics.median(tl["decode"]))
            line += f" prefill {prefill[-1]:.2f}x, decode {decode[-1]:.2f}x (tokenlens / transformers tokens/s)"
        print(line, file=sys.stderr, flush=True)

    print(
        f"SmolVLM-256M shapes, random weights ({args.model.name}); {args.threads} threads each; "
        f"{args.rounds} rounds x {args.repeats} calls, alternating (the tower call by call); load average {os.getloadavg()[0]:.1f}"
    )
    if tower:
        print(
            f"4. tower, tokenlens / onnxruntime {onnxruntime.__version__} (time):   {spread(tower)}   "
            f"target <= 1.0x  (onnxruntime median {statistics.median(ref_tower):.0f} ms this run)"
        )
    if tower and args.ort_profile:
        ops, whole = ort_op_times(onnx_path, args.threads, not args.ort_no_spin, x, args.repeats)
        print(f"onnxruntime's profile, ms per tower call ({args.repeats} calls; model_run median {whole:.0f} ms):")
        for op, ms in ops:
            print(f"  {op:28s} {ms:8.1f}")
    if prefill:
        print(
            f"4. decoder prefill ({args.prefill_tokens} tokens), tokenlens / transformers {transformers.__version__} "
            f"(tokens/s): {spread(prefill)}   target >= 1.0x"
        )
        print(
            f"4. decoder decode ({args.decode_tokens} tokens), tokenlens / transformers (tokens/s): "
            f"{spread(decode)}   target >= 1.0x"
        )


if __name__ == "__main__":
    main()

"""A random-weight LLaVA folder for measuring the loader's peak memory (not committed).

LLaVA-1.5-7B's shapes with fewer layers (defaults: 12 vision, 2 text; ~0.84 B parameters,
1.7 GB in bf16, 3.4 GB as f32), saved in bf16 in 500 MB shards like the published folder, next
to the published tokenizer and processor files. The model is built on the meta device (names and
shapes only) and each tensor drawn in bf16 as its shard is written, so at most one shard is in
memory (the 7B folder is made in ~1 GB of RAM). Values: N(0, 0.02²) for matrices and embeddings,
ones for norm weights, zeros for biases (timing only: the answers mean nothing).

    /opt/pyenv/bin/python scripts/make_large_llava.py OUT [--vision-layers 12] [--text-layers 2]
    /usr/bin/time -v target/release/tokenlens analyze --model OUT   # loads, then refuses: a VLM

For LLaVA-1.5-7B's own shapes (issue 15's 14 GB bf16 checkpoint): --vision-layers 24 --text-layers 32.
`--device cuda` draws the values on a GPU (a minute instead of many on a machine that has one;
other values than the CPU's, which does not matter for timing).
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import LlavaConfig, LlavaForConditionalGeneration

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "tests" / "fixtures" / "published" / "llava-1.5-7b-hf"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--vision-layers", type=int, default=12)
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--shard", default="500MB")
    ap.add_argument("--device", default="cpu", help="where the values are drawn: cpu or cuda")
    args = ap.parse_args()
    config = json.loads((PUBLISHED / "config.json").read_text())
    config["vision_config"]["num_hidden_layers"] = args.vision_layers
    config["text_config"]["num_hidden_layers"] = args.text_layers
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(LlavaConfig(**config))
    shapes = {k: (v.shape, v.dtype) for k, v in model.state_dict().items() if v.dtype.is_floating_point}
    limit = parse_size(args.shard)
    args.out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator(device=args.device).manual_seed(0)
    shards, current, size = 0, {}, 0

    def flush():
        # Writes the shard and lets its tensors go; a shard already on disk with these names
        # (a run interrupted) is kept.
        nonlocal current, size, shards
        if current:
            shards += 1
            path = args.out / f"model-{shards:05d}.safetensors"
            if not (path.is_file() and set(safe_open(str(path), "pt").keys()) == set(current)):
                save_file({k: make(k) for k in current}, str(path), metadata={"format": "pt"})
            current, size = {}, 0

    def make(name):
        shape = shapes[name][0]
        if name.endswith("bias"):
            return torch.zeros(shape, dtype=torch.bfloat16)
        if len(shape) == 1:
            return torch.ones(shape, dtype=torch.bfloat16)
        return (torch.randn(shape, generator=g, device=args.device) * 0.02).to(torch.bfloat16).cpu()

    weight_map = {}
    for name, (shape, _) in shapes.items():
        nbytes = shape.numel() * 2
        if size and size + nbytes > limit:
            flush()
        current[name] = None  # drawn when its shard is written
        size += nbytes
        weight_map[name] = f"model-{shards + 1:05d}.safetensors"
    flush()
    # Shard names carry their index only (the published folder's "-of-N" needs the count first).
    total = sum(s.numel() for s, _ in shapes.values())
    index = {"metadata": {"total_size": total * 2}, "weight_map": weight_map}
    (args.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    (args.out / "config.json").write_text(json.dumps(config, indent=1))
    for f in PUBLISHED.iterdir():
        if f.name != "config.json" and f.is_file():
            shutil.copy(f, args.out / f.name)
    print(args.out, total, "parameters in", shards, "shards")


def parse_size(text):
    units = {"GB": 10**9, "MB": 10**6, "KB": 10**3}
    for unit, factor in units.items():
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


if __name__ == "__main__":
    main()

"""A random-weight LLaVA folder for measuring the loader's peak memory (not committed).

LLaVA-1.5-7B's shapes with fewer layers (defaults: 12 vision, 2 text; ~0.84 B parameters,
1.7 GB in bf16, 3.4 GB as f32), saved in bf16 in 500 MB shards like the published folder, next
to the published tokenizer and processor files:

    /opt/pyenv/bin/python scripts/make_large_llava.py OUT [--vision-layers 12] [--text-layers 2]
    /usr/bin/time -v target/release/tokenlens analyze --model OUT   # loads, then refuses: a VLM

For LLaVA-1.5-7B's own shapes (issue 15's 14 GB bf16 checkpoint): --vision-layers 24 --text-layers 32.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "tests" / "fixtures" / "published" / "llava-1.5-7b-hf"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--vision-layers", type=int, default=12)
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--shard", default="500MB")
    args = ap.parse_args()
    config = json.loads((PUBLISHED / "config.json").read_text())
    config["vision_config"]["num_hidden_layers"] = args.vision_layers
    config["text_config"]["num_hidden_layers"] = args.text_layers
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(**config)).to(torch.bfloat16)
    model.save_pretrained(args.out, max_shard_size=args.shard)
    for f in PUBLISHED.iterdir():
        if f.name != "config.json":
            shutil.copy(f, args.out / f.name)
    print(args.out, sum(p.numel() for p in model.parameters()), "parameters")


if __name__ == "__main__":
    main()

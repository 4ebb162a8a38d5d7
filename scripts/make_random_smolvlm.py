#!/usr/bin/env python
"""Random-weight SmolVLM checkpoints for the decoder-resume checks.

Full size (default), for `tokenlens bench --model`:

Writes OUT (default: target/smolvlm-256m-random, ignored by git; about 0.5 GB, not committed): the
published folder's files (tests/fixtures/published/SmolVLM-256M-Instruct: config, processor,
tokenizer and chat template, as published) plus model.safetensors with transformers' default
random initialisation (seed 0) at the published sizes (30 decoder layers, hidden 576, SigLIP
tower of 12 layers) in the published dtype (bfloat16). The weights say nothing about answers:
the checkpoint is for timing only.

Run: /opt/pyenv/bin/python scripts/make_random_smolvlm.py [OUT]   (CPU, about a minute)

Tiny and deep (`--fixture`), for tests/vlm_resume.rs: tests/fixtures/vlm/idefics3_deep/, the
tiny idefics3 fixture (tests/fixtures/vlm/idefics3: its tokenizer, chat template and processor)
with 6 decoder layers instead of 2, so that language-side methods have layers before and after
their sites. Weights from make_vlm_fixtures.reinit_ (peaked attention, clear greedy margins),
seed 7; float32. No transformers reference: the test compares resumed runs with runs from
scratch. Written with the versions pinned in scripts/requirements-vlm.txt.

Run: /opt/pyenv/bin/python scripts/make_random_smolvlm.py --fixture
"""

import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, Idefics3ForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_vlm_fixtures as vf  # noqa: E402  (build, save_model)

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = REPO / "tests" / "fixtures" / "published" / "SmolVLM-256M-Instruct"
TINY = REPO / "tests" / "fixtures" / "vlm" / "idefics3"
DEEP = REPO / "tests" / "fixtures" / "vlm" / "idefics3_deep"
DEEP_LAYERS = 6
DEEP_SEED = 7


def make_deep_fixture():
    if DEEP.exists():
        shutil.rmtree(DEEP)
    DEEP.mkdir(parents=True)
    for f in TINY.iterdir():
        if f.name not in ("model.safetensors", "reference.json", "config.json"):
            shutil.copy(f, DEEP / f.name)
    config = AutoConfig.from_pretrained(TINY)
    config.text_config.num_hidden_layers = DEEP_LAYERS
    model = vf.build(Idefics3ForConditionalGeneration, config, DEEP_SEED)
    vf.save_model(model, DEEP)
    total = sum(f.stat().st_size for f in DEEP.iterdir())
    print(f"wrote {DEEP}: {DEEP_LAYERS} decoder layers, {total / 1024:.0f} KiB")


def main():
    if sys.argv[1:] == ["--fixture"]:
        make_deep_fixture()
        return
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "target" / "smolvlm-256m-random"
    out.mkdir(parents=True, exist_ok=True)
    for f in PUBLISHED.iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    config = AutoConfig.from_pretrained(out)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32).to(torch.bfloat16).eval()
    model.save_pretrained(out / "saved")
    shutil.move(out / "saved" / "model.safetensors", out / "model.safetensors")
    shutil.rmtree(out / "saved")
    # save_pretrained rewrote nothing of ours: the published config.json stays as published.
    shutil.copy(PUBLISHED / "config.json", out / "config.json")
    layers = config.text_config.num_hidden_layers
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {params / 1e6:.0f}M parameters, {layers} decoder layers")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""A tiny LLaVA whose decoder widths are multiples of 256, for the quantization tests.

tests/fixtures/vlm/llava_wide/: the tiny llava fixture (tests/fixtures/vlm/llava: its tokenizer,
chat template, processor and vision tower sizes) with a wider language model: hidden 256,
intermediate 256, 4 query heads of 64, 2 KV heads, 2 layers, so every decoder linear layer and
lm_head can be quantized with q8_0 (blocks of 32) and q4k (blocks of 256). The projector's first
layer reads the 32-wide tower: q8_0 takes it, q4k leaves it f32. Weights from
make_vlm_fixtures.reinit_ (peaked attention, lm_head scaled for clear greedy margins), seed 11;
float32, about 3.7 MB.

reference.json: transformers' greedy answer (8 tokens) to the shared question on
assets/chelsea.png, with the top-1 minus top-2 logit margin of each step: the f32 run must give
these ids, and the margins say how much error a quantized run can take before an id flips.

Run: /opt/pyenv/bin/python scripts/make_wide_llava.py   (versions: scripts/requirements-vlm.txt)
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_vlm_fixtures as vf  # noqa: E402  (build, save_model, vlm_generate, greedy_margins)

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "fixtures" / "vlm" / "llava"
WIDE = REPO / "tests" / "fixtures" / "vlm" / "llava_wide"
SEED = 11


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if WIDE.exists():
        shutil.rmtree(WIDE)
    WIDE.mkdir(parents=True)
    for f in TINY.iterdir():
        if f.name not in ("model.safetensors", "reference.json", "config.json"):
            shutil.copy(f, WIDE / f.name)
    config = AutoConfig.from_pretrained(TINY)
    t = config.text_config
    t.hidden_size, t.intermediate_size, t.head_dim = 256, 256, 64
    t.num_attention_heads, t.num_key_value_heads = 4, 2
    model = vf.build(LlavaForConditionalGeneration, config, SEED)
    model.generation_config.do_sample = False
    vf.save_model(model, WIDE)

    proc = AutoProcessor.from_pretrained(WIDE)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": vf.VLM_QUESTION}]}]
    prompt = proc.apply_chat_template(messages, add_generation_prompt=True)
    inputs = dict(proc(text=prompt, images=[vf.load_image()], return_tensors="pt"))
    n = inputs["input_ids"].shape[1]
    gen = vf.vlm_generate(model, inputs)
    margins = vf.greedy_margins(gen.logits)
    ref = {
        "meta": {"script": "scripts/make_wide_llava.py", "seed": SEED, "question": vf.VLM_QUESTION},
        "prompt_ids": inputs["input_ids"][0].tolist(),
        "generated_ids": gen.sequences[0, n:].tolist(),
        "greedy_margins": [vf.r7(m) for m in margins],
    }
    (WIDE / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    total = sum(f.stat().st_size for f in WIDE.iterdir())
    print(f"wrote {WIDE}: {total / 1e6:.2f} MB; greedy ids {ref['generated_ids']}, min margin {min(margins):.3f}")


if __name__ == "__main__":
    main()

"""Parameter counts of published VLM configs, as transformers builds the models (on the meta
device: no memory, no weights). The memory guard's estimate (src/model/memory.rs) is tested
against these counts: tests/fixtures/published/parameter_counts.json.

    /opt/pyenv/bin/python scripts/count_parameters.py
"""

import json
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForImageTextToText

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "tests" / "fixtures" / "published"
FOLDERS = ["llava-1.5-7b-hf", "SmolVLM-256M-Instruct"]


def count(folder):
    config = AutoConfig.from_pretrained(PUBLISHED / folder)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    # Tied weights are one parameter: `parameters()` yields each tensor once.
    return sum(p.numel() for p in model.parameters())


def main():
    out = {"transformers": transformers.__version__, "torch": torch.__version__, "parameters": {}}
    for folder in FOLDERS:
        out["parameters"][folder] = count(folder)
        print(folder, out["parameters"][folder])
    path = PUBLISHED / "parameter_counts.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()

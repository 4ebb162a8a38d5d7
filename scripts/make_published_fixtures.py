#!/usr/bin/env python
"""References for the published model folders in tests/fixtures/published/.

The folders hold config, processor, generation and tokenizer files exactly as their publishers
wrote them (tests/fixtures/published/README.md says where each came from); no weights. This
script writes, next to them:

- resolved/<folder>.json: `AutoConfig.from_pretrained(folder).to_dict()`, what transformers
  resolves each config to (tests/published_configs.rs compares our resolution field by field);
- class_defaults.json: `Class().to_dict()` of every config class we mirror (our default tables
  are checked against it);
- tiny/<folder>/: a random-weight checkpoint that keeps every setting of the published config but
  the sizes (config.json is the published dict with only size fields changed, nulls and missing
  fields kept; the processor configs likewise; weights stored in the published dtype), and
  reference.json: the prompt ids transformers' processor makes from the published tokenizer and
  chat template for QUESTION about assets/chelsea.png, the greedy answer ids and their
  log-probabilities. The Rust test assembles the published folder + tiny/<folder> and runs it.

- tiny/<encoder folder>/ likewise for CLIP, with transformers' zero-shot scores (token ids of
  LABELS, pixel values of assets/chelsea.png, logits and probabilities).

Run: /opt/pyenv/bin/python scripts/make_published_fixtures.py [TINY NAME ...] (CPU, about a
minute; names limit which tiny checkpoints are remade, resolved configs are always rewritten).
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_encoder_fixtures as ef  # noqa: E402  (reinit_ for the encoder towers)
import make_vlm_fixtures as vf  # noqa: E402  (reinit_, r7, greedy_margins, VERSIONS)

import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor,
)

REPO = Path(__file__).resolve().parent.parent
PUB = REPO / "tests" / "fixtures" / "published"
QUESTION = "What is in the image?"
MAX_NEW_TOKENS = 6
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

CLASSES = [
    "ViTConfig", "DeiTConfig", "Dinov2Config", "CLIPVisionConfig", "SiglipVisionConfig", "Idefics3VisionConfig",
    "CLIPTextConfig", "SiglipTextConfig", "LlamaConfig", "CLIPConfig", "SiglipConfig", "LlavaConfig",
    "Idefics3Config",
]

# Image processor classes whose defaults fill what a preprocessor config leaves out
# (`src/model/hf_preprocess.rs`): `Class().to_dict()` of each, Pillow backend.
IMAGE_PROCESSOR_CLASSES = [
    "ViTImageProcessor", "DeiTImageProcessor", "CLIPImageProcessor", "SiglipImageProcessor", "BitImageProcessor",
    "Idefics3ImageProcessor", "LlavaImageProcessor",
]

# The tiny checkpoints: name -> (published folder, {file: {section: {field: value}}}), "" being
# the top level. Only size fields change, except in `llava-variants`, which also turns on the
# decoder settings implemented beyond the published ones (biases, linear rope scaling in the v4
# spelling, the tanh GELU), so that they are checked against transformers too.
LLAVA_SIZES = {
    "text_config": {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2},
    "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3,
                      "num_attention_heads": 2, "image_size": 28},
}
LLAVA_PREPROCESSOR = {"": {"crop_size": {"height": 28, "width": 28}, "size": {"shortest_edge": 28}}}
TINY = {
    "SmolVLM-256M-Instruct": ("SmolVLM-256M-Instruct", {
        "config.json": {
            # head_dim 4 with hidden 9: the explicit head_dim is what sizes the heads.
            "text_config": {"hidden_size": 9, "intermediate_size": 16, "num_hidden_layers": 2,
                            "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 4},
            "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "image_size": 32, "patch_size": 4,
                              "max_image_size": {"longest_edge": 32}, "size": {"longest_edge": 128}},
        },
        "preprocessor_config.json": {"": {"max_image_size": {"longest_edge": 32}, "size": {"longest_edge": 128}}},
        "processor_config.json": {"": {"image_seq_len": 4}},
    }),
    "llava-1.5-7b-hf": ("llava-1.5-7b-hf", {
        "config.json": LLAVA_SIZES,
        "preprocessor_config.json": LLAVA_PREPROCESSOR,
    }),
    "llava-variants": ("llava-1.5-7b-hf", {
        "config.json": {
            "text_config": {**LLAVA_SIZES["text_config"], "attention_bias": True, "mlp_bias": True,
                            "rope_scaling": {"type": "linear", "factor": 4.0}, "hidden_act": "gelu_pytorch_tanh"},
            "vision_config": LLAVA_SIZES["vision_config"],
        },
        "preprocessor_config.json": LLAVA_PREPROCESSOR,
    }),
}

# Encoder folders: a tiny CLIPModel keeping every published setting but the sizes (the patch size
# and the old `vision_config_dict` too; the image is 64 px, a 4 x 4 grid); sizes stay numbers in
# the preprocessor config, as published. The reference is zero-shot: LABELS against
# assets/chelsea.png.
CLIP_VISION_SIZES = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "image_size": 64, "projection_dim": 8}
ENCODER_TINY = {
    "clip-vit-base-patch16": ("clip-vit-base-patch16", {
        "config.json": {
            "": {"projection_dim": 8},
            # text 8 wide: the 49408-token embedding is most of the checkpoint.
            "text_config": {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
                            "num_attention_heads": 2, "projection_dim": 8},
            "vision_config": CLIP_VISION_SIZES,
            # transformers replaces vision_config's values with this dict completed by the class
            # defaults, so the sizes go here too.
            "vision_config_dict": CLIP_VISION_SIZES,
        },
        "preprocessor_config.json": {"": {"size": 64, "crop_size": 64}},
    }),
    # SigLIP: text as wide as the vision tower (SigLIP's text head projects to the text width),
    # 56 px at the published patch 14 (a 4 x 4 grid).
    "siglip-so400m-patch14-384": ("siglip-so400m-patch14-384", {
        "config.json": {
            "text_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                            "num_attention_heads": 2},
            "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "image_size": 56},
        },
        "preprocessor_config.json": {"": {"size": {"height": 56, "width": 56}}},
    }),
}
LABELS = ["a photo of a cat", "a photo of a dog", "a diagram"]


# Feature encoders: a published config.json, tiny (every setting kept but the sizes), and a
# preprocessor_config.json written here: the published one was not found (README), so the file
# names only the class and the sizes and leaves every other field to the class defaults, as
# transformers fills them.
FEATURE_TINY = {
    "dinov2-base": ("dinov2-base", {
        "config.json": {"": {"hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 2, "image_size": 28}},
    }, {"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 32},
        "crop_size": {"height": 28, "width": 42}}),
}


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, default=str)
        f.write("\n")


def dump_resolved():
    for folder in sorted(p for p in PUB.iterdir() if (p / "config.json").is_file()):
        resolved = AutoConfig.from_pretrained(folder).to_dict()
        resolved.pop("_name_or_path", None)  # this machine's path
        write_json(PUB / "resolved" / f"{folder.name}.json", resolved)
    write_json(PUB / "class_defaults.json", {c: getattr(transformers, c)().to_dict() for c in CLASSES})
    write_json(PUB / "image_processor_defaults.json",
               {c: getattr(transformers, c)().to_dict() for c in IMAGE_PROCESSOR_CLASSES})


def shrink(published, changes):
    out = json.loads(json.dumps(published))
    for section, fields in changes.items():
        (out[section] if section else out).update(fields)
    return out


def assemble(source, tiny, into):
    """The published folder with the tiny checkpoint's files over it (what the Rust test builds)."""
    for f in (PUB / source).iterdir():
        if f.is_file():
            shutil.copy(f, into / f.name)
    for f in tiny.iterdir():
        if f.name != "reference.json":
            shutil.copy(f, into / f.name)


def start_tiny(name, source, files):
    """A fresh tiny/<name>/ with the shrunk config files; the published weights' dtype."""
    src = PUB / source
    tiny = PUB / "tiny" / name
    if tiny.exists():
        shutil.rmtree(tiny)
    tiny.mkdir(parents=True)
    for file, changes in files.items():
        write_json(tiny / file, shrink(json.loads((src / file).read_text()), changes))
    published_cfg = json.loads((src / "config.json").read_text())
    return tiny, DTYPES[published_cfg.get("dtype") or published_cfg["torch_dtype"]]


def make_tiny(name, seed):
    source, files = TINY[name]
    tiny, dtype = start_tiny(name, source, files)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "folder"
        folder.mkdir()
        assemble(source, tiny, folder)
        config = AutoConfig.from_pretrained(folder)
        for attempt in range(40):
            torch.manual_seed(seed + attempt)
            model = AutoModelForImageTextToText.from_config(config, attn_implementation="eager",
                                                            dtype=torch.float32)
            vf.reinit_(model, seed + attempt)
            # Stored in the published dtype; the reference runs the stored values in float32.
            model = model.to(dtype).eval()
            saved = tmp / "saved"
            model.save_pretrained(saved)
            shutil.copy(saved / "model.safetensors", folder / "model.safetensors")
            ref = reference(folder)
            if ref is not None:
                shutil.copy(saved / "model.safetensors", tiny / "model.safetensors")
                ref["meta"].update({"seed": seed + attempt, "published_folder": source})
                break
        else:
            raise RuntimeError(f"{name}: no seed gave clear greedy margins without an end token")
    write_json(tiny / "reference.json", ref)


def store_and_reload(model, dtype, folder, tiny):
    """Saves the random weights in the published dtype into the fixture and the assembled folder,
    and reads them back in float32, as the reference runs the stored values."""
    model.to(dtype).save_pretrained(folder / "saved")
    for to in (tiny, folder):
        shutil.copy(folder / "saved" / "model.safetensors", to / "model.safetensors")
    return AutoModel.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()


def make_tiny_encoder(name, seed):
    source, files = ENCODER_TINY[name]
    tiny, dtype = start_tiny(name, source, files)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        assemble(source, tiny, folder)
        torch.manual_seed(seed)
        model = AutoModel.from_config(AutoConfig.from_pretrained(folder), attn_implementation="eager",
                                      dtype=torch.float32)
        ef.reinit_(model, seed)  # logit_scale keeps the config's logit_scale_init_value
        siglip = model.config.model_type == "siglip"
        if siglip:
            with torch.no_grad():
                model.logit_bias.fill_(0.0)  # probabilities away from 0, so the check has teeth
        model = store_and_reload(model, dtype, folder, tiny)
        processor = AutoProcessor.from_pretrained(folder, backend="pil")
        image = Image.open(REPO / "assets" / "chelsea.png").convert("RGB")
        # SigLIP reads prompts padded to full length (as it was trained, and as we embed them).
        inputs = processor(text=LABELS, images=[image], return_tensors="pt",
                           padding="max_length" if siglip else True)
        with torch.no_grad():
            out = model(**inputs)
        ref = {
            "meta": {
                "what": "transformers' zero-shot scores on the published folder's files with tiny random weights",
                "versions": vf.VERSIONS,
                "model": type(model).__name__,
                "image_processor": type(processor.image_processor).__name__,
                "seed": seed,
                "published_folder": source,
            },
            "labels": LABELS,
            "input_ids": [processor.tokenizer(label)["input_ids"] for label in LABELS],
            "pixel_values": [vf.r7(v) for v in inputs["pixel_values"].flatten().tolist()],
            "logits_per_image": [vf.r7(v) for v in out.logits_per_image[0].tolist()],
            "probs": [vf.r7(v) for v in (out.logits_per_image[0].sigmoid() if siglip
                                         else out.logits_per_image[0].softmax(-1)).tolist()],
        }
    write_json(tiny / "reference.json", ref)


def make_tiny_features(name, seed):
    source, files, preprocessor = FEATURE_TINY[name]
    tiny, dtype = start_tiny(name, source, files)
    write_json(tiny / "preprocessor_config.json", preprocessor)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        assemble(source, tiny, folder)
        torch.manual_seed(seed)
        model = AutoModel.from_config(AutoConfig.from_pretrained(folder), attn_implementation="eager",
                                      dtype=torch.float32)
        ef.reinit_(model, seed)
        model = store_and_reload(model, dtype, folder, tiny)
        processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
        image = Image.open(REPO / "assets" / "chelsea.png").convert("RGB")
        inputs = processor(images=[image], return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs)
        ref = {
            "meta": {
                "what": "transformers' features of the published config with tiny random weights, through the "
                        "image processor the sparse preprocessor_config.json resolves to",
                "versions": vf.VERSIONS,
                "model": type(model).__name__,
                "image_processor": type(processor).__name__,
                "resolved_image_processor": processor.to_dict(),
                "seed": seed,
                "published_folder": source,
            },
            "pixel_values": {"shape": list(inputs["pixel_values"].shape),
                             "data": [vf.r7(v) for v in inputs["pixel_values"].flatten().tolist()]},
            "last_hidden_state": {"shape": list(out.last_hidden_state.shape),
                                  "data": [vf.r7(v) for v in out.last_hidden_state.flatten().tolist()]},
        }
    write_json(tiny / "reference.json", ref)


def reference(folder):
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32,
                                                        attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(folder, backend="pil")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = Image.open(REPO / "assets" / "chelsea.png").convert("RGB")
    inputs = processor(text=prompt, images=[image], return_tensors="pt")
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        gen = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                             min_new_tokens=MAX_NEW_TOKENS, return_dict_in_generate=True, output_logits=True)
    ids = gen.sequences[0, n:].tolist()
    margins = vf.greedy_margins(gen.logits)
    gc = json.loads((folder / "generation_config.json").read_text())
    tok = processor.tokenizer
    ends = {gc.get("eos_token_id"), tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_utterance>")}
    if min(margins) < vf.MIN_GREEDY_MARGIN or ends & set(ids):
        return None
    logp = torch.stack(gen.logits, 1)[0].log_softmax(-1)
    return {
        "meta": {
            "what": "transformers' greedy answer on the published folder's files with tiny random weights",
            "versions": vf.VERSIONS,
            "image_processor": type(processor.image_processor).__name__,
            "prompt": prompt,
            "question": QUESTION,
            "greedy_margins": [vf.r7(m) for m in margins],
        },
        "input_ids": inputs["input_ids"][0].tolist(),
        "generated_ids": ids,
        "logprobs": [vf.r7(logp[i, t]) for i, t in enumerate(ids)],
    }


def main():
    torch.set_num_threads(2)
    dump_resolved()
    only = sys.argv[1:]  # names of tiny checkpoints to remake; all by default
    for i, name in enumerate(TINY):
        if not only or name in only:
            make_tiny(name, 1000 + 100 * i)
    for i, name in enumerate(ENCODER_TINY):
        if not only or name in only:
            make_tiny_encoder(name, 5000 + 100 * i)
    for i, name in enumerate(FEATURE_TINY):
        if not only or name in only:
            make_tiny_features(name, 7000 + 100 * i)
    print("wrote", PUB)


if __name__ == "__main__":
    main()

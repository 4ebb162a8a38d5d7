#!/usr/bin/env python3
"""Tiny random-weight vision/text encoder checkpoints + transformers reference outputs.

Writes tests/fixtures/encoders/<name>/ for the Hugging Face architectures that
tokenlens loads (see tests/fixtures/encoders/README.md for the layout):

    vit             ViTForImageClassification            + ViTImageProcessor
    vit_model       ViTModel (pooler, qkv_bias=False)    + ViTImageProcessor
    deit            DeiTForImageClassification           + DeiTImageProcessor
    deit_distilled  DeiTForImageClassificationWithTeacher + DeiTImageProcessor
    clip            CLIPModel (vision + text + projections) + CLIPImageProcessor + CLIP BPE tokenizer
    siglip          SiglipModel (vision + text)          + SiglipImageProcessor + SentencePiece/Unigram tokenizer
    dinov2          Dinov2Model, non-square 40x48 input  + BitImageProcessor

Each folder holds what save_pretrained writes (config.json, model.safetensors,
preprocessor_config.json, tokenizer files for the text towers) plus
reference.json: the outputs of transformers for assets/chelsea.png run through
the saved image processor (and, for CLIP/SigLIP, the prompts
["a cat", "a dog", "a car"]).

Run from the repository root (no network needed, nothing is fetched):

    pip install -r scripts/requirements-encoders.txt   # plus torch (CPU), see that file
    HF_HUB_OFFLINE=1 python3 scripts/make_encoder_fixtures.py

Generated with transformers 5.23.0, tokenizers 0.23.3, sentencepiece 0.2.3,
safetensors 0.8.0, protobuf 7.36.2, torch 2.15.0 (run on CPU), numpy 2.4.6,
pillow 13.0.0 (pinned in scripts/requirements-encoders.txt); each
reference.json records the versions it was made with under meta.versions.

Determinism: every model is built from a fixed seed (torch.manual_seed), all
parameters are then re-drawn from that seed with larger-than-default scales
(so attention is far from uniform and LayerNorm affine parameters are not the
identity), models run in eval mode, float32, eager attention, one CPU thread.
The image processors are the PIL ("slow") backends: CLIPImageProcessorPil
etc. (transformers 5 names the torchvision ones CLIPImageProcessor); both save
"image_processor_type": "CLIPImageProcessor" in preprocessor_config.json.

Checks done before anything is kept: each folder is reloaded from disk
(AutoModel / AutoImageProcessor / AutoTokenizer) and re-run, and its outputs
must be bit-identical to the in-memory model's; tokenizer.json loaded with the
`tokenizers` library must give the same ids as transformers' tokenizer on the
prompts and on a set of extra strings. Floats in reference.json are rounded to
7 significant digits.
"""

import inspect
import io
import json
import math
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

import sentencepiece as spm
import tokenizers
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPTokenizer,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    Dinov2Config,
    Dinov2Model,
    SiglipConfig,
    SiglipModel,
    SiglipTokenizer,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.deit.image_processing_pil_deit import DeiTImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "encoders"
IMAGE = REPO / "assets" / "chelsea.png"
PROMPTS = ["a cat", "a dog", "a car"]
LABELS = ["tabby cat", "dog", "car", "rocket", "coffee mug"]
SIG_DIGITS = 7
FOLDER_LIMIT = 400 * 1024
TOTAL_LIMIT = 2 * 1024 * 1024

# Tiny shared sizes.
HIDDEN, LAYERS, HEADS, INTER = 32, 2, 2, 64

# Corpus for the tiny tokenizers (lowercase; covers a-z and digits).
CORPUS = [
    "a photo of a cat",
    "a photo of a dog",
    "a photo of a car",
    "a cat sitting on a mat",
    "a dog running in the park",
    "a red car on the road",
    "the cat and the dog",
    "a tabby cat",
    "cars and cats and dogs",
    "photos of the park",
    "the quick brown fox jumps over the lazy dog",
    "0 1 2 3 4 5 6 7 8 9",
]
# Strings on which transformers and tokenizer.json must agree (besides PROMPTS).
TOKENIZER_CHECK = [
    "a photo of a cat",
    "A Photo of the CAT!",
    "dogs' park, (red) cars.",
    "the quick brown fox jumps over the lazy dog",
    "zebra xylophone 42",
    "café naïve",
    "it's a cat's toy",
    "a\tcat\n\nand   a dog",
    "",
]

VERSIONS = {
    "transformers": transformers.__version__,
    "tokenizers": tokenizers.__version__,
    "sentencepiece": spm.__version__,
    "torch": torch.__version__,
    "numpy": np.__version__,
    "pillow": Image.__version__ if hasattr(Image, "__version__") else __import__("PIL").__version__,
}


# ----------------------------------------------------------------------------
# helpers


def r7(x):
    return float(f"{float(x):.{SIG_DIGITS}g}")


def arr(t):
    """Tensor/ndarray -> {"shape": [...], "data": [flat, row-major]} (floats rounded)."""
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    a = np.asarray(t)
    if a.dtype.kind in "iub":
        data = [int(v) for v in a.reshape(-1)]
    else:
        data = [r7(v) for v in a.astype(np.float64).reshape(-1)]
    return {"shape": list(a.shape), "dtype": "int64" if a.dtype.kind in "iub" else "float32", "data": data}


def arr_list(ts):
    return [arr(t) for t in ts]


def reinit_(model, seed):
    """Redraw every parameter from `seed`, module by module in registration order.

    nn.Linear / nn.Conv2d weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2);
    nn.LayerNorm weight ~ 1 + N(0, 0.1^2), bias ~ N(0, 0.1^2);
    nn.Embedding and free tensors (cls/distillation/mask tokens, position
    embeddings, SigLIP probe) ~ N(0, 0.5^2); DINOv2 layer-scale lambda1 ~ 1 + N(0, 0.1^2);
    nn.MultiheadAttention in_proj_weight ~ N(0, 1/fan_in), in_proj_bias ~ N(0, 0.1^2).
    logit_scale / logit_bias are set by the caller.
    """
    g = torch.Generator().manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=g, dtype=torch.float32)

    done = set()
    with torch.no_grad():
        for mname, mod in model.named_modules():
            own = dict(mod.named_parameters(recurse=False))
            for pname, p in own.items():
                full = f"{mname}.{pname}" if mname else pname
                if full in done:
                    continue
                if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) and pname == "weight":
                    fan_in = p[0].numel()
                    p.copy_(randn(p.shape) / math.sqrt(fan_in))
                elif isinstance(mod, torch.nn.LayerNorm) and pname == "weight":
                    p.copy_(1.0 + 0.1 * randn(p.shape))
                elif pname.endswith("bias") and pname != "logit_bias":
                    p.copy_(0.1 * randn(p.shape))
                elif isinstance(mod, torch.nn.Embedding) and pname == "weight":
                    p.copy_(0.5 * randn(p.shape))
                elif pname == "in_proj_weight":
                    p.copy_(randn(p.shape) / math.sqrt(p.shape[1]))
                elif pname == "lambda1":
                    p.copy_(1.0 + 0.1 * randn(p.shape))
                elif pname in ("cls_token", "distillation_token", "mask_token", "position_embeddings", "probe", "class_embedding"):
                    p.copy_(0.5 * randn(p.shape))
                elif pname in ("logit_scale", "logit_bias"):
                    continue  # set by the caller
                else:
                    raise RuntimeError(f"reinit_: no rule for parameter {full} ({type(mod).__name__})")
                done.add(full)
    # every parameter handled exactly once
    names = {n for n, _ in model.named_parameters()}
    missing = names - done - {n for n in names if n.endswith(("logit_scale", "logit_bias"))}
    if missing:
        raise RuntimeError(f"reinit_: parameters left untouched: {sorted(missing)}")


def build(cls, config, seed):
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = cls._from_config(config, attn_implementation="eager", dtype=torch.float32)
    reinit_(model, seed)
    return model.eval()


def save_model(model, folder):
    kw = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kw["safe_serialization"] = True  # transformers < 5; v5 always writes safetensors
    model.save_pretrained(folder, **kw)
    assert (folder / "model.safetensors").is_file(), "no model.safetensors written"


def load_image():
    img = Image.open(IMAGE)
    img.load()
    return img.convert("RGB")


def preprocess(processor, img):
    """pixel_values (1,3,H,W) float32 tensor and the uint8 HWC image after resize/crop."""
    pv = processor(images=img, return_tensors="np")["pixel_values"]
    raw = processor(images=img, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"]
    raw = np.asarray(raw)
    assert np.all(raw == np.round(raw)) and raw.min() >= 0 and raw.max() <= 255
    raw_u8 = raw[0].transpose(1, 2, 0).astype(np.uint8)  # HWC
    # the normalised values are exactly ((u8 * rescale) - mean) / std in float32
    f = raw[0].astype(np.float64) * processor.rescale_factor
    f = f.astype(np.float32)
    mean = np.array(processor.image_mean, dtype=np.float32)[:, None, None]
    std = np.array(processor.image_std, dtype=np.float32)[:, None, None]
    again = (f - mean) / std
    assert np.array_equal(again, pv[0]), "pixel_values != (u8*rescale - mean)/std"
    return torch.from_numpy(np.asarray(pv, dtype=np.float32)), raw_u8


def processor_summary(processor):
    d = processor.to_dict()
    keep = [
        "image_processor_type", "do_convert_rgb", "do_resize", "size", "resample", "do_center_crop",
        "crop_size", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
    ]
    return {k: d.get(k) for k in keep if k in d}


def assert_same(a, b, what):
    if a is None and b is None:
        return
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{what}[{i}]")
        return
    if not torch.equal(a, b):
        raise AssertionError(f"reload mismatch in {what}: max abs diff {(a - b).abs().max().item()}")


def safetensors_keys(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}


def finish(folder, ref, model_cls_name):
    ref["meta"].update(
        {
            "architecture": model_cls_name,
            "versions": VERSIONS,
            "image": "assets/chelsea.png",
            "float_format": f"rounded to {SIG_DIGITS} significant digits",
            "layout": "every array is {shape, dtype, data}; data is flat, row-major (C order)",
        }
    )
    keys = safetensors_keys(folder)
    ref["meta"]["safetensors_keys"] = keys
    with open(folder / "reference.json", "w") as f:
        json.dump(ref, f, separators=(",", ":"))
        f.write("\n")


def reset(name):
    folder = OUT / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def id2label():
    return {i: l for i, l in enumerate(LABELS)}


# ----------------------------------------------------------------------------
# ViT / DeiT


def vision_classifier_fixture(name, model_cls, config, processor, seed, tower_attr, extra_outputs=()):
    folder = reset(name)
    model = build(model_cls, config, seed)
    save_model(model, folder)
    processor.save_pretrained(folder)

    img = load_image()
    proc2 = AutoImageProcessor.from_pretrained(folder)
    assert type(proc2).__name__.endswith("Pil"), f"reloaded processor is {type(proc2).__name__}"
    pv, raw_u8 = preprocess(proc2, img)
    pv_mem, _ = preprocess(processor, img)
    assert torch.equal(pv, pv_mem)

    def run(m):
        with torch.no_grad():
            out = m(pixel_values=pv, output_attentions=True, output_hidden_states=True)
            tower = getattr(m, tower_attr)(pixel_values=pv)
        return out, tower

    out, tower = run(model)
    reloaded = AutoModelForImageClassification.from_pretrained(folder, attn_implementation="eager").eval()
    assert type(reloaded) is model_cls, type(reloaded)
    out2, tower2 = run(reloaded)
    assert_same(out.logits, out2.logits, "logits")
    assert_same(out.attentions, out2.attentions, "attentions")
    assert_same(out.hidden_states, out2.hidden_states, "hidden_states")
    assert_same(tower.last_hidden_state, tower2.last_hidden_state, "last_hidden_state")
    assert len(out.attentions) == config.num_hidden_layers
    # the classifier heads read the tower's tokens as documented in the notes
    with torch.no_grad():
        cls = tower.last_hidden_state[:, 0]
        if hasattr(model, "cls_classifier"):
            dist = tower.last_hidden_state[:, 1]
            expect = (model.cls_classifier(cls) + model.distillation_classifier(dist)) / 2
        else:
            expect = model.classifier(cls)
    assert torch.allclose(expect, out.logits, atol=1e-6), "classifier head does not read token 0/1"

    ref = {
        "meta": {
            "model_class": model_cls.__name__,
            "seed": seed,
            "input_hw": list(pv.shape[2:]),
            "processor": processor_summary(proc2),
            "notes": [],
        },
        "image_u8_hwc": arr(raw_u8),
        "pixel_values": arr(pv),
        "last_hidden_state": arr(tower.last_hidden_state),
        "pooler_output": None if tower.pooler_output is None else arr(tower.pooler_output),
        "hidden_states": arr_list(out.hidden_states),
        "attentions": arr_list(out.attentions),
        "logits": arr(out.logits),
        "probs": arr(out.logits.softmax(-1)),
        "id2label": {str(k): v for k, v in model.config.id2label.items()},
        "top1": int(out.logits.argmax(-1)[0]),
    }
    for k in extra_outputs:
        ref[k] = arr(getattr(out, k))
    return folder, ref, model


def make_vit():
    config = ViTConfig(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=INTER,
        image_size=32, patch_size=8, num_channels=3, qkv_bias=True, hidden_act="gelu",
        num_labels=len(LABELS), id2label=id2label(), label2id={l: i for i, l in enumerate(LABELS)},
    )
    proc = ViTImageProcessorPil(size={"height": 32, "width": 32})
    folder, ref, _ = vision_classifier_fixture("vit", ViTForImageClassification, config, proc, 1001, "vit")
    ref["meta"]["notes"] += [
        "ViTForImageClassification has no pooler (add_pooling_layer=False): pooler_output is null.",
        "logits = classifier(last_hidden_state[:, 0]) (CLS token after the final layernorm).",
        "hidden_states[0] is the embedding output (CLS + patches + position embeddings); "
        "hidden_states[i] is the output of layer i before the final layernorm.",
    ]
    finish(folder, ref, "ViTForImageClassification")


def make_vit_model():
    folder = reset("vit_model")
    config = ViTConfig(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=INTER,
        image_size=32, patch_size=8, num_channels=3, qkv_bias=False, hidden_act="gelu",
    )
    seed = 1002
    model = build(ViTModel, config, seed)  # add_pooling_layer=True by default
    save_model(model, folder)
    proc = ViTImageProcessorPil(size={"height": 32, "width": 32})
    proc.save_pretrained(folder)
    img = load_image()
    proc2 = AutoImageProcessor.from_pretrained(folder)
    pv, raw_u8 = preprocess(proc2, img)

    def run(m):
        with torch.no_grad():
            return m(pixel_values=pv, output_attentions=True, output_hidden_states=True)

    out = run(model)
    reloaded = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    assert type(reloaded) is ViTModel
    out2 = run(reloaded)
    for k in ("last_hidden_state", "pooler_output", "attentions", "hidden_states"):
        assert_same(getattr(out, k), getattr(out2, k), k)
    ref = {
        "meta": {
            "model_class": "ViTModel",
            "seed": seed,
            "input_hw": list(pv.shape[2:]),
            "processor": processor_summary(proc2),
            "notes": [
                "qkv_bias=False: the checkpoint has no attention.attention.{query,key,value}.bias tensors.",
                "pooler_output = tanh(pooler.dense(last_hidden_state[:, 0])).",
            ],
        },
        "image_u8_hwc": arr(raw_u8),
        "pixel_values": arr(pv),
        "last_hidden_state": arr(out.last_hidden_state),
        "pooler_output": arr(out.pooler_output),
        "hidden_states": arr_list(out.hidden_states),
        "attentions": arr_list(out.attentions),
    }
    finish(folder, ref, "ViTModel")


def deit_config():
    return DeiTConfig(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=INTER,
        image_size=32, patch_size=8, num_channels=3, qkv_bias=True, hidden_act="gelu",
        num_labels=len(LABELS), id2label=id2label(), label2id={l: i for i, l in enumerate(LABELS)},
    )


def deit_processor():
    # like the DeiT checkpoints (resize 256x256 -> crop 224x224), scaled down
    return DeiTImageProcessorPil(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32})


def make_deit():
    folder, ref, _ = vision_classifier_fixture(
        "deit", DeiTForImageClassification, deit_config(), deit_processor(), 1003, "deit"
    )
    ref["meta"]["notes"] += [
        "DeiT embeddings always hold CLS (index 0) and distillation (index 1) tokens, then the patches: "
        "sequence length = 2 + 16.",
        "DeiTForImageClassification: logits = classifier(last_hidden_state[:, 0]) (CLS only); no pooler.",
    ]
    finish(folder, ref, "DeiTForImageClassification")


def make_deit_distilled():
    folder, ref, _ = vision_classifier_fixture(
        "deit_distilled", DeiTForImageClassificationWithTeacher, deit_config(), deit_processor(), 1004, "deit",
        extra_outputs=("cls_logits", "distillation_logits"),
    )
    ref["meta"]["notes"] += [
        "Sequence = [CLS, DIST, 16 patches].",
        "cls_logits = cls_classifier(last_hidden_state[:, 0]); "
        "distillation_logits = distillation_classifier(last_hidden_state[:, 1]); "
        "logits = (cls_logits + distillation_logits) / 2.",
    ]
    finish(folder, ref, "DeiTForImageClassificationWithTeacher")


# ----------------------------------------------------------------------------
# tokenizers


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def make_clip_tokenizer(folder):
    """Train a tiny byte-level BPE the CLIP way and save it as CLIPTokenizer (fast).

    Vocabulary order copies OpenAI CLIP's: 256 byte symbols, the same 256 with
    '</w>', one entry per merge, then <|startoftext|>, <|endoftext|> (last).
    """
    bpe = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=10_000, min_frequency=2, special_tokens=[], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>", continuing_subword_prefix="", show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer)
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    base = list(bytes_to_unicode().values())
    vocab_list = base + [c + "</w>" for c in base]
    for a, b in merges:
        assert a in vocab_list and b in vocab_list, (a, b)
        if a + b not in vocab_list:
            vocab_list.append(a + b)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16)
    tok.save_pretrained(folder)
    # transformers 5 writes only tokenizer.json; add the classic vocab.json / merges.txt too
    if not (folder / "vocab.json").exists():
        with open(folder / "vocab.json", "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
    if not (folder / "merges.txt").exists():
        with open(folder / "merges.txt", "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            for a, b in merges:
                f.write(f"{a} {b}\n")
    return len(vocab_list), vocab["<|startoftext|>"], vocab["<|endoftext|>"]


PUNCT_CLASS = "[" + "".join("\\" + c if c in "\\[]^-" else c for c in __import__("string").punctuation) + "]"


def make_siglip_tokenizer(folder):
    """Train a tiny SentencePiece unigram (T5/SigLIP id layout: <pad>=0, </s>=1, <unk>=2),
    save it as SiglipTokenizer (spiece.model) and write an equivalent tokenizer.json
    built with the `tokenizers` library (transformers has no SigLIP fast converter)."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4), model_writer=buf, model_type="unigram", vocab_size=64,
        hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, normalization_rule_name="identity",
        add_dummy_prefix=True, remove_extra_whitespaces=True, split_by_whitespace=True, character_coverage=1.0,
        byte_fallback=False, num_threads=1, minloglevel=2,
    )
    tmp = folder / "_spiece_tmp.model"
    tmp.write_bytes(buf.getvalue())
    tok = SiglipTokenizer(vocab_file=str(tmp), model_max_length=16)
    tok.save_pretrained(folder)
    tmp.unlink()
    assert (folder / "spiece.model").is_file()
    extra = folder / "added_tokens.json"
    if extra.exists():
        extra.unlink()

    sp = spm.SentencePieceProcessor(model_file=str(folder / "spiece.model"))
    pieces = [(sp.id_to_piece(i), float(sp.get_score(i))) for i in range(sp.get_piece_size())]
    assert pieces[0][0] == "<pad>" and pieces[1][0] == "</s>" and pieces[2][0] == "<unk>"
    uni = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    # = SiglipTokenizer.canonicalize_text: lower, drop string.punctuation, collapse whitespace, strip
    uni.normalizer = normalizers.Sequence(
        [
            normalizers.Lowercase(),
            normalizers.Replace(Regex(PUNCT_CLASS), ""),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )
    uni.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    uni.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    uni.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    uni.add_special_tokens(
        [tokenizers.AddedToken(t, special=True, normalized=False) for t in ("<pad>", "</s>", "<unk>")]
    )
    uni.save(str(folder / "tokenizer.json"))
    return sp.get_piece_size()


def check_tokenizer(folder, expect_cls):
    """AutoTokenizer and tokenizer.json must give identical ids."""
    hf = AutoTokenizer.from_pretrained(folder)
    assert type(hf).__name__ == expect_cls, f"AutoTokenizer gave {type(hf).__name__}"
    rs = Tokenizer.from_file(str(folder / "tokenizer.json"))
    results = {}
    for s in PROMPTS + TOKENIZER_CHECK:
        a = hf(s)["input_ids"]
        b = rs.encode(s).ids
        if a != b:
            raise AssertionError(f"{folder.name}: tokenizer mismatch on {s!r}: transformers {a} vs tokenizer.json {b}")
        results[s] = a
    return hf, results


# ----------------------------------------------------------------------------
# CLIP


def make_clip():
    folder = reset("clip")
    vocab_size, bos, eos = make_clip_tokenizer(folder)
    seed = 2001
    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, max_position_embeddings=16, hidden_act="quick_gelu",
            bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, projection_dim=16,
        ),
        vision_config=dict(
            hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            image_size=32, patch_size=8, num_channels=3, hidden_act="quick_gelu", projection_dim=16,
        ),
        projection_dim=16,
        logit_scale_init_value=2.6592,
    )
    model = build(CLIPModel, config, seed)
    with torch.no_grad():
        model.logit_scale.fill_(2.6592)  # ln(1/0.07), CLIP's init
    save_model(model, folder)
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc.save_pretrained(folder)

    tok, tok_checks = check_tokenizer(folder, "CLIPTokenizer")
    text = tok(PROMPTS, padding=True, return_tensors="pt")
    img = load_image()
    proc2 = AutoImageProcessor.from_pretrained(folder)
    pv, raw_u8 = preprocess(proc2, img)
    # a padded batch too: pads are <|endoftext|>, pooling takes the FIRST eos position
    padded_prompts = ["a photo of a cat", "a cat"]
    padded = tok(padded_prompts, padding=True, return_tensors="pt")

    def run(m):
        with torch.no_grad():
            o = m(
                input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pv,
                output_attentions=True, output_hidden_states=True,
            )
            img_feat = m.get_image_features(pixel_values=pv)
            txt_feat = m.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
            p = m.text_model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"])
            p_feat = m.get_text_features(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"])
        img_feat = getattr(img_feat, "pooler_output", img_feat)
        txt_feat = getattr(txt_feat, "pooler_output", txt_feat)
        p_feat = getattr(p_feat, "pooler_output", p_feat)
        return o, img_feat, txt_feat, p, p_feat

    o, img_feat, txt_feat, p, p_feat = run(model)
    reloaded = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    assert type(reloaded) is CLIPModel
    o2, img_feat2, txt_feat2, p2, p_feat2 = run(reloaded)
    for k in ("logits_per_image", "image_embeds", "text_embeds"):
        assert_same(getattr(o, k), getattr(o2, k), k)
    for k in ("last_hidden_state", "pooler_output", "attentions", "hidden_states"):
        assert_same(getattr(o.vision_model_output, k), getattr(o2.vision_model_output, k), "vision." + k)
        assert_same(getattr(o.text_model_output, k), getattr(o2.text_model_output, k), "text." + k)
    assert_same(img_feat, img_feat2, "image_features")
    assert_same(txt_feat, txt_feat2, "text_features")
    assert_same(p.last_hidden_state, p2.last_hidden_state, "padded")
    assert_same(p_feat, p_feat2, "padded features")
    # internal consistency
    assert torch.allclose(o.image_embeds, img_feat / img_feat.norm(dim=-1, keepdim=True), atol=1e-6)
    assert torch.allclose(o.text_embeds, txt_feat / txt_feat.norm(dim=-1, keepdim=True), atol=1e-6)

    v, t = o.vision_model_output, o.text_model_output
    ref = {
        "meta": {
            "model_class": "CLIPModel",
            "seed": seed,
            "input_hw": list(pv.shape[2:]),
            "processor": processor_summary(proc2),
            "tokenizer": {
                "class": "CLIPTokenizer (tokenizers backend)", "vocab_size": vocab_size,
                "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos,
                "padding": "padding=True (to the longest prompt) with <|endoftext|>; attention_mask marks real tokens",
            },
            "logit_scale": float(model.logit_scale.item()),
            "notes": [
                "vision.last_hidden_state is the encoder output (NOT post-layernormed); "
                "vision.pooler_output = post_layernorm(last_hidden_state[:, 0]).",
                "The vision tower applies pre_layrnorm (sic) to the embeddings before layer 0; "
                "vision.hidden_states[0] is the embedding output AFTER pre_layrnorm (the encoder input).",
                "text.last_hidden_state is after final_layer_norm; text.pooler_output = last_hidden_state at the "
                "FIRST position where input_ids == eos_token_id (config eos_token_id != 2).",
                "The text tower uses a causal mask combined with attention_mask.",
                "image_features = visual_projection(vision.pooler_output) (no bias); "
                "text_features = text_projection(text.pooler_output) (no bias); "
                "image_embeds/text_embeds are those L2-normalised.",
                "logits_per_image = exp(logit_scale) * image_embeds @ text_embeds.T; "
                "probs = softmax(logits_per_image, dim=-1).",
                "hidden_act quick_gelu: x * sigmoid(1.702 x).",
            ],
        },
        "image_u8_hwc": arr(raw_u8),
        "pixel_values": arr(pv),
        "prompts": PROMPTS,
        "input_ids": arr(text["input_ids"]),
        "attention_mask": arr(text["attention_mask"]),
        "vision": {
            "last_hidden_state": arr(v.last_hidden_state),
            "pooler_output": arr(v.pooler_output),
            "hidden_states": arr_list(v.hidden_states),
            "attentions": arr_list(v.attentions),
        },
        "text": {
            "last_hidden_state": arr(t.last_hidden_state),
            "pooler_output": arr(t.pooler_output),
            "hidden_states": arr_list(t.hidden_states),
            "attentions": arr_list(t.attentions),
        },
        "image_features": arr(img_feat),
        "text_features": arr(txt_feat),
        "image_embeds": arr(o.image_embeds),
        "text_embeds": arr(o.text_embeds),
        "logits_per_image": arr(o.logits_per_image),
        "logits_per_text": arr(o.logits_per_text),
        "probs": arr(o.logits_per_image.softmax(dim=-1)),
        "padded_batch": {
            "prompts": padded_prompts,
            "input_ids": arr(padded["input_ids"]),
            "attention_mask": arr(padded["attention_mask"]),
            "text_last_hidden_state": arr(p.last_hidden_state),
            "text_pooler_output": arr(p.pooler_output),
            "text_features": arr(p_feat),
        },
        "tokenizer_checks": tok_checks,
    }
    finish(folder, ref, "CLIPModel")


# ----------------------------------------------------------------------------
# SigLIP


def make_siglip():
    folder = reset("siglip")
    vocab_size = make_siglip_tokenizer(folder)
    seed = 3001
    config = SiglipConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, max_position_embeddings=16, hidden_act="gelu_pytorch_tanh",
            pad_token_id=1, bos_token_id=None, eos_token_id=1, projection_size=HIDDEN,
        ),
        vision_config=dict(
            hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            image_size=32, patch_size=8, num_channels=3, hidden_act="gelu_pytorch_tanh",
        ),
    )
    model = build(SiglipModel, config, seed)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-2.0)
    save_model(model, folder)
    proc = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    proc.save_pretrained(folder)

    tok, tok_checks = check_tokenizer(folder, "SiglipTokenizer")
    text = tok(PROMPTS, padding="max_length", max_length=16, return_tensors="pt")
    img = load_image()
    proc2 = AutoImageProcessor.from_pretrained(folder)
    pv, raw_u8 = preprocess(proc2, img)

    def run(m):
        with torch.no_grad():
            o = m(
                input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pv,
                output_attentions=True, output_hidden_states=True,
            )
            nm = m(input_ids=text["input_ids"], pixel_values=pv)  # no attention_mask (original big_vision use)
        return o, nm

    o, nm = run(model)
    reloaded = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    assert type(reloaded) is SiglipModel
    o2, nm2 = run(reloaded)
    for k in ("logits_per_image", "image_embeds", "text_embeds"):
        assert_same(getattr(o, k), getattr(o2, k), k)
        assert_same(getattr(nm, k), getattr(nm2, k), "nomask." + k)
    for k in ("last_hidden_state", "pooler_output", "attentions", "hidden_states"):
        assert_same(getattr(o.vision_model_output, k), getattr(o2.vision_model_output, k), "vision." + k)
        assert_same(getattr(o.text_model_output, k), getattr(o2.text_model_output, k), "text." + k)
    v, t = o.vision_model_output, o.text_model_output
    assert torch.allclose(o.image_embeds, v.pooler_output / v.pooler_output.norm(dim=-1, keepdim=True), atol=1e-6)

    ref = {
        "meta": {
            "model_class": "SiglipModel",
            "seed": seed,
            "input_hw": list(pv.shape[2:]),
            "processor": processor_summary(proc2),
            "tokenizer": {
                "class": "SiglipTokenizer (sentencepiece backend, spiece.model); tokenizer.json is an equivalent "
                "Unigram built with the tokenizers library",
                "vocab_size": vocab_size, "pad_token_id": 1, "eos_token_id": 1, "unk_token_id": 2,
                "padding": "padding='max_length', max_length=16, pad = </s> (id 1); attention_mask returned",
                "canonicalize": "lowercase, remove string.punctuation, collapse whitespace, strip; append </s>",
            },
            "logit_scale": float(model.logit_scale.item()),
            "logit_bias": float(model.logit_bias.item()),
            "notes": [
                "Main outputs: model(input_ids, attention_mask, pixel_values) exactly as the tokenizer returns them "
                "(text attention is bidirectional, masked by attention_mask). 'without_attention_mask' holds "
                "text_embeds / logits when attention_mask is not passed (pads attend, as in big_vision).",
                "vision.last_hidden_state is after post_layernorm; vision.pooler_output is the attention-pooling "
                "head (probe query, torch.nn.MultiheadAttention with packed in_proj_weight/in_proj_bias, then "
                "residual + mlp(layernorm(x))).",
                "No patch CLS token; position embedding is an nn.Embedding over the 16 patches.",
                "text.pooler_output = head(last_hidden_state[:, -1]) (the LAST position, a pad here).",
                "image_embeds = normalize(vision.pooler_output); text_embeds = normalize(text.pooler_output).",
                "logits_per_text = text_embeds @ image_embeds.T * exp(logit_scale) + logit_bias; "
                "logits_per_image = its transpose; probs = sigmoid(logits_per_image).",
                "hidden_act gelu_pytorch_tanh: tanh-approximated GELU.",
            ],
        },
        "image_u8_hwc": arr(raw_u8),
        "pixel_values": arr(pv),
        "prompts": PROMPTS,
        "input_ids": arr(text["input_ids"]),
        "attention_mask": arr(text["attention_mask"]),
        "vision": {
            "last_hidden_state": arr(v.last_hidden_state),
            "pooler_output": arr(v.pooler_output),
            "hidden_states": arr_list(v.hidden_states),
            "attentions": arr_list(v.attentions),
        },
        "text": {
            "last_hidden_state": arr(t.last_hidden_state),
            "pooler_output": arr(t.pooler_output),
            "attentions": arr_list(t.attentions),
        },
        "image_embeds": arr(o.image_embeds),
        "text_embeds": arr(o.text_embeds),
        "logits_per_image": arr(o.logits_per_image),
        "logits_per_text": arr(o.logits_per_text),
        "probs": arr(torch.sigmoid(o.logits_per_image)),
        "without_attention_mask": {
            "text_embeds": arr(nm.text_embeds),
            "logits_per_image": arr(nm.logits_per_image),
            "probs": arr(torch.sigmoid(nm.logits_per_image)),
        },
        "tokenizer_checks": tok_checks,
    }
    finish(folder, ref, "SiglipModel")


# ----------------------------------------------------------------------------
# DINOv2


def make_dinov2():
    folder = reset("dinov2")
    seed = 4001
    config = Dinov2Config(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, mlp_ratio=INTER // HIDDEN,
        image_size=32, patch_size=8, num_channels=3, qkv_bias=True, hidden_act="gelu", layerscale_value=1.0,
        use_swiglu_ffn=False,
    )
    model = build(Dinov2Model, config, seed)
    save_model(model, folder)
    # shortest edge 40 then a non-square 40x48 crop: 5x6 patches vs. the 4x4 position grid
    proc = BitImageProcessorPil(
        size={"shortest_edge": 40}, crop_size={"height": 40, "width": 48},
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )
    proc.save_pretrained(folder)
    img = load_image()
    proc2 = AutoImageProcessor.from_pretrained(folder)
    pv, raw_u8 = preprocess(proc2, img)
    assert list(pv.shape) == [1, 3, 40, 48], pv.shape

    def run(m):
        with torch.no_grad():
            o = m(pixel_values=pv, output_attentions=True, output_hidden_states=True)
            pos = m.embeddings.interpolate_pos_encoding(
                torch.zeros(1, 1 + 30, HIDDEN), pv.shape[2], pv.shape[3]
            )
        return o, pos

    o, pos = run(model)
    reloaded = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    assert type(reloaded) is Dinov2Model
    o2, pos2 = run(reloaded)
    for k in ("last_hidden_state", "pooler_output", "attentions", "hidden_states"):
        assert_same(getattr(o, k), getattr(o2, k), k)
    assert_same(pos, pos2, "interpolated position embeddings")
    assert o.last_hidden_state.shape[1] == 1 + 5 * 6

    ref = {
        "meta": {
            "model_class": "Dinov2Model",
            "seed": seed,
            "input_hw": list(pv.shape[2:]),
            "patch_grid_hw": [pv.shape[2] // 8, pv.shape[3] // 8],
            "config_image_size": 32,
            "config_position_grid": [4, 4],
            "processor": processor_summary(proc2),
            "notes": [
                "Input is 40x48 (5x6 patches) while the position embeddings are for 32x32 (4x4): the patch "
                "position embeddings are resized with torch.nn.functional.interpolate(size=(5, 6), "
                "mode='bicubic', align_corners=False) (no antialias, computed in float32); the CLS one is kept. "
                "'interpolated_position_embeddings' holds the result (1, 31, 32).",
                "last_hidden_state is after the final layernorm; pooler_output = last_hidden_state[:, 0].",
                "Each layer: x = x + layer_scale1.lambda1 * attn(norm1(x)); x = x + layer_scale2.lambda1 * mlp(norm2(x)) "
                "(per-channel layer scale; mlp = fc2(gelu(fc1)), no SwiGLU).",
                "No register tokens (Dinov2Model); mask_token is in the checkpoint but unused without bool_masked_pos.",
            ],
        },
        "image_u8_hwc": arr(raw_u8),
        "pixel_values": arr(pv),
        "interpolated_position_embeddings": arr(pos),
        "last_hidden_state": arr(o.last_hidden_state),
        "pooler_output": arr(o.pooler_output),
        "hidden_states": arr_list(o.hidden_states),
        "attentions": arr_list(o.attentions),
    }
    finish(folder, ref, "Dinov2Model")


# ----------------------------------------------------------------------------


def folder_size(p):
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main():
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    makers = [make_vit, make_vit_model, make_deit, make_deit_distilled, make_clip, make_siglip, make_dinov2]
    for mk in makers:
        mk()
        print(f"ok  {mk.__name__[5:]}")
    total = 0
    for d in sorted(p for p in OUT.iterdir() if p.is_dir()):
        size = folder_size(d)
        total += size
        print(f"{d.name:16s} {size / 1024:8.1f} KiB")
        for f in sorted(d.iterdir()):
            print(f"    {f.name:28s} {f.stat().st_size:>8d}")
        if size > FOLDER_LIMIT:
            sys.exit(f"{d.name} is {size} bytes, over {FOLDER_LIMIT}")
    print(f"total            {total / 1024:8.1f} KiB")
    if total > TOTAL_LIMIT:
        sys.exit(f"fixtures total {total} bytes, over {TOTAL_LIMIT}")


if __name__ == "__main__":
    main()

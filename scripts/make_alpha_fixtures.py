#!/usr/bin/env python
"""Transparency references in tests/fixtures/alpha/ (tests/alpha_compositing.rs reads them).

Images with transparency of every PNG kind, written with Pillow: `rgba.png` (8-bit RGBA, colour
kept under transparent pixels), `la.png` (grey + alpha), `palette_trns.png` (palette with a
tRNS alpha per entry), `grey_trns.png` and `rgb_trns.png` (a tRNS colour key), and `blend.png`
(256 x 256 RGBA: x is the colour, y the alpha, every pair once). For each:

- `<name>.white.png`: transformers' `convert_to_rgb(Image.open(f), return_numpy=True)`, what an
  image processor with `do_convert_rgb` does (composited onto white);
- `<name>.drop.png`: Pillow's `Image.open(f).convert("RGB")`, what transformers' `load_image`
  does before any processor (alpha dropped).

`processors.json`: each image processor class's `do_convert_rgb` default in transformers, and
the pixel values transformers' processors (Pillow backend) make of `rgba.png` as opened, for the
test folders of every family: CLIP, SigLIP, DINOv2 (`BitImageProcessor`), ViT, LLaVA-1.5 and
SmolVLM (the published folders with their tiny sizes). ViT's processor does not convert and
refuses a 4-channel image; its reference is the processor on `load_image`'s RGB, with the error
recorded.

Run: /opt/pyenv/bin/python scripts/make_alpha_fixtures.py (CPU, seconds).
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_published_fixtures as pf  # noqa: E402  (assemble, write_json, PUB)
import make_vlm_fixtures as vf  # noqa: E402  (r7, VERSIONS)

import transformers  # noqa: E402
from transformers import AutoImageProcessor  # noqa: E402
from transformers.image_transforms import convert_to_rgb  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "alpha"
CLASSES = ["CLIPImageProcessor", "SiglipImageProcessor", "BitImageProcessor", "LlavaImageProcessor",
           "Idefics3ImageProcessor", "ViTImageProcessor", "DeiTImageProcessor"]


def images():
    rng = np.random.default_rng(11)
    h, w = 15, 20
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    rgba[:5, :, 3] = 0  # fully transparent rows, colour kept underneath
    rgba[5:10, :, 3] = 255  # opaque rows
    yield "rgba", Image.fromarray(rgba, "RGBA")
    yield "la", Image.fromarray(rgba[..., [0, 3]], "LA")
    pal = Image.fromarray(rng.integers(0, 8, (h, w), dtype=np.uint8), "P")
    pal.putpalette(rng.integers(0, 256, 8 * 3, dtype=np.uint8).tolist())
    pal.info["transparency"] = bytes([0, 255, 128, 30, 255, 200, 7, 255])
    yield "palette_trns", pal
    grey = Image.fromarray(rng.integers(0, 4, (h, w), dtype=np.uint8) * 60, "L")
    grey.info["transparency"] = 60
    yield "grey_trns", grey
    rgb = rng.integers(0, 2, (h, w, 3), dtype=np.uint8) * 200
    rgb[::3, ::2] = [200, 0, 200]
    image = Image.fromarray(rgb, "RGB")
    image.info["transparency"] = (200, 0, 200)
    yield "rgb_trns", image
    c, a = np.meshgrid(np.arange(256), np.arange(256))
    blend = np.stack([c, 255 - c, c // 2, a], -1).astype(np.uint8)
    yield "blend", Image.fromarray(blend, "RGBA")


def write_images():
    for name, image in images():
        path = OUT / f"{name}.png"
        image.save(path, transparency=image.info["transparency"]) if "transparency" in image.info else image.save(path)
        opened = Image.open(path)
        assert opened.mode == image.mode and ("A" in opened.getbands() or "transparency" in opened.info), name
        Image.fromarray(convert_to_rgb(Image.open(path), return_numpy=True)).save(OUT / f"{name}.white.png")
        Image.open(path).convert("RGB").save(OUT / f"{name}.drop.png")


def values(pixels):
    return [vf.r7(v) for v in np.asarray(pixels, dtype=np.float64).ravel()]


def processor_outputs():
    image = Image.open(OUT / "rgba.png")
    out = {}
    for name in ["clip", "siglip", "dinov2", "vit"]:
        folder = REPO / "tests" / "fixtures" / "encoders" / name
        processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
        entry = {"folder": f"encoders/{name}", "class": type(processor).__name__,
                 "do_convert_rgb": processor.do_convert_rgb}
        try:
            pixels = processor(image, return_tensors="np")["pixel_values"]
        except ValueError as e:
            entry["refused_as_opened"] = str(e)
            pixels = processor(image.convert("RGB"), return_tensors="np")["pixel_values"]
            entry["input"] = "Image.open(f).convert('RGB') (transformers' load_image)"
        else:
            entry["input"] = "Image.open(f)"
        entry.update(shape=list(pixels.shape), pixel_values=values(pixels))
        out[name] = entry
    for tiny in ["llava-1.5-7b-hf", "SmolVLM-256M-Instruct"]:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            pf.assemble(tiny, pf.PUB / "tiny" / tiny, folder)
            processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
            entry = {"folder": f"published/tiny/{tiny}", "class": type(processor).__name__,
                     "do_convert_rgb": processor.do_convert_rgb, "input": "Image.open(f)"}
            if tiny.startswith("SmolVLM"):
                whole = processor(image, do_image_splitting=False, return_tensors="np")["pixel_values"][0]
                split = processor(image, do_image_splitting=True, return_tensors="np")["pixel_values"][0]
                # Splitting cuts the same composited image; the first tile and the global image
                # (last) are kept to bound the fixture's size.
                entry.update(shape=list(whole.shape), pixel_values=values(whole), split_images=int(split.shape[0]),
                             split_first=values(split[0]), split_last=values(split[-1]))
            else:
                pixels = processor(image, return_tensors="np")["pixel_values"]
                entry.update(shape=list(pixels.shape), pixel_values=values(pixels))
            out[tiny] = entry
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    write_images()
    defaults = {c: getattr(transformers, c + "Pil")().do_convert_rgb for c in CLASSES}
    pf.write_json(OUT / "processors.json", {
        "meta": {"what": "transformers' image processors (Pillow backend) on tests/fixtures/alpha/rgba.png",
                 "versions": vf.VERSIONS},
        "do_convert_rgb_defaults": defaults,
        "outputs": processor_outputs(),
    })
    print("wrote", OUT)


if __name__ == "__main__":
    main()

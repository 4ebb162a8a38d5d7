#!/usr/bin/env python3
"""Write the malformed / unusual image inputs used by tokenlens' error-path tests
into tests/fixtures/bad/. Deterministic: reruns give the same files.

    empty.png          0 bytes
    truncated.png      first 2000 bytes of assets/chelsea.png
    rgb16.png          64x48 RGB, 16 bits per channel
    gray.png           64x48 8-bit grayscale
    rgba.png           64x48 8-bit RGBA with varying alpha
    huge_header.png    valid signature + IHDR declaring 30000x30000 8-bit RGB
                       (correct CRC), a tiny IDAT and IEND: a decoder must refuse
                       from the header alone instead of allocating ~2.7 GB
    not_an_image.png   a few bytes of text
"""

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "bad"
W, H = 64, 48


def png_chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def gradient():
    y, x = np.mgrid[0:H, 0:W]
    return x, y


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    x, y = gradient()

    (OUT / "empty.png").write_bytes(b"")

    (OUT / "truncated.png").write_bytes((REPO / "assets" / "chelsea.png").read_bytes()[:2000])

    # 16-bit RGB. cv2.imwrite takes BGR order; channel values span the full 16-bit range.
    r = (x * 65535 // (W - 1)).astype(np.uint16)
    g = (y * 65535 // (H - 1)).astype(np.uint16)
    b = ((x + y) * 65535 // (W + H - 2)).astype(np.uint16)
    bgr16 = np.dstack([b, g, r])
    if not cv2.imwrite(str(OUT / "rgb16.png"), bgr16):
        raise SystemExit("cv2.imwrite failed for rgb16.png")

    gray = ((x * 4 + y * 2) % 256).astype(np.uint8)
    Image.fromarray(gray, "L").save(OUT / "gray.png")

    rgba = np.dstack([
        (x * 255 // (W - 1)).astype(np.uint8),
        (y * 255 // (H - 1)).astype(np.uint8),
        np.full((H, W), 128, np.uint8),
        ((x + y) * 255 // (W + H - 2)).astype(np.uint8),  # alpha 0..255
    ])
    Image.fromarray(rgba, "RGBA").save(OUT / "rgba.png")

    # IHDR: width, height, bit depth 8, colour type 2 (RGB), compression 0, filter 0, interlace 0.
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * 4)  # one filter byte + a few pixels, far too short
    (OUT / "huge_header.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))

    (OUT / "not_an_image.png").write_bytes(b"this is not an image, just text\n")

    # Self-checks.
    with Image.open(OUT / "rgb16.png") as im:
        raw = (OUT / "rgb16.png").read_bytes()
        bit_depth, colour_type = raw[24], raw[25]
        assert (bit_depth, colour_type) == (16, 2), (bit_depth, colour_type)
        assert im.size == (W, H), im.size
    back = cv2.imread(str(OUT / "rgb16.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back, bgr16)
    with Image.open(OUT / "gray.png") as im:
        assert im.mode == "L" and im.size == (W, H)
    with Image.open(OUT / "rgba.png") as im:
        assert im.mode == "RGBA" and im.size == (W, H)
        assert len(np.unique(np.array(im)[..., 3])) > 1
    # huge_header.png: re-parse the IHDR by hand (Pillow itself refuses it as a
    # decompression bomb, which is the point) and check its CRC.
    raw = (OUT / "huge_header.png").read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", raw[8:16])
    assert (length, kind) == (13, b"IHDR")
    assert struct.unpack(">I", raw[29:33])[0] == zlib.crc32(raw[12:29]) & 0xFFFFFFFF
    assert struct.unpack(">II", raw[16:24]) == (30000, 30000)
    try:
        Image.open(OUT / "huge_header.png")
    except Image.DecompressionBombError:
        pass
    else:
        raise AssertionError("expected Pillow to flag huge_header.png as a decompression bomb")

    # What Pillow decodes the convertible images to (Image.open(p).convert("RGB"), as reference
    # pipelines do): raw 8-bit RGB, row-major, for tokenlens's decoding to match byte for byte.
    for name in ["rgb16.png", "rgba.png", "gray.png"]:
        rgb = Image.open(OUT / name).convert("RGB")
        (OUT / f"{name}.pillow.rgb").write_bytes(rgb.tobytes())

    for p in sorted(OUT.iterdir()):
        print(f"{p.relative_to(REPO)}  {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()

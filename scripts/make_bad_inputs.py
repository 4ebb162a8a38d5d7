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
    palette4.png       8x8 palette PNG whose PLTE chunk is 4 bytes long (not a multiple of 3):
                       png 0.18.1 panics on it (image-png #694)
    bomb_1bit.png      16000x16000 1-bit greyscale, ~31 KB: a decompression bomb Pillow
                       refuses (256 Mpx > 2 x Image.MAX_IMAGE_PIXELS)
    exif_o{2..8}.png   a 12x8 asymmetric pattern stored with EXIF orientation 2..8 (eXIf chunk)
    exif_o6.jpg        a 48x32 JPEG stored with EXIF orientation 6 (rotate 90 degrees clockwise)
    seed_*             small valid files of the kinds decoders branch on (palette with tRNS,
                       1/2/4-bit grey, Adam7 interlaced, 16-bit grey with alpha; baseline,
                       progressive, greyscale and CMYK JPEG): the fuzz corpus of tests/fuzz.rs
    *.pillow.rgb       Pillow's pixels for the convertible files (for exif_*:
                       ImageOps.exif_transpose(Image.open(p)).convert("RGB")), raw RGB rows,
                       preceded for exif_* by a 4-byte ">HH" width, height
"""

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

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

    # Colour type 3 (palette), 8 bits; a PLTE of 4 bytes; every pixel index 0.
    ihdr = struct.pack(">IIBBBBB", 8, 8, 8, 3, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\x00" + b"\x00" * 8 for _ in range(8)))
    (OUT / "palette4.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"PLTE", b"\x10\x20\x30\x40")
        + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))

    # 16000x16000, bit depth 1, grey: 2000 bytes a row, all zero, compressed to ~31 KB.
    side = 16000
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    rows = (b"\x00" + b"\x00" * (side // 8)) * side
    (OUT / "bomb_1bit.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows, 9))
        + png_chunk(b"IEND", b""))

    # EXIF orientation: an asymmetric pattern, so every transpose is distinguishable.
    yy, xx = np.mgrid[0:8, 0:12]
    pattern = np.dstack([xx * 20, yy * 30, (xx * 7 + yy * 13) % 256]).astype(np.uint8)
    for o in range(2, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        Image.fromarray(pattern, "RGB").save(OUT / f"exif_o{o}.png", exif=exif.tobytes())
    yy, xx = np.mgrid[0:32, 0:48]
    photo = np.dstack([xx * 5, yy * 7, 255 - xx * 5]).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo, "RGB").save(OUT / "exif_o6.jpg", exif=exif.tobytes(), quality=90)

    # Fuzz seeds: small, one per decoder branch.
    yy, xx = np.mgrid[0:12, 0:16]
    small = np.dstack([xx * 16, yy * 20, (xx * yy) % 256]).astype(np.uint8)
    pal = Image.fromarray(small, "RGB").quantize(8)
    pal.info["transparency"] = 0
    pal.save(OUT / "seed_palette_trns.png", transparency=0)
    for bits in (1, 2, 4):
        grey = Image.fromarray((small[..., 0] // (256 >> bits) * (255 // ((1 << bits) - 1))).astype(np.uint8), "L")
        grey.save(OUT / f"seed_grey{bits}.png", bits=bits)
    ihdr = struct.pack(">IIBBBBB", 16, 12, 8, 2, 0, 0, 1)  # Adam7
    def adam7(img):
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        out = b""
        for x0, y0, dx, dy in passes:
            sub = img[y0::dy, x0::dx]
            if sub.size:
                out += b"".join(b"\x00" + row.tobytes() for row in sub)
        return out
    (OUT / "seed_interlaced.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(adam7(small)))
        + png_chunk(b"IEND", b""))
    la16 = np.dstack([small[..., 0].astype(np.uint16) * 257, small[..., 1].astype(np.uint16) * 257])
    ihdr = struct.pack(">IIBBBBB", 16, 12, 16, 4, 0, 0, 0)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in la16)
    (OUT / "seed_grey_alpha16.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b""))
    rgb = Image.fromarray(small, "RGB")
    rgb.save(OUT / "seed_baseline.jpg", quality=85)
    rgb.save(OUT / "seed_progressive.jpg", quality=85, progressive=True)
    rgb.convert("L").save(OUT / "seed_grey.jpg", quality=85)
    rgb.convert("CMYK").save(OUT / "seed_cmyk.jpg", quality=85)

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
    # transformers' load_image does exactly this: exif_transpose, then convert("RGB").
    for name in [f"exif_o{o}.png" for o in range(2, 9)] + ["exif_o6.jpg"]:
        with Image.open(OUT / name) as im:
            assert im.getexif()[0x0112] == int(name[6]), name
            upright = ImageOps.exif_transpose(im).convert("RGB")
        (OUT / f"{name}.pillow.rgb").write_bytes(struct.pack(">HH", *upright.size) + upright.tobytes())
    for seed in sorted(OUT.glob("seed_*")):
        with Image.open(seed) as im:
            im.load()
            assert im.size == (16, 12), (seed, im.size)
    # Pillow refuses the bomb; the eXIf chunk sits before IDAT, where decoders read metadata.
    try:
        Image.open(OUT / "bomb_1bit.png")
    except Image.DecompressionBombError:
        pass
    else:
        raise AssertionError("expected Pillow to flag bomb_1bit.png as a decompression bomb")
    raw = (OUT / "exif_o6.png").read_bytes()
    assert 0 < raw.index(b"eXIf") < raw.index(b"IDAT")

    for p in sorted(OUT.iterdir()):
        print(f"{p.relative_to(REPO)}  {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()

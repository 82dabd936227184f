"""Image files for the service tests: real photos in every accepted mode, and every kind of bad input."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image
from skimage import data


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo(name: str) -> Image.Image:
    array = getattr(data, name)()
    return Image.fromarray(array if array.ndim == 3 else np.stack([array] * 3, axis=-1))


def accepted_images() -> dict[str, bytes]:
    """One file per input kind the service must accept, made from real photos."""
    cat, coffee, astronaut = photo("chelsea"), photo("coffee"), photo("astronaut")
    grey = np.asarray(photo("camera").convert("L"))
    rgba = np.dstack(
        [np.asarray(coffee), np.linspace(0, 255, coffee.width, dtype=np.uint8)[None].repeat(coffee.height, 0)]
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return {
        "cat.jpg": encode(cat, "JPEG", quality=90),
        "coffee.png": encode(coffee, "PNG"),
        "astronaut.webp": encode(astronaut, "WEBP", quality=90),
        "rocket.bmp": encode(photo("rocket"), "BMP"),
        "cmyk.jpg": encode(photo("immunohistochemistry").convert("CMYK"), "JPEG", quality=90),
        "grey16.png": encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"),
        "grey.png": encode(Image.fromarray(grey), "PNG"),
        "rgba.png": encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "palette.png": encode(cat.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG"),
        "exif_rotated.jpg": encode(astronaut.crop((0, 0, 512, 300)), "JPEG", quality=90, exif=exif),
    }


def truncated_jpeg() -> bytes:
    whole = encode(photo("chelsea"), "JPEG", quality=90)
    return whole[: len(whole) // 2]


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height, with no pixel data behind it: a decompression bomb's shape."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def noise_png(width: int, height: int) -> bytes:
    """Incompressible, so the file is about width * height * 3 bytes."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "PNG")


def flat_png(width: int, height: int) -> bytes:
    """Many pixels in a tiny file."""
    return encode(Image.new("RGB", (width, height), (90, 140, 200)), "PNG")

"""Decoding untrusted bytes: every odd but valid image becomes correct RGB; every bad one a clear reason."""

import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import jpeg_bytes, png_bytes
from transferline.data.imaging import (
    ACCEPTED_FORMATS,
    ImageLimits,
    ImageRejected,
    claimed_format,
    decode_image,
    refused_format,
)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_rgb_png_round_trips():
    array = np.random.default_rng(0).integers(0, 255, (10, 14, 3), dtype=np.uint8)
    decoded = decode_image(png_bytes(array))
    assert decoded.rgb.mode == "RGB"
    assert (decoded.width, decoded.height) == (14, 10)
    np.testing.assert_array_equal(np.asarray(decoded.rgb), array)


def test_grayscale_is_replicated_to_three_channels():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    rgb = np.asarray(decode_image(png_bytes(gray, mode="L")).rgb)
    assert rgb.shape == (8, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


def test_transparent_pixels_become_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    rgb = np.asarray(decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG")).rgb)
    assert tuple(rgb[0, 0]) == (200, 0, 0)
    assert tuple(rgb[3, 3]) == (255, 255, 255)


def test_palette_image_with_transparency():
    image = Image.new("P", (6, 6), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.info["transparency"] = 0
    decoded = decode_image(encode(image, "PNG", transparency=0))
    assert decoded.source_mode == "P"
    assert tuple(np.asarray(decoded.rgb)[0, 0]) == (10, 200, 30)


def test_cmyk_jpeg_is_converted():
    image = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    decoded = decode_image(encode(image, "JPEG"))
    assert decoded.source_mode == "CMYK"
    red, green, blue = np.asarray(decoded.rgb)[4, 4].astype(int)
    assert red > 200 and green < 60 and blue < 60


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits():
    array = np.full((5, 5), 65535, dtype=np.uint16)
    array[0, 0] = 0
    decoded = decode_image(encode(Image.fromarray(array), "PNG"))
    rgb = np.asarray(decoded.rgb)
    assert decoded.source_mode.startswith("I")
    assert tuple(rgb[2, 2]) == (255, 255, 255)
    assert tuple(rgb[0, 0]) == (0, 0, 0)


def test_exif_orientation_is_applied():
    array = np.zeros((10, 20, 3), dtype=np.uint8)  # landscape, 20 wide
    array[:, :10] = 255  # left half white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.rgb.size == (10, 20)  # displayed portrait
    rgb = np.asarray(decoded.rgb).astype(int)
    assert rgb[2, 5].mean() > 200 and rgb[-3, 5].mean() < 50  # white moved to the top


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, I am text pretending to be a PNG\n", "not a recognised image format"),
        (png_bytes(np.zeros((40, 40, 3), np.uint8))[:60], "truncated"),
        (jpeg_bytes(np.full((64, 64, 3), 90, np.uint8))[:300], "truncated"),
    ],
)
def test_bad_bytes_are_rejected_with_a_reason(data, reason):
    with pytest.raises(ImageRejected, match=reason):
        decode_image(data)


def test_pixel_limit_stops_a_decompression_bomb_before_decoding():
    bomb = encode(Image.new("L", (5000, 5000)), "PNG")  # ~25 kB on disk, 25 Mpx in memory
    assert len(bomb) < 100_000
    with pytest.raises(ImageRejected, match="5000x5000 = 25000000 pixels, above the limit"):
        decode_image(bomb, ImageLimits(max_pixels=10_000_000))


def test_byte_limit():
    data = png_bytes(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ImageRejected, match="above the limit of 10 bytes"):
        decode_image(data, ImageLimits(max_bytes=10))


def eps_bytes() -> bytes:
    """A real EPS, as Pillow writes it: Pillow would open it and render it with Ghostscript."""
    return encode(Image.new("RGB", (8, 8), (200, 10, 10)), "EPS")


def test_eps_is_refused_before_any_postscript_code_runs(monkeypatch):
    import subprocess

    from PIL import EpsImagePlugin

    data = eps_bytes()
    assert Image.open(io.BytesIO(data)).format == "EPS"  # what Pillow alone would do with it
    calls = []

    def record(name):
        def called(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called while decoding an upload")

        return called

    monkeypatch.setattr(subprocess, "Popen", record("subprocess.Popen"))
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", record("EpsImagePlugin.Ghostscript"))
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", record("EpsImageFile._open"))
    for variant in (data, b"\xc5\xd0\xd3\xc6" + data[4:]):  # plain, and the DOS binary EPS header
        with pytest.raises(ImageRejected, match=r"^not a recognised image format: PostScript/EPS is not decoded"):
            decode_image(variant)
    assert calls == []


# Formats Pillow opens by itself but that we never claim to decode.
UNACCEPTED = {
    "PPM": "RGB",
    "TGA": "RGB",
    "PCX": "RGB",
    "SGI": "RGB",
    "DDS": "RGB",
    "QOI": "RGB",
    "JPEG2000": "RGB",
    "AVIF": "RGB",
    "ICNS": "RGB",
    "DIB": "RGB",
    "SPIDER": "F",
    "MSP": "1",
    "XBM": "1",
}


@pytest.mark.parametrize(("fmt", "mode"), UNACCEPTED.items())
def test_formats_we_do_not_accept_are_refused(fmt, mode):
    data = encode(Image.new("RGB", (16, 16), (10, 120, 200)).convert(mode), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow would decode it
    assert fmt not in ACCEPTED_FORMATS
    with pytest.raises(ImageRejected, match=r"^not a recognised image format"):
        decode_image(data)


@pytest.mark.parametrize("fmt", ACCEPTED_FORMATS)
def test_every_accepted_format_decodes(fmt):
    decoded = decode_image(encode(Image.new("RGB", (16, 16), (10, 120, 200)), fmt))
    assert decoded.source_format == fmt
    assert decoded.rgb.size == (16, 16)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"%PDF-1.4\n1 0 obj <</Type /Catalog>> endobj\n%%EOF\n", "PDF is not decoded here"),
        (encode(Image.new("RGB", (8, 8)), "AVIF"), "HEIF/AVIF is not decoded here"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt PNG file: it starts like PNG but its header cannot be read"),
        (b"GIF89a" + b"\xff" * 3, "corrupt GIF file"),
        (b"II*\x00" + b"\x00" * 4, "corrupt TIFF file"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8X", "corrupt or truncated WEBP header"),
        (b"\xff\xd8\xff\xd9", "corrupt JPEG file"),
    ],
)
def test_refused_and_damaged_files_are_named(data, reason):
    with pytest.raises(ImageRejected, match=re.escape(reason)):
        decode_image(data)


def test_format_sniffing_reads_only_the_signature():
    assert claimed_format(png_bytes(np.zeros((2, 2, 3), np.uint8))) == "PNG"
    assert claimed_format(b"%!PS-Adobe-3.0") is None
    assert refused_format(b"%!PS-Adobe-3.0 EPSF-3.0") == "PostScript/EPS"
    assert refused_format(b"%PDF-1.7") == "PDF"
    assert refused_format(b"\x00\x00\x00\x18ftypheic") == "HEIF/AVIF"
    assert refused_format(jpeg_bytes(np.zeros((8, 8, 3), np.uint8))) is None


def test_metadata_zlib_bomb_is_a_safety_limit():
    text = zlib.compress(b"a" * 8_000_000, 9)
    chunk = b"zTXt" + b"Comment\x00\x00" + text
    png = png_bytes(np.zeros((4, 4, 3), np.uint8))
    bomb = png[:33] + struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk)) + png[33:]
    with pytest.raises(ImageRejected, match=r"^image metadata decompresses beyond the decoder's safety limit"):
        decode_image(bomb)

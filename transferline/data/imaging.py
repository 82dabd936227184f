"""Decoding untrusted image bytes into RGB pixels, with limits, and precise reasons when that fails.

Shared by the prepare stage and the prediction service, so both accept and reject the same inputs.

Only the formats in `ACCEPTED_FORMATS` are decoded. Pillow is told so (`Image.open(..., formats=...)`),
so no other plugin even looks at the bytes: Pillow's EPS plugin runs Ghostscript on the file, and its
other plugins parse containers (PSD, FITS, JPEG 2000, AVIF, ...) nobody here needs or tests.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})

# Pillow format ids of what we decode; an animation's first frame is used. README (Serving) lists the same.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "TIFF", "WEBP", "BMP", "ICO")

# Files that start like one of the accepted formats but that its decoder cannot open are damaged images,
# not other data: said as such, so the sender fixes the file rather than its type.
_ACCEPTED_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
)

# Formats people send by mistake, named in the refusal. PostScript is the one that must never reach Pillow
# (it would run Ghostscript); these are the signatures Pillow's EPS plugin accepts.
_REFUSED_SIGNATURES = (
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "PostScript/EPS"),  # DOS EPS binary header
    (b"%PDF-", "PDF"),
)
_HEIF_BRANDS = frozenset({b"avif", b"avis", b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1"})
_UNRECOGNISED = "not a recognised image format"


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 50_000_000
    max_pixels: int = 89_478_485


class ImageRejected(ValueError):
    """The bytes are not an image we can use; `reason` says why, in words for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class DecodedImage:
    rgb: Image.Image
    source_format: str
    source_mode: str
    width: int
    height: int


def claimed_format(data: bytes) -> str | None:
    """The accepted format whose signature the bytes start with, if any (before any decoder runs)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for signature, name in _ACCEPTED_SIGNATURES if data.startswith(signature)), None)


def refused_format(data: bytes) -> str | None:
    """A format we recognise and refuse by name (PostScript, PDF, HEIF/AVIF), or None."""
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "HEIF/AVIF"
    return next((name for signature, name in _REFUSED_SIGNATURES if data.startswith(signature)), None)


def unrecognised_reason(data: bytes) -> str:
    """Why bytes that no accepted decoder identifies are refused: a damaged image, a refused format, or neither."""
    claimed = claimed_format(data)
    if claimed:
        return f"corrupt {claimed} file: it starts like {claimed} but its header cannot be read"
    refused = refused_format(data)
    if refused:
        return f"{_UNRECOGNISED}: {refused} is not decoded here"
    return _UNRECOGNISED


def failure_reason(exc: Exception, stage: str) -> str:
    """Words for a decoder error; `stage` names what was read ("PNG header", "image data (PNG)")."""
    if "decompressed data too large" in str(exc).lower():  # a zlib bomb in a PNG text or colour-profile chunk
        return f"image metadata decompresses beyond the decoder's safety limit ({exc})"
    return f"corrupt or truncated {stage}: {exc}"


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> DecodedImage:
    """Decode fully (so truncation shows), apply EXIF orientation, and convert to 8-bit RGB."""
    if len(data) == 0:
        raise ImageRejected("empty file (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageRejected(f"file is {len(data)} bytes, above the limit of {limits.max_bytes} bytes")
    if refused_format(data):  # refused before Pillow sees the bytes at all
        raise ImageRejected(unrecognised_reason(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except UnidentifiedImageError:
            raise ImageRejected(unrecognised_reason(data)) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(f"image dimensions exceed the decoder's safety limit: {exc}") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageRejected(failure_reason(exc, f"{claimed_format(data) or 'image'} header")) from None
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageRejected(f"image has no pixels ({width}x{height})")
        if width * height > limits.max_pixels:
            raise ImageRejected(
                f"image is {width}x{height} = {width * height} pixels, above the limit of {limits.max_pixels} pixels"
            )
        source_format = image.format or "unknown"
        source_mode = image.mode
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(f"image dimensions exceed the decoder's safety limit: {exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageRejected(failure_reason(exc, f"image data ({source_format})")) from None
        rgb = to_rgb(image)
    return DecodedImage(rgb, source_format, source_mode, width, height)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB as the camera meant it: EXIF-rotated, transparency flattened on white, 16-bit scaled."""
    image = ImageOps.exif_transpose(image) or image
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    elif mode == "F":
        array = np.asarray(image, dtype=np.float64)
        array = np.clip(array * 255.0 + 0.5 if array.max() <= 1.0 else array, 0, 255)
        image = Image.fromarray(array.astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image

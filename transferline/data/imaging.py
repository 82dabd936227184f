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
from http import HTTPStatus

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


# What kind of unusable input it is, as the HTTP status the service answers with: decided where the
# reason is written, never guessed back from its words.
EMPTY = HTTPStatus.BAD_REQUEST  # nothing was sent
TOO_LARGE = HTTPStatus.REQUEST_ENTITY_TOO_LARGE  # bytes, pixels or decoded size over a limit
UNSUPPORTED = HTTPStatus.UNSUPPORTED_MEDIA_TYPE  # not one of the accepted formats
DAMAGED = HTTPStatus.UNPROCESSABLE_ENTITY  # an accepted format, but corrupt, truncated or without pixels


class ImageRejected(ValueError):
    """The bytes are not an image we can use; `reason` says why, in words for the user, and `status`
    which kind of problem it is, as an HTTP status (EMPTY, TOO_LARGE, UNSUPPORTED or DAMAGED)."""

    def __init__(self, reason: str, status: HTTPStatus) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = int(status)


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


def unrecognised(data: bytes) -> ImageRejected:
    """Why bytes that no accepted decoder identifies are refused: a damaged image, a refused format, or neither."""
    claimed = claimed_format(data)
    if claimed:
        return ImageRejected(f"corrupt {claimed} file: it starts like {claimed} but its header cannot be read", DAMAGED)
    refused = refused_format(data)
    if refused:
        return ImageRejected(f"{_UNRECOGNISED}: {refused} is not decoded here", UNSUPPORTED)
    return ImageRejected(_UNRECOGNISED, UNSUPPORTED)


def decoder_failure(exc: Exception, stage: str) -> ImageRejected:
    """A decoder error in words; `stage` names what was read ("PNG header", "image data (PNG)")."""
    if "decompressed data too large" in str(exc).lower():  # a zlib bomb in a PNG text or colour-profile chunk
        return ImageRejected(f"image metadata decompresses beyond the decoder's safety limit ({exc})", TOO_LARGE)
    return ImageRejected(f"corrupt or truncated {stage}: {exc}", DAMAGED)


def over_safety_limit(exc: Exception) -> ImageRejected:
    return ImageRejected(f"image dimensions exceed the decoder's safety limit: {exc}", TOO_LARGE)


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> DecodedImage:
    """Decode fully (so truncation shows), apply EXIF orientation, and convert to 8-bit RGB."""
    if len(data) == 0:
        raise ImageRejected("empty file (0 bytes)", EMPTY)
    if len(data) > limits.max_bytes:
        raise ImageRejected(f"file is {len(data)} bytes, above the limit of {limits.max_bytes} bytes", TOO_LARGE)
    if refused_format(data):  # refused before Pillow sees the bytes at all
        raise unrecognised(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except UnidentifiedImageError:
            raise unrecognised(data) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise over_safety_limit(exc) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise decoder_failure(exc, f"{claimed_format(data) or 'image'} header") from None
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageRejected(f"image has no pixels ({width}x{height})", DAMAGED)
        if width * height > limits.max_pixels:
            raise ImageRejected(
                f"image is {width}x{height} = {width * height} pixels, above the limit of {limits.max_pixels} pixels",
                TOO_LARGE,
            )
        source_format = image.format or "unknown"
        source_mode = image.mode
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise over_safety_limit(exc) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise decoder_failure(exc, f"image data ({source_format})") from None
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

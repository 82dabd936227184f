"""Decoding untrusted image bytes into RGB pixels, with limits, and precise reasons when that fails.

Shared by the prepare stage and the prediction service, so both accept and reject the same inputs.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


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


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> DecodedImage:
    """Decode fully (so truncation shows), apply EXIF orientation, and convert to 8-bit RGB."""
    if len(data) == 0:
        raise ImageRejected("empty file (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageRejected(f"file is {len(data)} bytes, above the limit of {limits.max_bytes} bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageRejected("not a recognised image format") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(f"image dimensions exceed the decoder's safety limit: {exc}") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageRejected(f"corrupt or truncated image header: {exc}") from None
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
            raise ImageRejected(f"corrupt or truncated image data ({source_format}): {exc}") from None
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

"""The most confidently wrong test images: which ones they are, and a contact sheet of them as a PNG.

A model that is sure and wrong is where label noise, look-alike classes and data problems show first;
seeing those images (and tracing them back to their files) says more than any aggregate metric.
Rendered with Pillow alone, so the evaluate stage needs no plotting library.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

THUMB = 160  # thumbnail side in pixels, whatever the model's input size
PAD = 8
FONT_SIZE = 13
LINE = FONT_SIZE + 4
HEADER = 2 * LINE + PAD
SUBTITLE = "Under each image: the true and the predicted label, each with the probability the model gave it."
COLUMNS = 4
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
WRONG = (178, 24, 43)


@dataclass(frozen=True)
class ConfidentError:
    rank: int  # 1 = the most confident mistake
    test_index: int  # row of the image in the test split (data/prepared/cache/test_*.npy)
    path: str  # the raw file, relative to data/raw (as in data/prepared/manifest.csv)
    actual: str
    predicted: str
    confidence: float  # probability the model gave its (wrong) prediction
    actual_probability: float  # probability it gave the true class

    def to_dict(self) -> dict:
        return asdict(self)


def confident_errors(
    probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], paths: Sequence[str], limit: int
) -> list[ConfidentError]:
    """The `limit` misclassified images with the highest predicted probability, most confident first
    (ties keep test-split order, so the choice is deterministic)."""
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probs[wrong, predicted[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")][:limit]
    return [
        ConfidentError(
            rank=rank,
            test_index=int(i),
            path=paths[i],
            actual=classes[labels[i]],
            predicted=classes[predicted[i]],
            confidence=round(float(probs[i, predicted[i]]), 6),
            actual_probability=round(float(probs[i, labels[i]]), 6),
        )
        for rank, i in enumerate(order, start=1)
    ]


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=FONT_SIZE)


def _caption(draw: ImageDraw.ImageDraw, xy: tuple[int, int], label: str, probability: float, font, colour) -> None:
    """`label` at the left of a thumbnail's width (shortened with an ellipsis if it would not fit), and
    its probability right-aligned under the thumbnail's right edge."""
    x, y = xy
    number = f"{probability:.3f}"
    number_width = draw.textlength(number, font=font)
    room = THUMB - number_width - PAD
    text = label
    while text and draw.textlength(text if text == label else text + "…", font=font) > room:
        text = text[:-1]
    draw.text((x, y), text if text == label else text + "…", fill=colour, font=font)
    draw.text((x + THUMB - number_width, y), number, fill=colour, font=font)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _thumbnail(pixels: np.ndarray) -> Image.Image:
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="RGB")
    resample = Image.Resampling.NEAREST if pixels.shape[0] * 2 <= THUMB else Image.Resampling.BICUBIC
    return image.resize((THUMB, THUMB), resample)


def render(images: np.ndarray, errors: Sequence[ConfidentError], total_errors: int, total_images: int) -> bytes:
    """A PNG: a title, then one thumbnail per error (from `images`, indexed by test_index), most confident
    first in reading order, with the true label and the prediction, each with the probability the model
    gave it, under it; a plain message when there is no error."""
    font = _font()
    if not errors:
        title = f"No misclassified images among the {total_images} test images."
        width = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=font)) + 2 * PAD
        canvas = Image.new("RGB", (max(width, 320), LINE + 2 * PAD), BACKGROUND)
        ImageDraw.Draw(canvas).text((PAD, PAD), title, fill=TEXT, font=font)
        return _png(canvas)
    title = f"Most confidently wrong test images: {len(errors)} of {total_errors} errors ({total_images} test images)"
    columns = min(COLUMNS, len(errors))
    rows = -(-len(errors) // columns)
    cell_w, cell_h = THUMB + 2 * PAD, THUMB + PAD + 2 * LINE + PAD
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_w = int(max(measure.textlength(text, font=font) for text in (title, SUBTITLE))) + 2 * PAD
    canvas = Image.new("RGB", (max(columns * cell_w, title_w), HEADER + rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, PAD // 2), title, fill=TEXT, font=font)
    draw.text((PAD, PAD // 2 + LINE), SUBTITLE, fill=TEXT, font=font)
    for position, error in enumerate(errors):
        x = (position % columns) * cell_w + PAD
        y = HEADER + (position // columns) * cell_h
        canvas.paste(_thumbnail(images[error.test_index]), (x, y))
        draw.rectangle((x - 1, y - 1, x + THUMB, y + THUMB), outline=WRONG)
        text_y = y + THUMB + PAD // 2
        _caption(draw, (x, text_y), f"true: {error.actual}", error.actual_probability, font, TEXT)
        _caption(draw, (x, text_y + LINE), f"pred: {error.predicted}", error.confidence, font, WRONG)
    return _png(canvas)

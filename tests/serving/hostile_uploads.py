"""A corpus of hostile and odd uploads for the prediction API, each with the answer the service owes it.

Every case is data: the exact request (endpoint, content type, body bytes, whether it is streamed without
a Content-Length) and the expected outcome, either a refusal (a precise 4xx and a fragment of its message)
or a prediction for images that are valid however odd (CMYK, 16-bit, palette, EXIF-rotated, 1x1, ...),
which must equal what the offline preprocessing path (`transferline.evaluation.scoring`) gives for the same file.
Everything is generated here from Pillow and numpy, so no binary fixture is committed.

The expectations assume a service running with `SERVER_LIMITS`. Write the corpus out with

    python -m tests.serving.hostile_uploads OUTDIR

which leaves one `<case>.body` per case, the valid images of each prediction case, and `manifest.json`
(expected answers and a curl line to replay each request against a server).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import shlex
import struct
import sys
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from tests.serving.images import encode, photo

CLASSIFY = "/classify"
BATCH = "/classify_batch"
BOUNDARY = "hostile-corpus-7f3a9c"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
JSON = "application/json"
PICKLE = "application/vnd.bentoml+pickle"


@dataclass(frozen=True)
class ServerLimits:
    """The serve settings the expectations are written for (small, so the limit cases stay small)."""

    max_image_bytes: int = 2_000_000
    max_image_pixels: int = 2_000_000
    max_request_images: int = 8
    top_k_max: int = 20

    def settings(self) -> dict[str, str]:
        """As `server_env` keywords; one worker, so a case that killed it could not hide behind a second one."""
        return {
            "workers": "1",
            "max_image_bytes": str(self.max_image_bytes),
            "max_image_pixels": str(self.max_image_pixels),
            "max_request_images": str(self.max_request_images),
            "top_k_max": str(self.top_k_max),
        }


SERVER_LIMITS = ServerLimits()


@dataclass(frozen=True)
class Refused:
    """A JSON `{"error", "detail"}` answer with this 4xx status, `fragment` appearing in the error."""

    status: int
    fragment: str


@dataclass(frozen=True)
class Classified:
    """A 200 with `top_k` labels per image, equal to offline scoring of each of `images`, in order."""

    images: tuple[bytes, ...]
    top_k: int


@dataclass(frozen=True)
class Case:
    name: str
    summary: str
    endpoint: str
    content_type: str | None  # None: no Content-Type header at all
    body: bytes
    expect: Refused | Classified
    chunked: bool = False  # streamed with Transfer-Encoding: chunked, no Content-Length

    def curl(self, body_file: str, url: str = "http://127.0.0.1:3000") -> str:
        """A command that replays the request (the chunked ones, too: curl streams stdin)."""
        args = ["curl", "-sS", "-X", "POST"]
        if self.content_type is not None:
            args += ["-H", f"Content-Type: {self.content_type}"]
        if self.chunked:
            args += ["-H", "Transfer-Encoding: chunked", "--data-binary", "@-", url + self.endpoint]
            return f"{shlex.join(args)} < {shlex.quote(body_file)}"
        return shlex.join([*args, "--data-binary", f"@{body_file}", url + self.endpoint])


@dataclass(frozen=True)
class Part:
    """One multipart part; a file part when `filename` is set, no `name` parameter when `name` is None."""

    name: str | None
    data: bytes
    filename: str | None = None
    content_type: str | None = None


def multipart(*parts: Part, boundary: str = BOUNDARY, closed: bool = True) -> bytes:
    """The body, written by hand so that malformed headers and odd filenames reach the server unchanged."""
    chunks = []
    for part in parts:
        disposition = "form-data"
        if part.name is not None:
            disposition += f'; name="{part.name}"'
        if part.filename is not None:
            disposition += f'; filename="{part.filename}"'
        headers = f"Content-Disposition: {disposition}\r\n"
        if part.content_type is not None:
            headers += f"Content-Type: {part.content_type}\r\n"
        chunks.append(f"--{boundary}\r\n{headers}\r\n".encode() + part.data + b"\r\n")
    if closed:
        chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


def image_part(data: bytes, filename: str = "upload.jpg", field: str = "image", content_type: str = "image/jpeg"):
    return Part(field, data, filename, content_type)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- image files -----------------------------------------------------------------------------------------


def small(name: str, size: tuple[int, int] = (128, 96)) -> Image.Image:
    """A real photo, small: cases stay fast and photos give the model varied answers."""
    return photo(name).resize(size, Image.Resampling.BILINEAR)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_from_rows(width: int, height: int, bit_depth: int, colour_type: int, raw_rows: bytes, *extra: bytes) -> bytes:
    """A PNG from already filtered rows, for what Pillow cannot write (48-bit RGB) or must not (lies)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + b"".join(extra)
        + png_chunk(b"IDAT", zlib.compress(raw_rows))
        + png_chunk(b"IEND", b"")
    )


def rgb48_png() -> bytes:
    """16 bits per channel RGB, which Pillow reads but cannot write."""
    pixels = np.asarray(small("coffee"), dtype=np.uint16) * 257
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    return png_from_rows(pixels.shape[1], pixels.shape[0], 16, 2, rows)


def png_text_bomb() -> bytes:
    """A tiny PNG whose compressed text chunk inflates to 8 MB: a zlib bomb in the metadata."""
    rows = b"".join(b"\x00" + b"\x80" * 24 for _ in range(8))
    text = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"a" * 8_000_000, 9))
    return png_from_rows(8, 8, 8, 2, rows, text)


def png_header_claiming(width: int, height: int) -> bytes:
    """A valid header claiming width x height over no pixel data: a decompression bomb's shape."""
    return png_from_rows(width, height, 8, 2, b"")


def jpeg_header_claiming(width: int, height: int) -> bytes:
    """SOI and a baseline SOF0 for a width x height, 3-component image, then EOI."""
    components = b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + components
    return b"\xff\xd8" + sof + b"\xff\xd9"


def bmp_header_claiming(width: int, height: int) -> bytes:
    """A BITMAPINFOHEADER claiming width x height 24-bit pixels, with 100 bytes behind it."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 154, 0, 0, 54) + info + b"\x00" * 100


def flipped(data: bytes, offset: int) -> bytes:
    damaged = bytearray(data)
    damaged[offset] ^= 0xFF
    return bytes(damaged)


def animated_gif() -> bytes:
    frames = [small(name).convert("P", palette=Image.Palette.ADAPTIVE) for name in ("chelsea", "coffee", "rocket")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    """Stored sideways with orientation 6, as a phone writes it: the service must turn it upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(small("astronaut").transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90, exif=exif)


def noise_png(width: int, height: int) -> bytes:
    """Incompressible, so the file is about width * height * 3 bytes."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "PNG", compress_level=1)


# --- the corpus --------------------------------------------------------------------------------------------


def upload(name: str, summary: str, data: bytes, expect: Refused | Classified, **part: str) -> Case:
    """One file in a well-formed multipart body to /classify."""
    return Case(name, summary, CLASSIFY, MULTIPART, multipart(image_part(data, **part)), expect)


def posted_json(name: str, summary: str, payload: object, expect: Refused | Classified, endpoint: str = CLASSIFY):
    return Case(name, summary, endpoint, JSON, json.dumps(payload).encode(), expect)


def raw(name: str, summary: str, body: bytes, content_type: str | None, expect: Refused, **options) -> Case:
    return Case(name, summary, options.pop("endpoint", CLASSIFY), content_type, body, expect, **options)


def valid_images() -> dict[str, tuple[str, bytes]]:
    """Odd but valid files: name -> (summary, bytes). Each must be classified like offline scoring does."""
    cat, coffee = small("chelsea"), small("coffee")
    grey = np.asarray(small("camera").convert("L"))
    alpha = np.linspace(0, 255, coffee.width, dtype=np.uint8)[None].repeat(coffee.height, 0)
    palette_transparent = cat.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    palette_transparent.info["transparency"] = 0
    return {
        "jpeg_baseline": ("an ordinary JPEG photo", encode(cat, "JPEG", quality=90)),
        "jpeg_cmyk": ("CMYK JPEG (print workflow)", encode(small("immunohistochemistry").convert("CMYK"), "JPEG")),
        "jpeg_greyscale": ("single-channel JPEG", encode(Image.fromarray(grey), "JPEG", quality=90)),
        "jpeg_progressive": ("progressive JPEG", encode(coffee, "JPEG", quality=85, progressive=True)),
        "jpeg_exif_rotated": ("JPEG stored sideways with EXIF orientation 6", exif_rotated_jpeg()),
        "png_grey16": ("16-bit greyscale PNG", encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG")),
        "png_rgb48": ("16-bit-per-channel RGB PNG, hand-written", rgb48_png()),
        "png_palette": ("palette PNG", encode(cat.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG")),
        "png_palette_transparent": ("palette PNG with a transparent index", encode(palette_transparent, "PNG")),
        "png_rgba": (
            "RGBA PNG with a transparency gradient",
            encode(Image.fromarray(np.dstack([coffee, alpha])), "PNG"),
        ),
        "png_grey_alpha": ("greyscale + alpha PNG", encode(Image.fromarray(grey).convert("LA"), "PNG")),
        "png_bilevel": ("1-bit black and white PNG", encode(cat.convert("1"), "PNG")),
        "png_1x1": ("a single pixel", encode(Image.new("RGB", (1, 1), (200, 40, 90)), "PNG")),
        "png_20000x1": (
            "a 20000x1 strip",
            encode(Image.fromarray(np.tile(np.asarray(cat)[40:41], (1, 157, 1))[:, :20000]), "PNG"),
        ),
        "png_1x20000": (
            "a 1x20000 strip",
            encode(Image.fromarray(np.tile(np.asarray(coffee)[:, 60:61], (209, 1, 1))[:20000]), "PNG"),
        ),
        "gif_animated": ("animated GIF, three frames: the first is classified", animated_gif()),
        "tiff_rgb": ("uncompressed TIFF", encode(small("rocket"), "TIFF")),
        "tiff_float32": ("32-bit float greyscale TIFF", encode(Image.fromarray(grey.astype(np.float32) / 255), "TIFF")),
        "webp_lossless": ("lossless WebP", encode(coffee, "WEBP", lossless=True)),
        "bmp": ("Windows bitmap", encode(small("rocket"), "BMP")),
        "ico": ("Windows icon", encode(cat, "ICO", sizes=[(64, 64)])),
    }


def corrupt_images() -> list[tuple[str, str, bytes, Refused]]:
    """Damaged, lying, hostile or non-image files, each with the refusal it must get."""
    cat = small("chelsea")
    jpeg, png, gif = encode(cat, "JPEG", quality=90), encode(cat, "PNG"), encode(cat.convert("P"), "GIF")
    webp, tiff = encode(cat, "WEBP", quality=80), encode(cat, "TIFF")
    idat = png.index(b"IDAT")
    limits = SERVER_LIMITS
    return [
        ("zero_bytes", "an empty file", b"", Refused(400, "empty file")),
        (
            "random_bytes",
            "64 KiB of random bytes",
            np.random.default_rng(3).bytes(65536),
            Refused(415, "not a recognised image format"),
        ),
        ("jpeg_truncated", "the first half of a JPEG", jpeg[: len(jpeg) // 2], Refused(422, "truncated")),
        ("jpeg_header_only", "a JPEG cut after 20 bytes", jpeg[:20], Refused(422, "corrupt JPEG file")),
        ("jpeg_soi_eoi", "start and end markers, nothing between", b"\xff\xd8\xff\xd9", Refused(422, "corrupt JPEG")),
        ("png_truncated", "the first half of a PNG", png[: len(png) // 2], Refused(422, "truncated")),
        ("png_bad_header_crc", "PNG whose IHDR checksum is wrong", flipped(png, 29), Refused(422, "corrupt PNG file")),
        (
            "png_corrupt_pixels",
            "PNG with a damaged compressed pixel stream",
            flipped(png, idat + 10),
            Refused(422, "corrupt or truncated image data (PNG)"),
        ),
        (
            "png_zero_width",
            "PNG claiming a width of 0",
            png_from_rows(0, 8, 8, 2, b""),
            Refused(422, "corrupt PNG file"),
        ),
        ("gif_truncated", "the first half of a GIF", gif[: len(gif) // 2], Refused(422, "truncated")),
        ("webp_truncated", "the first half of a WebP", webp[: len(webp) // 2], Refused(422, "corrupt or truncated")),
        ("tiff_truncated", "the first half of a TIFF", tiff[: len(tiff) // 2], Refused(422, "truncated")),
        (
            "bomb_png_header",
            "PNG header claiming 60000x60000 pixels",
            png_header_claiming(60000, 60000),
            Refused(413, "safety limit"),
        ),
        (
            "bomb_jpeg_header",
            "JPEG header claiming 65500x65500 pixels",
            jpeg_header_claiming(65500, 65500),
            Refused(413, "safety limit"),
        ),
        (
            "bomb_bmp_header",
            "BMP header claiming 100000x100000 pixels",
            bmp_header_claiming(100_000, 100_000),
            Refused(413, "safety limit"),
        ),
        (
            "bomb_pixels_small_file",
            f"a flat 2000x1500 PNG: a few KB, {3_000_000} pixels (limit {limits.max_image_pixels})",
            encode(Image.new("RGB", (2000, 1500), (90, 140, 200)), "PNG"),
            Refused(413, f"above the limit of {limits.max_image_pixels} pixels"),
        ),
        ("bomb_png_text_chunk", "8x8 PNG whose zTXt inflates to 8 MB", png_text_bomb(), Refused(413, "safety limit")),
        (
            "gzip_bomb",
            "gzip of 20 MB of zeros, sent as an image",
            gzip.compress(b"\x00" * 20_000_000, 9),
            Refused(415, "not a recognised image format"),
        ),
        (
            "svg_as_png",
            "an SVG document named .png",
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
            Refused(415, "not a recognised image format"),
        ),
        (
            "pdf_as_png",
            "a PDF document named .png",
            b"%PDF-1.4\n1 0 obj <</Type /Catalog>> endobj\ntrailer <</Root 1 0 R>>\n%%EOF\n",
            Refused(415, "not a recognised image format"),
        ),
        (
            "html_as_jpg",
            "an HTML page named .jpg",
            b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>",
            Refused(415, "not a recognised image format"),
        ),
        (
            "eps_as_jpg",
            "an EPS file named .jpg (Pillow would hand it to Ghostscript)",
            b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\nnewpath 0 0 moveto 9 9 lineto stroke\n%%EOF\n",
            Refused(415, "PostScript/EPS is not decoded here"),
        ),
        (
            "file_above_byte_limit",
            f"a valid 2.2 MB PNG (limit {limits.max_image_bytes} bytes)",
            noise_png(860, 860),
            Refused(413, f"above the limit of {limits.max_image_bytes} bytes"),
        ),
    ]


@cache
def build_corpus() -> tuple[Case, ...]:
    """Every case, in a fixed order, with unique names."""
    valid = valid_images()
    cases = [
        upload(f"valid_{name}", summary, data, Classified((data,), 3), filename=f"{name}.img")
        for name, (summary, data) in valid.items()
    ]
    cases += [
        upload(f"bad_{name}", summary, data, expect, filename=f"{name}.png")
        for name, summary, data, expect in corrupt_images()
    ]
    cases += upload_cases(valid) + json_cases(valid) + batch_cases(valid) + envelope_cases(valid)
    names = [case.name for case in cases]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate case names: {sorted({n for n in names if names.count(n) > 1})}")
    return tuple(cases)


def upload_cases(valid: dict[str, tuple[str, bytes]]) -> list[Case]:
    """Multipart requests whose files are fine but whose framing, names or fields are odd or wrong."""
    cat = valid["jpeg_baseline"][1]
    png = valid["png_palette"][1]
    top_k = SERVER_LIMITS.top_k_max

    def text(name: str, value: str) -> Part:
        return Part(name, value.encode())

    return [
        upload("odd_png_named_jpg_as_text", "a PNG named .jpg, declared text/plain", png, Classified((png,), 3),
               filename="cat.jpg", content_type="text/plain"),
        upload("odd_null_byte_in_filename", "NUL inside the filename", cat, Classified((cat,), 3),
               filename="a\x00b.jpg"),
        upload("odd_unicode_filename", "non-ASCII filename", cat, Classified((cat,), 3), filename="chat 猫 🐱.jpg"),
        Case("odd_top_k_padded_text", "top_k ' 2 ' as a multipart text field", CLASSIFY, MULTIPART,
             multipart(image_part(cat), text("top_k", " 2 ")), Classified((cat,), 2)),
        upload("bad_filename_100k_chars", "a 100,000-character filename", cat,
               Refused(400, "malformed multipart body"), filename="a" * 100_000 + ".jpg"),
        Case("bad_top_k_huge_text_field", "top_k field of 100 KB", CLASSIFY, MULTIPART,
             multipart(image_part(cat), text("top_k", "1" * 100_000)), Refused(413, "exceeded maximum size")),
        Case("bad_top_k_60000_digits", "top_k of 60,000 digits (int() refuses more than 4300)", CLASSIFY, MULTIPART,
             multipart(image_part(cat), text("top_k", "9" * 60_000)), Refused(422, "top_k must be an integer")),
        Case("bad_top_k_superscript", "top_k '²' (a Unicode digit int() refuses)", CLASSIFY, MULTIPART,
             multipart(image_part(cat), text("top_k", "²")), Refused(422, "top_k must be an integer")),
        Case("bad_top_k_zero", "top_k 0", CLASSIFY, MULTIPART, multipart(image_part(cat), text("top_k", "0")),
             Refused(422, f"from 1 to {top_k}")),
        Case("bad_top_k_word", "top_k 'three'", CLASSIFY, MULTIPART, multipart(image_part(cat), text("top_k", "three")),
             Refused(422, "top_k")),
        Case("bad_top_k_as_file", "top_k sent as a file", CLASSIFY, MULTIPART,
             multipart(image_part(cat), Part("top_k", b"3", "k.txt", "text/plain")), Refused(400, "not a file")),
        Case("bad_image_as_text", "the image field sent as text", CLASSIFY, MULTIPART,
             multipart(text("image", "cat.jpg")), Refused(400, "must be a file upload")),
        upload("bad_wrong_field_name", "the file under 'file'", cat, Refused(400, "unknown field 'file'"),
               field="file"),
        upload("bad_batch_field_on_single", "the file under 'images' on /classify", cat,
               Refused(400, "unknown field 'images'"), field="images"),
        Case("bad_two_images_on_single", "two 'image' files on /classify", CLASSIFY, MULTIPART,
             multipart(image_part(cat), image_part(png)), Refused(400, "use /classify_batch")),
        Case("bad_too_many_fields", "six text fields", CLASSIFY, MULTIPART,
             multipart(image_part(cat), *(text(f"note{i}", "x") for i in range(6))), Refused(400, "Too many fields")),
        Case("bad_part_without_name", "a part with no name in Content-Disposition", CLASSIFY, MULTIPART,
             multipart(Part(None, cat, "cat.jpg", "image/jpeg")), Refused(400, "must be provided")),
        Case("bad_multipart_no_boundary", "multipart without a boundary parameter", CLASSIFY, "multipart/form-data",
             multipart(image_part(cat)), Refused(400, "malformed multipart body")),
        Case("bad_multipart_empty", "multipart with only the closing boundary", CLASSIFY, MULTIPART, multipart(),
             Refused(400, "no image in the request")),
        Case("bad_multipart_garbage", "a multipart content type over random bytes", CLASSIFY, MULTIPART,
             np.random.default_rng(4).bytes(4096), Refused(400, "malformed multipart body")),
        Case("bad_multipart_unterminated", "a file part cut before its closing boundary", CLASSIFY, MULTIPART,
             multipart(image_part(cat), closed=False)[:-200], Refused(400, "no image in the request")),
    ]  # fmt: skip


def json_cases(valid: dict[str, tuple[str, bytes]]) -> list[Case]:
    """Base64 in JSON: odd but valid encodings, and every way the JSON can be wrong."""
    cat = valid["jpeg_baseline"][1]
    webp = valid["webp_lossless"][1]
    wrapped = "\n".join(b64(webp)[i : i + 76] for i in range(0, len(b64(webp)), 76))

    def body(text: str) -> bytes:
        return text.encode()

    return [
        posted_json("json_data_url", "a data: URL instead of bare base64",
                    {"image_b64": f"data:image/jpeg;base64,{b64(cat)}"}, Classified((cat,), 3)),
        posted_json("json_base64_line_breaks", "base64 wrapped at 76 columns (MIME)",
                    {"image_b64": wrapped, "top_k": 1}, Classified((webp,), 1)),
        posted_json("json_top_k_as_string", "top_k '2' as a JSON string", {"image_b64": b64(cat), "top_k": "2"},
                    Classified((cat,), 2)),
        Case("json_charset_utf16", "UTF-16 JSON with a charset parameter", CLASSIFY, f"{JSON}; charset=utf-16",
             json.dumps({"image_b64": b64(cat)}).encode("utf-16"), Classified((cat,), 3)),
        posted_json("json_bad_base64", "base64 with characters outside the alphabet", {"image_b64": "not*base64!"},
                    Refused(400, "image_b64 is not valid base64")),
        posted_json("json_base64_no_padding", "base64 missing its padding", {"image_b64": b64(b"hello")[:-1]},
                    Refused(400, "not valid base64")),
        posted_json("json_base64_of_text", "valid base64 of a sentence", {"image_b64": b64(b"hello, not an image")},
                    Refused(415, "not a recognised image format")),
        posted_json("json_base64_of_truncated_png", "base64 of a truncated PNG",
                    {"image_b64": b64(valid["png_rgba"][1][:300])}, Refused(422, "truncated")),
        posted_json("json_not_an_object", "a JSON list", [b64(cat)], Refused(400, "must be an object")),
        posted_json("json_string_body", "a bare JSON string", b64(cat), Refused(400, "must be an object")),
        posted_json("json_missing_field", "only top_k", {"top_k": 2}, Refused(400, "missing field 'image_b64'")),
        posted_json("json_wrong_field", "the base64 under 'image'", {"image": b64(cat)},
                    Refused(400, "unknown field 'image'")),
        posted_json("json_image_null", "image_b64: null", {"image_b64": None}, Refused(422, "must be a base64 string")),
        posted_json("json_image_number", "image_b64: 42", {"image_b64": 42}, Refused(422, "must be a base64 string")),
        posted_json("json_top_k_too_big", "top_k 999", {"image_b64": b64(cat), "top_k": 999}, Refused(422, "top_k")),
        posted_json("json_top_k_negative", "top_k -1", {"image_b64": b64(cat), "top_k": -1}, Refused(422, "top_k")),
        posted_json("json_top_k_float", "top_k 2.5", {"image_b64": b64(cat), "top_k": 2.5}, Refused(422, "top_k")),
        posted_json("json_top_k_bool", "top_k true", {"image_b64": b64(cat), "top_k": True}, Refused(422, "top_k")),
        raw("json_top_k_nan", "top_k NaN (Python's json accepts it)",
            body(f'{{"image_b64": "{b64(cat)}", "top_k": NaN}}'), JSON, Refused(422, "top_k")),
        raw("json_invalid", "a JSON object cut short", b'{"image_b64": "abc', JSON, Refused(400, "not valid JSON")),
        raw("json_deeply_nested", "100,000 nested lists", b"[" * 100_000, JSON, Refused(400, "not valid JSON")),
        raw("json_invalid_utf8", "bytes that are not UTF-8", b'{"image_b64": "\xff\xfe\xfd"}', JSON,
            Refused(400, "not valid JSON")),
        raw("json_int_5000_digits", "top_k of 5000 digits", body(f'{{"image_b64": "", "top_k": 1{"0" * 5000}}}'), JSON,
            Refused(400, "not valid JSON")),
        raw("json_empty_body", "application/json with no body", b"", JSON, Refused(400, "empty request body")),
    ]  # fmt: skip


def batch_cases(valid: dict[str, tuple[str, bytes]]) -> list[Case]:
    """/classify_batch: odd formats together, and what the API promises when some images are bad.

    The promise (service.py `_decode_all`): all or nothing. One unusable image refuses the whole request,
    naming each bad image by index; one status when every bad image has the same, else 400.
    """
    names = ["jpeg_cmyk", "png_grey16", "gif_animated", "png_1x1", "tiff_float32"]
    odd = tuple(valid[name][1] for name in names)
    cat = valid["jpeg_baseline"][1]
    limit = SERVER_LIMITS.max_request_images

    def files(*images: bytes, field: str = "images") -> bytes:
        return multipart(*(image_part(data, f"{i}.img", field) for i, data in enumerate(images)))

    return [
        Case("batch_odd_formats", "CMYK, 16-bit, animated GIF, 1x1, float TIFF in one request", BATCH, MULTIPART,
             files(*odd), Classified(odd, 3)),
        posted_json("batch_json_odd_formats", "the same as base64", {"images_b64": [b64(d) for d in odd], "top_k": 2},
                    Classified(odd, 2), BATCH),
        Case("batch_one_bad_among_good", "good, random bytes, good", BATCH, MULTIPART,
             files(cat, b"\x00junk" * 50, cat),
             Refused(415, "1 of 3 images rejected; image 1: not a recognised image format")),
        Case("batch_two_kinds_bad", "good, truncated JPEG, text", BATCH, MULTIPART,
             files(cat, cat[: len(cat) // 2], b"plain text"), Refused(400, "2 of 3 images rejected; image 1")),
        Case("batch_too_many_multipart", f"{limit + 1} files (limit {limit})", BATCH, MULTIPART,
             files(*[valid["png_1x1"][1]] * (limit + 1)), Refused(413, f"too many images: {limit + 1}")),
        Case("batch_far_too_many_multipart", f"{limit * 4} files (limit {limit})", BATCH, MULTIPART,
             files(*[valid["png_1x1"][1]] * (limit * 4)), Refused(413, "too many images")),
        posted_json("batch_too_many_json", f"{limit + 1} base64 images", {"images_b64": [b64(cat)] * (limit + 1)},
                    Refused(413, "too many images"), BATCH),
        posted_json("batch_empty_list", "images_b64: []", {"images_b64": []}, Refused(400, "no image in the request"),
                    BATCH),
        posted_json("batch_string_not_list", "images_b64 as one string", {"images_b64": b64(cat)},
                    Refused(422, "must be a list of base64 strings"), BATCH),
        posted_json("batch_null_entry", "images_b64: [null]", {"images_b64": [None]},
                    Refused(422, "must be a list of base64 strings"), BATCH),
        posted_json("batch_bad_base64_entry", "second entry not base64", {"images_b64": [b64(cat), "%%%"]},
                    Refused(400, "images_b64[1] is not valid base64"), BATCH),
        Case("batch_single_field_name", "the file under 'image' on /classify_batch", BATCH, MULTIPART,
             files(cat, field="image"), Refused(400, "unknown field 'image'")),
        Case("batch_empty_multipart", "multipart with no parts", BATCH, MULTIPART, multipart(),
             Refused(400, "no image in the request")),
    ]  # fmt: skip


def envelope_cases(valid: dict[str, tuple[str, bytes]]) -> list[Case]:
    """Wrong or missing content types, and bodies over the size limit (declared or streamed)."""
    cat = valid["jpeg_baseline"][1]
    oversize = b"\x00" * 3_000_000  # above the body limit for one image, base64 allowance included
    return [
        raw("type_text_plain", "JSON sent as text/plain", json.dumps({"image_b64": b64(cat)}).encode(), "text/plain",
            Refused(415, "unsupported content type 'text/plain'")),
        raw("type_raw_jpeg", "the JPEG itself as the body", cat, "image/jpeg",
            Refused(415, "unsupported content type")),
        raw("type_form_urlencoded", "an HTML form post", b"image=cat.jpg", "application/x-www-form-urlencoded",
            Refused(415, "unsupported content type")),
        raw("type_missing", "a body without a Content-Type", cat, None, Refused(415, "(none)")),
        raw("type_bentoml_pickle", "BentoML's internal pickle framing", b"\x80\x04\x95", PICKLE,
            Refused(415, "vnd.bentoml+pickle")),
        raw("type_bentoml_pickle_batch", "the same on /classify_batch", b"\x80\x04\x95", PICKLE,
            Refused(415, "vnd.bentoml+pickle"), endpoint=BATCH),
        raw("size_body_declared_over_limit", "a 3 MB multipart body with its Content-Length",
            multipart(image_part(oversize)), MULTIPART, Refused(413, "request body of")),
        raw("size_body_streamed_over_limit", "a 3 MB JSON body streamed without Content-Length",
            json.dumps({"image_b64": b64(oversize)}).encode(), JSON, Refused(413, "request body is above the limit"),
            chunked=True),
    ]  # fmt: skip


def write_corpus(out_dir: Path) -> Path:
    """Each case's body, each prediction case's images, and manifest.json; returns the manifest's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for case in build_corpus():
        body_file = f"{case.name}.body"
        (out_dir / body_file).write_bytes(case.body)
        entry: dict = {
            "name": case.name,
            "summary": case.summary,
            "endpoint": case.endpoint,
            "content_type": case.content_type,
            "chunked": case.chunked,
            "body": body_file,
            "body_bytes": len(case.body),
            "curl": case.curl(body_file),
        }
        if isinstance(case.expect, Refused):
            entry["expect"] = {"status": case.expect.status, "error_contains": case.expect.fragment}
        else:
            image_files = []
            for index, data in enumerate(case.expect.images):
                image_files.append(f"{case.name}.{index}.img")
                (out_dir / image_files[-1]).write_bytes(data)
            entry["expect"] = {"status": 200, "top_k": case.expect.top_k, "same_as_offline_scoring_of": image_files}
        entries.append(entry)
    manifest = out_dir / "manifest.json"
    manifest.write_text(json.dumps({"server_limits": SERVER_LIMITS.settings(), "cases": entries}, indent=2) + "\n")
    return manifest


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.serving.hostile_uploads OUTDIR", file=sys.stderr)
        return 2
    manifest = write_corpus(Path(argv[0]))
    print(f"{len(build_corpus())} cases written; expected answers in {manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

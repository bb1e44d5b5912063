"""The one image normalisation shared by training and serving (Pillow and numpy only).

`decode_image` is the only way this service turns image bytes into model input: the worker
uses it to build its decode-once cache, and the API uses it to decode prediction uploads
(`app.models.inference`) and to prove at upload that training will decode every image
(`app.datasets.images`). Sharing the function, not a copy of it, is what keeps training and
serving from drifting apart (a different alpha background or resize filter is a silent
accuracy loss). That is why this module is the one deliberate exception to "app never
imports worker": it imports neither torch nor anything else from the worker, so the API
process stays light; a unit test holds it to that.
"""

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

# Bumped whenever decode_image's output changes, so caches of the old pixels are rebuilt.
DECODER_VERSION = "2"

# Only the decoders for the extensions datasets accept: a renamed EPS would otherwise
# reach Ghostscript, from an upload or from a prediction request alike.
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")

# Most transparent PNGs in classification datasets are cut-out product shots meant to be
# seen on a white page; compositing onto black (what dropping alpha yields) turns them into
# dark silhouettes that look nothing like the photos the model will be shown.
BACKGROUND = (255, 255, 255)

_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_WIDE_MODES = _SIXTEEN_BIT | {"I", "F"}


def _to_grey8(img: Image.Image) -> Image.Image:
    """A 16-bit or 32-bit grey image as 8-bit 'L', scaled by its real range, not clipped."""
    arr = np.asarray(img)
    if img.mode in _SIXTEEN_BIT:
        out = arr.astype(np.uint16) >> 8
    elif img.mode == "I":
        # 32-bit ints: Pillow reads 16-bit TIFF/PNG data into them, so 16-bit is the scale.
        out = np.clip(arr, 0, 65535).astype(np.uint16) >> 8
    else:  # "F": floats are either 0..1 (scientific tools) or 0..255 (Pillow's own 'F').
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        out = np.rint(np.clip(arr, 0.0, 255.0))
    return Image.fromarray(np.ascontiguousarray(out, dtype=np.uint8))


def _on_white(img: Image.Image) -> Image.Image:
    if img.mode == "La":
        # Premultiplied grey + alpha: Pillow cannot convert it, but onto white it is c + 255 - a.
        arr = np.asarray(img).astype(np.int32)
        grey = np.clip(arr[..., 0] + 255 - arr[..., 1], 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    background = Image.new("RGBA", img.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """`img` as 8-bit RGB: alpha onto white, 16-bit and float scaled to 8 bits, others converted."""
    if img.mode in _WIDE_MODES:
        # A 16-bit PNG's transparency key is dropped: rare, and it names one exact grey.
        return _to_grey8(img).convert("RGB")
    # Alpha bands, an RGBA palette, or a transparent palette index / colour key (PNG, GIF).
    if img.has_transparency_data:
        return _on_white(img)
    if img.mode == "1":
        return img.convert("L").convert("RGB")
    # RGB, L, P, CMYK, YCbCr, LAB, HSV, RGBX: Pillow's own conversions are exact enough.
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_image(
    source: str | Path | BinaryIO, size: int, max_pixels: int | None = None
) -> np.ndarray:
    """One image as uint8 (3, size, size): EXIF-oriented, RGB (`to_rgb`), squashed to size².

    `max_pixels` refuses a larger image with `Image.DecompressionBombError` before any pixel
    is decoded; None leaves only Pillow's own limit.
    """
    with Image.open(source, formats=FORMATS) as img:
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise Image.DecompressionBombError(
                f"image has {img.width}x{img.height} pixels, more than the {max_pixels} allowed"
            )
        img = ImageOps.exif_transpose(img)
        img = to_rgb(img)
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)

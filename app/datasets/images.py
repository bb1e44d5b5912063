"""Which uploaded files count as images, and full Pillow validation of one image file."""

import threading
import warnings
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

_JUNK_FILES = frozenset({"thumbs.db", "desktop.ini"})

# Only the decoders matching IMAGE_EXTENSIONS: a renamed EPS would otherwise reach Ghostscript.
_PIL_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")

# Image.MAX_IMAGE_PIXELS and the warnings filters are process globals; API threads share them.
_PIL_LOCK = threading.Lock()


def image_extension(name: str) -> str | None:
    """The lowercased extension of `name` when it is an accepted image extension, else None."""
    ext = PurePosixPath(name).suffix.lower()
    return ext if ext in IMAGE_EXTENSIONS else None


def skip_reason(parts: tuple[str, ...], size: int) -> tuple[str, str, str] | None:
    """Why an archive file is not a dataset image, as (warning code, path, message), or None."""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if (
            part.startswith(".")
            or part.lower() == "__macosx"
            or (last and part.lower() in _JUNK_FILES)
        ):
            # One warning per hidden folder, not one per file inside it.
            root = "/".join(parts[: i + 1]) + ("" if last else "/")
            return "junk_skipped", root, "Skipped an operating-system or hidden entry."
    path = "/".join(parts)
    if image_extension(path) is None:
        allowed = ", ".join(sorted(IMAGE_EXTENSIONS))
        return "non_image_skipped", path, f"Skipped a file that is not an image ({allowed})."
    if size == 0:
        return "empty_skipped", path, "Skipped an empty file."
    return None


def check_image(path: Path, max_pixels: int) -> str | None:
    """Open, verify, reopen and fully decode one image; return why it is unusable, or None."""
    with _PIL_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            return _decode(path, max_pixels)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _decode(path: Path, max_pixels: int) -> str | None:
    too_big = f"image has more than {max_pixels} pixels"
    try:
        with Image.open(path, formats=_PIL_FORMATS) as im:
            im.verify()
        # verify() leaves the image unusable, so decoding needs a fresh handle.
        with Image.open(path, formats=_PIL_FORMATS) as im:
            if im.width * im.height > max_pixels:
                return too_big
            im.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        return too_big
    except UnidentifiedImageError:
        return "not a readable JPEG, PNG, BMP, GIF, WebP or TIFF image"
    # Decoders fed hostile bytes fail with many exception types (OSError, SyntaxError,
    # struct.error, IndexError…); each one means the same thing to the uploader.
    except Exception as exc:
        return f"corrupt image: {exc}"
    return None

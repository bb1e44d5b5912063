"""Archives and awkward images drawn with Pillow, for the dataset and imaging unit tests."""

import io
import itertools
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from app.datasets.archive import ArchiveReport, Limits, extract_dataset

Files = dict[str, bytes]
Build = Callable[[Path], None]
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)

_seeds = itertools.count(1)


def encode(img: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def image(
    fmt: str = "PNG", size: tuple[int, int] = (32, 32), seed: int | None = None, mode: str = "RGB"
) -> bytes:
    """A noise image, different from every other one unless `seed` repeats."""
    rng = np.random.default_rng(next(_seeds) if seed is None else seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels).convert(mode), fmt)


def classes(counts: dict[str, int], fmt: str = "PNG", prefix: str = "") -> Files:
    """`prefix<class>/<i>.png` members with distinct 32² images, `counts[class]` of each."""
    ext = "jpg" if fmt == "JPEG" else fmt.lower()
    return {f"{prefix}{name}/{i}.{ext}": image(fmt) for name, n in counts.items() for i in range(n)}


def sixteen_bit_png(size: int = 64) -> bytes:
    """A left-to-right 0..65535 grey gradient in a 16-bit PNG (mode I;16)."""
    row = np.linspace(0, 65535, size).round().astype(np.uint16)
    return encode(Image.fromarray(np.tile(row, (size, 1))))


def cmyk_jpeg(cmyk: tuple[int, int, int, int] = (0, 255, 255, 0)) -> bytes:
    """A solid CMYK JPEG; the default ink (magenta + yellow) prints red."""
    return encode(Image.new("CMYK", (32, 32), cmyk), "JPEG", quality=95)


def exif_rotated_jpeg() -> bytes:
    """A 40x20 blue JPEG, red in its stored top-left 10x10, EXIF orientation 6 (turn 90° CW)."""
    img = Image.new("RGB", (40, 20), BLUE)
    img.paste(RED, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def palette_png_with_transparency() -> bytes:
    """A P-mode PNG: index 0 (red, transparent) on the left half, index 1 (green) on the right."""
    img = Image.new("P", (32, 32), 0)
    img.putpalette([*RED, *GREEN])
    img.paste(1, (16, 0, 32, 32))
    return encode(img, transparency=0)


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height 8-bit grey pixels: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(width + 1))  # one row; the rest is missing
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def truncated_png() -> bytes:
    data = image(size=(64, 64))
    return data[: len(data) // 2]


def corrupt_jpeg() -> bytes:
    """A JPEG with valid headers up to its scan, then noise."""
    data = image("JPEG", size=(64, 64))
    scan = data.index(b"\xff\xda") + 14
    return data[:scan] + np.random.default_rng(7).bytes(2000) + b"\xff\xd9"


def zip_of(files: Files, dirs: tuple[str, ...] = ()) -> Build:
    def build(path: Path) -> None:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in dirs:
                zf.writestr(zipfile.ZipInfo(name.rstrip("/") + "/"), b"")
            for name, data in files.items():
                zf.writestr(name, data)

    return build


def tar_of(
    files: Files,
    mode: str = "w:gz",
    links: dict[str, bytes] | None = None,
    dirs: tuple[str, ...] = (),
) -> Build:
    """A tar of `files`, folder entries `dirs`, and links: {name: tarfile.SYMTYPE or LNKTYPE}."""

    def build(path: Path) -> None:
        with tarfile.open(path, mode) as tf:
            for name in dirs:
                info = tarfile.TarInfo(name.rstrip("/"))
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            for name, kind in (links or {}).items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, "/etc/passwd"
                tf.addfile(info)

    return build


def raw(data: bytes) -> Build:
    return lambda path: path.write_bytes(data)


def run(tmp_path: Path, build: Build, limits: Limits = Limits()) -> ArchiveReport:
    archive = tmp_path / "upload.bin"  # format must come from the content, not the name
    build(archive)
    return extract_dataset(archive, tmp_path / "out", limits)

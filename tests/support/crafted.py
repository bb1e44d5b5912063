"""Crafted hostile and awkward uploads, one builder per case, each returning archive bytes."""

import io
import struct
import tarfile
import zipfile
import zlib

import numpy as np
from PIL import Image

from tests.support.images import digit_members, digit_png


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(entries: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tf.addfile(entry)
            else:
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                tf.addfile(info, io.BytesIO(entry[1]))
    return buf.getvalue()


def good_members(classes: range = range(2), per_class: int = 5) -> dict[str, bytes]:
    members, _ = digit_members(classes, per_class=per_class, size=40)
    return members


def image_bytes(
    fmt: str, mode: str = "RGB", size: tuple[int, int] = (48, 40), **save: object
) -> bytes:
    img = Image.new(mode, size, 200 if mode in {"L", "I;16", "CMYK"} else (200, 30, 30))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def sixteen_bit_png() -> bytes:
    img = Image.new("I;16", (48, 40))
    img.putdata([40000] * (48 * 40))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° CW on display
    return image_bytes("JPEG", exif=exif.tobytes())


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A tiny PNG whose header claims width × height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 16)  # a few rows are enough to be "readable"
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def with_extra(extra: dict[str, bytes], classes: range = range(2)) -> bytes:
    return _zip({**good_members(classes), **extra})


def link_tar(kind: bytes) -> bytes:
    info = tarfile.TarInfo("digit_0/evil.png")
    info.type = kind
    info.linkname = "/etc/passwd"
    members = [(name, data) for name, data in good_members().items()]
    return _tar([*members, info])


def char_device_tar() -> bytes:
    info = tarfile.TarInfo("digit_0/tty.png")
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 5, 0
    return _tar([*good_members().items(), info])


def zip_bomb() -> bytes:
    return with_extra({"digit_0/zeros.png": b"\0" * (50 * 2**20)})


def tar_bomb(total: int) -> bytes:
    return _tar([*good_members().items(), ("digit_1/zeros.png", b"\0" * total)])


def latin1_name_tar() -> bytes:
    """A tar made where names are Latin-1: `café.png` holds the byte 0xE9, not UTF-8."""
    return _tar([*good_members().items(), ("digit_0/caf\udce9.png", image_bytes("PNG"))], "w")


def many_members(count: int) -> bytes:
    png = digit_png(np.zeros((8, 8), dtype=np.uint8), size=8)
    return _zip({f"digit_{i % 2}/{i}.png": png for i in range(count)}, zipfile.ZIP_STORED)


def duplicates_and_leakage() -> bytes:
    members, _ = digit_members(range(2), per_class=6, size=40)
    split = {f"train/{name}": data for name, data in members.items()}
    first = next(iter(members.items()))
    split["train/digit_0/copy.png"] = first[1]  # exact duplicate within the class
    split["val/digit_0/leak.png"] = first[1]  # the same image in train and val
    split["val/digit_1/x.png"] = members[next(n for n in members if n.startswith("digit_1"))]
    return _zip(split)

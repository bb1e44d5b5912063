"""Safe extraction of an uploaded dataset archive (zip, tar, tar.gz) into storage names of ours."""

import hashlib
import json
import lzma
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from app.core.errors import Invalid
from app.datasets import probe
from app.datasets.images import (
    SPLITS,
    ImageProblem,
    Member,
    check_image,
    empty_folders,
    image_extension,
    place,
    select_images,
)
from app.datasets.report import Sample, check_classes, dataset_report, refusal

_DRIVE = re.compile(r"^[A-Za-z]:")
# A solid-colour BMP legitimately deflates ~1000:1, so the ratio test ignores small members.
_RATIO_MIN_BYTES = 1 << 20
_CHUNK = 1 << 20
# Damaged bytes fail inside zipfile, tarfile and their decompressors with these: a spanned
# zip (BadZipFile from the probe), a gzip cut short (EOFError), a corrupt .xz or LZMA
# member (LZMAError), a name flagged UTF-8 that is not (UnicodeDecodeError), a chain of
# hundreds of tar header extensions (RecursionError: tarfile reads each one recursively).
# Not ValueError at large: one from this module's own code is a bug, not a bad archive.
_READ_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    NotImplementedError,
    UnicodeDecodeError,
    RecursionError,
)


@dataclass(frozen=True)
class Limits:
    max_members: int = 100_000
    max_total_bytes: int = 20 * 2**30
    max_ratio: float = 200.0
    # 40 MP covers every camera photo up to ~7300x5500 yet keeps one decoded RGB image
    # (3 bytes a pixel) near 120 MB, so a few concurrent uploads cannot exhaust memory.
    max_image_pixels: int = 40_000_000
    # Pillow reads some chunks whole into memory before any pixel check (a PNG's private
    # chunks, up to 4 GiB each): the file's size bounds what one image can take.
    max_image_bytes: int = 256 * 2**20


@dataclass(frozen=True)
class Entry:
    split: str
    label: str
    source: str
    file: str
    size_bytes: int
    sha256: str


@dataclass
class ArchiveReport:
    entries: list[Entry]
    classes: list[str]
    class_counts: dict[str, int]
    splits: dict[str, int]
    warnings: list[dict]
    report: dict[str, Any]


Opener = Callable[[Member], IO[bytes]]


def extract_dataset(archive: Path, dest: Path, limits: Limits = Limits()) -> ArchiveReport:
    """Validate `archive` fully and extract its images into `dest`; on any error leave no trace."""
    created = not dest.exists()
    if not created and any(dest.iterdir()):
        raise FileExistsError(f"{dest} must be missing or empty")
    dest.mkdir(exist_ok=True)
    try:
        with _open_archive(archive, limits) as (members, opener):
            return _extract(members, opener, dest, limits)
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for child in dest.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        raise


@contextmanager
def _reading() -> Iterator[None]:
    """Turn a failure to read the archive itself into `archive_invalid`."""
    try:
        yield
    except _READ_ERRORS as exc:
        raise Invalid(f"The archive is corrupt: {exc}", code="archive_invalid") from exc


@contextmanager
def _open_archive(archive: Path, limits: Limits) -> Iterator[tuple[list[Member], Opener]]:
    with _reading():
        kind = probe.kind(archive)
    if kind == "zip":
        with _reading():
            probe.check_zip_directory(archive, limits.max_members)
            zf = zipfile.ZipFile(archive)
        with zf:
            with _reading():
                members = _zip_members(zf, limits)
            yield members, lambda m: zf.open(m.ref)
    elif kind == "tar":
        with _reading():
            tf = tarfile.open(archive, "r:*", tarinfo=probe.BoundedTarInfo)  # noqa: SIM115 - closed by the `with tf` below
        with tf:
            with _reading():
                members = _tar_members(tf, limits, archive.stat().st_size)
            yield members, lambda m: tf.extractfile(m.ref)
    else:
        raise Invalid("The upload is not a zip, tar or tar.gz archive.", code="archive_invalid")


def _name_problem(name: str) -> str | None:
    if "\\" in name:
        return "backslash in member name"
    if name.startswith("/") or _DRIVE.match(name):
        return "absolute path"
    if ".." in name.split("/"):
        return "'..' in member name"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "member name is not valid UTF-8"
    if "\x00" in name:  # only a pax name keeps one; Postgres refuses it in text and JSONB
        return "NUL character in member name"
    return None


def _printable(name: str) -> str:
    """A member name as JSON can carry it: tarfile keeps bytes that are not UTF-8 as lone
    surrogates, which no JSON encoder writes; they become `\\xe9` escapes instead."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in name.split("/") if p not in ("", "."))


def _zip_members(zf: zipfile.ZipFile, limits: Limits) -> list[Member]:
    infos = zf.infolist()
    probe.check_count(len(infos), limits.max_members)
    unsafe, members, encrypted = [], [], []
    for info in infos:
        problem = _name_problem(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            problem = "symbolic link"
        if problem:
            unsafe.append((info.filename, problem))
        elif info.flag_bits & 0x1:
            encrypted.append((info.filename, "encrypted member"))
        else:
            # A folder's declared size means nothing, so it cannot trip the size limits.
            size, is_dir = (0, True) if info.is_dir() else (info.file_size, False)
            members.append(Member(info.filename, _parts(info.filename), size, info, is_dir))
    _check_unsafe(unsafe)
    _check_sizes(members, limits)
    if encrypted:
        raise refusal("archive_invalid", "Encrypted archives are not supported.", encrypted)
    return members


def _tar_members(tf: tarfile.TarFile, limits: Limits, archive_bytes: int) -> list[Member]:
    unsafe, members, count = [], [], 0
    # next() instead of getmembers(): a tar of millions of headers is refused early.
    while (info := tf.next()) is not None:
        count += 1
        probe.check_count(count, limits.max_members)
        problem = _name_problem(info.name)
        if not (info.isreg() or info.isdir()):
            problem = "link, device or fifo member"
        if problem:
            unsafe.append((info.name, problem))
        else:
            size, is_dir = (0, True) if info.isdir() else (info.size, False)
            members.append(Member(info.name, _parts(info.name), size, info, is_dir))
    _check_unsafe(unsafe)
    _check_sizes(members, limits)
    # A tar.gz compresses as one stream, so no member has a size of its own to compare with:
    # the whole archive is held to the zip members' ratio (images barely compress; a tar
    # bomb writes gigabytes to disk before the total limit would stop it).
    total = sum(m.size for m in members)
    if total > _RATIO_MIN_BYTES and total > limits.max_ratio * max(archive_bytes, 1):
        raise Invalid(
            f"The archive expands {total} bytes from {archive_bytes}: it compresses more "
            f"than {limits.max_ratio:g}:1.",
            code="archive_too_large",
        )
    return members


def _check_unsafe(unsafe: list[tuple[str, str]]) -> None:
    if unsafe:
        named = [(_printable(name), problem) for name, problem in unsafe]
        raise refusal("archive_unsafe", "The archive has unsafe members.", named)


def _check_sizes(members: list[Member], limits: Limits) -> None:
    total = sum(m.size for m in members)
    if total > limits.max_total_bytes:
        raise Invalid(
            f"The archive expands to {total} bytes, more than the "
            f"{limits.max_total_bytes} allowed.",
            code="archive_too_large",
        )
    bombs = [
        (m.path, f"expands {m.size} bytes from {m.ref.compress_size}")
        for m in members
        if isinstance(m.ref, zipfile.ZipInfo)
        and m.size > _RATIO_MIN_BYTES
        and m.size > limits.max_ratio * max(m.ref.compress_size, 1)
    ]
    if bombs:
        raise refusal(
            "archive_too_large", f"Members compress more than {limits.max_ratio:g}:1.", bombs
        )


def _copy(src: IO[bytes], dst: IO[bytes], declared: int, digest: "hashlib._Hash") -> int:
    written = 0
    while True:
        with _reading():
            chunk = src.read(_CHUNK)
        if not chunk:
            return written
        written += len(chunk)
        if written > declared:
            raise Invalid(
                "An archive member is larger than its header says.", code="archive_invalid"
            )
        digest.update(chunk)
        dst.write(chunk)


def _extract(members: list[Member], opener: Opener, dest: Path, limits: Limits) -> ArchiveReport:
    images, notes = select_images(members)
    placed, layout = place(images)
    classes = check_classes([f for f, _ in placed], empty_folders(members, placed, layout))
    (dest / "images").mkdir()
    entries, samples, bad = [], [], []
    for index, (folder, m) in enumerate(placed):
        file = f"images/{index:06d}{image_extension(m.path)}"
        if m.size > limits.max_image_bytes:  # not extracted: _copy holds members to their size
            bad.append(
                (m.path, f"file of {m.size} bytes, more than the {limits.max_image_bytes} allowed")
            )
            continue
        digest = hashlib.sha256()
        with _reading():
            src = opener(m)
        with src, (dest / file).open("xb") as dst:
            size = _copy(src, dst, m.size, digest)
        try:
            width, height = check_image(dest / file, limits.max_image_pixels)
        except ImageProblem as exc:
            bad.append((m.path, str(exc)))
            continue
        sha256 = digest.hexdigest()
        entries.append(Entry(folder.split, folder.label, m.name, file, size, sha256))
        samples.append(Sample(m.path, folder.split, folder.label, sha256, width, height))
    if bad:
        raise refusal(
            "image_invalid", f"{len(bad)} file(s) are not readable images.", bad, listed=None
        )
    manifest = {"classes": classes, "entries": [asdict(e) for e in entries]}
    (dest / "manifest.json").write_text(json.dumps(manifest))
    labels, splits = Counter(e.label for e in entries), Counter(e.split for e in entries)
    report, warnings = dataset_report(samples, classes)
    return ArchiveReport(
        entries=entries,
        classes=classes,
        class_counts={c: labels[c] for c in classes},
        splits={s: splits[s] for s in SPLITS},
        warnings=notes + warnings,
        report=report,
    )

"""Safe extraction of an uploaded dataset archive (zip, tar, tar.gz) into storage names of ours."""

import json
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

from app.core.errors import Invalid, field_error
from app.datasets.images import check_image, image_extension, skip_reason

SPLITS = ("train", "val", "test")
_DRIVE = re.compile(r"^[A-Za-z]:")
# A solid-colour BMP legitimately deflates ~1000:1, so the ratio test ignores small members.
_RATIO_MIN_BYTES = 1 << 20
_MAX_LISTED = 100
_CHUNK = 1 << 20
_READ_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    OSError,
    NotImplementedError,
)


@dataclass(frozen=True)
class Limits:
    max_members: int = 100_000
    max_total_bytes: int = 20 * 2**30
    max_ratio: float = 200.0
    max_image_pixels: int = 89_478_485


@dataclass(frozen=True)
class Entry:
    split: str
    label: str
    source: str
    file: str
    size_bytes: int


@dataclass
class ArchiveReport:
    entries: list[Entry]
    classes: list[str]
    class_counts: dict[str, int]
    splits: dict[str, int]
    warnings: list[dict]


@dataclass(frozen=True)
class _Member:
    name: str
    parts: tuple[str, ...]
    size: int
    ref: Any  # the ZipInfo or TarInfo to open it with

    @property
    def path(self) -> str:
        return "/".join(self.parts)


Opener = Callable[[_Member], IO[bytes]]


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


def _invalid(
    code: str, detail: str, problems: list[tuple[str, str]], listed: int | None = _MAX_LISTED
) -> Invalid:
    errors = [field_error(path, message, code=code) for path, message in problems[:listed]]
    if len(errors) < len(problems):
        detail += f" ({len(problems)} in all; the first {listed} are listed)"
    return Invalid(detail, code=code, errors=errors)


@contextmanager
def _reading() -> Iterator[None]:
    """Turn a failure to read the archive itself into `archive_invalid`."""
    try:
        yield
    except _READ_ERRORS as exc:
        raise Invalid(f"The archive is corrupt: {exc}", code="archive_invalid") from exc


@contextmanager
def _open_archive(archive: Path, limits: Limits) -> Iterator[tuple[list[_Member], Opener]]:
    with archive.open("rb") as fh:
        zip_magic = fh.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
    # A tar whose last member is a zip also passes is_zipfile, so the zip magic decides first.
    is_zip = zipfile.is_zipfile(archive)
    if is_zip and (zip_magic or not tarfile.is_tarfile(archive)):
        with _reading():
            zf = zipfile.ZipFile(archive)
        with zf:
            with _reading():
                members = _zip_members(zf, limits)
            yield members, lambda m: zf.open(m.ref)
    elif tarfile.is_tarfile(archive):
        with _reading():
            tf = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the `with tf` below
        with tf:
            with _reading():
                members = _tar_members(tf, limits)
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
    return None


def _parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in name.split("/") if p not in ("", "."))


def _zip_members(zf: zipfile.ZipFile, limits: Limits) -> list[_Member]:
    infos = zf.infolist()
    _check_count(len(infos), limits)
    unsafe, members, encrypted = [], [], []
    for info in infos:
        problem = _name_problem(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            problem = "symbolic link"
        if problem:
            unsafe.append((info.filename, problem))
        elif info.flag_bits & 0x1:
            encrypted.append((info.filename, "encrypted member"))
        elif not info.is_dir():
            members.append(_Member(info.filename, _parts(info.filename), info.file_size, info))
    _check_unsafe(unsafe)
    _check_sizes(members, limits)
    if encrypted:
        raise _invalid("archive_invalid", "Encrypted archives are not supported.", encrypted)
    return members


def _tar_members(tf: tarfile.TarFile, limits: Limits) -> list[_Member]:
    unsafe, members, count = [], [], 0
    # next() instead of getmembers(): a tar of millions of headers is refused early.
    while (info := tf.next()) is not None:
        count += 1
        _check_count(count, limits)
        problem = _name_problem(info.name)
        if not (info.isreg() or info.isdir()):
            problem = "link, device or fifo member"
        if problem:
            unsafe.append((info.name, problem))
        elif info.isreg():
            members.append(_Member(info.name, _parts(info.name), info.size, info))
    _check_unsafe(unsafe)
    _check_sizes(members, limits)
    return members


def _check_count(count: int, limits: Limits) -> None:
    if count > limits.max_members:
        raise Invalid(
            f"The archive has more than {limits.max_members} entries.", code="archive_too_large"
        )


def _check_unsafe(unsafe: list[tuple[str, str]]) -> None:
    if unsafe:
        raise _invalid("archive_unsafe", "The archive has unsafe members.", unsafe)


def _check_sizes(members: list[_Member], limits: Limits) -> None:
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
        raise _invalid(
            "archive_too_large", f"Members compress more than {limits.max_ratio:g}:1.", bombs
        )


def _select_images(members: list[_Member]) -> tuple[list[_Member], list[dict]]:
    images, skipped = [], {}
    for m in members:
        if (skip := skip_reason(m.parts, m.size)) is None:
            images.append(m)
        else:
            code, path, message = skip
            skipped.setdefault(code, {}).setdefault(path, message)
    if not images:
        raise Invalid("The archive contains no images.", code="dataset_empty")
    notes = []
    for code, paths in skipped.items():
        notes += [
            {"code": code, "message": msg, "path": path}
            for path, msg in list(paths.items())[:_MAX_LISTED]
        ]
        if len(paths) > _MAX_LISTED:
            notes.append(
                {
                    "code": code,
                    "message": f"{len(paths) - _MAX_LISTED} more entries "
                    "were skipped for the same reason.",
                }
            )
    return images, notes


def _assign(images: list[_Member]) -> list[tuple[str, str, _Member]]:
    """Give each image its (split, label) from the folder layout."""
    pairs = [(m, m.parts) for m in images]
    wrapper = {p[0] for _, p in pairs}
    if (
        len(wrapper) == 1
        and wrapper.pop().lower() not in SPLITS
        and all(len(p) >= 3 for _, p in pairs)
    ):
        pairs = [(m, p[1:]) for m, p in pairs]
    folders = {p[0].lower(): p[0] for _, p in pairs if len(p) > 1}
    split_layout = bool(folders.keys() & set(SPLITS))
    if split_layout:
        others = sorted(v for k, v in folders.items() if k not in SPLITS)
        if others:
            raise _invalid(
                "dataset_layout_invalid",
                "Split folders (train/, val/, test/) and class folders are mixed at the top level.",
                [(f + "/", "neither train/, val/ nor test/") for f in others],
            )
        if "train" not in folders:
            raise Invalid("Split folders need a train/ folder.", code="dataset_layout_invalid")
    depth, where = (3, "split/class/") if split_layout else (2, "a class folder")
    loose = [(m.path, f"image is not inside {where}") for m, p in pairs if len(p) < depth]
    if loose:
        raise _invalid("dataset_layout_invalid", "Images must sit inside class folders.", loose)
    if split_layout:
        return [(p[0].lower(), p[1], m) for m, p in pairs]
    return [("train", p[0], m) for m, p in pairs]


def _check_classes(assigned: list[tuple[str, str, _Member]]) -> list[str]:
    classes = sorted({label for _, label, _ in assigned})
    by_case: dict[str, list[str]] = {}
    for label in classes:
        by_case.setdefault(label.casefold(), []).append(label)
    clashes = [
        (label + "/", "class names differ only by case")
        for group in by_case.values()
        if len(group) > 1
        for label in group
    ]
    if clashes:
        raise _invalid("dataset_layout_invalid", "Class folder names clash.", clashes)
    train = {label for split, label, _ in assigned if split == "train"}
    orphans = sorted(
        {
            (f"{split}/{label}/", "class is absent from train/")
            for split, label, _ in assigned
            if label not in train
        }
    )
    if orphans:
        raise _invalid(
            "dataset_layout_invalid", "Every val/ and test/ class must be in train/.", orphans
        )
    if len(classes) < 2:
        raise Invalid(
            f"A dataset needs at least 2 classes; found {classes}.", code="dataset_too_few_classes"
        )
    return classes


def _copy(src: IO[bytes], dst: IO[bytes], declared: int) -> int:
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
        dst.write(chunk)


def _extract(members: list[_Member], opener: Opener, dest: Path, limits: Limits) -> ArchiveReport:
    images, notes = _select_images(members)
    assigned = _assign(images)
    classes = _check_classes(assigned)
    (dest / "images").mkdir()
    entries, bad = [], []
    for index, (split, label, m) in enumerate(assigned):
        file = f"images/{index:06d}{image_extension(m.path)}"
        with _reading():
            src = opener(m)
        with src, (dest / file).open("xb") as dst:
            size = _copy(src, dst, m.size)
        if (problem := check_image(dest / file, limits.max_image_pixels)) is not None:
            bad.append((m.path, problem))
        entries.append(Entry(split, label, m.name, file, size))
    if bad:
        raise _invalid(
            "image_invalid", f"{len(bad)} file(s) are not readable images.", bad, listed=None
        )
    manifest = {"classes": classes, "entries": [asdict(e) for e in entries]}
    (dest / "manifest.json").write_text(json.dumps(manifest))
    labels, splits = Counter(e.label for e in entries), Counter(e.split for e in entries)
    return ArchiveReport(
        entries=entries,
        classes=classes,
        class_counts={c: labels[c] for c in classes},
        splits={s: splits[s] for s in SPLITS},
        warnings=notes,
    )

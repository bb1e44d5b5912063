"""Which archive members are dataset images, which class folder each sits in, and full
validation of one image file.

check_image touches no Pillow process globals (MAX_IMAGE_PIXELS, warning filters): API
threads share them. Pillow's own limit still refuses, at open, anything over twice its default.
"""

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image, UnidentifiedImageError

from app.core.errors import Invalid
from app.datasets.report import Folder, capped, refusal

# The deliberate exception to "app never imports worker": see that module's docstring.
from worker.training.imaging import FORMATS, decode_image

SPLITS = ("train", "val", "test")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

_JUNK_FILES = frozenset({"thumbs.db", "desktop.ini"})

# Small: the probe decode is there to run every step training runs, not to make pixels.
_PROBE_SIZE = 8


def image_extension(name: str) -> str | None:
    """The lowercased extension of `name` when it is an accepted image extension, else None."""
    ext = PurePosixPath(name).suffix.lower()
    return ext if ext in IMAGE_EXTENSIONS else None


@dataclass(frozen=True)
class Member:
    """One file or folder entry of an uploaded archive."""

    name: str
    parts: tuple[str, ...]
    size: int
    ref: Any  # the ZipInfo or TarInfo to open it with
    is_dir: bool = False  # folders matter only to find class folders that hold no images

    @property
    def path(self) -> str:
        return "/".join(self.parts)


def hidden(part: str) -> bool:
    """Whether a path component is a dot file/folder or macOS resource-fork metadata."""
    return part.startswith(".") or part.lower() == "__macosx"


def skip_reason(parts: tuple[str, ...], size: int) -> tuple[str, str, str] | None:
    """Why an archive file is not a dataset image, as (warning code, path, message), or None."""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if hidden(part) or (last and part.lower() in _JUNK_FILES):
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


def select_images(members: list[Member]) -> tuple[list[Member], list[dict]]:
    """The image files among `members`, and warnings for the files skipped."""
    images, skipped = [], {}
    for m in members:
        if m.is_dir:
            continue
        if (skip := skip_reason(m.parts, m.size)) is None:
            images.append(m)
        else:
            code, path, message = skip
            skipped.setdefault(code, {}).setdefault(path, message)
    if not images:
        raise Invalid("The archive contains no images.", code="dataset_empty")
    more = "more entries were skipped for the same reason."
    notes = [w for code, paths in skipped.items() for w in capped(code, [*paths.items()], more)]
    return images, notes


@dataclass(frozen=True)
class Layout:
    """How the archive's folders map to splits and classes."""

    wrapper: str | None  # one top folder around everything, stripped
    split: bool  # train/<class>/… rather than <class>/…

    def folder(self, parts: tuple[str, ...]) -> Folder | None:
        """The class folder that the folder `parts` lies in, if it lies in one."""
        start = 0 if self.wrapper is None else 1
        if start and parts[:1] != (self.wrapper,):
            return None
        depth = start + 1 + int(self.split)
        head = parts[:depth]
        if len(head) < depth or any(hidden(p) for p in head):
            return None
        split = head[start].lower() if self.split else "train"
        if split not in SPLITS:
            return None
        return Folder(split, head[-1], "/".join(head) + "/")


def place(images: list[Member]) -> tuple[list[tuple[Folder, Member]], Layout]:
    """Each image with its class folder, and the layout that the images' folders follow."""
    pairs = [(m, m.parts) for m in images]
    strip = (
        len({p[0] for _, p in pairs}) == 1
        and images[0].parts[0].lower() not in SPLITS
        and all(len(p) >= 3 for _, p in pairs)
    )
    if strip:
        pairs = [(m, p[1:]) for m, p in pairs]
    folders = {p[0].lower(): p[0] for _, p in pairs if len(p) > 1}
    split_layout = bool(folders.keys() & set(SPLITS))
    if split_layout:
        others = sorted(v for k, v in folders.items() if k not in SPLITS)
        if others:
            raise refusal(
                "dataset_layout_invalid",
                "Split folders (train/, val/, test/) and class folders are mixed at the top level.",
                [(f + "/", "neither train/, val/ nor test/") for f in others],
            )
        if "train" not in folders:
            raise Invalid("Split folders need a train/ folder.", code="dataset_layout_invalid")
    depth, where = (3, "split/class/") if split_layout else (2, "a class folder")
    loose = [(m.path, f"image is not inside {where}") for m, p in pairs if len(p) < depth]
    if loose:
        raise refusal("dataset_layout_invalid", "Images must sit inside class folders.", loose)
    layout = Layout(images[0].parts[0] if strip else None, split_layout)
    return [(_folder_of(layout, m), m) for m in images], layout


def _folder_of(layout: Layout, image: Member) -> Folder:
    folder = layout.folder(image.parts[:-1])
    assert folder is not None, "place() refused every image outside a class folder"
    return folder


def empty_folders(
    members: list[Member], placed: list[tuple[Folder, Member]], layout: Layout
) -> list[str]:
    """Class folders in the archive (as entries, or parents of skipped files) with no image."""
    full = {(f.split, f.label) for f, _ in placed}
    empty: dict[tuple[str, str], str] = {}
    for m in members:
        folder = layout.folder(m.parts if m.is_dir else m.parts[:-1])
        if folder is not None and (folder.split, folder.label) not in full:
            empty.setdefault((folder.split, folder.label), folder.path)
    return sorted(empty.values())


class ImageProblem(Exception):
    """Why one uploaded file cannot be used as an image, worded for the uploader."""


def check_image(path: Path, max_pixels: int) -> tuple[int, int]:
    """Verify, then decode `path` exactly as training will; its (width, height) or ImageProblem."""
    try:
        with Image.open(path, formats=FORMATS) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise ImageProblem(
                    f"image has {width}x{height} pixels, more than the {max_pixels} allowed"
                )
            im.verify()
        # verify() leaves the image unusable, and a decode that works here works in training.
        decode_image(path, _PROBE_SIZE, max_pixels=max_pixels)
    except ImageProblem:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageProblem(f"image has more than the {max_pixels} pixels allowed") from None
    except UnidentifiedImageError:
        raise ImageProblem("not a readable JPEG, PNG, BMP, GIF, WebP or TIFF image") from None
    # Decoders fed hostile bytes fail with many exception types (OSError, SyntaxError,
    # struct.error, IndexError…); each one means the same thing to the uploader.
    except Exception as exc:
        raise ImageProblem(f"corrupt image: {exc}") from None
    return width, height

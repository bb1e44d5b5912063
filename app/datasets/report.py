"""What a dataset's content says: class errors that refuse it, and the quality report.

Errors list every offending folder in one 422. Warnings never refuse: duplicates, the same
image under two labels, train images reused in val/test, imbalance, tiny classes and images.
"""

import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from app.core.errors import Invalid, field_error

MAX_LISTED = 100  # warnings of one code, and entries of one error, before "N more"
MAX_CLASS_NAME = 100
MIN_CLASS_IMAGES = 5
MAX_IMBALANCE = 10.0
TINY_SIDE = 32  # pixels; upscaling to a 224² input from less than this is mostly blur
_PATHS_IN_MESSAGE = 10
# Cc control, Cf format (bidi overrides that make names display as something else),
# Cs/Co/Cn unpaired, private or unassigned code points, Zl/Zp line and paragraph breaks.
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


@dataclass(frozen=True)
class Sample:
    """One accepted image as the report needs it."""

    path: str  # as in the archive
    split: str
    label: str
    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class Folder:
    """A class folder found in the archive: (split, label) and its path there."""

    split: str
    label: str
    path: str  # ends with "/"


def refusal(
    code: str, detail: str, problems: list[tuple[str, str]], listed: int | None = MAX_LISTED
) -> Invalid:
    """A 422 naming each (path, message) problem; only the first `listed` when there are more."""
    errors = [field_error(path, message, code=code) for path, message in problems[:listed]]
    if len(errors) < len(problems):
        detail += f" ({len(problems)} in all; the first {listed} are listed)"
    return Invalid(detail, code=code, errors=errors)


def capped(
    code: str, notes: list[tuple[str | None, str]], more: str = "more warnings like these."
) -> list[dict]:
    """Warnings of one code: the first MAX_LISTED (path, message) notes, then how many more."""
    out = [
        {"code": code, "message": message} | ({"path": path} if path is not None else {})
        for path, message in notes[:MAX_LISTED]
    ]
    if len(notes) > MAX_LISTED:
        out.append({"code": code, "message": f"{len(notes) - MAX_LISTED} {more}"})
    return out


def class_name_problem(name: str) -> str | None:
    """Why `name` cannot be a class name (labels reach users, files and logs), or None."""
    if name in (".", ".."):
        return "'.' and '..' are not class names"
    if len(name) > MAX_CLASS_NAME:
        return f"class name is longer than {MAX_CLASS_NAME} characters"
    if name[0].isspace() or name[-1].isspace():
        return "class name starts or ends with whitespace"
    if any(unicodedata.category(c) in _BAD_CATEGORIES for c in name):
        return "class name contains control or invisible characters"
    return None


def check_classes(placed: Iterable[Folder], empty: Sequence[str]) -> list[str]:
    """The sorted class names, once every folder holding images and every empty one is valid."""
    folders = set(placed)  # one entry per image comes in
    bad = sorted(
        {(f.path, p) for f in folders if (p := class_name_problem(f.label)) is not None}
        | {(path, p) for path in empty if (p := class_name_problem(_last(path))) is not None}
    )
    if bad:
        raise refusal("class_name_invalid", "Some class folder names are not allowed.", bad, None)
    # NFC too: a zip made on macOS spells "café" with a combining accent.
    key = {f.label: unicodedata.normalize("NFC", f.label).casefold() for f in folders}
    spellings = Counter(key.values())
    clash = "class names differ only by case or Unicode form"
    clashes = sorted({(f.path, clash) for f in folders if spellings[key[f.label]] > 1})
    if clashes:
        raise refusal("dataset_layout_invalid", "Class folder names clash.", clashes)
    if empty:
        problems = [(path, "class folder holds no images") for path in sorted(empty)]
        raise refusal("class_empty", "Some class folders hold no images.", problems, listed=None)
    train = {f.label for f in folders if f.split == "train"}
    orphans = sorted(
        {(f.path, "class is absent from train/") for f in folders if f.label not in train}
    )
    if orphans:
        raise refusal(
            "dataset_layout_invalid", "Every val/ and test/ class must be in train/.", orphans
        )
    classes = sorted({f.label for f in folders})
    if len(classes) < 2:
        raise Invalid(
            f"A dataset needs at least 2 classes; found {classes}.", code="dataset_too_few_classes"
        )
    return classes


def _last(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _listing(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:_PATHS_IN_MESSAGE])
    rest = len(paths) - _PATHS_IN_MESSAGE
    return shown + (f" and {rest} more" if rest > 0 else "")


def _same_image(samples: Iterable[Sample]) -> tuple[dict[str, int], dict[str, list]]:
    """Counts and notes for exact copies: in one class, across classes, across splits."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.sha256].append(s)
    counts = {"duplicates": 0, "conflicting_labels": 0, "split_leakage": 0}
    notes: dict[str, list] = {"duplicate_image": [], "conflicting_labels": [], "split_leakage": []}
    for group in (g for g in groups.values() if len(g) > 1):
        places: dict[tuple[str, str], list[str]] = defaultdict(list)
        for s in group:
            places[(s.split, s.label)].append(s.path)
        for (split, label), paths in places.items():
            if len(paths) > 1:
                counts["duplicates"] += len(paths) - 1
                where = f"class '{label}'" + ("" if split == "train" else f" of {split}/")
                message = f"{len(paths)} copies of one image in {where}: {_listing(paths)}."
                notes["duplicate_image"].append((paths[0], message))
        paths = [s.path for s in group]
        if len(labels := sorted({s.label for s in group})) > 1:
            counts["conflicting_labels"] += 1
            named = " and ".join(f"'{label}'" for label in labels)
            message = f"One image is labelled {named}: {_listing(paths)}."
            notes["conflicting_labels"].append((paths[0], message))
        held_out = sorted({s.split for s in group} - {"train"})
        if held_out and any(s.split == "train" for s in group):
            counts["split_leakage"] += 1
            where = " and ".join(f"{split}/" for split in held_out)
            message = (
                f"One image is in train/ and {where}, so the model is scored on an image it "
                f"learned from: {_listing(paths)}."
            )
            notes["split_leakage"].append((paths[0], message))
    return counts, notes


def dataset_report(
    samples: Sequence[Sample], classes: Sequence[str]
) -> tuple[dict[str, Any], list[dict]]:
    """The report counts and the quality warnings for a dataset's accepted images."""
    counts, notes = _same_image(samples)
    sizes = Counter(s.label for s in samples)
    smallest = min(classes, key=lambda c: (sizes[c], c))
    largest = max(classes, key=lambda c: (sizes[c], c))
    ratio = sizes[largest] / max(sizes[smallest], 1)
    if ratio > MAX_IMBALANCE:
        notes["class_imbalance"] = [
            (
                None,
                f"Class '{largest}' has {sizes[largest]} images and class '{smallest}' only "
                f"{sizes[smallest]} ({ratio:.1f}:1); the model will favour the larger classes.",
            )
        ]
    notes["class_too_small"] = [
        (
            None,
            f"Class '{c}' has only {sizes[c]} images; at least {MIN_CLASS_IMAGES} are needed "
            "to learn it and to measure how well it was learned.",
        )
        for c in classes
        if sizes[c] < MIN_CLASS_IMAGES
    ]
    notes["tiny_image"] = [
        (s.path, f"Image is only {s.width}x{s.height} pixels (under {TINY_SIDE} on a side).")
        for s in samples
        if min(s.width, s.height) < TINY_SIDE
    ]
    report = {
        **counts,
        "tiny_images": len(notes["tiny_image"]),
        "imbalance_ratio": round(ratio, 2),
        "smallest_class": {"name": smallest, "count": sizes[smallest]},
    }
    warnings = [w for code, listed in notes.items() for w in capped(code, listed)]
    return report, warnings

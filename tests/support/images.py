"""Real test images: scikit-learn's bundled handwritten digits, upscaled, as archives."""

import io
import json
import tarfile
import zipfile
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image


@lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 8, 8), labels) of load_digits, 1,797 real scans."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16 * 255).astype(np.uint8), data.target


def digit_png(image: np.ndarray, size: int = 32) -> bytes:
    """One digit as an RGB PNG of `size`², upscaled bicubically."""
    img = Image.fromarray(image, mode="L").resize((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def stored_digits(root: Path, per_class: int, size: int = 16) -> list[str]:
    """A dataset folder as the API stores it (files/ + manifest.json) of digits 0 and 1.

    Returns its classes, named as the manifest's labels.
    """
    images, labels = digits()
    entries = []
    for label in (0, 1):
        for i in [int(i) for i in (labels == label).nonzero()[0][:per_class]]:
            name = f"files/{label}/{i}.png"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(digit_png(images[i], size))
            entries.append({"file": name, "label": f"d{label}", "split": "train"})
    (root / "manifest.json").write_text(json.dumps({"entries": entries}))
    return ["d0", "d1"]


def digit_members(
    classes: Iterable[int] = range(10),
    per_class: int | None = None,
    holdout: int = 0,
    size: int = 32,
) -> tuple[dict[str, bytes], list[tuple[bytes, int]]]:
    """Archive members `<split>/<class>/<i>.png` and held-out (png, label) pairs.

    The first `holdout` images of each class are kept out of the archive, for testing the
    trained model on images it never saw.
    """
    images, labels = digits()
    members: dict[str, bytes] = {}
    held: list[tuple[bytes, int]] = []
    for cls in classes:
        idx = np.nonzero(labels == cls)[0]
        for j in idx[:holdout]:
            held.append((digit_png(images[j], size), int(cls)))
        chosen = idx[holdout:] if per_class is None else idx[holdout : holdout + per_class]
        for j in chosen:
            members[f"digit_{cls}/{j}.png"] = digit_png(images[j], size)
    return members, held


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path

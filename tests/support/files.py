"""Small file trees for storage tests."""

import os
import time
from pathlib import Path


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Write each `relative path: text` under `root`, folders included; return `root`."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def age(root: Path, seconds: float) -> None:
    """Make the file `root`, or everything under the folder `root`, look `seconds` old."""
    then = time.time() - seconds
    os.utime(root, (then, then))
    for folder, _, files in os.walk(root):
        for path in [folder, *(os.path.join(folder, name) for name in files)]:
            os.utime(path, (then, then))

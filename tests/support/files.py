"""Small file trees for storage tests."""

from pathlib import Path


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Write each `relative path: text` under `root`, folders included; return `root`."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root

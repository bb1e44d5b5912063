"""Evaluation reports: confusion matrix, per-class precision/recall/F1, macro averages."""

from collections.abc import Sequence
from typing import Any

import torch


def confusion_update(
    confusion: torch.Tensor, target: torch.Tensor, predicted: torch.Tensor
) -> None:
    """Add a batch to a (C, C) matrix on its device, rows = true class, columns = predicted."""
    classes = confusion.shape[0]
    confusion += torch.bincount(target * classes + predicted, minlength=classes * classes).view(
        classes, classes
    )


def macro_f1(confusion: torch.Tensor) -> float:
    _, _, f1, seen = _scores(confusion.double())
    return _macro(f1, seen)


def _macro(score: torch.Tensor, seen: torch.Tensor) -> float:
    return float(score[seen].mean()) if seen.any() else 0.0


def _scores(
    confusion: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per class: precision, recall, F1, and whether the class occurs at all (in the labels or
    the predictions). Macro averages run over those classes only, as scikit-learn's do: a
    class absent from a small split is no evidence of a bad model."""
    tp = confusion.diagonal()
    predicted, support = confusion.sum(0), confusion.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp)
    )
    return precision, recall, f1, (predicted > 0) | (support > 0)


def report(
    confusion: torch.Tensor, classes: Sequence[str], split: str, top5: float
) -> dict[str, Any]:
    """The full report of one split, JSON-ready."""
    matrix = confusion.cpu().long()
    precision, recall, f1, seen = _scores(matrix.double())
    support = matrix.sum(1)
    total = int(matrix.sum())
    return {
        "split": split,
        "accuracy": float(matrix.diagonal().sum()) / max(1, total),
        "top5_accuracy": top5,
        "macro_precision": _macro(precision, seen),
        "macro_recall": _macro(recall, seen),
        "macro_f1": _macro(f1, seen),
        "per_class": {
            name: {
                "precision": round(float(p), 6),
                "recall": round(float(r), 6),
                "f1": round(float(f), 6),
                "support": int(s),
            }
            for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": matrix.tolist(),
        "classes": list(classes),
    }

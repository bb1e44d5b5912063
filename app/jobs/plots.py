"""PNG plots of a job: loss/accuracy curves over epochs, and the confusion matrix heat map.

matplotlib (Agg, no display) is imported on first use, so the API starts without it.
"""

import io
from typing import Any

from app.core.errors import NotFound


def _figure():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    # Class names are the user's folder names: "$" in one would be parsed as mathtext, and
    # an unbalanced one made saving the figure raise (a 500). They are text, shown as is.
    matplotlib.rcParams["text.parse_math"] = False
    from matplotlib.figure import Figure

    return Figure


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def curves(job_id: str, epochs: list[dict[str, Any]]) -> bytes:
    """Train/val loss and val accuracy per epoch, from the job's epoch events."""
    if not epochs:
        raise NotFound(f"job {job_id} has no finished epoch yet", code="plot_not_ready")
    x = [e["epoch"] for e in epochs]
    fig = _figure()(figsize=(9, 3.6))
    loss, acc = fig.subplots(1, 2)
    loss.plot(x, [e.get("train_loss") for e in epochs], marker="o", label="train")
    if any(e.get("val_loss") is not None for e in epochs):
        loss.plot(x, [e.get("val_loss") for e in epochs], marker="o", label="val")
        acc.plot(x, [e.get("val_accuracy") for e in epochs], marker="o", color="tab:green")
    loss.set(title="loss", xlabel="epoch")
    loss.legend()
    acc.set(title="val accuracy", xlabel="epoch", ylim=(0, 1.02))
    for ax in (loss, acc):
        ax.grid(alpha=0.3)
    fig.suptitle(job_id)
    return _png(fig)


def confusion(job_id: str, evaluation: dict[str, Any] | None) -> bytes:
    """The final confusion matrix (rows: true class, columns: predicted)."""
    if not evaluation:
        raise NotFound(
            f"job {job_id} has no evaluation yet (it appears on success)", code="plot_not_ready"
        )
    matrix, classes = evaluation["confusion_matrix"], evaluation["classes"]
    side = min(14, 3 + 0.45 * len(classes))
    fig = _figure()(figsize=(side, side))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=90)
    ax.set_yticks(ticks, classes)
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title=f"{job_id} · {evaluation['split']} accuracy {evaluation['accuracy']:.3f}",
    )
    if len(classes) <= 20:
        peak = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(
                    j,
                    i,
                    value,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if value > peak / 2 else "black",
                )
    return _png(fig)

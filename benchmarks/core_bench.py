"""In-process benchmarks of training-core options: cached linear-probe features, torch.compile."""

from pathlib import Path
from typing import Any

from benchmarks.common import digits_imagefolder, epoch_images, peak_rss_mib, step_seconds
from benchmarks.train_throughput import _image_set
from worker.training import loop
from worker.training.checkpoint import save_weights
from worker.training.data import TrainData
from worker.training.loop import FitCallbacks, fit
from worker.training.spec import InitWeights, TrainSpec


class _Info(FitCallbacks):
    def __init__(self) -> None:
        self.info: dict[str, Any] = {}

    def on_start(self, info: dict[str, Any]) -> None:
        self.info = info


def _epoch_seconds(history: list[dict[str, Any]], images: int) -> float:
    return step_seconds(history, images, 100) / len(history)


def run(workdir: Path, tiny: bool) -> list[dict[str, Any]]:
    size, per_class, epochs = (16, 12, 2) if tiny else (64, None, 3)
    data_dir = digits_imagefolder(workdir / "digits", size, per_class)
    train, _ = _image_set(data_dir.root / "train", data_dir.classes, size)
    test, _ = _image_set(data_dir.root / "test", data_dir.classes, size)
    data = TrainData(train=train, val=test)
    base = {
        "backbone": "resnet18",
        "classes": tuple(data_dir.classes),
        "epochs": epochs,
        "batch_size": 100,
        "image_size": size,
        "augment": False,
        "learning_rate": 0.01,
    }
    seen = epoch_images(len(train), 100)
    rows = []

    # A linear probe needs a trained backbone: fine-tune one first, then probe from its file.
    pretrained = workdir / "pretrained.safetensors"

    class _Keep(FitCallbacks):
        def on_epoch_end(
            self, epoch: int, metrics: dict[str, Any], trainer: Any, *, last: bool
        ) -> None:
            save_weights(pretrained, trainer.model.state_dict(), {})

    fit(TrainSpec(**{**base, "epochs": 2}), data, _Keep())
    init = InitWeights(source="file", path=str(pretrained), keep_head=True)
    probe = TrainSpec(strategy="linear_probe", init=init, **base)
    info = _Info()
    cached = fit(probe, data, info)
    assert info.info["cached_features"]
    original = loop.use_cached_features
    loop.use_cached_features = lambda *_: None  # type: ignore[assignment]
    try:
        full = fit(probe, data, _Info())
    finally:
        loop.use_cached_features = original
    rows.append(
        {
            "benchmark": "linear probe epoch",
            "setting": f"resnet18 {size}px, cached features vs full forward",
            "reference s/epoch": _epoch_seconds(full.history, len(train)),
            "service s/epoch": _epoch_seconds(cached.history, len(train)),
            "ratio": _epoch_seconds(cached.history, len(train))
            / _epoch_seconds(full.history, len(train)),
            "reference acc": full.best_metrics["val_accuracy"],
            "service acc": cached.best_metrics["val_accuracy"],
            "peak RSS MiB": peak_rss_mib(),
        }
    )
    if not tiny:
        plain = fit(TrainSpec(**base), data)
        compiled = fit(TrainSpec(compile=True, **base), data)
        rows.append(
            {
                "benchmark": "torch.compile",
                "setting": f"resnet18 {size}px, last epoch img/s (first epoch pays the compile)",
                "reference img/s": plain.history[-1]["images_per_second"],
                "service img/s": compiled.history[-1]["images_per_second"],
                "ratio": compiled.history[-1]["images_per_second"]
                / plain.history[-1]["images_per_second"],
                "reference acc": plain.best_metrics["val_accuracy"],
                "service acc": compiled.best_metrics["val_accuracy"],
                "first epoch s (compiled)": seen / compiled.history[0]["images_per_second"],
                "peak RSS MiB": peak_rss_mib(),
            }
        )
    return rows

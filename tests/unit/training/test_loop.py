"""The training core on real digits, on CPU: it learns, freezes, stops and cancels."""

import math
import re

import pytest
import torch

from worker.training.backbones import build_model
from worker.training.data import TrainData
from worker.training.loop import FitCallbacks, TrainingCancelled, fit
from worker.training.precision import CPU_BF16_MIN_SIZE, resolve_amp
from worker.training.spec import TrainSpec
from worker.training.trainer import TrainingDiverged, build_schedule

CLASSES = tuple(str(i) for i in range(10))


def spec(**overrides) -> TrainSpec:  # type: ignore[no-untyped-def]
    base = dict(
        backbone="resnet18",
        classes=CLASSES,
        epochs=2,
        batch_size=32,
        image_size=16,
        augment=False,
        learning_rate=2e-3,
        device="cpu",
    )
    return TrainSpec(**{**base, **overrides})


class Recorder(FitCallbacks):
    def __init__(self, stop_after_steps: int | None = None) -> None:
        self.steps, self.epochs, self.info = 0, [], {}
        self.stop_after_steps = stop_after_steps
        self.last: list[bool] = []

    def on_start(self, info):  # type: ignore[no-untyped-def]
        self.info = info

    def on_step(self, epoch, step, steps):  # type: ignore[no-untyped-def]
        self.steps += 1

    def should_stop(self) -> bool:
        return self.stop_after_steps is not None and self.steps >= self.stop_after_steps

    def on_epoch_end(self, epoch, metrics, trainer, *, last):  # type: ignore[no-untyped-def]
        state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        self.epochs.append((epoch, dict(metrics), state))
        self.last.append(last)


def test_full_fine_tuning_learns_real_digits(digits_data) -> None:  # type: ignore[no-untyped-def]
    rec = Recorder()
    result = fit(spec(epochs=3, augment=True), digits_data, rec)
    assert [e for e, _, _ in rec.epochs] == [1, 2, 3]
    assert rec.last == [False, False, True]
    assert result.best_metrics["val_accuracy"] >= 0.8  # 16 px, 3 epochs, from scratch
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert rec.steps == 3 * (len(digits_data.train) // 32)
    assert rec.info["trainable_parameters"] == sum(
        p.numel() for p in build_model(spec())[0].parameters()
    )
    assert rec.info["cpu_threads"] == torch.get_num_threads()  # shown in the job's events


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize(
    ("strategy", "layers", "trainable_prefixes"),
    [
        ("linear_probe", 0, ("fc.",)),
        ("partial", 1, ("fc.", "layer4.")),
        ("partial", 2, ("fc.", "layer4.", "layer3.")),
    ],
)
def test_frozen_parts_stay_bit_identical(small_data, strategy, layers, trainable_prefixes) -> None:  # type: ignore[no-untyped-def]
    s = spec(strategy=strategy, trainable_layers=layers, epochs=1)
    torch.manual_seed(s.seed)
    initial = {k: v.clone() for k, v in build_model(s)[0].state_dict().items()}
    rec = Recorder()
    fit(s, small_data, rec)
    changed = _changed(initial, rec.epochs[-1][2])
    assert changed, "something must train"
    assert all(k.startswith(trainable_prefixes) for k in changed), sorted(changed)[:5]
    # BatchNorm running statistics of the trainable blocks do move
    if strategy == "partial":
        assert any(k.endswith("running_mean") for k in changed)


def test_partial_splits_single_container_models() -> None:
    s = spec(backbone="mobilenet_v3_small", strategy="partial", trainable_layers=3)
    model, freezing = build_model(s)
    assert freezing.total_blocks >= 10 and freezing.trainable_blocks == 3
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "classifier.3.weight" in trainable and "classifier.0.weight" in trainable
    assert "features.0.0.weight" not in trainable


def test_early_stopping_stops_when_nothing_improves(small_data) -> None:  # type: ignore[no-untyped-def]
    # A learning rate too small to change a float32 weight: every epoch scores the same.
    s = spec(strategy="linear_probe", epochs=6, learning_rate=1e-30, early_stopping_patience=2)
    rec = Recorder()
    result = fit(s, small_data, rec)
    assert result.stopped_early
    assert [int(m["epoch"]) for m in result.history] == [1, 2, 3]
    assert rec.last == [False, False, True]  # the epoch it stops on is the last
    assert result.best_epoch == 1


def test_cancel_is_polled_within_an_epoch(small_data) -> None:  # type: ignore[no-untyped-def]
    rec = Recorder(stop_after_steps=2)
    with pytest.raises(TrainingCancelled):
        fit(spec(epochs=3), small_data, rec)
    assert rec.steps == 2 and rec.epochs == []


class _StopAfterTraining(Recorder):
    """Asks to stop once the last epoch has ended: during the best weights' evaluation."""

    def should_stop(self) -> bool:
        return bool(self.last and self.last[-1])


def test_cancel_is_polled_in_the_final_evaluation(small_data) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TrainingCancelled):
        fit(spec(epochs=1), small_data, _StopAfterTraining())


def test_cancel_is_polled_while_features_are_cached(small_data) -> None:  # type: ignore[no-untyped-def]
    rec = Recorder(stop_after_steps=0)
    with pytest.raises(TrainingCancelled):
        fit(spec(strategy="linear_probe", epochs=1), small_data, rec)
    assert rec.steps == 0 and rec.info == {}  # stopped before the first step, even its start


@pytest.mark.parametrize(("micro_batch", "largest"), [(None, 64), (8, 8)])
def test_evaluation_shrinks_with_the_micro_batch(
    small_data, monkeypatch, micro_batch, largest
) -> None:  # type: ignore[no-untyped-def]
    """After an out-of-memory error the runner retries with micro-batches; inference must
    shrink with them, or an evaluation batch that does not fit fails every retry."""
    from worker.training.batches import DeviceBatches

    sizes: list[int] = []
    iterate = DeviceBatches.iterate

    def spy(self, batch_size, **kwargs):  # type: ignore[no-untyped-def]
        if not kwargs.get("shuffle"):  # evaluation (training batches are shuffled)
            sizes.append(batch_size)
        return iterate(self, batch_size, **kwargs)

    monkeypatch.setattr(DeviceBatches, "iterate", spy)
    fit(spec(epochs=1, batch_size=32), small_data, Recorder(), micro_batch=micro_batch)
    assert sizes and max(sizes) == largest


class _InferenceOutOfMemory(Recorder):
    """Runs out of memory in every inference pass of more than `fits` images."""

    def __init__(self, fits: int) -> None:
        super().__init__()
        self.fits, self.warnings, self.passes = fits, [], []

    def on_inference_pass(self, size):  # type: ignore[no-untyped-def]
        self.passes.append(size)
        if size > self.fits:
            raise torch.OutOfMemoryError(f"injected: {size} > {self.fits}")

    def on_warning(self, code, message, data):  # type: ignore[no-untyped-def]
        self.warnings.append((code, data))


@pytest.mark.parametrize(
    ("strategy", "batch_size", "fits"), [("full", 2, 2), ("full", 32, 8), ("linear_probe", 4, 16)]
)
def test_inference_out_of_memory_runs_smaller_passes_not_smaller_training_steps(
    small_data, strategy, batch_size, fits
) -> None:  # type: ignore[no-untyped-def]
    """An evaluation (or a feature extraction) that does not fit is run again in halved
    passes, in place: the training micro-batch stays whole. (It went to the runner, which
    halved the training micro-batch and, with a batch of 1, failed the job.)"""
    rec = _InferenceOutOfMemory(fits)
    # 32 training images, fewer than a feature extraction's 256 per pass: its first pass is
    # the whole set, and the next must be smaller (halving 256 ran those 32 again three
    # times). Also fewer steps: a batch of 2 over all 150 took 20 s.
    data = TrainData(train=small_data.train.subset(torch.arange(32)), val=small_data.val)
    result = fit(spec(epochs=2, batch_size=batch_size, strategy=strategy), data, rec)
    assert len(result.history) == 2 and rec.info["micro_batch"] == batch_size
    assert {code for code, _ in rec.warnings} == {"out_of_memory"}
    halved = [data["inference_batch"] for _, data in rec.warnings]
    assert halved and halved[-1] == fits and halved == sorted(halved, reverse=True)
    # Each size too large was tried once: later passes start from the size that fitted.
    too_large = [size for size in rec.passes if size > fits]
    assert too_large == sorted(set(too_large), reverse=True)


def test_an_inference_pass_of_one_image_that_does_not_fit_reaches_the_runner(small_data) -> None:  # type: ignore[no-untyped-def]
    """The runner then shrinks training's micro-batch, and fails the job below one image."""
    rec = _InferenceOutOfMemory(0)
    with pytest.raises(torch.OutOfMemoryError):
        fit(spec(epochs=1, batch_size=8), small_data, rec)
    assert [data["inference_batch"] for _, data in rec.warnings] == [32, 16, 8, 4, 2, 1]


def test_a_diverging_run_stops_before_saving_a_non_finite_epoch(small_data) -> None:  # type: ignore[no-untyped-def]
    # SGD at half the highest learning rate the API accepts: the losses grow for a few
    # epochs (BatchNorm keeps the training loss finite), then the validation logits overflow,
    # or, with other CPU kernels (an AMX Xeon), a BatchNorm's running variance does first.
    rec = Recorder()
    with pytest.raises(TrainingDiverged) as caught:
        s = spec(epochs=30, learning_rate=5.0, optimizer="sgd", lr_schedule="constant")
        fit(s, small_data, rec)
    assert caught.value.epoch == len(rec.epochs) + 1 > 1
    assert re.fullmatch(
        r"the (training|validation) loss became (inf|nan)|the model's [\w.]+ became non-finite",
        caught.value.what,
    ), caught.value.what
    losses = [m[key] for _, m, _ in rec.epochs for key in ("train_loss", "val_loss")]
    assert all(math.isfinite(loss) for loss in losses)
    assert all(t.isfinite().all() for _, _, state in rec.epochs for t in state.values())
    message = str(caught.value)
    assert f"in epoch {caught.value.epoch}" in message and "learning_rate (it is 5)" in message


def test_test_split_is_scored_with_the_best_weights(small_data) -> None:  # type: ignore[no-untyped-def]
    data = TrainData(train=small_data.train, val=small_data.val, test=small_data.val)
    result = fit(spec(epochs=2), data, Recorder())
    assert result.test_metrics is not None
    assert result.test_metrics["test_accuracy"] == pytest.approx(
        result.best_metrics["val_accuracy"]
    )


def test_one_weights_copy_per_epoch_for_best_and_checkpoint(small_data, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """fit's best state and a reporter's checkpoint of the same epoch share one CPU copy."""
    import worker.training.trainer as trainer_module

    copies = 0
    real_copy = trainer_module.cpu_state_dict

    def counted(state):  # type: ignore[no-untyped-def]
        nonlocal copies
        copies += 1
        return real_copy(state)

    monkeypatch.setattr(trainer_module, "cpu_state_dict", counted)

    class Checkpoints(FitCallbacks):
        def __init__(self) -> None:
            self.saved: dict[int, dict[str, torch.Tensor]] = {}
            self.clones: dict[int, dict[str, torch.Tensor]] = {}

        def on_epoch_end(self, epoch, metrics, trainer, *, last):  # type: ignore[no-untyped-def]
            self.saved[epoch] = trainer.weights_after(epoch)
            live = trainer.model.state_dict()
            assert all(torch.equal(v, live[k]) for k, v in self.saved[epoch].items())
            self.clones[epoch] = {k: v.clone() for k, v in live.items()}

    ckpts = Checkpoints()
    result = fit(spec(epochs=3), small_data, ckpts)
    assert copies == 3  # one per epoch, whether or not it became the best
    best = ckpts.saved[result.best_epoch]
    later = [ckpts.saved[e] for e in ckpts.saved if e > result.best_epoch]
    # Still the best epoch's weights: training on did not write into the shared copy.
    assert all(not torch.equal(best["fc.weight"], w["fc.weight"]) for w in later)
    # Nor into any epoch's copy (the reporter writes it while the next epoch trains).
    for epoch, clone in ckpts.clones.items():
        assert all(torch.equal(v, clone[k]) for k, v in ckpts.saved[epoch].items())


def test_schedules_warm_up_then_decay() -> None:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = build_schedule(
        opt, spec(epochs=4, warmup_epochs=1, lr_schedule="cosine"), steps_per_epoch=10
    )
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10:] == sorted(lrs[10:], reverse=True) and lrs[-1] < 0.01
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = build_schedule(opt, spec(epochs=3, lr_schedule="step"), steps_per_epoch=10)
    lrs = []
    for _ in range(30):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 1.0 and lrs[10] == pytest.approx(0.1) and lrs[20] == pytest.approx(0.01)


def test_mixed_precision_policy() -> None:
    assert resolve_amp("off", torch.device("cpu")) is None
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_amp("auto", torch.device("cpu")) == (torch.bfloat16 if native else None)


def test_cpu_bf16_only_for_images_where_it_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)  # any host
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu, image_size=32) is None
    assert resolve_amp("auto", cpu, image_size=CPU_BF16_MIN_SIZE) == torch.bfloat16
    assert resolve_amp("auto", cpu, image_size=224) == torch.bfloat16
    assert resolve_amp("off", cpu, image_size=224) is None


def test_linear_probe_on_cached_features_matches_the_full_forward(digits_data, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import worker.training.loop as loop

    small_data = digits_data  # many batches: features must stay aligned with their labels
    s = spec(strategy="linear_probe", epochs=2, mixed_precision="off")
    cached_rec = Recorder()
    cached = fit(s, small_data, cached_rec)
    assert cached_rec.info["cached_features"] is True
    monkeypatch.setattr(loop, "use_cached_features", lambda *_: None)
    full_rec = Recorder()
    full = fit(s, small_data, full_rec)
    assert full_rec.info["cached_features"] is False
    for a, b in zip(cached.history, full.history, strict=True):
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-6)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    head_cached, head_full = (
        cached_rec.epochs[-1][2]["fc.weight"],
        full_rec.epochs[-1][2]["fc.weight"],
    )
    assert torch.allclose(head_cached, head_full, atol=1e-6)


def test_compiled_forward_trains_and_keeps_plain_state_dict_keys(small_data, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import functools

    # The eager backend traces with dynamo like inductor does, without minutes of codegen.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    rec = Recorder()
    result = fit(spec(epochs=1, compile=True), small_data, rec)
    assert rec.info["compiled"] is True and result.history[0]["train_loss"] > 0
    assert "fc.weight" in rec.epochs[0][2] and not any(
        k.startswith("_orig_mod") for k in rec.epochs[0][2]
    )


def test_the_best_weights_get_a_full_evaluation_report(small_data) -> None:  # type: ignore[no-untyped-def]
    result = fit(spec(epochs=2), small_data, Recorder())
    report = result.evaluation
    assert report is not None and report["split"] == "val"
    matrix = report["confusion_matrix"]
    assert len(matrix) == 10 and sum(map(sum, matrix)) == len(small_data.val)
    assert report["accuracy"] == pytest.approx(result.best_metrics["val_accuracy"])
    support = {c: v["support"] for c, v in report["per_class"].items()}
    assert sum(support.values()) == len(small_data.val)
    for scores in report["per_class"].values():
        assert 0 <= scores["precision"] <= 1 and 0 <= scores["recall"] <= 1
    assert 0 <= result.history[-1]["val_macro_f1"] <= 1


def test_per_class_scores_match_a_hand_count() -> None:
    from worker.training.evaluation import confusion_update, report

    confusion = torch.zeros((3, 3), dtype=torch.long)
    confusion_update(confusion, torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 1, 1, 2, 0]))
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    out = report(confusion, ["a", "b", "c"], "test", top5=1.0)
    assert out["per_class"]["b"] == {
        "precision": pytest.approx(2 / 3),
        "recall": 1.0,
        "f1": pytest.approx(0.8),
        "support": 2,
    }
    assert out["accuracy"] == pytest.approx(4 / 6)


def test_macro_averages_skip_classes_that_never_occur() -> None:
    # As scikit-learn's: a class in neither the labels nor the predictions of a small split
    # is left out, not scored 0 (perfect predictions read 0.75 with one class absent).
    from worker.training.evaluation import confusion_update, macro_f1, report

    confusion = torch.zeros((4, 4), dtype=torch.long)
    confusion_update(confusion, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))
    out = report(confusion, ["a", "b", "c", "d"], "val", top5=1.0)
    assert macro_f1(confusion) == out["macro_f1"] == out["macro_recall"] == 1.0
    assert out["per_class"]["d"]["support"] == 0


def test_micro_batches_split_a_batch_into_near_equal_parts(small_data) -> None:  # type: ignore[no-untyped-def]
    # 20 in micro-batches of 8 was 8, 8 and 4; 65 in 32s left one image alone, which
    # BatchNorm refuses on a 1×1 feature map: the job then failed instead of going on.
    class Sizes(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.sizes: list[int] = []

        def on_batch(self, size):  # type: ignore[no-untyped-def]
            self.sizes.append(size)

    rec = Sizes()
    fit(spec(epochs=1, batch_size=20), small_data, rec, micro_batch=8)
    assert rec.sizes[:3] == [7, 7, 6] and set(rec.sizes) == {6, 7}

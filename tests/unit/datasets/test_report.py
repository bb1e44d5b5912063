"""The dataset report: copies, label conflicts, leakage, imbalance, small classes, tiny images."""

from pathlib import Path

import pytest

from app.datasets.report import MAX_LISTED, Sample, dataset_report
from tests.unit.datasets.builders import Files, classes, image, run, zip_of

SAME = image()
BALANCED = classes({"cats": 5, "dogs": 5})

CASES = [
    pytest.param(
        BALANCED,
        {},
        {},
        id="clean",
    ),
    pytest.param(
        {**BALANCED, "cats/x.png": SAME, "cats/y.png": SAME, "cats/z.png": SAME},
        {"duplicate_image": {"cats/x.png"}},
        {"duplicates": 2},
        id="duplicate-image",
    ),
    pytest.param(
        {**BALANCED, "cats/x.png": SAME, "dogs/x.png": SAME},
        {"conflicting_labels": {"cats/x.png"}},
        {"conflicting_labels": 1},
        id="conflicting-labels",
    ),
    pytest.param(
        {
            **classes({"cats": 5, "dogs": 5}, prefix="train/"),
            "train/cats/x.png": SAME,
            "val/cats/x.png": SAME,
            "test/cats/x.png": SAME,
            **classes({"dogs": 1}, prefix="val/"),
        },
        {"split_leakage": {"train/cats/x.png"}},
        {"split_leakage": 1},
        id="split-leakage",
    ),
    pytest.param(
        classes({"cats": 51, "dogs": 5}),
        {"class_imbalance": {None}},
        {"imbalance_ratio": 10.2, "smallest_class": {"name": "dogs", "count": 5}},
        id="class-imbalance",
    ),
    pytest.param(
        classes({"cats": 50, "dogs": 5}),
        {},
        {"imbalance_ratio": 10.0},
        id="imbalance-at-the-limit-is-fine",
    ),
    pytest.param(
        classes({"cats": 5, "dogs": 4, "owls": 1}),
        {"class_too_small": {None}},
        {"smallest_class": {"name": "owls", "count": 1}},
        id="class-too-small",
    ),
    pytest.param(
        {**BALANCED, "cats/t.png": image(size=(31, 64)), "dogs/u.png": image(size=(64, 20))},
        {"tiny_image": {"cats/t.png", "dogs/u.png"}},
        {"tiny_images": 2},
        id="tiny-image",
    ),
]


@pytest.mark.parametrize(("files", "warnings", "counts"), CASES)
def test_report_warns_and_counts(
    tmp_path: Path, files: Files, warnings: dict[str, set], counts: dict
) -> None:
    report = run(tmp_path, zip_of(files))
    found: dict[str, set] = {}
    for w in report.warnings:
        found.setdefault(w["code"], set()).add(w.get("path"))
    assert found == warnings
    expected = {"duplicates": 0, "conflicting_labels": 0, "split_leakage": 0, "tiny_images": 0}
    expected |= counts
    assert report.report.items() >= expected.items()
    assert set(report.report) == {*expected, "imbalance_ratio", "smallest_class"}


def test_clean_report_in_full(tmp_path: Path) -> None:
    report = run(tmp_path, zip_of(classes({"cats": 6, "dogs": 5})))
    assert report.report == {
        "duplicates": 0,
        "conflicting_labels": 0,
        "split_leakage": 0,
        "tiny_images": 0,
        "imbalance_ratio": 1.2,
        "smallest_class": {"name": "dogs", "count": 5},
    }


def test_messages_name_every_copy_and_class(tmp_path: Path) -> None:
    files = {**BALANCED, "cats/x.png": SAME, "cats/y.png": SAME, "dogs/x.png": SAME}
    report = run(tmp_path, zip_of(files))
    by_code = {w["code"]: w["message"] for w in report.warnings}
    assert "cats/x.png" in by_code["duplicate_image"] and "cats/y.png" in by_code["duplicate_image"]
    assert "'cats' and 'dogs'" in by_code["conflicting_labels"]
    assert "dogs/x.png" in by_code["conflicting_labels"]


def _sample(i: int, label: str = "cats", side: int = 8) -> Sample:
    return Sample(f"{label}/{i}.png", "train", label, f"{label}{i}", side, side)


def test_warnings_are_capped_per_code_with_a_count_of_the_rest() -> None:
    samples = [_sample(i) for i in range(MAX_LISTED + 3)] + [_sample(0, "dogs", side=64)]
    _, warnings = dataset_report(samples, ["cats", "dogs"])
    tiny = [w for w in warnings if w["code"] == "tiny_image"]
    assert len(tiny) == MAX_LISTED + 1
    assert tiny[-1]["message"].startswith("3 more") and "path" not in tiny[-1]


def test_a_long_list_of_copies_is_shortened_in_the_message() -> None:
    samples = [Sample(f"cats/{i}.png", "train", "cats", "same", 64, 64) for i in range(25)]
    samples += [_sample(i, "dogs", side=64) for i in range(25)]
    report, warnings = dataset_report(samples, ["cats", "dogs"])
    [dup] = [w for w in warnings if w["code"] == "duplicate_image"]
    assert report["duplicates"] == 24 and "and 15 more" in dup["message"]

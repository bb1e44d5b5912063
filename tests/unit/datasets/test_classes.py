"""Class folders: empty ones and unusable names refuse the upload, naming every offender."""

import unicodedata
from pathlib import Path

import pytest

from app.core.errors import Invalid
from app.datasets.report import class_name_problem
from tests.unit.datasets.builders import Build, classes, image, run, tar_of, zip_of

CATS_DOGS = classes({"cats": 5, "dogs": 5})
SPLIT = classes({"cats": 5, "dogs": 5}, prefix="train/")
CAFE_NFD = unicodedata.normalize("NFD", "café")

REFUSED = [
    pytest.param(
        zip_of(CATS_DOGS, dirs=("birds/",)), "class_empty", {"birds/"}, id="empty-zip-folder"
    ),
    pytest.param(
        tar_of(CATS_DOGS, dirs=("birds", "fish/deep")),
        "class_empty",
        {"birds/", "fish/"},
        id="empty-tar-folders",
    ),
    pytest.param(
        zip_of({**CATS_DOGS, "birds/.DS_Store": b"x", "fish/notes.txt": b"x", "owls/a.png": b""}),
        "class_empty",
        {"birds/", "fish/", "owls/"},
        id="folders-of-junk-text-and-empty-files",
    ),
    pytest.param(
        zip_of(SPLIT, dirs=("val/birds/", "test/cats/")),
        "class_empty",
        {"val/birds/", "test/cats/"},
        id="empty-split-class-folders",
    ),
    pytest.param(
        zip_of(classes({"cats": 5, "dogs": 5}, prefix="data/"), dirs=("data/birds/",)),
        "class_empty",
        {"data/birds/"},
        id="empty-folder-inside-wrapper",
    ),
    pytest.param(
        zip_of({"cats/a.png": image(), "dogs/readme.md": b"x"}),
        "class_empty",
        {"dogs/"},
        id="empty-class-named-before-too-few-classes",
    ),
    pytest.param(
        zip_of(
            {
                **CATS_DOGS,
                " cats/a.png": image(),
                "dogs /a.png": image(),
                f"{'x' * 101}/a.png": image(),
                "ca\x07ts/a.png": image(),
                "bi\u202erds/a.png": image(),
                "li\nne/a.png": image(),
            }
        ),
        "class_name_invalid",
        {" cats/", "dogs /", f"{'x' * 101}/", "ca\x07ts/", "bi\u202erds/", "li\nne/"},
        id="bad-class-names",
    ),
    pytest.param(
        zip_of({**SPLIT, "val/ cats/a.png": image(), "test/ cats/a.png": image()}),
        "class_name_invalid",
        {"val/ cats/", "test/ cats/"},
        id="bad-name-in-every-split-listed",
    ),
    pytest.param(
        zip_of({**CATS_DOGS, f"{CAFE_NFD}/a.png": image(), "café/b.png": image()}),
        "dataset_layout_invalid",
        {f"{CAFE_NFD}/", "café/"},
        id="names-equal-after-unicode-normalisation",
    ),
]


@pytest.mark.parametrize(("build", "code", "paths"), REFUSED)
def test_refuses_bad_class_folders_naming_all(
    tmp_path: Path, build: Build, code: str, paths: set[str]
) -> None:
    with pytest.raises(Invalid) as caught:
        run(tmp_path, build)
    assert caught.value.code == code
    assert {e["field"] for e in caught.value.errors} == paths
    assert not (tmp_path / "out").exists()


NAMES = ["Café au lait", "日本の猫", "N°5 (small)", "a-b_c.d", "émoji 🐱", "x" * 100, "1"]


@pytest.mark.parametrize("name", NAMES)
def test_accepts_unicode_and_punctuation_in_class_names(tmp_path: Path, name: str) -> None:
    report = run(tmp_path, zip_of({**classes({name: 5}), **classes({"dogs": 5})}))
    assert report.classes == sorted([name, "dogs"])


def test_folders_that_hold_images_and_junk_are_not_empty(tmp_path: Path) -> None:
    files = {**CATS_DOGS, "cats/.DS_Store": b"x", "__MACOSX/birds/._a.png": b"x"}
    report = run(tmp_path, tar_of(files, mode="w", dirs=("cats", "dogs/sub", ".git")))
    assert report.classes == ["cats", "dogs"]


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        (".", "'.'"),
        ("..", "'.'"),
        (" x", "whitespace"),
        ("x\u00a0", "whitespace"),
        ("x" * 101, "longer than 100"),
        ("a\tb", "control"),
        ("a\u200bb", "invisible"),
        ("a\u2028b", "control"),
        ("cats", None),
        ("a b", None),
    ],
)
def test_class_name_rules(name: str, problem: str | None) -> None:
    found = class_name_problem(name)
    assert (found is None) if problem is None else (problem in (found or ""))

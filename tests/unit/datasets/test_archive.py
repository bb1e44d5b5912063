"""Unit tests for app.datasets.archive: layouts, junk, unsafe members, bombs and bad images."""

import hashlib
import io
import json
import random
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from app.core.errors import Invalid
from app.datasets.archive import Limits
from tests.unit.datasets.builders import (
    Build,
    image,
    raw,
    run,
    tar_of,
    truncated_png,
    zip_of,
)

PNG = image()
JPG = image("JPEG")


def _skip_codes(warnings: list[dict]) -> set[str]:
    """Codes of the skipped-entry warnings; quality warnings have their own tests."""
    return {w["code"] for w in warnings if w["code"].endswith("_skipped")}


OK_CASES = [
    pytest.param(
        zip_of({"cats/a.png": PNG, "cats/b.jpg": JPG, "dogs/c.PNG": PNG}),
        {"cats": 2, "dogs": 1},
        {"train": 3, "val": 0, "test": 0},
        set(),
        id="zip-flat",
    ),
    pytest.param(
        tar_of(
            {
                "train/cats/a.png": PNG,
                "train/dogs/b.png": PNG,
                "val/cats/c.png": PNG,
                "val/dogs/d.jpg": JPG,
                "test/dogs/e.png": PNG,
            }
        ),
        {"cats": 2, "dogs": 3},
        {"train": 2, "val": 2, "test": 1},
        set(),
        id="targz-splits",
    ),
    pytest.param(
        zip_of({"digits/0/a.png": PNG, "digits/1/b.png": PNG}),
        {"0": 1, "1": 1},
        {"train": 2, "val": 0, "test": 0},
        set(),
        id="wrapper-stripped",
    ),
    pytest.param(
        tar_of(
            {
                "./data/train/cats/a.png": PNG,
                "./data/train/dogs/b.png": PNG,
                "./data/val/dogs/c.png": PNG,
            },
            mode="w",
        ),
        {"cats": 1, "dogs": 2},
        {"train": 2, "val": 1, "test": 0},
        set(),
        id="plain-tar-wrapper-with-splits",
    ),
    pytest.param(
        zip_of(
            {
                "cats/a.png": PNG,
                "dogs/b.png": PNG,
                "__MACOSX/cats/._a.png": b"x",
                "__MACOSX/dogs/._b.png": b"x",
                "cats/.DS_Store": b"x",
                "Thumbs.db": b"x",
            }
        ),
        {"cats": 1, "dogs": 1},
        {"train": 2, "val": 0, "test": 0},
        {"junk_skipped"},
        id="macos-junk",
    ),
    pytest.param(
        zip_of(
            {"cats/a.png": PNG, "dogs/b.png": PNG, "README.txt": b"hi", "dogs/labels.csv": b"a,b"}
        ),
        {"cats": 1, "dogs": 1},
        {"train": 2, "val": 0, "test": 0},
        {"non_image_skipped"},
        id="readme-skipped",
    ),
]


@pytest.mark.parametrize(("build", "counts", "splits", "warning_codes"), OK_CASES)
def test_extracts_valid_archives(
    tmp_path: Path, build: Build, counts: dict, splits: dict, warning_codes: set
) -> None:
    report = run(tmp_path, build)
    out = tmp_path / "out"
    assert report.classes == sorted(counts)
    assert report.class_counts == counts
    assert report.splits == splits
    assert _skip_codes(report.warnings) == warning_codes
    assert [e.file for e in report.entries] == [
        f"images/{i:06d}{Path(e.source).suffix.lower()}" for i, e in enumerate(report.entries)
    ]
    for e in report.entries:
        assert (out / e.file).stat().st_size == e.size_bytes > 0
        assert hashlib.sha256((out / e.file).read_bytes()).hexdigest() == e.sha256
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == report.classes
    assert len(manifest["entries"]) == len(report.entries)
    assert sorted(p.name for p in out.iterdir()) == ["images", "manifest.json"]


def test_junk_warnings_name_each_hidden_root_once(tmp_path: Path) -> None:
    report = run(tmp_path, OK_CASES[4].values[0])
    paths = sorted(w["path"] for w in report.warnings if w["code"] == "junk_skipped")
    assert paths == ["Thumbs.db", "__MACOSX/", "cats/.DS_Store"]


ERROR_CASES = [
    pytest.param(
        zip_of({"../x.png": PNG, "cats/a.png": PNG, "dogs/b.png": PNG}),
        None,
        "archive_unsafe",
        {"../x.png"},
        id="zip-slip",
    ),
    pytest.param(
        zip_of({"/abs/x.png": PNG, "cats/a.png": PNG}),
        None,
        "archive_unsafe",
        {"/abs/x.png"},
        id="absolute-path",
    ),
    pytest.param(
        zip_of({"C:/x.png": PNG, "cats\\..\\y.png": PNG}),
        None,
        "archive_unsafe",
        {"C:/x.png", "cats\\..\\y.png"},
        id="drive-and-backslash",
    ),
    pytest.param(
        tar_of({"cats/a.png": PNG}, links={"dogs/b.png": tarfile.SYMTYPE}),
        None,
        "archive_unsafe",
        {"dogs/b.png"},
        id="tar-symlink",
    ),
    pytest.param(
        tar_of({"cats/a.png": PNG}, links={"dogs/b.png": tarfile.LNKTYPE}),
        None,
        "archive_unsafe",
        {"dogs/b.png"},
        id="tar-hardlink",
    ),
    pytest.param(
        raw(random.Random(0).randbytes(4096)), None, "archive_invalid", None, id="random-bytes"
    ),
    pytest.param(
        raw(b"PK\x03\x04" + bytes(100)), None, "archive_invalid", None, id="truncated-zip"
    ),
    pytest.param(
        zip_of({"cats/a.png": PNG, "cats/b.png": PNG}),
        None,
        "dataset_too_few_classes",
        None,
        id="one-class",
    ),
    pytest.param(
        zip_of({"README.txt": b"hi", "cats/.DS_Store": b"x"}),
        None,
        "dataset_empty",
        None,
        id="no-images",
    ),
    pytest.param(
        zip_of(
            {
                "cats/a.png": PNG,
                "cats/bad.png": truncated_png(),
                "dogs/b.png": PNG,
                "dogs/fake.jpg": b"not an image",
            }
        ),
        None,
        "image_invalid",
        {"cats/bad.png", "dogs/fake.jpg"},
        id="bad-images",
    ),
    pytest.param(
        zip_of({"cats/a.png": PNG, "dogs/b.png": PNG, "c.png": PNG}),
        None,
        "dataset_layout_invalid",
        {"c.png"},
        id="image-outside-class",
    ),
    pytest.param(
        zip_of({"train/cats/a.png": PNG, "train/dogs/b.png": PNG, "birds/c.png": PNG}),
        None,
        "dataset_layout_invalid",
        {"birds/"},
        id="splits-mixed-with-classes",
    ),
    pytest.param(
        zip_of({"train/cats/a.png": PNG, "train/dogs/b.png": PNG, "val/birds/c.png": PNG}),
        None,
        "dataset_layout_invalid",
        {"val/birds/"},
        id="val-class-not-in-train",
    ),
    pytest.param(
        zip_of({"Cats/a.png": PNG, "cats/b.png": PNG}),
        None,
        "dataset_layout_invalid",
        {"Cats/", "cats/"},
        id="classes-differ-by-case",
    ),
    pytest.param(
        zip_of({"cats/a.png": PNG, "dogs/big.png": bytes(10 * 2**20)}),
        None,
        "archive_too_large",
        {"dogs/big.png"},
        id="zip-bomb-ratio",
    ),
    pytest.param(
        tar_of({"cats/a.png": PNG, "dogs/big.png": bytes(10 * 2**20)}),
        None,
        "archive_too_large",
        None,
        id="tar-gz-bomb-ratio",
    ),
    pytest.param(
        zip_of({f"c{i % 2}/{i}.png": PNG for i in range(6)}),
        Limits(max_members=5),
        "archive_too_large",
        None,
        id="too-many-members",
    ),
    pytest.param(
        tar_of({f"c{i % 2}/{i}.png": PNG for i in range(6)}),
        Limits(max_members=5),
        "archive_too_large",
        None,
        id="too-many-tar-members",
    ),
    pytest.param(
        zip_of({"cats/a.png": PNG, "dogs/b.png": PNG}),
        Limits(max_total_bytes=100),
        "archive_too_large",
        None,
        id="too-many-bytes",
    ),
    pytest.param(
        zip_of({"cats/a.png": PNG, "dogs/b.png": PNG}),
        Limits(max_image_pixels=10),
        "image_invalid",
        {"cats/a.png", "dogs/b.png"},
        id="too-many-pixels",
    ),
    pytest.param(
        zip_of({"cats/a.png": PNG, "dogs/b.png": PNG}),
        Limits(max_image_bytes=100),
        "image_invalid",
        {"cats/a.png", "dogs/b.png"},
        id="too-many-bytes-in-one-image",
    ),
]


@pytest.mark.parametrize(("build", "limits", "code", "paths"), ERROR_CASES)
def test_refuses_bad_archives_and_leaves_nothing(
    tmp_path: Path, build: Build, limits: Limits | None, code: str, paths: set | None
) -> None:
    with pytest.raises(Invalid) as caught:
        run(tmp_path, build, limits or Limits())
    assert caught.value.code == code
    assert caught.value.status == 422
    if paths is not None:
        assert {e["field"] for e in caught.value.errors} == paths
        assert all(e["code"] == code for e in caught.value.errors)
    assert not (tmp_path / "out").exists()


def test_existing_empty_dest_is_kept_but_emptied_on_error(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(Invalid):
        run(tmp_path, zip_of({"cats/a.png": PNG, "dogs/b.txt.png": b"nope"}))
    assert list((tmp_path / "out").iterdir()) == []


def test_refuses_a_non_empty_dest(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        run(tmp_path, zip_of({"cats/a.png": PNG, "dogs/b.png": PNG}))
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def _bytes_of(build: Build, tmp_path: Path) -> bytes:
    path = tmp_path / "built"
    build(path)
    return path.read_bytes()


def _bad_utf8_flagged_zip(path: Path) -> None:
    """A zip that flags its names UTF-8 (bit 11) over a name that is not (a Latin-1 tool)."""
    zip_of({"cats/a.png": PNG, "dogs/caf\u00e9.png": PNG})(path)
    path.write_bytes(path.read_bytes().replace("é".encode(), b"\xe9\xe9"))


def _corrupt_xz(path: Path) -> None:
    tar_of({"cats/a.png": PNG, "dogs/b.png": PNG}, mode="w:xz")(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))


# The first two were 500s: an exception type the archive readers raise on damaged bytes that
# was not caught, or one raised by a format probe outside the error wrapper.
DAMAGED = [
    pytest.param(
        raw(b"PK\x06\x07" + struct.pack("<LQL", 0, 0, 2) + b"PK\x05\x06" + bytes(18)),
        id="last-part-of-a-spanned-zip",
    ),
    pytest.param(_bad_utf8_flagged_zip, id="zip-names-flagged-utf8-that-are-not"),
    pytest.param(_corrupt_xz, id="corrupt-tar-xz"),
]


@pytest.mark.parametrize("build", DAMAGED)
def test_damaged_archives_are_refused_as_invalid(tmp_path: Path, build: Build) -> None:
    with pytest.raises(Invalid) as caught:
        run(tmp_path, build)
    assert caught.value.code == "archive_invalid" and caught.value.status == 422
    assert not (tmp_path / "out").exists()


def test_a_gzip_cut_short_is_refused_as_invalid(tmp_path: Path) -> None:
    whole = _bytes_of(tar_of({"cats/a.png": PNG, "dogs/b.png": PNG}), tmp_path)
    with pytest.raises(Invalid) as caught:
        run(tmp_path, raw(whole[:30]))
    assert caught.value.code == "archive_invalid"


def _tar_named(name: str) -> Build:
    def build(path: Path) -> None:
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
            for member in ("cats/a.png", "dogs/b.png", name):
                info = tarfile.TarInfo(member)
                info.size = len(PNG)
                tf.addfile(info, io.BytesIO(PNG))

    return build


def test_a_member_name_that_is_not_utf8_is_named_in_a_refusal_json_can_carry(
    tmp_path: Path,
) -> None:
    """tarfile keeps a Latin-1 byte as a lone surrogate, which no JSON encoder writes: the
    422 itself failed, as a 500."""
    with pytest.raises(Invalid) as caught:
        run(tmp_path, _tar_named("cats/caf\udce9.png"))
    assert caught.value.code == "archive_unsafe"
    assert [e["field"] for e in caught.value.errors] == ["cats/caf\\xe9.png"]
    json.dumps(caught.value.errors, ensure_ascii=False).encode()  # what the response does


def test_a_nul_in_a_member_name_is_unsafe(tmp_path: Path) -> None:
    """A pax name keeps a NUL, which Postgres refuses in the warnings' JSONB (a 500)."""
    name = "cats/" + "a" * 120 + "\x00.png"  # over 100 characters: the name goes in pax
    with pytest.raises(Invalid) as caught:
        run(tmp_path, _tar_named(name))
    assert caught.value.code == "archive_unsafe"
    assert caught.value.errors[0]["message"] == "NUL character in member name"


@pytest.mark.parametrize(
    ("names", "limits"),
    [
        pytest.param([f"c{i % 2}/{i}.png" for i in range(6)], Limits(max_members=5), id="count"),
        pytest.param(
            [f"c{i}/{'n' * 600}.png" for i in range(2)], Limits(max_members=2), id="directory"
        ),
    ],
)
def test_a_zip_directory_too_large_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: list[str], limits: Limits
) -> None:
    """ZipFile reads the whole central directory into objects (~8 GB for 20 million
    entries) before the entries could be counted: its end record is checked first."""
    archive = tmp_path / "upload.bin"
    zip_of(dict.fromkeys(names, PNG))(archive)

    def unread(*_: object, **__: object) -> None:
        raise AssertionError("the directory was read")

    monkeypatch.setattr(zipfile, "ZipFile", unread)
    with pytest.raises(Invalid) as caught:
        run(tmp_path, raw(archive.read_bytes()), limits)
    assert caught.value.code == "archive_too_large"


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"])
def test_an_oversized_tar_header_extension_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: int
) -> None:
    """tarfile reads a long name or pax records whole into memory: 8 GiB claimed by 8 MB of
    gzipped zeros would have been read, before any limit looked at the member."""
    archive = tmp_path / "upload.bin"
    with tarfile.open(archive, "w:gz", format=fmt) as tf:
        info = tarfile.TarInfo("cats/" + "n" * (2 << 20) + ".png")  # a 2 MiB name
        info.size = len(PNG)
        tf.addfile(info, io.BytesIO(PNG))

    def unread(*_: object) -> None:
        raise AssertionError("the extension was read")

    for reader in ("_proc_gnulong", "_proc_pax"):
        monkeypatch.setattr(tarfile.TarInfo, reader, unread)
    with pytest.raises(Invalid) as caught:
        run(tmp_path, raw(archive.read_bytes()))
    assert caught.value.code == "archive_unsafe" and "header extension" in caught.value.detail


def _tar_of_headers(path: Path, headers: list[tarfile.TarInfo]) -> None:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for info in headers:
            tf.addfile(info, io.BytesIO(PNG) if info.size else None)


def test_sparse_members_are_refused(tmp_path: Path) -> None:
    """Their maps are read without bound, and a malformed one raised ValueError (a 500)."""
    info = tarfile.TarInfo("cats/a.png")
    info.size = len(PNG)
    info.pax_headers = {"GNU.sparse.map": "x", "GNU.sparse.size": str(len(PNG))}
    with pytest.raises(Invalid) as caught:
        run(tmp_path, lambda path: _tar_of_headers(path, [info]))
    assert caught.value.code == "archive_unsafe" and "Sparse" in caught.value.detail


def test_a_chain_of_thousands_of_header_extensions_is_invalid_not_a_500(tmp_path: Path) -> None:
    """tarfile reads each extension header recursively: a long chain of them raised
    RecursionError, which nothing caught."""

    def build(path: Path) -> None:
        body = bytearray()
        for _ in range(3000):  # GNU long-name headers, each naming the next member
            long_name = tarfile.TarInfo("././@LongLink")
            long_name.type = tarfile.GNUTYPE_LONGNAME
            long_name.size = 8
            body += long_name.tobuf(tarfile.GNU_FORMAT) + b"cats/a\0\0".ljust(512, b"\0")
        path.write_bytes(bytes(body) + bytes(1024))

    with pytest.raises(Invalid) as caught:
        run(tmp_path, build)
    assert caught.value.code == "archive_invalid"

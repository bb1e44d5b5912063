"""Awkward but real images are accepted; corrupt ones, impostors and bombs are refused by name."""

from pathlib import Path

import pytest
from PIL import Image

from app.core.errors import Invalid
from app.datasets.archive import Limits
from tests.unit.datasets.builders import (
    classes,
    cmyk_jpeg,
    corrupt_jpeg,
    encode,
    exif_rotated_jpeg,
    image,
    palette_png_with_transparency,
    png_header,
    run,
    sixteen_bit_png,
    truncated_png,
    zip_of,
)

GOOD = classes({"cats": 5, "dogs": 5})

ACCEPTED = [
    pytest.param("odd.png", sixteen_bit_png(), id="16-bit-png"),
    pytest.param("odd.jpg", cmyk_jpeg(), id="cmyk-jpeg"),
    pytest.param("odd.jpg", exif_rotated_jpeg(), id="exif-rotated-jpeg"),
    pytest.param("odd.png", palette_png_with_transparency(), id="palette-transparency-png"),
    pytest.param("odd.png", encode(Image.new("RGBA", (32, 32), (9, 9, 9, 0))), id="rgba-png"),
    pytest.param("odd.png", encode(Image.new("LA", (32, 32), (9, 128))), id="la-png"),
    pytest.param("odd.png", image(mode="L"), id="grey-png"),
    pytest.param("odd.png", image(mode="1"), id="1-bit-png"),
    pytest.param("odd.tif", encode(Image.new("F", (32, 32), 0.5), "TIFF"), id="float-tiff"),
    pytest.param("odd.tif", encode(Image.new("I;16", (32, 32), 9), "TIFF"), id="16-bit-tiff"),
    pytest.param("odd.tif", image("TIFF", mode="CMYK"), id="cmyk-tiff"),
    pytest.param("odd.gif", image("GIF"), id="gif"),
    pytest.param("odd.webp", image("WEBP"), id="webp"),
    pytest.param("odd.bmp", image("BMP"), id="bmp"),
    pytest.param("odd.jpg", image("PNG"), id="png-named-jpg"),
]


@pytest.mark.parametrize(("name", "data"), ACCEPTED)
def test_accepts_every_kind_of_real_image(tmp_path: Path, name: str, data: bytes) -> None:
    report = run(tmp_path, zip_of({**GOOD, f"dogs/{name}": data}))
    assert report.class_counts == {"cats": 5, "dogs": 6}
    assert f"dogs/{name}" in {e.source for e in report.entries}


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nshowpage\n"

REFUSED = [
    pytest.param("bad.png", truncated_png(), "corrupt", id="truncated-png"),
    pytest.param("bad.jpg", corrupt_jpeg(), "corrupt", id="corrupt-jpeg-body"),
    pytest.param("bad.jpg", b"just some text, really", "not a readable", id="text-named-jpg"),
    pytest.param("bad.png", EPS, "not a readable", id="eps-named-png-never-reaches-ghostscript"),
    pytest.param(
        "bad.png", png_header(20000, 20000), "more than the 40000000", id="bomb-png-400mp"
    ),
    pytest.param("bad.png", png_header(7000, 7000), "7000x7000 pixels", id="bomb-png-49mp"),
]


@pytest.mark.parametrize(("name", "data", "reason"), REFUSED)
def test_refuses_an_unusable_image_naming_it(
    tmp_path: Path, name: str, data: bytes, reason: str
) -> None:
    with pytest.raises(Invalid) as caught:
        run(tmp_path, zip_of({**GOOD, f"cats/{name}": data}))
    assert caught.value.code == "image_invalid"
    [error] = caught.value.errors
    assert error["field"] == f"cats/{name}" and reason in error["message"]
    assert not (tmp_path / "out").exists()


def test_every_unusable_image_is_listed_in_one_refusal(tmp_path: Path) -> None:
    bad = {}
    for i, case in enumerate(REFUSED):
        name, data, _ = case.values
        bad[f"{('cats', 'dogs')[i % 2]}/{i}{Path(name).suffix}"] = data
    with pytest.raises(Invalid) as caught:
        run(tmp_path, zip_of({**GOOD, **bad}))
    assert caught.value.code == "image_invalid"
    assert {e["field"] for e in caught.value.errors} == set(bad)


def test_the_pixel_limit_defaults_to_40_megapixels() -> None:
    assert Limits().max_image_pixels == 40_000_000


def test_an_image_at_the_pixel_limit_is_accepted(tmp_path: Path) -> None:
    limits = Limits(max_image_pixels=64 * 64)
    report = run(tmp_path, zip_of({**GOOD, "dogs/edge.png": image(size=(64, 64))}), limits)
    assert report.class_counts["dogs"] == 6

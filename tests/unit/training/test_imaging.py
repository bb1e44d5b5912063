"""The image normalisation shared by training and serving, on every awkward kind of image."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.core.errors import Invalid
from app.models.inference import decode
from tests.unit.datasets.builders import (
    BLUE,
    GREEN,
    RED,
    WHITE,
    cmyk_jpeg,
    encode,
    exif_rotated_jpeg,
    palette_png_with_transparency,
    png_header,
    sixteen_bit_png,
)
from worker.training.data import cached_images
from worker.training.imaging import DECODER_VERSION, decode_image, to_rgb

S = 16


def _decoded(data: bytes, size: int = S) -> np.ndarray:
    out = decode_image(io.BytesIO(data), size)
    assert out.shape == (3, size, size) and out.dtype == np.uint8
    return out


def _close(pixel: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(rgb)) <= tol))


def _half_one(mode: str) -> bytes:
    img = Image.new(mode, (32, 32), 0)
    img.paste(1, (16, 0, 32, 32))
    return encode(img)


SOLID = [
    pytest.param(cmyk_jpeg(), RED, id="cmyk-jpeg"),
    pytest.param(encode(Image.new("RGBA", (32, 32), (255, 0, 0, 0))), WHITE, id="rgba-alpha-0"),
    pytest.param(encode(Image.new("RGBA", (32, 32), (0, 0, 255, 255))), BLUE, id="rgba-opaque"),
    pytest.param(encode(Image.new("LA", (32, 32), (0, 0))), WHITE, id="la-alpha-0"),
    pytest.param(encode(Image.new("L", (32, 32), 100)), (100, 100, 100), id="grey-l"),
    pytest.param(encode(Image.new("1", (32, 32), 1)), WHITE, id="1-bit-white"),
    pytest.param(encode(Image.new("F", (32, 32), 0.5), "TIFF"), (128, 128, 128), id="float-0-1"),
    pytest.param(encode(Image.new("F", (32, 32), 300.0), "TIFF"), WHITE, id="float-over-255"),
    pytest.param(encode(Image.new("I", (32, 32), 32768), "TIFF"), (128, 128, 128), id="int32"),
    pytest.param(
        encode(Image.new("I;16B", (32, 32), 0x8000), "TIFF"), (128, 128, 128), id="16-bit-big"
    ),
    pytest.param(encode(Image.new("RGB", (32, 32), GREEN), "WEBP"), GREEN, id="webp"),
]


@pytest.mark.parametrize(("data", "rgb"), SOLID)
def test_solid_images_decode_to_their_colour(data: bytes, rgb: tuple[int, int, int]) -> None:
    out = _decoded(data)
    assert _close(out[:, 0, 0], rgb) and _close(out[:, -1, -1], rgb), out[:, 0, 0]


def test_16_bit_png_is_scaled_by_its_bit_depth_not_clipped_to_white() -> None:
    out = _decoded(sixteen_bit_png())
    assert 120 <= out.mean() <= 136  # a 0..65535 ramp is mid grey on average
    assert out[0, 0, 0] < 16 and out[0, 0, -1] > 239  # dark left, light right
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])


def test_palette_png_transparency_becomes_white() -> None:
    out = _decoded(palette_png_with_transparency())
    assert _close(out[:, S // 2, 0], WHITE) and _close(out[:, S // 2, -1], GREEN)


def test_1_bit_image_keeps_black_and_white() -> None:
    out = _decoded(_half_one("1"))
    assert _close(out[:, 0, 0], (0, 0, 0)) and _close(out[:, 0, -1], WHITE)


def test_exif_orientation_is_applied() -> None:
    # Stored 40x20 with red top-left; orientation 6 means "turn 90° clockwise to view",
    # so the viewer sees a 20x40 image with the red corner at the top right.
    out = _decoded(exif_rotated_jpeg(), size=40)
    assert _close(out[:, 1, -2], RED, tol=40)
    assert _close(out[:, 1, 1], BLUE, tol=40) and _close(out[:, -2, -2], BLUE, tol=40)


@pytest.mark.parametrize("mode", sorted(Image.MODES))
def test_to_rgb_handles_every_pillow_mode(mode: str) -> None:
    img = to_rgb(Image.new(mode, (4, 4)))
    assert img.mode == "RGB" and img.size == (4, 4)


def test_a_palette_with_alpha_composites_onto_white() -> None:
    img = Image.new("P", (2, 2), 0)
    img.putpalette([*RED, 0, *GREEN, 255], "RGBA")
    img.putpixel((1, 1), 1)
    out = to_rgb(img)
    assert out.getpixel((0, 0)) == WHITE and out.getpixel((1, 1)) == GREEN


def test_premultiplied_grey_alpha_composites_onto_white() -> None:
    clear = to_rgb(Image.new("La", (2, 2), (0, 0)))
    half = to_rgb(Image.new("La", (2, 2), (50, 128)))  # premultiplied: 100 at half opacity
    assert clear.getpixel((0, 0)) == WHITE and half.getpixel((0, 0)) == (177, 177, 177)


def test_decode_image_reads_paths_and_refuses_oversized_images(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(encode(Image.new("RGB", (40, 30), RED)))
    assert _close(decode_image(path, S)[:, 0, 0], RED)
    with pytest.raises(Image.DecompressionBombError):
        decode_image(path, S, max_pixels=40 * 30 - 1)


def test_serving_decodes_exactly_as_training(tmp_path: Path) -> None:
    for data in (exif_rotated_jpeg(), sixteen_bit_png(), palette_png_with_transparency()):
        path = tmp_path / "x"
        path.write_bytes(data)
        assert np.array_equal(decode(data, "x", 24), decode_image(path, 24))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"not an image", id="text"),
        pytest.param(png_header(20000, 20000), id="bomb-over-pillow-limit"),
        pytest.param(png_header(7000, 7000), id="bomb-under-pillow-limit"),
        pytest.param(sixteen_bit_png()[:100], id="truncated"),
    ],
)
def test_serving_refuses_unreadable_uploads_by_name(data: bytes) -> None:
    with pytest.raises(Invalid) as caught:
        decode(data, "upload.png", S, max_pixels=40_000_000)
    assert caught.value.code == "image_invalid" and caught.value.status == 422
    assert caught.value.errors[0]["file"] == "upload.png"


def test_a_cache_decoded_by_an_older_normalisation_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "clear.png"
    path.write_bytes(encode(Image.new("RGBA", (8, 8), (255, 0, 0, 0))))
    stale = tmp_path / "cache-d1.npy"  # what decoder version 1 would have left
    np.save(stale, np.zeros((1, 3, S, S), dtype=np.uint8))
    assert cached_images(tmp_path / "cache.npy", [path], S)[0, :, 0, 0].tolist() == list(WHITE)
    assert (tmp_path / f"cache-d{DECODER_VERSION}.npy").exists()

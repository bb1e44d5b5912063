"""A large upload is streamed through the API process, never held in its memory.

The service must take a 10 GB dataset on a machine with less free memory than that; this
checks the property at a size a test can afford: a ~230 MB archive of large images moves
the API's peak memory by a few images' worth, not by the archive's size.
"""

import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.client import upload
from tests.support.images import digit_members, write_zip
from tests.support.processes import free_port, running, service_env, wait_http

pytestmark = pytest.mark.integration
SIDE = 2000  # 12 MB per decoded RGB image, about as much per stored PNG (noise, level 0)
PER_CLASS = 10
BOUND_MIB = 64


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def _noise_archive(path: Path) -> Path:
    """Stored (uncompressed) zip of distinct noise PNGs: its size is what the API must move."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for cls in ("noise_a", "noise_b"):
            for i in range(PER_CLASS):
                pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
                with zf.open(f"train/{cls}/{i}.png", "w") as member:
                    Image.fromarray(pixels).save(member, format="PNG", compress_level=0)
    return path


def test_a_large_upload_moves_the_api_memory_by_images_not_by_the_archive(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    archive = _noise_archive(tmp_path / "noise.zip")
    size_mib = archive.stat().st_size / 2**20
    assert size_mib > 200
    small = write_zip(tmp_path / "small.zip", digit_members(range(2), per_class=6, size=16)[0])
    env = service_env(data_dir=str(tmp_path / "var"), database_url=pg_url, broker_url=redis_url)
    port = free_port()
    with running(["api", "--port", str(port)], env, tmp_path / "api.log") as api:
        wait_http(f"http://127.0.0.1:{port}/readyz", api, tmp_path / "api.log")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            # A small upload first, so the code of the upload path is loaded before measuring.
            assert upload(client, small).status_code == 201
            Path(f"/proc/{api.pid}/clear_refs").write_text("5")  # peak := resident now
            resident = _kib(api.pid, "VmRSS")
            response = upload(client, archive)
            assert response.status_code == 201, response.text
            peak = _kib(api.pid, "VmHWM")
    assert response.json()["num_images"] == 2 * PER_CLASS
    grew_mib = (peak - resident) / 1024
    assert grew_mib < BOUND_MIB, f"a {size_mib:.0f} MB upload raised peak RSS by {grew_mib:.0f} MB"


def _refusal_before_the_body(port: int, headers: str) -> bytes:
    """The answer to an upload that declares 1 GiB and sends none of it (b"" if none comes)."""
    import socket

    head = (
        "POST /v1/datasets HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {2**30}\r\n{headers}\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        try:
            return sock.recv(4096)
        except TimeoutError:  # the server waits for the body it will read whole
            return b""


def test_an_upload_is_refused_before_its_body_without_a_key_or_over_the_rate(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    """FastAPI reads a form whole before the route's dependencies check the key and the rate:
    a client without a key could make the API receive and spool 10 GiB per connection."""

    from app.core.db import get_sessionmaker
    from app.core.keys import create_key

    with get_sessionmaker(pg_url)() as session:
        key, _ = create_key(session, f"early-{tmp_path.name}")
        session.commit()
    small = write_zip(tmp_path / "small.zip", digit_members(range(2), per_class=6, size=16)[0])
    env = service_env(
        data_dir=str(tmp_path / "var"),
        database_url=pg_url,
        broker_url=redis_url,
        auth_required="true",
        rate_limit_uploads="1/minute",
    )
    port = free_port()
    with running(["api", "--port", str(port)], env, tmp_path / "api.log") as api:
        wait_http(f"http://127.0.0.1:{port}/readyz", api, tmp_path / "api.log")
        assert b" 401 " in _refusal_before_the_body(port, "")
        assert b" 401 " in _refusal_before_the_body(port, "Authorization: Bearer ft_made_up\r\n")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            client.headers["Authorization"] = f"Bearer {key}"
            assert upload(client, small).status_code == 201  # the tenant's one a minute
        refused = _refusal_before_the_body(port, f"Authorization: Bearer {key}\r\n")
    assert b" 429 " in refused and b"retry-after" in refused.lower()

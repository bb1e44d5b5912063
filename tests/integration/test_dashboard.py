"""The dashboard at `/`, driven end to end in headless Chromium against the real service.

Everything goes through the page: the dataset is dropped on the drop zone, the job is started
with the form, the table is watched until the job succeeds, and the job page is checked for
its SSE-fed curves, the confusion matrix, a checkpoint download and predictions. A full-page
screenshot is kept in tests/artifacts/ (and one on failure, to see what the page showed).
"""

import base64
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load

from tests.integration.conftest import Digits, Service

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
# Headless, offline, and quiet: no sandbox (containers run as root), no GPU, no phoning home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TIMEOUT_MS = 30_000
TRAIN_TIMEOUT_MS = 300_000

# Build a DataTransfer holding real File objects, as a user's drag from the desktop does.
DATA_TRANSFER_JS = """(files) => {
  const transfer = new DataTransfer();
  for (const [name, type, b64] of files) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    transfer.items.add(new File([bytes], name, { type }));
  }
  return transfer;
}"""
CONFUSION_LOADED_JS = """() => {
  const img = document.querySelector("[data-testid=confusion]");
  return img && !img.hidden && img.complete && img.naturalWidth > 0;
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright (never `playwright install`: it downloads)."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(
                f"{CHROMIUM} is missing; CI must run: apt-get install chromium chromium-driver"
            )
        pytest.skip("apt-get install chromium chromium-driver")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, service: Service, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh page on the service; fails the test on any uncaught error or console error."""
    context = browser.new_context(
        base_url=str(service.client.base_url),
        viewport={"width": 1360, "height": 900},
        accept_downloads=True,
    )
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("console", lambda m: m.type == "error" and errors.append(f"console: {m.text}"))
    failed_before = request.session.testsfailed
    yield page
    if errors or request.session.testsfailed > failed_before:
        ARTIFACTS.mkdir(exist_ok=True)  # what the page showed when it went wrong
        page.screenshot(path=ARTIFACTS / "dashboard-failure.png", full_page=True)
    context.close()
    assert not errors, errors


def drop(page: Any, testid: str, files: list[tuple[str, str, bytes]]) -> None:
    """Drop `files` (name, MIME type, bytes) on the element: dragenter, dragover, drop."""
    encoded = [(name, kind, base64.b64encode(data).decode()) for name, kind, data in files]
    transfer = page.evaluate_handle(DATA_TRANSFER_JS, encoded)
    target = page.get_by_test_id(testid)
    for event in ("dragenter", "dragover", "drop"):
        target.dispatch_event(event, {"dataTransfer": transfer})
    transfer.dispose()


def upload_by_drop(page: Any, archive: Path) -> str:
    """Drop the archive on the datasets page; returns the new dataset's id from its row."""
    name = f"dashboard-{archive.name}"
    page.goto("/#/datasets")
    drop(page, "dataset-drop", [(name, "application/zip", archive.read_bytes())])
    row = page.get_by_test_id("dataset-row").filter(has_text=name.removesuffix(".zip"))
    row.wait_for()
    return str(row.get_attribute("data-id"))


def start_job(page: Any, dataset_id: str) -> str:
    """Fill the job form for a quick CPU run; returns the job id the page reports."""
    page.get_by_test_id("nav-jobs").click()
    page.get_by_test_id("job-dataset").select_option(dataset_id)
    page.get_by_test_id("job-backbone").select_option("resnet18")
    page.get_by_test_id("job-weights").select_option("none")  # random init: nothing to load
    page.get_by_test_id("job-epochs").fill("2")
    page.get_by_test_id("job-image-size").fill("32")
    page.get_by_test_id("job-augment").uncheck()
    page.get_by_test_id("job-submit").click()
    message = page.get_by_test_id("message")
    message.filter(has_text="job_").wait_for()
    found = re.search(r"job_\w+", message.inner_text())
    assert found, message.inner_text()
    return found.group(0)


def test_dashboard_end_to_end(page: Any, service: Service, digits10: Digits) -> None:
    dataset_id = upload_by_drop(page, digits10.archive)
    job_id = start_job(page, dataset_id)

    # The jobs table polls the API; wait for this job's row to say succeeded.
    row = page.locator(f"[data-testid=job-row][data-id={job_id}]")
    row.and_(page.locator("[data-status=succeeded]")).wait_for(timeout=TRAIN_TIMEOUT_MS)
    assert row.get_by_test_id("job-progress").get_attribute("data-fraction") == "1"
    row.click()

    # Curves come only from the SSE stream's epoch events: two epochs, train and val loss.
    job_page = page.get_by_test_id("job-page")
    page.get_by_test_id("job-status").filter(has_text="succeeded").wait_for()
    loss_points = page.locator("[data-testid=loss-chart] circle[data-epoch]")
    loss_points.nth(3).wait_for(state="attached")
    epochs = sorted(int(e) for e in loss_points.evaluate_all("ps => ps.map(p => p.dataset.epoch)"))
    assert epochs == [1, 1, 2, 2]
    assert page.locator("[data-testid=accuracy-chart] circle[data-epoch]").count() == 2
    assert page.get_by_test_id("event").filter(has_text="epoch 2/2").count() == 1
    page.wait_for_function(CONFUSION_LOADED_JS)

    # Checkpoint download: fetched with the key, saved through a Blob URL; a real weights file.
    checkpoints = job_page.get_by_test_id("checkpoint-download")
    assert checkpoints.count() == 2
    with page.expect_download() as info:
        checkpoints.last.click()
    download = info.value
    assert download.suggested_filename == f"{job_id}-epoch2.safetensors"
    weights = Path(download.path()).read_bytes()
    assert set(load(weights)) >= {"fc.weight", "conv1.weight"}
    header_len = int.from_bytes(weights[:8], "little")
    assert b'"backbone":"resnet18"' in weights[8 : 8 + header_len].replace(b" ", b"")

    # Predict: first through the file input, then by dropping three held-out digits.
    pngs = [png for png, _ in digits10.held_out[::25][:3]]
    page.get_by_test_id("predict-file").set_input_files(
        {"name": "chosen.png", "mimeType": "image/png", "buffer": pngs[0]}
    )
    predictions = page.get_by_test_id("prediction")
    predictions.filter(has_text="chosen.png").wait_for()
    drop(page, "predict-drop", [(f"digit-{i}.png", "image/png", p) for i, p in enumerate(pngs)])
    predictions.filter(has_text="digit-2.png").wait_for()
    assert predictions.count() == 3
    for card in predictions.all():
        labels = card.get_by_test_id("prediction-label").evaluate_all(
            "ls => ls.map(l => l.dataset.label)"
        )
        assert len(labels) == 5 and all(label.startswith("digit_") for label in labels), labels

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard.png", full_page=True)

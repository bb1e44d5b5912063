"""Client commands of `finetune`: use a running service over HTTP.

They read `FINETUNE_URL` (default http://127.0.0.1:8000) and `FINETUNE_API_KEY`, print the
resources as JSON (easy to pipe into jq), and `jobs watch` draws a live progress bar from the
job's event stream (SSE).
"""

import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

err = Console(stderr=True)
TERMINAL = {"succeeded", "failed", "cancelled"}


def client() -> httpx.Client:
    # httpx logs every request at INFO: noise on a terminal, in front of the command's output.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    headers = {}
    if key := os.environ.get("FINETUNE_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    url = os.environ.get("FINETUNE_URL", "http://127.0.0.1:8000")
    return httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(60, read=None))


def _ok(response: httpx.Response) -> Any:
    if response.is_error:
        try:
            problem = response.json()
            err.print(
                f"[red]{response.status_code} {problem.get('code')}[/red]: {problem.get('detail')}"
            )
            for item in problem.get("errors") or []:
                err.print(f"  {item}")
        except ValueError:
            err.print(f"[red]{response.status_code}[/red] {response.text[:500]}")
        raise typer.Exit(1)
    return (
        response.json()
        if response.headers.get("content-type", "").startswith("application/json")
        else response
    )


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _zip_folder(folder: Path) -> Path:
    """A folder of class folders, zipped into a temporary archive (stored as the service wants)."""
    fd, name = tempfile.mkstemp(suffix=".zip")
    os.close(fd)
    with zipfile.ZipFile(name, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return Path(name)


def register_client_commands(app: typer.Typer) -> None:
    datasets = typer.Typer(help="Datasets on the service.", no_args_is_help=True)
    jobs = typer.Typer(help="Fine-tuning jobs on the service.", no_args_is_help=True)
    models = typer.Typer(help="Trained models on the service.", no_args_is_help=True)
    app.add_typer(datasets, name="datasets")
    app.add_typer(jobs, name="jobs")
    app.add_typer(models, name="models")

    @datasets.command("upload")
    def datasets_upload(
        path: Annotated[
            Path, typer.Argument(exists=True, help="A folder (zipped for you) or an archive.")
        ],
        name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    ) -> None:
        """Upload a dataset: <class>/<image> folders, or train/ val/ test/ split folders."""
        archive = _zip_folder(path) if path.is_dir() else path
        try:
            with client() as http, archive.open("rb") as fh:
                data = {"name": name or path.name}
                _print(
                    _ok(http.post("/v1/datasets", files={"file": (archive.name, fh)}, data=data))
                )
        finally:
            if archive != path:
                archive.unlink()

    @datasets.command("list")
    def datasets_list() -> None:
        """Datasets, newest first."""
        with client() as http:
            _print(_ok(http.get("/v1/datasets"))["data"])

    @jobs.command("create")
    def jobs_create(
        dataset: Annotated[str, typer.Option(help="Dataset id.")],
        backbone: Annotated[str, typer.Option()] = "resnet18",
        weights: Annotated[
            str, typer.Option(help='DEFAULT, an enum name, "none" or a model id.')
        ] = "DEFAULT",
        strategy: Annotated[str, typer.Option(help="full | linear_probe | partial")] = "full",
        epochs: Annotated[int | None, typer.Option()] = None,
        image_size: Annotated[int | None, typer.Option()] = None,
        batch_size: Annotated[int | None, typer.Option()] = None,
        learning_rate: Annotated[float | None, typer.Option()] = None,
        spec: Annotated[str | None, typer.Option(help="More spec fields as JSON.")] = None,
    ) -> None:
        """Submit a job; prints it (status queued)."""
        body: dict[str, Any] = {"dataset_id": dataset, "backbone": backbone, "strategy": strategy}
        body["weights"] = (
            None
            if weights == "none"
            else {"model_id": weights}
            if weights.startswith("mdl_")
            else weights
        )
        extras = {
            "epochs": epochs,
            "image_size": image_size,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
        }
        body.update({k: v for k, v in extras.items() if v is not None})
        body.update(json.loads(spec) if spec else {})
        with client() as http:
            _print(_ok(http.post("/v1/jobs", json=body)))

    @jobs.command("list")
    def jobs_list(status: Annotated[str | None, typer.Option()] = None) -> None:
        """Jobs, newest first."""
        with client() as http:
            params = {"status": status} if status else {}
            for job in _ok(http.get("/v1/jobs", params=params))["data"]:
                acc = job["metrics"].get("best_val_accuracy")
                print(
                    f"{job['id']}  {job['status']:<9}  {job['spec']['backbone']:<20}  "
                    f"{job['progress']['fraction']:>6.1%}  best_val_accuracy={acc}"
                )

    @jobs.command("watch")
    def jobs_watch(job_id: str) -> None:
        """Follow a job live until it ends; exit 1 unless it succeeded."""
        with client() as http:
            job = _ok(http.get(f"/v1/jobs/{job_id}"))
            status = _watch(http, job_id, job["spec"]["epochs"])
        raise typer.Exit(0 if status == "succeeded" else 1)

    @models.command("download")
    def models_download(
        model_id: str,
        output: Annotated[Path, typer.Option("-o", "--output", help="File to write.")],
    ) -> None:
        """Download the weights file (safetensors)."""
        with client() as http, http.stream("GET", f"/v1/models/{model_id}/content") as response:
            if response.is_error:
                response.read()
                _ok(response)
            with output.open("wb") as fh:
                for chunk in response.iter_bytes():
                    fh.write(chunk)
        err.print(f"wrote {output} ({output.stat().st_size} bytes)")

    @models.command("list")
    def models_list() -> None:
        """Models, newest first."""
        with client() as http:
            _print(_ok(http.get("/v1/models"))["data"])

    @app.command()
    def predict(
        model_id: str,
        images: Annotated[list[Path], typer.Argument(exists=True)],
        top_k: Annotated[int, typer.Option()] = 5,
    ) -> None:
        """Classify images with a trained model."""
        with client() as http:
            files = [("files", (p.name, p.read_bytes())) for p in images]
            result = _ok(
                http.post(f"/v1/models/{model_id}/predict", files=files, params={"top_k": top_k})
            )
        for p in result["predictions"]:  # filename, then label and score of each of the top k
            ranked = "\t".join(f"{t['label']}\t{t['score']:.4f}" for t in p["top_k"])
            print(f"{p['filename']}\t{ranked}")


def _watch(http: httpx.Client, job_id: str, epochs: int) -> str:
    """Draw progress from the SSE stream; return the terminal status."""
    status = "queued"
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} epochs"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=err) as bar:
        task = bar.add_task(f"{job_id} queued", total=epochs)
        with http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}
        ) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                data = event["data"]
                if event["type"] == "epoch":
                    accuracy = data.get("val_accuracy")
                    suffix = f" val_accuracy {accuracy:.3f}" if accuracy is not None else ""
                    bar.update(
                        task,
                        completed=data["epoch"],
                        description=f"{job_id} epoch {data['epoch']}{suffix}",
                    )
                elif event["type"] == "status":
                    status = data.get("status", status)
                    bar.update(task, description=f"{job_id} {status}")
                elif event["type"] in {"error", "warning"}:
                    err.print(f"[yellow]{event['type']}[/yellow]: {event['message']}")
            # The server ends the stream at the job's end: a retried job's earlier `failed`
            # is not it.
    err.print(f"{job_id}: {status}")
    return status

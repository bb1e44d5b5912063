"""What torchvision offers this install: backbones, their weight enums and weight files.

torchvision is imported inside the functions, never at module load, so the API starts
without torch and pays for the import once, on first use.
"""

import contextlib
import hashlib
import os
import re
import tempfile
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlparse

# GoogLeNet and Inception v3 built without weights warn that their default initialisation
# will change; the size checks below build them on the meta device, where no value is ever
# initialised. The notice is for torchvision's users, not for every API process's log.
warnings.filterwarnings(
    "ignore", r"The default weight initialization of \w+ will be changed", FutureWarning
)


@dataclass(frozen=True)
class ResolvedWeights:
    name: str  # full enum name, e.g. "ResNet18_Weights.IMAGENET1K_V1"
    path: str  # where torch.hub keeps the file (honours TORCH_HOME)
    url: str

    @property
    def present(self) -> bool:
        return os.path.exists(self.path)


_ANSWERED_S = 300.0  # how long a URL that answered is taken to answer still
_answered: dict[str, float] = {}


def download_problem(url: str, timeout_s: float = 3.0) -> str | None:
    """Why `url` cannot be downloaded from here (no route, no such host, an HTTP error), or
    None when it answers: a HEAD request, so nothing is fetched. An answer is remembered
    for a few minutes: an API without the weights file asks once, not at every submit."""
    import http.client
    import time
    import urllib.error
    import urllib.request

    if _answered.get(url, 0.0) > time.monotonic():
        return None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s):
            _answered[url] = time.monotonic() + _ANSWERED_S
            return None
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{url} is out of reach ({reason})"


_HASH_PREFIX = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's: a file names its sha256's start


def download(
    resolved: ResolvedWeights, check: Callable[[], None] = lambda: None, timeout_s: float = 30.0
) -> None:
    """Fetch a weights file into torch.hub's cache (TORCH_HOME), as torchvision would: its
    name's sha256 prefix is checked, and it is written under another name, then renamed.

    `check` runs after every MiB and may raise to stop (a cancel, a shutdown): a file is up
    to 2.5 GB. A connection silent for `timeout_s` fails the download.
    """
    match = _HASH_PREFIX.search(os.path.basename(resolved.path))
    folder = os.path.dirname(resolved.path)
    os.makedirs(folder, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=folder, prefix=".download-", suffix=".partial")
    digest = hashlib.sha256()
    try:
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(resolved.url, timeout=timeout_s) as response,
        ):
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                check()
        if match and not digest.hexdigest().startswith(match.group(1)):
            raise RuntimeError(
                f"invalid hash value: {resolved.url} has sha256 {digest.hexdigest()}, "
                f"its name says {match.group(1)}…"
            )
        os.replace(partial, resolved.path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


@lru_cache(maxsize=1)
def backbone_names() -> frozenset[str]:
    """Every torchvision classification model name."""
    from torchvision import models

    return frozenset(models.list_models(module=models))


def _forward_problem(backbone: str, size: int, *, train: bool, batch: int = 2) -> str | None:
    """Why a forward pass of `batch` size² images fails, or None; on the meta device (no
    memory). Two by default: only a batch of one makes train-mode BatchNorm refuse a 1×1 map
    (one value per channel), which is the batch size's problem, not the image size's."""
    import torch
    from torchvision import models

    with torch.device("meta"):  # thread-local: other requests' tensors stay where they were
        model = models.get_model(backbone, weights=None, num_classes=2).train(train)
        try:
            model(torch.empty(batch, 3, size, size))
        except Exception as exc:  # a shape check: AssertionError, RuntimeError, ...
            return str(exc) or type(exc).__name__
    return None


@lru_cache(maxsize=256)
def _judged_on_meta(backbone: str) -> bool:
    """Whether the meta device can judge `backbone`: its eval forward runs there at 224 px.
    Some builders (RegNet) compute with tensors while building, and nothing can be learnt
    from those."""
    try:
        return _forward_problem(backbone, 224, train=False) is None
    except Exception:  # the builder itself needs real tensors
        return False


@lru_cache(maxsize=512)
def input_size_problem(backbone: str, image_size: int, batch: int = 2) -> str | None:
    """Why `backbone` cannot train on batches of `batch` image_size² inputs (ViTs take one
    size; small maps vanish in deep CNNs; Inception v3's auxiliary head, which runs only in
    training, needs 299 px; BatchNorm refuses one image on a 1×1 map), or None. Found by
    shapes alone, before a worker trains for nothing."""
    if not _judged_on_meta(backbone):
        return None
    return _forward_problem(backbone, image_size, train=True, batch=batch)


def _weights_enum(backbone: str) -> Any:
    from torchvision import models

    return models.get_model_weights(backbone)


def _resolve(member: Any) -> ResolvedWeights:
    import torch

    filename = os.path.basename(urlparse(member.url).path)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    return ResolvedWeights(name=f"{type(member).__name__}.{member.name}", path=path, url=member.url)


def _member(backbone: str, name: str) -> Any:
    enum = _weights_enum(backbone)
    prefix, _, member = name.rpartition(".")
    if prefix and prefix != enum.__name__:
        raise KeyError(name)
    return enum.DEFAULT if member == "DEFAULT" else enum[member]


def resolve_weights(backbone: str, name: str) -> ResolvedWeights:
    """`DEFAULT`, `IMAGENET1K_V1` or `ResNet18_Weights.IMAGENET1K_V1`; KeyError if unknown."""
    return _resolve(_member(backbone, name))


@lru_cache(maxsize=256)
def weights_problem(backbone: str, name: str) -> str | None:
    """Why these (known) weights cannot start the model this service trains, or None.

    Jobs train, and weights files load into, `get_model(backbone, weights=None)`. A ViT
    built with weights takes their image size instead (SWAG end-to-end weights: 384 px and
    up, its position embedding sized to match), so those tensors fit no 224 px ViT."""
    import torch
    from torchvision import models

    size = _member(backbone, name).meta.get("min_size")
    if not _judged_on_meta(backbone):  # its builder computes with real tensors: not a ViT
        return None
    with torch.device("meta"):
        own = getattr(models.get_model(backbone, weights=None), "image_size", None)
    if isinstance(own, int) and size and size[0] != own:
        return (
            f"{name} is for {size[0]}×{size[0]} px {backbone}s, and jobs train the {own} px "
            f"one; pick weights for {own} px (see GET /v1/backbones)"
        )
    return None


def weight_names(backbone: str) -> list[str]:
    """The enum member names of a backbone (`DEFAULT` is an alias of one of them)."""
    return [m.name for m in _weights_enum(backbone)]


def describe_backbones() -> list[dict[str, Any]]:
    """Backbones with their weights and whether each file is in the local cache."""
    out = []
    for name in sorted(backbone_names()):
        enum = _weights_enum(name)
        default = enum.DEFAULT.name
        weights = []
        for member in enum:
            resolved = _resolve(member)
            weights.append(
                {
                    "name": resolved.name,
                    "default": member.name == default,
                    "present": resolved.present,
                    "file": resolved.path,
                    "url": resolved.url,
                    "num_params": member.meta.get("num_params"),
                }
            )
        out.append({"name": name, "weights": weights})
    return out

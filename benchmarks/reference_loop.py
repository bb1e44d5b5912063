"""The textbook fine-tuning loop a user would otherwise write: the baseline of the benchmarks.

torchvision ImageFolder (PIL decode + resize every step), a DataLoader with worker
processes, SGD, batch 100, fp32, the model in the default memory format.
"""

import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, models, transforms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def loaders(root: Path, size: int, batch_size: int, workers: int) -> tuple[DataLoader, DataLoader]:
    tf = transforms.Compose(
        [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    train = datasets.ImageFolder(str(root / "train"), transform=tf)
    test = datasets.ImageFolder(str(root / "test"), transform=tf)
    kw = {"batch_size": batch_size, "num_workers": workers, "persistent_workers": workers > 0}
    return DataLoader(train, shuffle=True, **kw), DataLoader(test, **kw)


def train(
    root: Path,
    backbone: str,
    size: int,
    epochs: int,
    lr: float,
    batch_size: int = 100,
    workers: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Train; return images/s of the training epochs, the last one's loss, held-out accuracy.

    `workers`: DataLoader processes; by default one per core up to 8, as a user would set
    it (2 on the 2-core benchmark CPU, 8 on a GPU host).
    """
    if workers is None:
        workers = min(8, os.cpu_count() or 2)
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_loader, test_loader = loaders(root, size, batch_size, workers)
    model = models.get_model(backbone, weights=None, num_classes=len(train_loader.dataset.classes))
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        model.train()
        epoch_loss, epoch_seen = torch.zeros((), device=device), 0  # summed without a sync
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.detach() * len(y)
            epoch_seen += len(y)
            seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in test_loader:
            correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
            total += len(y)
    return {
        "images_per_second": seen / seconds,
        "train_seconds": seconds,
        "train_loss": (epoch_loss / epoch_seen).item(),
        "accuracy": correct / total,
    }

import pytest
import torch
import torch.nn.functional as F

from tests.support.images import digits
from worker.training.data import ImageSet, TrainData, stratified_split


def digit_set(size: int = 16, limit: int | None = None) -> ImageSet:
    """Real digits as the uint8 (N, 3, size, size) cache the worker would build."""
    images, labels = digits()
    x = torch.from_numpy(images[:limit]).float()[:, None].repeat(1, 3, 1, 1)
    x = F.interpolate(x, size=(size, size), mode="bilinear").round().clamp(0, 255).to(torch.uint8)
    return ImageSet(x, torch.from_numpy(labels[:limit]).long())


@pytest.fixture(scope="session")
def digits_data() -> TrainData:
    full = digit_set(16)
    train, val = stratified_split(full.labels, 0.2, seed=0)
    return TrainData(train=full.subset(train), val=full.subset(val))


@pytest.fixture(scope="session")
def small_data() -> TrainData:
    full = digit_set(16, limit=200)
    train, val = stratified_split(full.labels, 0.25, seed=0)
    return TrainData(train=full.subset(train), val=full.subset(val))

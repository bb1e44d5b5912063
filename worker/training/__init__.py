"""The training core: pure torch/torchvision, no Celery, SQL, HTTP or settings."""

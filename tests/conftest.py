"""Shared test set-up: one torch thread, and `cuda`-marked tests skipped where no CUDA GPU is visible (CI has
none; the GPU machine runs them)."""
import pytest
import torch

# The tests run tiny tensors: one thread is fastest, and with two threads on a loaded 2-core machine OpenMP's
# spinning made training steps up to 50× slower.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)

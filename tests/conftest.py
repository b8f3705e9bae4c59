"""Shared fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: a second thread costs more than it gives on the 2-core CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def count_flash(monkeypatch):
    """The calls that ran through the flash capture (one entry per call)."""
    from captum_hetattn.capture.backends.flash import FlashBackend

    calls = []
    original = FlashBackend._add_flash

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FlashBackend, "_add_flash", counted)
    return calls

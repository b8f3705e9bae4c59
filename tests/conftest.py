"""Shared fixtures."""

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on the 2-core CI machine: one thread each (the tiny models
    # gain nothing from a second), and the processes they start (notebook kernels, CLI runs,
    # distributed ranks) one thread each too, instead of four threads fighting for two cores
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

#: the files that take longest (``--durations``, 2 cores); under pytest-xdist they are handed out
#: first, so that no worker is left running one of them alone at the end
SLOW_FIRST = ("test_notebooks.py", "test_distributed.py", "test_readme.py", "test_bench.py",
              "test_wheel.py", "test_architectures.py", "test_demo_report.py", "test_docs.py",
              "test_model_types_subset.py", "test_flash.py", "test_evaluation_runner.py")


def pytest_collection_modifyitems(config, items):
    """Under xdist (every worker collects, in the same order): the slow files first, each file's
    tests in their order. A plain ``pytest`` run keeps the files' order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    rank = {name: index for index, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def flash_at_every_size(monkeypatch):
    """The tests' tiny models run through the flash capture where it can run, as models at
    scale do (by default a call with small maps is captured eagerly, which costs less there:
    capture.FLASH_MIN_ENTRIES); tests/test_capture_size.py checks that rule itself."""
    from captum_hetattn import capture

    monkeypatch.setattr(capture, "FLASH_MIN_ENTRIES", 0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: a second thread costs more than it gives on the 2-core CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bert():
    """A tiny BERT sequence classifier from a config, a padded batch of three and its mask:
    ``(model, forward(ids, mask) -> logits, ids, mask)``; ``[CLS]`` readout through the pooler."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=37, vocab_size=50, num_labels=3)
    model = tf.BertForSequenceClassification(config).eval()
    ids = torch.randint(5, 50, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    return model, (lambda i, m: model(input_ids=i, attention_mask=m).logits), ids, mask


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

"""The validation examples in quick mode: a torch model trained a few steps, converted, run in MLX.

torch is the oracle: MLX must predict the same class for every input and its logits must stay within 1e-4.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

# seconds per test (subprocesses, real models or many examples): `make test-fast` leaves this file out
pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module", autouse=True)
def examples_on_path():
    sys.path.insert(0, str(EXAMPLES))
    yield
    sys.path.remove(str(EXAMPLES))


@pytest.mark.parametrize("name", ["cnn_digits", "transformer_classifier", "resnet_cnn"])
def test_example_agrees_with_torch(name, capsys):
    metrics = importlib.import_module(name).main(["--quick", "--json"])
    assert metrics["agreement"] == 1.0
    assert metrics["max_logit_diff"] <= 1e-4
    assert metrics["rules"] == {"model": metrics["tensors"]}
    assert metrics["torch_accuracy"] > 0.5  # it trained: chance is 10%, 25% and 20%
    assert metrics["torch_forward_ms"] > 0 and metrics["mlx_forward_ms"] > 0
    assert '"agreement": 1.0' in capsys.readouterr().out

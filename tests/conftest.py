"""Test configuration: the mfm conformance plugin and pytest's ``pytester``."""

import warnings

import torch

pytest_plugins = ["mfm_framework.testing", "pytester"]


def pytest_configure(config) -> None:
    """Import torch's forward-mode AD machinery once, before any test runs.

    The first ``torch.func.jvp`` imports several hundred torch modules. If that first call happens
    inside an in-process ``pytester`` run, pytester drops those modules from ``sys.modules``
    afterwards and the next JVP re-imports them, which torch refuses ("Only a single
    TORCH_LIBRARY ..."). One tiny JVP through a linear layer here makes the suite independent of test order.
    """
    layer = torch.nn.Linear(2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own torch.jit.script notice
        torch.func.jvp(layer, (torch.zeros(1, 2),), (torch.ones(1, 2),))

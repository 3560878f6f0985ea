"""Test configuration: the mfm conformance plugin and pytest's ``pytester``."""

pytest_plugins = ["mfm_framework.testing", "pytester"]

# Enables mfm's pytest plugin: the conformance suites and the --mfm-components option.
pytest_plugins = ["mfm_framework.testing"]

"""Engines: generic loops over components (training, sampling, evaluation)."""

__all__: list[str] = []

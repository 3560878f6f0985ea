"""First-party diagonal targets: ``data`` (self-distillation) and ``teacher`` (GLASS)."""

from mfm_framework import hookimpl
from mfm_targets.targets import DataTarget, TeacherTarget

__all__ = ["DataTarget", "TeacherTarget", "mfm_diagonal_targets"]


@hookimpl
def mfm_diagonal_targets() -> list[type]:
    return [DataTarget, TeacherTarget]

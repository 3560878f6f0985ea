"""The kind table."""

import pytest

from mfm_framework.kinds import KINDS, UnknownKindError, kind_by_name


@pytest.mark.parametrize("name", ["value-estimators", "value_estimators", "value-estimator", "Value-Estimators"])
def test_kind_names_are_forgiving(name):
    assert kind_by_name(name).hook == "mfm_value_estimators"


def test_unknown_kind_suggests():
    with pytest.raises(UnknownKindError, match="did you mean 'interpolants'"):
        kind_by_name("interpolantss")


def test_every_kind_has_a_hookspec_and_an_interface():
    from mfm_framework.hooks import RegistrationSpecs
    from mfm_framework.interfaces import Component

    for kind in KINDS:
        assert hasattr(RegistrationSpecs, kind.hook)
        assert issubclass(kind.interface_class(), Component)

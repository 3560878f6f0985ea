"""The one cattrs converter of run specs, and the translation of its errors into problems.

Primitives are strict (``3.7`` is not an ``int``, ``"3"`` is not a number, ``1`` is not a
``bool``); unknown keys are rejected; every error is collected (``detailed_validation``) and turned
into a :class:`~mfm_framework.spec.problems.SpecProblem`-ready ``(path, message)`` pair.
"""

from __future__ import annotations

import difflib
import inspect
import re
import typing
from collections.abc import Iterator
from typing import Any, Literal

import attrs
import cattrs
from cattrs.cols import homogenous_tuple_structure_factory, list_structure_factory, mapping_structure_factory
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn

from mfm_framework.errors import UnknownComponentError
from mfm_framework.spec.problems import describe_value
from mfm_framework.spec.schema import ComponentSpec

if typing.TYPE_CHECKING:  # pragma: no cover
    from mfm_framework.plugins import Registry

__all__ = ["make_converter", "iter_problems", "type_name", "WrongType"]


class WrongType(TypeError):
    """A value of the wrong type: carries what was expected and what was found."""

    def __init__(self, expected: str, value: Any) -> None:
        self.expected = expected
        self.value = value
        super().__init__(f"expected {expected}, found {describe_value(value)}")


class _AtKey(Exception):
    """An error that belongs to a sub-key of the value being structured (e.g. ``kind``)."""

    def __init__(self, key: str, error: BaseException) -> None:
        self.key = key
        self.error = error
        super().__init__(str(error))


def type_name(tp: Any) -> str:
    """Readable name of a schema type: ``int``, ``float``, ``one of 'a', 'b'``, ``array of float``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return "array of " + type_name(args[0]) if args else "array"
    if origin in (dict, typing.Mapping):
        return "table"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if isinstance(tp, type) and issubclass(tp, ComponentSpec):
        return f"{tp.kind.a_title} table"
    if attrs.has(tp):
        return "a table"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, getattr(tp, "__name__", str(tp)))


class _Flattened(Exception):
    """An error of a table whose component table is flattened into it (see ``flatten_into``)."""

    def __init__(self, field: str, error: BaseException) -> None:
        self.field = field
        self.error = error
        super().__init__(str(error))


class _ValidatorErrors(Exception):
    """Every attrs validator of a table that rejected its value."""

    def __init__(self, errors: list[BaseException]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def _is_validator_error(exc: BaseException) -> bool:
    return isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, ForbiddenExtraKeysError)


def _run_validators(cls: type, value: dict[str, Any]) -> list[BaseException]:
    errors: list[BaseException] = []
    for field in attrs.fields(cls):
        if field.validator is None or field.name not in value or attrs.has(field.type):
            continue
        try:
            field.validator(None, field, value[field.name])
        except (ValueError, TypeError) as exc:
            errors.append(exc)
    return errors


def _strict_int(value: Any, _: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WrongType("integer", value)
    return value


def _strict_float(value: Any, _: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WrongType("number", value)
    return float(value)


def _strict_str(value: Any, _: Any) -> str:
    if not isinstance(value, str):
        raise WrongType("string", value)
    return value


def _strict_bool(value: Any, _: Any) -> bool:
    if not isinstance(value, bool):
        raise WrongType("boolean (true or false)", value)
    return value


def _is_literal(tp: Any) -> bool:
    return typing.get_origin(tp) is Literal


def _structure_literal(value: Any, tp: Any) -> Any:
    if value not in typing.get_args(tp) or isinstance(value, bool) != any(isinstance(a, bool) for a in typing.get_args(tp)):
        raise WrongType(type_name(tp), value)
    return value


def make_converter(registry: Registry) -> cattrs.Converter:
    """The spec converter; component tables are resolved against ``registry``."""
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook_func(_is_literal, _structure_literal)

    def guarded(check: type, expected: str, inner: Any) -> Any:
        def hook(value: Any, tp: Any) -> Any:
            if not isinstance(value, check):
                raise WrongType(expected, value)
            return inner(value, tp)

        return hook

    def is_list(tp: Any) -> bool:
        return typing.get_origin(tp) is list

    def is_var_tuple(tp: Any) -> bool:
        args = typing.get_args(tp)
        return typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis

    def is_mapping(tp: Any) -> bool:
        return typing.get_origin(tp) in (dict, typing.Mapping)

    conv.register_structure_hook_factory(is_list, lambda tp: guarded(list, type_name(tp), list_structure_factory(tp, conv)))
    conv.register_structure_hook_factory(
        is_var_tuple, lambda tp: guarded(list, type_name(tp), homogenous_tuple_structure_factory(tp, conv))
    )
    conv.register_structure_hook_factory(is_mapping, lambda tp: guarded(dict, "a table", mapping_structure_factory(tp, conv)))

    def is_table(tp: Any) -> bool:
        return attrs.has(tp) and not (inspect.isclass(tp) and issubclass(tp, ComponentSpec))

    def table_hook(tp: Any) -> Any:
        fn = make_dict_structure_fn(tp, conv, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True)

        def structure(value: dict[str, Any], cls: Any) -> Any:
            try:
                return fn(value, cls)
            except ClassValidationError as exc:
                with_notes, without = exc.group_exceptions()
                if with_notes or not all(_is_validator_error(e) for e in without):
                    raise
                # The constructor raised: attrs stops at the first failing validator, so run each
                # one to report them all.
                raise _ValidatorErrors(_run_validators(cls, value) or list(without)) from None

        return guarded(dict, "a table", structure)

    conv.register_structure_hook_factory(is_table, table_hook)

    # A table with a class attribute ``flatten_into = "<field>"`` holds that component field's
    # ``kind`` and options at its own level, next to its other fields (e.g. a reward and its
    # weight): the keys that are not its own fields form the component table.
    def is_flat(tp: Any) -> bool:
        return is_table(tp) and isinstance(getattr(tp, "flatten_into", None), str)

    def flat_hook(tp: Any) -> Any:
        inner = tp.flatten_into
        own = {f.name for f in attrs.fields(tp)} - {inner}
        structure_table = table_hook(tp)

        def structure(value: Any, cls: Any) -> Any:
            if not isinstance(value, dict):
                raise WrongType("a table", value)
            split = {k: v for k, v in value.items() if k in own}
            split[inner] = {k: v for k, v in value.items() if k not in own}
            try:
                return structure_table(split, cls)
            except Exception as exc:
                raise _Flattened(inner, exc) from None

        return structure

    conv.register_structure_hook_factory(is_flat, flat_hook)

    def is_component(tp: Any) -> bool:
        return inspect.isclass(tp) and issubclass(tp, ComponentSpec)

    def component_hook(spec_cls: type[ComponentSpec]) -> Any:
        kind = spec_cls.kind

        def hook(value: Any, _: Any) -> ComponentSpec:
            if isinstance(value, str):  # shorthand: `interpolant = "linear"`
                value = {"kind": value}
            if not isinstance(value, dict):
                raise WrongType(f"{kind.a_title} table with a 'kind' key", value)
            if "kind" not in value:
                raise _AtKey("kind", UnknownComponentError(
                    f"missing: which {kind.title}? " + registry.unknown_message(kind, "").split("; ", 1)[-1]
                ))
            name = value["kind"]
            if not isinstance(name, str):
                raise _AtKey("kind", WrongType(f"{kind.a_title} name (string)", name))
            try:
                entry = registry.get(kind, name)
            except UnknownComponentError as exc:
                raise _AtKey("kind", exc) from None
            options = conv.structure({k: v for k, v in value.items() if k != "kind"}, entry.cls.Options)
            return spec_cls(name=name, options=options, component=entry.cls)

        return hook

    conv.register_structure_hook_factory(is_component, component_hook)

    def unstructure_component(spec: ComponentSpec) -> dict[str, Any]:
        return {"kind": spec.name, **conv.unstructure(spec.options)}

    conv.register_unstructure_hook_func(is_component, unstructure_component)

    def unstructure_flat(value: Any) -> dict[str, Any]:
        inner = type(value).flatten_into
        fields = {f.name: conv.unstructure(getattr(value, f.name)) for f in attrs.fields(type(value)) if f.name != inner}
        return {**conv.unstructure(getattr(value, inner)), **fields}

    conv.register_unstructure_hook_func(lambda tp: is_flat(tp), unstructure_flat)
    return conv


_ATTR_MESSAGE = re.compile(r"^'(\w+)' (.*)$", re.S)


def iter_problems(exc: BaseException, path: str = "$", tp: Any = None) -> Iterator[tuple[str, str]]:
    """Walk a cattrs error tree; yield ``(key path, message)`` for every leaf problem."""
    if isinstance(exc, ClassValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            yield from iter_problems(sub, f"{path}.{note.name}", note.type)
        for sub in without:
            yield from iter_problems(sub, path)
    elif isinstance(exc, IterableValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            yield from iter_problems(sub, f"{path}[{note.index}]", note.type)
        for sub in without:
            yield from iter_problems(sub, path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        fields = [f.name for f in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        what = "section" if path == "$" else "key"
        for key in sorted(exc.extra_fields):
            msg = f"unknown {what} {key!r}"
            close = difflib.get_close_matches(key, fields, n=3, cutoff=0.5)
            if close:
                msg += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
            msg += f" (valid: {', '.join(fields)})" if fields else " (this table takes no keys)"
            yield f"{path}.{key}", msg
    elif isinstance(exc, _ValidatorErrors):
        for sub in exc.errors:
            yield from iter_problems(sub, path)
    elif isinstance(exc, _Flattened):  # the component's keys live at this table's level
        inner = f"{path}.{exc.field}"
        for sub_path, message in iter_problems(exc.error, path, tp):
            if sub_path == inner or sub_path.startswith((inner + ".", inner + "[")):
                sub_path = path + sub_path[len(inner):]
            yield sub_path, message
    elif isinstance(exc, _AtKey):
        yield from iter_problems(exc.error, f"{path}.{exc.key}")
    elif isinstance(exc, (WrongType, UnknownComponentError)):
        yield path, str(exc)
    elif isinstance(exc, KeyError):
        yield path, "required key missing" + (f" (expected {type_name(tp)})" if tp is not None else "")
    elif isinstance(exc, (ValueError, TypeError)):
        match = _ATTR_MESSAGE.match(str(exc))
        if match:  # an attrs validator: "'particles' must be > 0: -1"
            yield f"{path}.{match.group(1)}", match.group(2)
        else:
            yield path, str(exc)
    else:
        yield path, f"{type(exc).__name__}: {exc}"

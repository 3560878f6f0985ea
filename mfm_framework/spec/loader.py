"""Reading, overriding, validating and writing run specs."""

from __future__ import annotations

import copy
import difflib
import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any

import attrs
import tomli_w

from mfm_framework.errors import UnknownComponentError
from mfm_framework.spec.converter import iter_problems, make_converter, type_name
from mfm_framework.spec.problems import SpecError, SpecProblem
from mfm_framework.spec.schema import ComponentSpec, RunSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if typing.TYPE_CHECKING:  # pragma: no cover
    from mfm_framework.plugins import Registry

__all__ = ["LoadedSpec", "load_spec", "parse_spec", "dump_spec", "read_toml"]


@attrs.frozen(kw_only=True)
class LoadedSpec:
    """A validated spec and where it came from.

    Attributes:
        spec: the structured :class:`RunSpec`.
        source: the file it was read from.
        resolved: the raw, fully explicit form (what ``resolved.toml`` holds).
    """

    spec: RunSpec
    source: str
    resolved: dict[str, Any]


_TOML_LOCATION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file.

    Raises:
        SpecError: the file is missing, unreadable, not UTF-8 or not valid TOML (with line:column).
    """
    source = str(path)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([SpecProblem(source=source, path="", message="no such file")]) from None
    except IsADirectoryError:
        raise SpecError([SpecProblem(source=source, path="", message="is a directory, not a TOML file")]) from None
    except UnicodeDecodeError as exc:
        raise SpecError([SpecProblem(source=source, path="", message=f"not UTF-8 text ({exc.reason})")]) from None
    except OSError as exc:
        raise SpecError([SpecProblem(source=source, path="", message=f"cannot read: {exc.strerror}")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc.args[0]) if exc.args else str(exc)
        location = ""
        match = _TOML_LOCATION.search(message)
        if match:
            location = f"{match.group(1)}:{match.group(2)}"
            message = message[: match.start()]
        raise SpecError(
            [SpecProblem(source=source, path="", location=location, message=f"TOML syntax error: {message}")]
        ) from None


# ----------------------------------------------------------------------------- schema walking
def _unwrap_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return args[0]
    return tp


def _is_component(tp: Any) -> bool:
    return inspect.isclass(tp) and issubclass(tp, ComponentSpec)


def _resolve_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fill_defaults(cls: type, raw: dict[str, Any]) -> None:
    """Insert the ``fill`` defaults of omitted sections and component tables, recursively."""
    hints = _resolve_types(cls)
    for field in attrs.fields(cls):
        if field.name not in raw and "fill" in field.metadata:
            raw[field.name] = copy.deepcopy(field.metadata["fill"])
        tp = _unwrap_optional(hints[field.name])
        value = raw.get(field.name)
        if isinstance(value, dict) and attrs.has(tp) and not _is_component(tp):
            _fill_defaults(tp, value)
        elif isinstance(value, list) and typing.get_origin(tp) in (list, tuple):  # arrays of tables
            item = typing.get_args(tp)[0]
            if attrs.has(item) and not _is_component(item):
                for entry in value:
                    if isinstance(entry, dict):
                        _fill_defaults(item, entry)


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_strip_none(v) for v in value]
    return value


# ----------------------------------------------------------------------------- overrides
@attrs.frozen
class _Override:
    arg: str
    keys: tuple[str, ...]
    text: str

    @property
    def path(self) -> str:
        return "$." + ".".join(self.keys)


def _parse_override(arg: str) -> _Override:
    key, sep, text = arg.partition("=")
    keys = tuple(k.strip() for k in key.strip().split("."))
    if not sep or not key.strip() or any(not k for k in keys):
        raise ValueError("expected KEY.PATH=VALUE, e.g. --set run.seed=3")
    return _Override(arg=arg, keys=keys, text=text.strip())


def _type_at(keys: tuple[str, ...], raw: dict[str, Any], registry: Registry) -> Any:
    """The schema type at a key path; the kind of a component table is read from ``raw``."""
    tp: Any = RunSpec
    node: Any = raw
    for depth, key in enumerate(keys):
        where = "$." + ".".join(keys[:depth]) if depth else "the spec"
        tp = _unwrap_optional(tp)
        if _is_component(tp):
            if key == "kind":
                tp = str
            else:
                name = node.get("kind") if isinstance(node, dict) else node
                if not isinstance(name, str):
                    raise ValueError(f"{where} has no 'kind' to take options from; set {where[2:]}.kind first")
                tp = registry.get(tp.kind, name).cls.Options
                tp = _field_type(tp, key, where)
        elif attrs.has(tp):
            tp = _field_type(tp, key, where)
        else:
            raise ValueError(f"{where} is {type_name(tp)}, it has no key {key!r}")
        node = node.get(key) if isinstance(node, dict) else None
    return tp


def _field_type(cls: type, key: str, where: str) -> Any:
    hints = _resolve_types(cls)
    names = [f.name for f in attrs.fields(cls)]
    if key not in names:
        close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
        hint = ("; did you mean " + " or ".join(repr(c) for c in close) + "?") if close else ""
        valid = f" (valid: {', '.join(names)})" if names else " (it takes no keys)"
        raise ValueError(f"unknown key {key!r} in {where}{hint}{valid}")
    return hints[key]


def _parse_value(text: str, tp: Any) -> Any:
    """Parse an override's text as a TOML value, or keep it as a string where a string is expected."""
    tp = _unwrap_optional(tp)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = None
        parsed = False
    else:
        parsed = True
    wants_string = tp is str or _is_component(tp) or (
        typing.get_origin(tp) is typing.Literal and all(isinstance(a, str) for a in typing.get_args(tp))
    )
    if wants_string and not (parsed and isinstance(value, str)):
        return text
    if not parsed:
        raise ValueError(f"cannot parse {text!r} as {type_name(tp)} (values are TOML: 3, 0.5, true, \"text\", [1, 2])")
    return value


def _apply_override(raw: dict[str, Any], override: _Override, value: Any) -> None:
    node = raw
    for key in override.keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {"kind": child} if isinstance(child, str) else {}
            node[key] = child
        node = child
    node[override.keys[-1]] = value


# ----------------------------------------------------------------------------- validation
def parse_spec(
    raw: dict[str, Any],
    *,
    source: str,
    registry: Registry,
    overrides: typing.Sequence[str] = (),
    default_name: str | None = None,
) -> LoadedSpec:
    """Validate a raw spec (as read from TOML) with ``--set`` overrides applied.

    Raises:
        SpecError: listing every problem, each with its source and key path.
    """
    registry.check()
    raw = copy.deepcopy(raw)
    problems: list[SpecProblem] = []
    applied: list[_Override] = []
    _fill_defaults(RunSpec, raw)
    for arg in overrides:
        try:
            override = _parse_override(arg)
            value = _parse_value(override.text, _type_at(override.keys, raw, registry))
        except (ValueError, UnknownComponentError) as exc:
            problems.append(SpecProblem(source=f"--set {arg}", path="", message=str(exc)))
            continue
        _apply_override(raw, override, value)
        applied.append(override)
    _fill_defaults(RunSpec, raw)  # an override may have created a section
    if default_name is not None and isinstance(raw.get("run"), dict):
        raw["run"].setdefault("name", default_name)
    if problems:  # overrides that do not fit the schema: report before validating their effect
        raise SpecError(problems)

    converter = make_converter(registry)
    try:
        spec = converter.structure(raw, RunSpec)
    except Exception as exc:  # cattrs error group: translate every leaf
        for path, message in iter_problems(exc):
            origin = next(
                (o for o in reversed(applied) if path == o.path or path.startswith(o.path + ".")), None
            )
            problems.append(SpecProblem(source=f"--set {origin.arg}" if origin else source, path=path, message=message))
        raise SpecError(problems) from None
    problems = [SpecProblem(source=source, path=path, message=message) for path, message in _cross_checks(spec)]
    if problems:
        raise SpecError(problems)
    resolved = _strip_none(converter.unstructure(spec))
    return LoadedSpec(spec=spec, source=source, resolved=resolved)


def _cross_checks(spec: RunSpec) -> list[tuple[str, str]]:
    """Problems that involve more than one section."""
    problems = []
    for section in ("train", "evaluate", "steer", "finetune"):
        if getattr(spec, section) is not None and spec.data is None:
            problems.append(("$.data", f"required by [{section}]: which data source? (`mfm ls data-sources`)"))
            break
    if spec.evaluate is not None and spec.train is None and spec.evaluate.model is None:
        problems.append(("$.evaluate.model", "which model? give the path of a model.pt, or add a [train] section"))
    if spec.evaluate is not None:
        names = [m.name for m in spec.evaluate.metrics]
        if spec.evaluate.headline not in names:
            problems.append(("$.evaluate.headline", f"{spec.evaluate.headline!r} is not one of the metrics ({', '.join(names) or 'none'})"))
    if spec.steer is not None:
        problems += _steer_checks(spec)
    if spec.finetune is not None:
        problems += _finetune_checks(spec)
    return problems


def _model_and_headline_checks(spec: RunSpec, section: Any, name: str) -> list[tuple[str, str]]:
    """Problems shared by the stages that use a trained model and report a headline metric:
    no model to use (neither ``model`` nor a ``[train]`` section), a headline that is not a metric."""
    problems: list[tuple[str, str]] = []
    if spec.train is None and section.model is None:
        problems.append((f"$.{name}.model", "which model? give the path of a model.pt, or add a [train] section"))
    names = [m.name for m in section.metrics]
    if section.headline not in names:
        problems.append((f"$.{name}.headline", f"{section.headline!r} is not one of the metrics ({', '.join(names) or 'none'})"))
    return problems


def _finetune_checks(spec: RunSpec) -> list[tuple[str, str]]:
    """Problems of ``[finetune]``: its model, headline, objectives, times, and a reward that
    ``"mfm-ft"`` must differentiate."""
    ft = spec.finetune
    assert ft is not None
    problems = _model_and_headline_checks(spec, ft, "finetune")
    repeated = sorted({o for o in ft.objectives if ft.objectives.count(o) > 1})
    if repeated:
        problems.append(("$.finetune.objectives", f"{', '.join(map(repr, repeated))} listed more than once"))
    if "mfm-ft" in ft.objectives:
        if ft.t_min == 0 and ft.g_max is None:
            problems.append(("$.finetune.t_min", "g_t is infinite at t = 0: train from a small t_min > 0 or clamp g_t with g_max"))
        if ft.covariance_until > 0 and ft.draws < 2:
            problems.append(("$.finetune.draws", "covariance_until > 0 estimates G from the spread of the draws: it needs draws >= 2"))
        for i, term in enumerate(ft.rewards):
            if ft.covariance_until < 1 and not getattr(term.reward.component, "is_differentiable", True):
                problems.append((
                    f"$.finetune.rewards[{i}].kind",
                    f"reward {term.reward.name!r} is not differentiable, and objective 'mfm-ft' back-propagates "
                    "through it (G = grad_x exp r); use objective 'reward-weighted' or a differentiable reward",
                ))
    if ft.t_distribution != "power" and ft.t_gamma != 1.0:
        problems.append(("$.finetune.t_gamma", "t_gamma is only used with t_distribution = 'power'"))
    return problems


def _steer_checks(spec: RunSpec) -> list[tuple[str, str]]:
    """Problems of ``[steer]``: its model, labels, headlines, and estimators that need a
    differentiable reward."""
    from mfm_framework.steering import check_compatible

    steer = spec.steer
    assert steer is not None
    problems = _model_and_headline_checks(spec, steer, "steer")
    labels = steer_method_labels(steer)
    for i, (method, label) in enumerate(zip(steer.methods, labels)):
        if method.label is not None and labels.count(label) > 1:
            problems.append((f"$.steer.methods[{i}].label", f"{label!r} labels more than one method"))
    if steer.headline_method is not None and steer.headline_method not in labels:
        problems.append(("$.steer.headline_method", f"{steer.headline_method!r} is not the label of a method ({', '.join(labels)})"))
    # A reward is differentiable when every term is (a weighted sum is).
    blocking = next((t for t in steer.rewards if not getattr(t.reward.component, "is_differentiable", True)), None)
    estimators = [  # the estimators whose gradients steer (SMC calls only the value)
        (f"$.steer.methods[{i}].estimator", m.estimator) for i, m in enumerate(steer.methods)
        if m.estimator is not None and m.baseline is None
    ]
    if steer.diagnostics is not None:
        estimators.append(("$.steer.diagnostics.reference", steer.diagnostics.reference))
        estimators += [(f"$.steer.diagnostics.estimators[{i}]", e) for i, e in enumerate(steer.diagnostics.estimators or ())]
    for path, estimator in estimators:
        if blocking is not None:
            try:
                check_compatible(estimator.component, blocking.reward.component)
            except ValueError as exc:
                problems.append((path + ".kind", str(exc)))
    for i, method in enumerate(steer.methods):
        problems += _method_checks(method, f"$.steer.methods[{i}]")
    return problems


def _method_checks(method: Any, path: str) -> list[tuple[str, str]]:
    """Problems of one ``[[steer.methods]]`` table: the keys its kind of method needs and takes."""
    problems: list[tuple[str, str]] = []
    kind = method.baseline
    what = f"baseline {kind!r}" if kind is not None else "an estimator method (no 'baseline')"
    needs_estimator = kind in (None, "smc")
    if needs_estimator and method.estimator is None:
        problems.append((f"{path}.estimator", f"required by {what}: which value estimator? (`mfm ls value-estimators`)"))
    if not needs_estimator and method.estimator is not None:
        problems.append((f"{path}.estimator", f"{what} uses no value estimator"))
    if kind in ("best-of-n", "sir", "mfm-search") and method.draws is None:
        problems.append((f"{path}.draws", f"required by {what}: how many draws? e.g. draws = [4, 16, 64]"))
    if kind in (None, "smc") and method.draws is not None:
        problems.append((f"{path}.draws", f"{what} takes no draws"))
    if kind == "smc" and method.particles is None:
        problems.append((f"{path}.particles", "required by baseline 'smc': particles per output sample, e.g. particles = [16]"))
    if kind in ("best-of-n", "sir") and method.particles is not None:
        problems.append((f"{path}.particles", f"{what} takes no particles (its candidates are 'draws')"))
    if kind is None and method.estimator is not None and method.particles is not None and not _has_field(method.estimator.options, "particles"):
        problems.append((f"{path}.particles", f"value estimator {method.estimator.name!r} has no 'particles' option to vary"))
    if method.sde and kind is not None:
        problems.append((f"{path}.sde", f"{what} does not integrate the steered dynamics (smc always moves on the base SDE)"))
    stochastic = getattr(method.integrator.component, "stochastic", False)
    if (method.sde or kind == "smc") and not stochastic:
        problems.append((f"{path}.integrator.kind", f"integrator {method.integrator.name!r} is deterministic and cannot integrate an SDE ({'smc' if kind else 'sde = true'}); choose a stochastic one (`mfm ls integrators`)"))
    if kind in (None, "smc") and method.t_min == 0 and (method.g_max is None or kind == "smc"):
        problems.append((f"{path}.t_min", "g_t is infinite at t = 0: start at a small t_min > 0" + (" or clamp g_t with g_max" if kind is None else "")))
    return problems


def _has_field(options: Any, name: str) -> bool:
    return attrs.has(type(options)) and any(f.name == name for f in attrs.fields(type(options)))


def steer_method_labels(steer: Any) -> list[str]:
    """The label of each ``[[steer.methods]]`` table: its ``label``, else its baseline's or its
    estimator's name (suffixed ``-2``, ``-3``... when the same name labels several methods)."""
    given = {m.label for m in steer.methods if m.label is not None}
    labels: list[str] = []
    seen: dict[str, int] = {}
    for method in steer.methods:
        if method.label is not None:
            labels.append(method.label)
            continue
        base = method.baseline or (method.estimator.name if method.estimator is not None else "method")
        seen[base] = seen.get(base, 0) + 1
        label = base if seen[base] == 1 else f"{base}-{seen[base]}"
        while label in given:
            seen[base] += 1
            label = f"{base}-{seen[base]}"
        labels.append(label)
    return labels


def _default_name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-.")
    return name or "run"


def load_spec(path: str | Path, *, registry: Registry, overrides: typing.Sequence[str] = ()) -> LoadedSpec:
    """Read and validate a TOML run spec; ``run.name`` defaults to the file's stem."""
    raw = read_toml(path)
    return parse_spec(raw, source=str(path), registry=registry, overrides=overrides, default_name=_default_name(Path(path)))


def dump_spec(resolved: dict[str, Any]) -> str:
    """The TOML text of a resolved spec (``kind`` first in every component table)."""
    return tomli_w.dumps(resolved)

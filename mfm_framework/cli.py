"""The ``mfm`` command line.

Exit codes: 0 success, 1 failure during a run, 2 bad input (spec, arguments, missing files).
A user error is one readable message; ``--debug`` adds the traceback. Heavy modules (torch and
the plugins) are imported only by the commands that need them, so ``mfm --help`` is fast.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import traceback
from typing import Any

from mfm_framework._version import __version__

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a spec value (TOML syntax, typed by the schema), e.g. --set run.seed=3; repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    parser = argparse.ArgumentParser(
        prog="mfm",
        description="Meta Flow Maps: train, sample, steer, fine-tune and evaluate from TOML run specs.",
        parents=[common],
        epilog="Exit codes: 0 ok, 1 failure during a run, 2 bad input. Docs: README.md.",
    )
    parser.add_argument("--version", action="store_true", help="print the versions of mfm and its plugins")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="validate a spec and execute it in a new run directory")
    run.add_argument("spec", metavar="SPEC", help="a TOML run spec")
    _add_set(run)
    run.add_argument("--out", metavar="DIR", help="run directory (default: <run.out_dir>/<run.name>)")
    run.add_argument("--resume", action="store_true", help="continue the run in its directory from its last checkpoint")
    run.set_defaults(func=_cmd_run)

    validate = sub.add_parser("validate", parents=[common], help="check specs and report every problem")
    validate.add_argument("specs", metavar="SPEC", nargs="+", help="TOML run specs")
    _add_set(validate)
    validate.add_argument("--print", action="store_true", help="print the resolved spec of each valid file")
    validate.set_defaults(func=_cmd_validate)

    plugins = sub.add_parser("plugins", parents=[common], help="list plugins, their components and load errors")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=_cmd_plugins)

    ls = sub.add_parser("ls", parents=[common], help="list components: mfm ls [KIND] [PATTERN]")
    ls.add_argument("kind", nargs="?", metavar="KIND", help="e.g. interpolants, integrators, rewards")
    ls.add_argument("pattern", nargs="?", metavar="PATTERN", help="glob or substring of component names")
    ls.add_argument("-v", "--verbose", action="store_true", help="also show each component's options")
    ls.set_defaults(func=_cmd_ls)
    return parser


# ----------------------------------------------------------------------------- commands
def _cmd_run(args: argparse.Namespace) -> int:
    from mfm_framework.plugins import default_plugin_system
    from mfm_framework.run import execute_run, format_summary, prepare_run
    from mfm_framework.spec import load_spec

    system = default_plugin_system()
    loaded = load_spec(args.spec, registry=system.registry, overrides=args.overrides)
    ctx = prepare_run(loaded, plugins=system, run_dir=args.out, resume=args.resume)
    print(f"mfm: run {loaded.spec.run.name} -> {ctx.run_dir}", file=sys.stderr)
    summary = execute_run(ctx)
    print(format_summary(summary, ctx.tables))
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from mfm_framework.plugins import default_plugin_system
    from mfm_framework.spec import SpecError, dump_spec, load_spec

    registry = default_plugin_system().registry
    failed = 0
    for path in args.specs:
        try:
            loaded = load_spec(path, registry=registry, overrides=args.overrides)
        except SpecError as exc:
            failed += 1
            print(f"{path}: {exc}", file=sys.stderr)
            continue
        print(f"{path}: ok")
        if args.print:
            print(dump_spec(loaded.resolved))
    if failed:
        print(f"mfm: {failed} of {len(args.specs)} specs are invalid", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _cmd_plugins(args: argparse.Namespace) -> int:
    from mfm_framework.plugins import default_plugin_system

    system = default_plugin_system()
    data = system.to_json()
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    plugins = data["plugins"]
    n_comp = sum(len(v) for p in plugins for v in p["components"].values())
    print(f"mfm-framework {__version__}: {len(plugins)} plugins, {n_comp} components")
    for p in plugins:
        version = f" {p['version']}" if p["version"] else ""
        status = p["status"] if not p["errors"] or p["status"] != "loaded" else "loaded with errors"
        print(f"\n{p['name']}  ({p['distribution']}{version}, {p['module']})  {status}")
        for kind, names in p["components"].items():
            print(f"  {kind}: {', '.join(names)}")
        for error in p["errors"]:
            print(f"  error: {error}")
    for conflict in data["conflicts"]:
        print(f"\nconflict: {conflict}")
    return EXIT_OK


def _cmd_ls(args: argparse.Namespace) -> int:
    from mfm_framework.errors import MfmUserError
    from mfm_framework.kinds import KINDS, UnknownKindError, kind_by_name
    from mfm_framework.plugins import default_plugin_system

    try:
        kinds = [kind_by_name(args.kind)] if args.kind else list(KINDS)
    except UnknownKindError as exc:
        raise MfmUserError(str(exc)) from None
    registry = default_plugin_system().registry
    rows: list[tuple[str, str, str, str]] = []
    entries = []
    for kind in kinds:
        for name, entry in registry.components(kind).items():
            if args.pattern and not _name_matches(name, args.pattern):
                continue
            entries.append(entry)
            rows.append((kind.name, name, entry.plugin.name, entry.cls.summary()))
    if not rows:
        what = ", ".join(k.plural for k in kinds) if args.kind else "components"
        print(f"no {what}" + (f" matching {args.pattern!r}" if args.pattern else ""))
        return EXIT_OK
    _print_table(("KIND", "NAME", "PLUGIN", "SUMMARY"), rows)
    if args.verbose:
        from mfm_framework.interfaces import describe_options

        for entry in entries:
            options = describe_options(entry.cls.Options)
            print(f"\n{entry.kind.name} {entry.name!r} options:" + ("" if options else " none"))
            if options:
                _print_table(("OPTION", "TYPE", "DEFAULT"), options, indent="  ")
    return EXIT_OK


def _name_matches(name: str, pattern: str) -> bool:
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def _print_table(header: tuple[str, ...], rows: list[Any], indent: str = "") -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(indent + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def _print_version() -> None:
    from importlib.metadata import entry_points

    print(f"mfm-framework {__version__}")
    seen = set()
    for ep in entry_points(group="mfm"):
        if (ep.name, ep.value) in seen:
            continue
        seen.add((ep.name, ep.value))
        dist = getattr(ep, "dist", None)
        origin = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
        print(f"  plugin {ep.name}: {origin}")


# ----------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        _print_version()
        return EXIT_OK
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    debug = getattr(args, "debug", False)
    from mfm_framework.errors import MfmUserError

    try:
        return args.func(args)
    except MfmUserError as exc:
        if debug:
            traceback.print_exc()
        print(f"mfm: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mfm: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"mfm: {args.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if not debug:
            print("mfm: run again with --debug for the traceback", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

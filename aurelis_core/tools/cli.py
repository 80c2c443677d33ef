"""The ``aurelis`` command.

Subcommands are added by ``add_*_commands(subparsers)`` functions listed in :data:`COMMAND_GROUPS`; each
registers its parsers and sets ``func`` (``args -> exit code``) on them. A module that brings commands of its
own (``aurelis cache ...``) writes such a function and is listed there.

Exit codes: 0 success, 1 invalid input (config, workload, report file), 2 bad usage (argparse's own).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aurelis_core.config import ConfigError, load_config

from .cli_cache import add_cache_commands, find_config

__all__ = ["COMMAND_GROUPS", "main"]

Subparsers = Any  # argparse._SubParsersAction is private; its add_parser is all we use


# --- plugins ---------------------------------------------------------------------------------------------------


def _hooks_of(cls: type) -> list[str]:
    # pluggy's HookimplMarker("aurelis") tags each implementation with an ``aurelis_impl`` attribute.
    return sorted(name for name in dir(cls) if hasattr(getattr(cls, name, None), "aurelis_impl"))


def _description(name: str, cls: type) -> str:
    """One line on what a plugin does: its ``description`` attribute, else the first line of its module's
    docstring when that is about this plugin (``"``name``: ..."``), else the first sentence of its class's."""
    import inspect

    text = getattr(cls, "description", None)
    if not isinstance(text, str):
        module = (inspect.getdoc(sys.modules.get(cls.__module__)) or "").strip()
        first = module.splitlines()[0] if module else ""
        if first.startswith(f"``{name}``: "):
            text = first.removeprefix(f"``{name}``: ")
        else:
            doc = inspect.getdoc(cls) or ""
            text = doc.split("\n\n")[0].replace("\n", " ").split(". ")[0]
            text = text.removeprefix(f"The ``{name}`` plugin").lstrip(":. ")
    return text.replace("``", "").rstrip(".")


def cmd_plugins(args: argparse.Namespace) -> int:
    from aurelis_core.plugin import blocked_plugins, discover_plugins

    blocked = blocked_plugins()
    rows = []
    for name, spec in sorted(discover_plugins().items()):
        try:
            cls = spec.load()
        except ConfigError as exc:  # an optional extra is not installed: say so, keep listing
            rows.append((name, spec.origin, f"(cannot load: {exc})"))
            continue
        hooks = _hooks_of(cls)
        if not hooks:
            continue  # an entry with no stage (lz4: a codec at rest) only exists to explain a mistake
        about = ", ".join(h.removeprefix("aurelis_") for h in hooks) if args.hooks else _description(name, cls)
        if name in blocked:
            about += " (disabled by AURELIS_DISABLE_PLUGINS)"
        rows.append((name, spec.origin, about))
    width = max((len(n) for n, _, _ in rows), default=4) + 2
    origin_width = max((len(o) for _, o, _ in rows), default=6) + 2
    print(f"{'name':<{width}}{'origin':<{origin_width}}{'hooks' if args.hooks else 'what it does'}")
    for name, origin, about in rows:
        print(f"{name:<{width}}{origin:<{origin_width}}{about}")
    return 0


def add_plugins_commands(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("plugins", help="list every plugin that can be enabled, with what it does")
    parser.add_argument("--hooks", action="store_true", help="show the hooks each plugin implements instead")
    parser.set_defaults(func=cmd_plugins)


# --- config ----------------------------------------------------------------------------------------------------


def cmd_config_check(args: argparse.Namespace) -> int:
    """Check a config file as a pipeline built from it would, report every error, then probe the outside world.

    Errors (exit 1): the file is read and its top level and endpoints checked (:func:`parse_config`, which goes
    on past the first problem), then a pipeline is built from what is valid: every plugin's table is checked
    and every enabled plugin constructed, exactly as ``Pipeline(file)`` does; plugins open no connection and
    start no server until their first request, so nothing is contacted. Warnings (exit 0): what only the
    outside world can tell -- a Redis that does not answer, a cache file that cannot be created, a metrics
    port in use -- from the probes the option classes declare (``aurelis_core.validators.PROBE``).
    """
    from aurelis_core import Pipeline
    from aurelis_core.config import parse_config, read_config_file

    try:
        data, source = read_config_file(args.file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    config, errors = parse_config(data, source)
    pipeline = None
    try:
        pipeline = Pipeline(config)
    except ConfigError as exc:
        errors.extend(exc.errors)
    except ImportError as exc:
        errors.append(f"{source}: {exc}")
    if errors:
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        print(f"{source}: {len(errors)} error{'s' if len(errors) > 1 else ''}", file=sys.stderr)
        return 1
    assert pipeline is not None
    warnings = _probe_config(config)
    # What only the outside world can tell, from plugins that can look without changing anything (a cache file
    # the sqlite tier would refuse): warnings, not errors.
    for name in pipeline.plugin_origins:
        for problem in getattr(pipeline.plugin(name), "problems", list)():
            warnings.append(f"{source}: [{name}] {problem}")
    # Configs that are valid but do not do what they say: tiers that are never asked, plugins switched off.
    keyed = any("aurelis_normalize" in _hooks_of(type(pipeline.plugin(name))) for name in pipeline.plugin_origins)
    if pipeline.tiers and not keyed:
        warnings.append(
            f"{source}: cache tiers ({', '.join(pipeline.tiers)}) are enabled but no plugin makes a cache key: "
            "every request bypasses them; add \"normalize\" to plugins"
        )
    from aurelis_core.plugin import blocked_plugins

    for name in sorted(set(config.plugins) & blocked_plugins()):
        warnings.append(f"{source}: plugin {name!r} is disabled by AURELIS_DISABLE_PLUGINS: pipelines run without it")
    shared = [name for name in ("redis", "sqlite") if name in pipeline.plugin_origins]
    if shared and not pipeline.tenant.has_secret:
        warnings.append(
            f"{source}: [tenant] secret: not set (nor AURELIS_CACHE_SECRET) while {' and '.join(shared)} "
            "share entries: anyone who can write to the store can plant an answer, and credential fingerprints "
            "can be compared across deployments; set the same secret on every replica"
        )
    pipeline.close()
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{config.source}: ok ({len(config.plugins)} plugins: {', '.join(config.plugins) or 'none'}; "
          f"{len(config.endpoints)} endpoints"
          + (f"; {len(warnings)} warning{'s' if len(warnings) > 1 else ''}" if warnings else "") + ")")
    return 0


def _probe_config(config: Any) -> list[str]:
    """The warnings of the probes declared by the options of every enabled plugin (see ``cmd_config_check``)."""
    from aurelis_core.plugin import blocked_plugins, config_from_table, discover_plugins

    known = discover_plugins()
    blocked = blocked_plugins()
    warnings: list[str] = []
    if config.redis_connection is not None:
        warnings += _probe_options(config.redis_connection, f"{config.source}: [redis_connection]", "")
    for name in config.plugins:
        config_cls = getattr(known[name].load(), "Config", None) if name not in blocked else None
        if config_cls is not None:
            where = f"{config.source}: [{name}]"
            warnings += _probe_options(config_from_table(config_cls, config.tables.get(name, {}), where), where, "")
    return warnings


def _probe_options(options: Any, where: str, prefix: str) -> list[str]:
    import attrs

    from aurelis_core.plugin import PROBE

    warnings: list[str] = []
    for field in attrs.fields(type(options)):
        value = getattr(options, field.name)
        key = prefix + (getattr(field, "alias", None) or field.name)
        probe = field.metadata.get(PROBE)
        if probe is not None:
            try:
                problem = probe(options, field, value)
            except Exception as exc:  # a probe's own failure is a warning too, never the end of the check
                problem = f"could not be checked: {type(exc).__name__}: {exc}"
            if problem:
                warnings.append(f"{where} {key}: {problem}")
        if attrs.has(type(value)):
            warnings += _probe_options(value, where, key + ".")
    return warnings


def cmd_config_options(args: argparse.Namespace) -> int:
    """The option reference of one plugin or core table, read from its option class; without a name, the names."""
    from .options_reference import CORE_TABLES, UnknownOptions, markdown_table, table_names, text_table

    if args.name is None:
        for name in table_names():
            print(f"{name:<24}{CORE_TABLES.get(name, 'plugin')}")
        return 0
    try:
        sys.stdout.write(markdown_table(args.name) + "\n" if args.format == "markdown" else text_table(args.name))
    except (UnknownOptions, ConfigError) as exc:  # ConfigError: a plugin whose extra is not installed
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    return 0


def add_config_commands(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("config", help="work with configuration files")
    sub = parser.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    check = sub.add_parser(
        "check", help="validate a config file (aurelis.toml or pyproject.toml): every error, then warnings about "
        "what only the outside world can tell (a Redis that does not answer, a file that cannot be written)",
    )
    check.add_argument("file", help="the config file")
    check.set_defaults(func=cmd_config_check)
    options = sub.add_parser(
        "options", help="the options of a plugin or core table: name, type, default and what each does (without a "
        "NAME: the names)",
    )
    options.add_argument("name", nargs="?", metavar="NAME", help="a plugin (memory, redis...) or a core table "
                         "(top-level, endpoints, tenant, redis_connection, pricing, report)")
    options.add_argument("--format", choices=("text", "markdown"), default="text")
    options.set_defaults(func=cmd_config_options)


# --- argument types: a bad value is a usage error before any work starts --------------------------------------


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _share(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text}")
    return value


def _hit_rate_target(text: str) -> float:
    value = _share(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a share > 0 and <= 1, got 0")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text}")
    return value


# --- report options (shared by replay and report) ----------------------------------------------------------------


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    from aurelis_core.report import Targets

    defaults = Targets()
    group = parser.add_argument_group("score targets")
    group.add_argument("--target-p50", type=_positive, default=defaults.p50, metavar="S", help="seconds (%(default)s)")
    group.add_argument("--target-p95", type=_positive, default=defaults.p95, metavar="S", help="seconds (%(default)s)")
    group.add_argument("--target-p99", type=_positive, default=defaults.p99, metavar="S", help="seconds (%(default)s)")
    group.add_argument("--target-rps", type=_positive, default=defaults.rps, metavar="N",
                       help="requests/s, scored against the lower of this and the offered load (--rate, --timed); "
                       "default: throughput is not scored")
    group.add_argument("--target-hit-rate", type=_hit_rate_target, default=defaults.hit_rate, metavar="R",
                       help="0..1 (%(default)s)")


def _targets(args: argparse.Namespace) -> Any:
    from aurelis_core.report import Targets

    return Targets(args.target_p50, args.target_p95, args.target_p99, args.target_rps, args.target_hit_rate)


def _write_report(report: Any, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    (out / "report.html").write_text(report.html(), encoding="utf-8")
    (out / "report.txt").write_text(report.text(), encoding="utf-8")


# --- replay ----------------------------------------------------------------------------------------------------


def _progress(total: int) -> Callable[[int, Any], None] | None:
    """A one-line progress bar on stderr, or ``None`` when stderr is not a terminal (CI logs, pipes)."""
    if not sys.stderr.isatty():
        return None
    done = 0
    errors = 0

    def update(index: int, result: Any) -> None:
        nonlocal done, errors
        done += 1
        if isinstance(result, BaseException) or getattr(result, "status_code", 200) >= 400:
            errors += 1
        filled = done * 30 // total
        end = "\n" if done == total else ""
        print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} ({errors} errors)", end=end,
              file=sys.stderr, flush=True)

    return update


#: The ``--sim-*`` options, by their SimulateOptions field.
_SIM_OPTIONS = {"endpoints": "sim_endpoints", "latency": "sim_latency", "jitter": "sim_jitter",
                "latency_per_token": "sim_latency_per_token", "failure_rate": "sim_failure_rate",
                "rpm": "sim_rpm", "tpm": "sim_tpm"}


def cmd_replay(args: argparse.Namespace) -> int:
    from .replay import SIMULATED_BASE_URL, SimulateOptions, example_path, load_workload, replay, simulated

    # Options that would be silently ignored are usage errors, said before anything is loaded or started.
    if args.speed is not None and not args.timed:
        print("error: --speed needs --timed (it speeds up the recorded timing)", file=sys.stderr)
        return 2
    given_sim = sorted("--" + dest.replace("_", "-") for dest in _SIM_OPTIONS.values()
                       if getattr(args, dest) is not None)
    if given_sim and not args.simulate:
        print(f"error: {', '.join(given_sim)} need{'s' if len(given_sim) == 1 else ''} --simulate", file=sys.stderr)
        return 2
    workload_path = args.workload
    if workload_path is None:
        if not args.simulate:
            print("error: give a WORKLOAD file (the shipped example is only replayed with --simulate)",
                  file=sys.stderr)
            return 2
        workload_path = example_path("workload.jsonl")
    try:
        workload = load_workload(workload_path)
        config = load_config(find_config(args.config))
        targets = _targets(args)
    except (ValueError, OSError) as exc:  # ConfigError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 1
    options = dict(
        concurrency=args.concurrency, rate=args.rate, timed=args.timed,
        speed=args.speed if args.speed is not None else 1.0, timeout=args.timeout,
        targets=targets, on_result=_progress(len(workload)),
    )
    try:
        if args.simulate:
            sim = SimulateOptions(**{field: getattr(args, dest) for field, dest in _SIM_OPTIONS.items()
                                     if getattr(args, dest) is not None})
            with simulated(config, sim) as (sim_config, servers):
                print(f"simulating {len(servers)} upstream(s) on 127.0.0.1: "
                      f"{', '.join(s.base_url for s in servers)}", file=sys.stderr)
                report = asyncio.run(replay(workload, sim_config, base_url=args.base_url or SIMULATED_BASE_URL,
                                            **options))
            # Counted by the entries' age, not guessed from the tier's name: a request can read back from SQLite
            # what another request of this very run stored a moment earlier.
            earlier = report.earlier_hits
            if earlier:
                # A warm file answers what the simulated upstream would have failed or slowed: say so, or a run
                # with --sim-failure-rate that shows no errors looks like a bug.
                # An entry read from SQLite is promoted into memory with its age: later memory hits on it count too.
                hits = ", ".join(f"{tier} {n}" for tier, n in sorted(earlier.items(), key=lambda item: item[1]))
                print(f"note: {sum(earlier.values())} answers came from what earlier runs stored (hits in {hits}), "
                      "not from the simulated upstream; `aurelis cache clear` starts cold", file=sys.stderr)
        else:
            credential = os.environ.get(args.api_key_env) if args.api_key_env else None
            hosts = sorted({urlsplit(e.url).netloc for e in config.endpoints})
            if hosts:  # where the requests (and the key) go, before they go
                print(f"replaying {len(workload)} requests to {', '.join(hosts)}"
                      + (f" (addressed to {urlsplit(args.base_url).netloc})"
                         if args.base_url and urlsplit(args.base_url).netloc not in hosts else ""), file=sys.stderr)
            if not credential and not (config.endpoints and all(e.api_key for e in config.endpoints)):
                print(f"warning: ${args.api_key_env} is not set and not every endpoint has an api_key: requests go "
                      "without a key (expect 401s); set it, or pass --api-key-env VAR", file=sys.stderr)
            report = asyncio.run(
                replay(workload, config, base_url=args.base_url, credential=credential, **options)
            )
    except (ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.text(), end="")
    _write_report(report, Path(args.out))
    print(f"\nreport written to {args.out}/report.{{txt,json,html}}")
    return 0


def add_replay_commands(subparsers: Subparsers) -> None:
    from .replay import SimulateOptions

    parser = subparsers.add_parser(
        "replay", help="send a recorded workload through the pipeline and report how it performed",
        description="Replay a JSONL workload through the configured pipeline, print the report and write it "
        "as text, JSON and HTML. The workload format is documented in docs/replay.md.",
    )
    parser.add_argument("workload", nargs="?", help="workload .jsonl (default with --simulate: the shipped example)")
    parser.add_argument("--config", help="config file (default: $AURELIS_CONFIG, else the shipped aurelis.toml: "
                        "normalize + embedded tiers)")
    parser.add_argument("--out", default=".aurelis/report", help="where to write report.{txt,json,html} "
                        "(%(default)s)")
    parser.add_argument("--concurrency", type=_count, default=8, help="requests in flight (%(default)s)")
    parser.add_argument("--rate", type=_positive, help="at most this many requests started per second")
    parser.add_argument("--timed", action="store_true", help="send each request at its recorded 'at' offset")
    parser.add_argument("--speed", type=_positive, help="with --timed: replay this many times faster (1)")
    parser.add_argument("--timeout", type=_positive, default=60.0, help="seconds per request (%(default)s)")
    parser.add_argument("--base-url", help="where to address requests (default: the first endpoint's URL)")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                        help="environment variable holding the API key sent as a bearer token (%(default)s); "
                        "unused with --simulate")
    sim = parser.add_argument_group("simulation (--simulate: local upstreams on 127.0.0.1, no key, no network)")
    sim.add_argument("--simulate", action="store_true", help="point the endpoints at simulated upstreams")
    defaults = SimulateOptions()
    sim.add_argument("--sim-endpoints", type=_count, metavar="N",
                     help="how many upstreams (default: one per configured endpoint; >1 needs a router plugin)")
    sim.add_argument("--sim-latency", type=_non_negative, metavar="S", help=f"seconds ({defaults.latency})")
    sim.add_argument("--sim-jitter", type=_non_negative, metavar="S", help=f"extra random seconds ({defaults.jitter})")
    sim.add_argument("--sim-latency-per-token", type=_non_negative, metavar="S",
                     help=f"seconds per completion word ({defaults.latency_per_token})")
    sim.add_argument("--sim-failure-rate", type=_share, metavar="P",
                     help=f"share of 500s, 0..1 ({defaults.failure_rate})")
    sim.add_argument("--sim-rpm", type=_count, metavar="N", help="requests per minute per upstream, then 429")
    sim.add_argument("--sim-tpm", type=_count, metavar="N", help="tokens per minute per upstream, then 429")
    _add_target_options(parser)
    parser.set_defaults(func=cmd_replay)


# --- record ----------------------------------------------------------------------------------------------------


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as file:
            return sum(1 for line in file if line.strip())
    except FileNotFoundError:
        return 0


def cmd_record(args: argparse.Namespace) -> int:
    """Run the command with ``AURELIS_RECORD`` set: every pipeline the program builds records, with the config it
    was given explicitly or with ``AURELIS_CONFIG`` (``--config``, else the inherited one), plus ``record``."""
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("error: give the command to run after --, e.g. aurelis record --out w.jsonl -- python app.py",
              file=sys.stderr)
        return 2
    env = dict(os.environ)
    if args.config:
        try:
            load_config(args.config)  # fail here, with the usual message, rather than inside the recorded program
        except (ConfigError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        env["AURELIS_CONFIG"] = str(Path(args.config).resolve())
    out = Path(args.out).resolve()
    env["AURELIS_RECORD"] = str(out)  # read by every Pipeline (documented: an environment variable, public)
    before = _lines(out)
    print(f"recording requests to {args.out}", file=sys.stderr)
    try:
        code = subprocess.call(command, env=env)
    except FileNotFoundError:
        print(f"error: command not found: {command[0]}", file=sys.stderr)
        return 127  # the shell's code for a command it cannot find
    except PermissionError:
        print(f"error: cannot run {command[0]}: permission denied", file=sys.stderr)
        return 126
    print(f"recorded {_lines(out) - before} requests to {args.out}", file=sys.stderr)
    return code


def add_record_commands(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "record", help="run a program and record the requests its instrumented clients send",
        description="Runs COMMAND with AURELIS_RECORD set, so every client the program instruments (with "
        "its own config, or $AURELIS_CONFIG / --config) also runs the record plugin and appends its requests "
        "to --out. Credentials are never written.",
    )
    parser.add_argument("--out", default="aurelis-workload.jsonl", help="workload file to append to "
                        "(%(default)s)")
    parser.add_argument("--config", help="set AURELIS_CONFIG to this config for the program (default: leave it as "
                        "it is)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    parser.set_defaults(func=cmd_record)


# --- report ----------------------------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from aurelis_core.report import Report

    not_a_report = "not an Aurelis report (aurelis report reads the report.json that aurelis replay writes)"
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        print(f"error: {args.file}: {not_a_report}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        data = json.loads(text)
    except ValueError:
        print(f"error: {args.file}: {not_a_report}: it is not JSON", file=sys.stderr)
        return 1
    if not isinstance(data, dict) or data.get("format") != "aurelis-report-1":
        print(f"error: {args.file}: {not_a_report}", file=sys.stderr)
        return 1
    try:
        report = Report.from_dict(data).rescored(_targets(args))
    except (ValueError, TypeError) as exc:
        print(f"error: {args.file}: a damaged report: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        output = json.dumps(report.to_dict(), indent=2) + "\n"
    else:
        output = report.html() if args.format == "html" else report.text()
    if args.out:
        Path(args.out).write_text(output, encoding="utf-8")
    else:
        sys.stdout.write(output)
    return 0


def add_report_commands(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("report", help="render a saved report.json as text, JSON or HTML",
                                   description="Re-render (and re-score against other targets) a report "
                                   "written by aurelis replay.")
    parser.add_argument("file", help="a report.json")
    parser.add_argument("--format", choices=("text", "json", "html"), default="text")
    parser.add_argument("--out", help="write here instead of stdout")
    _add_target_options(parser)
    parser.set_defaults(func=cmd_report)


# --- entry point -----------------------------------------------------------------------------------------------

#: Each adds its subcommands to the ``aurelis`` parser. Commands from other modules are listed here too.
COMMAND_GROUPS: list[Callable[[Subparsers], None]] = [
    add_plugins_commands,
    add_config_commands,
    add_replay_commands,
    add_record_commands,
    add_report_commands,
    add_cache_commands,
]


def build_parser() -> argparse.ArgumentParser:
    from aurelis_core import __version__

    parser = argparse.ArgumentParser(prog="aurelis", description="Aurelis: performance middleware for AI-model "
                                     "API calls.")
    parser.add_argument("--version", action="version", version=f"aurelis {__version__}")
    subparsers = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    for add in COMMAND_GROUPS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

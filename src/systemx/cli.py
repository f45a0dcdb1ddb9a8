"""The ``systemx`` command line: ``serve``, the terminal tools (``dial``,
``answer``, ``presence``, ``party``, ``calls``, ``tail``), ``bench`` and ``--version``.

``serve`` takes its settings from, strongest first: flags, the environment,
``--env-file``/``--config`` files, ``.env`` in the working directory.
A configuration error prints one line, ``systemx: NAME: problem``, and exits
with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from systemx import __version__
from systemx.config import ConfigError, load_settings, parse_duration_ms, read_env_file

__all__ = ["build_parser", "main"]

EXIT_CONFIG = 2

# flag dest -> Settings field
_SERVE_FLAGS = {
    "host": "host",
    "port": "port",
    "log_level": "log_level",
    "log_format": "log_format",
    "heartbeat_interval": "heartbeat_interval_ms",
    "heartbeat_timeout": "heartbeat_timeout_ms",
    "call_timeout": "call_timeout_ms",
    "data_dir": "data_dir",
    "tls_cert": "tls_cert_path",
    "tls_key": "tls_key_path",
}

_TOOLS = ("dial", "answer", "presence", "party", "calls", "tail")
# Tools that run until stopped: Ctrl-C is how they end, not a failure.
_FOLLOWERS = ("tail",)


def _duration(value: str) -> int:
    try:
        return parse_duration_ms(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="systemx", description="SystemX: a telephone exchange for the internet."
    )
    parser.add_argument("--version", action="version", version=f"systemx {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the exchange (flags > environment > --env-file > .env)",
        description=(
            "Run the exchange. Settings come from, strongest first: these flags, the environment, "
            "--env-file/--config files (a later one wins), .env in the working directory. "
            "Durations take a unit (500ms, 30s, 2m, 1h); a plain number is milliseconds."
        ),
    )
    serve.add_argument("--host", help="interface to listen on (SYSTEMX_HOST)")
    serve.add_argument("--port", type=int, help="TCP port, 0 for any free port (SYSTEMX_PORT)")
    serve.add_argument("--log-level", choices=("debug", "info", "warn", "error"), help="SYSTEMX_LOG_LEVEL")
    serve.add_argument("--log-format", choices=("text", "json"), help="SYSTEMX_LOG_FORMAT")
    serve.add_argument(
        "--heartbeat-interval", type=_duration, metavar="DURATION", help="SYSTEMX_HEARTBEAT_INTERVAL"
    )
    serve.add_argument(
        "--heartbeat-timeout", type=_duration, metavar="DURATION", help="SYSTEMX_HEARTBEAT_TIMEOUT"
    )
    serve.add_argument("--call-timeout", type=_duration, metavar="DURATION", help="SYSTEMX_CALL_TIMEOUT")
    serve.add_argument("--data-dir", metavar="DIR", help="SYSTEMX_DATA_DIR")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N exchange processes sharing the port (SO_REUSEPORT) as one cluster; "
        "needs SYSTEMX_REDIS_URL",
    )
    serve.add_argument("--tls-cert", metavar="PEM", help="TLS_CERT_PATH (enables wss; needs --tls-key)")
    serve.add_argument("--tls-key", metavar="PEM", help="TLS_KEY_PATH (enables wss; needs --tls-cert)")
    serve.add_argument(
        "--env-file",
        "--config",
        dest="env_files",
        action="append",
        default=[],
        metavar="FILE",
        help="read settings from FILE (dotenv format: NAME=value lines); may be repeated",
    )

    from systemx.tools import answer, calls, dial, party, presence, tail

    for tool in (dial, answer, presence, party, calls, tail):
        tool.add_parser(commands)

    bench = commands.add_parser(
        "bench", help="run a benchmark scenario (see `systemx bench --help`)", add_help=False
    )
    bench.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _config_error(exc: ConfigError) -> int:
    print(f"systemx: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def _serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {field: getattr(args, dest) for dest, field in _SERVE_FLAGS.items()}
    try:
        settings = load_settings(overrides=overrides, config_files=tuple(args.env_files))
    except ConfigError as exc:
        return _config_error(exc)

    # The federation settings are read from the environment when the trunks start:
    # give them the --env-file values too (the environment still wins; a later file wins).
    for path in reversed(args.env_files):
        for name, value in read_env_file(path).items():
            if name.startswith("FEDERATION_"):
                os.environ.setdefault(name, value)

    from systemx.logsetup import configure_logging
    from systemx.server import run

    configure_logging(settings)
    if args.workers != 1:
        if args.workers < 1:
            return _config_error(ConfigError(f"--workers: must be 1 or more, got {args.workers}"))
        if not settings.redis_url:
            return _config_error(
                ConfigError(
                    "--workers needs SYSTEMX_REDIS_URL: the workers share one address space through Redis"
                )
            )
        from systemx.server.workers import supervise

        argv = [a for a in _worker_argv(args)]
        return supervise(settings, args.workers, argv)
    try:
        return run(settings)
    except ConfigError as exc:
        return _config_error(exc)
    except OSError as exc:
        detail = exc.strerror or str(exc)
        print(f"systemx: cannot listen on {settings.host}:{settings.port}: {detail}", file=sys.stderr)
        return 1


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """The ``serve`` flags given, for each worker (the port and --workers are the parent's)."""
    argv: list[str] = []
    for dest in _SERVE_FLAGS:
        value = getattr(args, dest)
        if value is None or dest == "port":
            continue
        argv += [f"--{dest.replace('_', '-')}", str(value)]
    for path in args.env_files:
        argv += ["--env-file", path]
    return argv


def _tool(args: argparse.Namespace) -> int:
    import importlib

    from systemx.tools.common import run_tool

    module = importlib.import_module(f"systemx.tools.{args.command}")
    return run_tool(lambda: module.run(args), interrupted=0 if args.command in _FOLLOWERS else 130)


def _bench(argv: list[str]) -> int:
    from systemx.bench.cli import main as bench_main

    return bench_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:
        # Everything after "bench" (including --help) belongs to the benchmark runner.
        return _bench(arguments[1:])
    args = build_parser().parse_args(arguments)
    if args.command == "serve":
        return _serve(args)
    if args.command in _TOOLS:
        return _tool(args)
    build_parser().print_help(sys.stderr)
    return EXIT_CONFIG

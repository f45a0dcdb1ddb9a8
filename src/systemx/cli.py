"""The ``systemx`` command line: ``serve``, ``bench`` and ``--version``.

Flags override environment variables (and ``.env``); configuration errors
print one line naming the problem and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from systemx import __version__
from systemx.config import ConfigError, load_settings

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="systemx", description="SystemX: a telephone exchange for the internet."
    )
    parser.add_argument("--version", action="version", version=f"systemx {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the exchange (flags override SYSTEMX_* variables)")
    serve.add_argument("--host", help="interface to listen on (SYSTEMX_HOST)")
    serve.add_argument("--port", type=int, help="TCP port, 0 for any free port (SYSTEMX_PORT)")
    serve.add_argument("--log-level", choices=("debug", "info", "warn", "error"), help="SYSTEMX_LOG_LEVEL")
    serve.add_argument("--log-format", choices=("text", "json"), help="SYSTEMX_LOG_FORMAT")
    serve.add_argument("--heartbeat-interval", type=int, metavar="MS", help="SYSTEMX_HEARTBEAT_INTERVAL")
    serve.add_argument("--heartbeat-timeout", type=int, metavar="MS", help="SYSTEMX_HEARTBEAT_TIMEOUT")
    serve.add_argument("--call-timeout", type=int, metavar="MS", help="SYSTEMX_CALL_TIMEOUT")
    serve.add_argument("--data-dir", metavar="DIR", help="SYSTEMX_DATA_DIR")
    serve.add_argument("--tls-cert", metavar="PEM", help="TLS_CERT_PATH (with --tls-key enables wss)")
    serve.add_argument("--tls-key", metavar="PEM", help="TLS_KEY_PATH (with --tls-cert enables wss)")

    bench = commands.add_parser(
        "bench", help="run a benchmark scenario (see `systemx bench --help`)", add_help=False
    )
    bench.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {field: getattr(args, dest) for dest, field in _SERVE_FLAGS.items()}
    if args.tls_cert or args.tls_key:
        overrides["tls_enabled"] = True
    try:
        settings = load_settings(overrides=overrides)
    except ConfigError as exc:
        print(f"systemx: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    from systemx.logsetup import configure_logging
    from systemx.server import run

    configure_logging(settings)
    try:
        return run(settings)
    except ConfigError as exc:
        print(f"systemx: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"systemx: cannot serve on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1


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
    build_parser().print_help(sys.stderr)
    return EXIT_CONFIG

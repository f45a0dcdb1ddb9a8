"""Command line of the load generator: ``systemx bench`` (and ``python -m benchmarks``).

``main(argv)`` parses the scenario and options, starts the server under test
for every run (unless ``--url`` names one), pins server and generator to
different CPUs, repeats the scenario ``--runs`` times and prints
human-readable lines plus exactly one JSON line per scenario with the median
of the runs. Any failed check makes the exit status non-zero.

``systemx bench`` measures the exchange alone. The repository's
``benchmarks`` package passes a :class:`Suite` that adds the baselines (the
``bare`` scenario, the bare relay next to the exchange, ``--bun``), py-spy
profiles (``--profile``) and the in-process presence index figure
(``--core-entries``).

``--ref DIR`` (both commands) also runs the reference router, the public
Bun/TypeScript router of the same protocol, from a local checkout, alternating
with the exchange run by run, and reports the exchange's figure over the
reference's per run and the median of those paired ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import msgspec

from systemx.bench.common import Options
from systemx.bench.procstat import host_busy_seconds, pin_to_cpus, raise_fd_limit
from systemx.bench.servers import (
    Baseline,
    ExternalServer,
    Reference,
    ServerError,
    ServerKind,
    SpawnedServer,
    Target,
)
from systemx.bench.stats import median_result
from systemx.bench.wire import Violation

__all__ = ["BUN_SCENARIOS", "REF_SCENARIOS", "SCENARIOS", "Context", "Suite", "build_parser", "main"]

Say = Callable[[str], None]

SCENARIOS = ("relay", "latency", "callsetup", "connect", "idle", "party", "presence", "bare", "all")
#: The scenarios that can also measure the Bun baseline (``--bun``).
BUN_SCENARIOS = frozenset({"relay", "bare", "latency", "callsetup", "connect", "all"})
#: The scenarios that can also measure the reference router (``--ref DIR``).
REF_SCENARIOS = frozenset({"relay", "latency", "callsetup", "connect", "idle", "all"})


@dataclass(frozen=True)
class Suite:
    """What a command line offers beyond measuring the exchange.

    ``baselines`` by kind (``bare``, ``bun``); ``profiler(pid, path)`` records
    the stacks of process ``pid`` to ``path`` while it is entered and
    ``profile_top(path)`` summarises them; ``presence_core(say, entries)``
    times the presence index in process. What is missing, the command line
    does not offer.
    """

    prog: str = "systemx bench"
    baselines: Mapping[str, Baseline] = field(default_factory=dict)
    profiler: Callable[[int, str], AbstractContextManager[object]] | None = None
    profile_top: Callable[[str], list[str]] | None = None
    presence_core: Callable[[Say, int], dict[str, Any] | None] | None = None

    def scenarios(self) -> tuple[str, ...]:
        return tuple(s for s in SCENARIOS if s != "bare" or "bare" in self.baselines)


@dataclass(frozen=True)
class Context:
    """What every scenario of one invocation shares: the suite and where lines go."""

    suite: Suite
    say: Say
    reference: Reference | None = None


def build_parser(suite: Suite | None = None) -> argparse.ArgumentParser:
    suite = suite or Suite()
    p = argparse.ArgumentParser(
        prog=suite.prog,
        description="Benchmark the SystemX exchange with a checking load generator.",
    )
    p.add_argument("scenario", choices=suite.scenarios())
    g = p.add_argument_group("run")
    g.add_argument("--duration", type=float, default=10.0, help="measurement window, seconds (default 10)")
    g.add_argument("--warmup", type=float, default=2.0, help="traffic before the window opens, seconds")
    g.add_argument("--runs", type=int, default=1, help="repeat and report the median (default 1)")
    g.add_argument("--procs", type=int, default=1, help="generator processes for relay/bare/callsetup")
    g.add_argument(
        "--concurrency", type=int, default=64, help="connection handshakes in flight during set-up"
    )
    g.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin server and generator")
    g.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="scheduling priority of generator and server when permitted (default -10; 0 leaves it)",
    )
    g.add_argument("--quiet", action="store_true", help="print only the JSON line")
    g.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each run wait up to S seconds for the machine to be idle (<10%% of a CPU busy)",
    )
    s = p.add_argument_group("server")
    s.add_argument("--url", help="benchmark a running server (the exchange; for `bare`, a bare relay)")
    s.add_argument("--server-pid", type=int, help="pid of the --url server, for CPU and RSS readings")
    s.add_argument("--server-log-level", default="warn", help="SYSTEMX_LOG_LEVEL of a started exchange")
    s.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="VAR=VALUE",
        help="extra environment for the server",
    )
    s.add_argument(
        "--ref",
        metavar="DIR",
        help=(
            "relay/latency/callsetup/connect/idle: also run the reference router (`bun run "
            "src/server.ts` in the checkout DIR; `make reference` prepares .bench/reference) at the "
            "same log level, alternating with the exchange run by run; prints the exchange's figure "
            "over the reference's per run and the median of those paired ratios (ref_ratio: below 1, "
            "the exchange uses less). Needs bun: $SYSTEMX_BENCH_BUN, else bun on PATH, else "
            "DIR/../node_modules/.bin/bun (`make bench-bun-install`)"
        ),
    )
    w = p.add_argument_group("scenarios")
    w.add_argument("--size", type=int, default=100, help="relay/latency/party: data bytes per message")
    w.add_argument("--pairs", type=int, default=50, help="relay/callsetup: connection pairs")
    w.add_argument("--inflight", type=int, default=4, help="messages outstanding per direction / sender")
    p.set_defaults(bare=False, bun=False, profile=None, core_entries=0)
    if "bare" in suite.baselines:
        w.add_argument(
            "--no-bare",
            dest="bare",
            action="store_false",
            default=True,
            help="relay/latency/callsetup/connect: skip the bare relay baseline",
        )
    if "bun" in suite.baselines:
        w.add_argument(
            "--bun",
            action="store_true",
            help=(
            "relay/bare/latency/callsetup/connect: also measure the Bun baseline (benchmarks/bun_relay.js: "
            "parse, set from, re-serialise, send; the least a call router does for calls; a lower bound "
            "for any Bun router) on the same CPU, alternating "
            "the order run by run; adds bun_* figures and ratio_to_bun (Bun CPU per unit over the "
            "measured server's; 1 or more: the server uses no more CPU than Bun). Needs bun: "
            "$SYSTEMX_BENCH_BUN, else bun on PATH, else .bench/ (`make bench-bun-install`)"
            ),
        )
    w.add_argument(
        "--cork",
        action="store_true",
        help="relay, party: the generator writes the frames it sends to one connection "
        "per loop pass in one write",
    )
    w.add_argument("--samples", type=int, default=20_000, help="latency: measured samples")
    w.add_argument("--warm-samples", type=int, default=2_000, help="latency: samples before measuring")
    w.add_argument("--calls", type=int, default=0, help="callsetup: stop after this many calls")
    w.add_argument(
        "--ringing",
        action="store_true",
        help="callsetup: each DIAL asks for RINGING, and every call must get one (naming the call)",
    )
    w.add_argument("--conns", type=int, default=5_000, help="connect/idle: connections that REGISTER")
    w.add_argument(
        "--settle", type=float, default=1.0, help="idle: seconds idle before each RSS reading (default 1)"
    )
    w.add_argument("--participants", type=int, default=0, help="party: participants (default 200 and 1000)")
    w.add_argument("--registrations", type=int, default=20_000, help="presence: registered connections")
    w.add_argument("--limit", type=int, default=100, help="presence: result limit per query")
    if suite.profiler is not None:
        s.add_argument(
            "--profile", metavar="FILE", help="one extra run with py-spy on the server; stacks to FILE"
        )
    if suite.presence_core is not None:
        w.add_argument(
            "--core-entries",
            type=int,
            default=100_000,
            help="presence: entries for the in-process index figure (0: skip)",
        )
    return p


def _options(ns: argparse.Namespace) -> Options:
    env: dict[str, str] = {}
    for item in ns.server_env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--server-env wants VAR=VALUE, got {item!r}")
        env[key] = value
    return Options(
        duration=ns.duration,
        warmup=ns.warmup,
        runs=max(1, ns.runs),
        procs=max(1, ns.procs),
        size=ns.size,
        pairs=ns.pairs,
        inflight=max(1, ns.inflight),
        samples=ns.samples,
        warm_samples=ns.warm_samples,
        calls=ns.calls,
        conns=ns.conns,
        settle=ns.settle,
        participants=ns.participants,
        registrations=ns.registrations,
        limit=ns.limit,
        core_entries=ns.core_entries,
        profile=ns.profile,
        wait_idle=ns.wait_idle,
        cork=ns.cork,
        ringing=ns.ringing,
        concurrency=max(1, ns.concurrency),
        bare=ns.bare,
        bun=ns.bun,
        ref=ns.ref,
        pin=ns.pin,
        url=ns.url,
        server_pid=ns.server_pid,
        log_level=ns.server_log_level,
        quiet=ns.quiet,
        server_env=env,
    )


@contextlib.contextmanager
def _server(ctx: Context, kind: ServerKind, opts: Options, external: bool = True) -> Iterator[Target]:
    """The server for one run: ``--url`` when given for this kind, else a fresh subprocess."""
    _wait_idle(opts)
    if external and opts.url:
        with ExternalServer(opts.url, opts.server_pid, kind) as target:
            yield target
        return
    cpu = 0 if opts.pin and (os.cpu_count() or 1) >= 2 else None
    baseline = ctx.suite.baselines[kind] if kind in ("bare", "bun") else None
    reference = ctx.reference if kind == "ref" else None
    spawned = SpawnedServer(
        kind, baseline=baseline, reference=reference, cpu=cpu, log_level=opts.log_level, env=opts.server_env
    )
    with spawned as target:
        try:
            yield target
        except BaseException:
            if target.spawned is not None and target.spawned.tail:
                print(f"--- {kind} server stderr (tail) ---", file=sys.stderr)
                print(target.spawned.stderr_tail(), file=sys.stderr, flush=True)
            raise


def _wait_idle(opts: Options) -> None:
    """Wait (up to ``--wait-idle`` s) until other processes use under 10% of a CPU; warn if they still do."""
    deadline = time.monotonic() + opts.wait_idle
    busy = 0.0
    while True:
        before = host_busy_seconds()
        time.sleep(0.5)
        after = host_busy_seconds()
        if before is None or after is None:
            return
        busy = (after - before) / 0.5
        if busy < 0.1 or time.monotonic() >= deadline:
            break
    if busy >= 0.1 and not opts.quiet:
        print(f"  warning: the machine is busy ({busy:.2f} CPUs used by other processes)", flush=True)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{value * 100:.0f}%"


# --------------------------------------------------------------------------
# scenarios: each returns the JSON fields of its one line

OneRun = Callable[[Target, Options], dict[str, Any]]


def _repeat(
    kind: ServerKind, opts: Options, one: OneRun, ctx: Context, line: Callable[[dict[str, Any]], str]
) -> list[dict[str, Any]]:
    runs = []
    for i in range(opts.runs):
        with _server(ctx, kind, opts) as target:
            r = one(target, opts)
        runs.append(r)
        ctx.say(f"  run {i + 1}/{opts.runs}: {line(r)}")
    _profile(kind, opts, one, ctx)
    return runs


def _profile(kind: ServerKind, opts: Options, one: OneRun, ctx: Context) -> None:
    """With ``--profile``: one extra run with py-spy sampling the server (its figures are not used)."""
    profiler, top = ctx.suite.profiler, ctx.suite.profile_top
    if not opts.profile or profiler is None:
        return
    with _server(ctx, kind, opts) as target:
        if target.meter is None:
            ctx.say("  (cannot profile an external server without --server-pid)")
            return
        with profiler(target.meter.pid, opts.profile):
            one(target, opts)
    ctx.say(f"py-spy profile of the {kind} server (extra run), collapsed stacks in {opts.profile}:")
    for text in top(opts.profile) if top is not None else ():
        ctx.say(text)


def _alternate(
    opts: Options,
    ctx: Context,
    kinds: tuple[ServerKind, ...],
    one: OneRun,
    line: Callable[[dict[str, Any]], str],
) -> dict[str, list[dict[str, Any]]]:
    """Run ``one`` against every kind ``--runs`` times; only the first kind may be ``--url``."""
    per_kind: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for i in range(opts.runs):
        # Alternate the order so drift on a shared machine does not favour one side.
        order = kinds if i % 2 == 0 else tuple(reversed(kinds))
        for kind in order:
            with _server(ctx, kind, opts, external=kind == kinds[0]) as target:
                r = one(target, opts)
            per_kind[kind].append(r)
            ctx.say(f"  run {i + 1}/{opts.runs} {kind:7s}: {line(r)}")
    return per_kind


_NAMES = {"systemx": "exchange", "bare": "bare relay", "bun": "Bun baseline", "ref": "reference router"}
_SHORT = {"systemx": "exchange", "bare": "bare", "bun": "bun", "ref": "ref"}
# The CPU figure a ratio compares, and the figures of a run repeated for the baseline
# in the JSON line, as <baseline>_<figure without its "server_" prefix>.
_MSG_CPU = "server_cpu_us_per_msg"
_MSG_FIGURES = ("msgs_per_s", _MSG_CPU, "p50_us", "p99_us")
_CALL_CPU = "server_cpu_us_per_call"
_CALL_FIGURES = ("calls_per_s", _CALL_CPU, "p50_us", "p99_us")
_CONNECT_CPU = "server_cpu_us_per_registration"
_CONNECT_FIGURES = (
    _CONNECT_CPU,
    "server_cpu_us_per_handshake",
    "server_cpu_us_per_register",
    "rss_kb_per_conn",
)
_IDLE_BYTES = "bytes_per_idle_conn"
_IDLE_FIGURES = (_IDLE_BYTES, "rss_before_kb", "rss_after_kb")


def _add_baseline(
    out: dict[str, Any],
    main_kind: str,
    base_kind: str,
    runs: list[dict[str, Any]],
    figures: tuple[str, ...],
    cpu_key: str,
    unit: str,
    ctx: Context,
) -> None:
    """Put the median of a baseline's runs into ``out`` as ``<base>_*`` and ``ratio_to_<base>``.

    The ratio is the baseline's server CPU per unit (``cpu_key``) over the main
    server's: 1 or more means the main server uses no more CPU per unit than
    the baseline.
    """
    if base_kind == "ref":
        raise AssertionError("the reference router is added by _add_reference")
    base = median_result(runs)
    for key in figures:
        out[f"{base_kind}_{key.removeprefix('server_')}"] = base.get(key)
    router, floor = out.get(cpu_key), base.get(cpu_key)
    ratio = (floor / router) if router and floor else None
    out[f"ratio_to_{base_kind}"] = ratio
    main, short = _SHORT[main_kind], _SHORT[base_kind]
    ctx.say(
        f"  ratio to {_NAMES[base_kind]} ({short} CPU/{unit} over {main} CPU/{unit}): {_fmt(ratio, 3)} "
        f"({main} {_fmt(router)} us/{unit}, {short} {_fmt(floor)} us/{unit})"
    )


def _add_reference(
    out: dict[str, Any],
    main_runs: list[dict[str, Any]],
    ref_runs: list[dict[str, Any]],
    figures: tuple[str, ...],
    key: str,
    unit: str,
    ctx: Context,
) -> None:
    """Put the reference router's medians into ``out`` as ``ref_*``, and the paired ratios.

    Run ``i`` of the exchange and run ``i`` of the reference ran back to back
    (in alternating order); ``ref_ratios`` is the exchange's ``key`` over the
    reference's for every such pair and ``ref_ratio`` their median: below 1,
    the exchange uses less per ``unit`` than the reference.
    """
    base = median_result(ref_runs)
    for figure in figures:
        out[f"ref_{figure.removeprefix('server_')}"] = base.get(figure)
    ratios: list[float] = []
    for mine, theirs in zip(main_runs, ref_runs, strict=True):
        a, b = mine.get(key), theirs.get(key)
        if isinstance(a, int | float) and isinstance(b, int | float) and b > 0:
            ratios.append(a / b)
    ratio = statistics.median(ratios) if ratios else None
    out["ref_ratios"] = ratios
    out["ref_ratio"] = ratio
    per_run = ", ".join(f"{r:.3f}" for r in ratios) or "n/a"
    ctx.say(
        f"  exchange/reference ({key}): per run {per_run}; median {_fmt(ratio, 3)} "
        f"(medians: exchange {_fmt(out.get(key))}, reference {_fmt(base.get(key))} {unit})"
    )


def _add_baselines(
    out: dict[str, Any],
    per_kind: dict[str, list[dict[str, Any]]],
    main_kind: str,
    figures: tuple[str, ...],
    cpu_key: str,
    unit: str,
    ctx: Context,
    ref_unit: str | None = None,
) -> None:
    """The figures of every baseline in ``per_kind`` next to those of ``main_kind``."""
    for base_kind, runs in per_kind.items():
        if base_kind == main_kind:
            continue
        if base_kind == "ref":
            label = ref_unit or f"us/{unit}"
            _add_reference(out, per_kind[main_kind], runs, figures, cpu_key, label, ctx)
        else:
            _add_baseline(out, main_kind, base_kind, runs, figures, cpu_key, unit, ctx)


def _relay_line(r: dict[str, Any]) -> str:
    return (
        f"{_fmt(r['msgs_per_s'], 0)} MSG/s, "
        f"server {_fmt(r['server_cpu_us_per_msg'])} us/MSG ({_pct(r['server_cpu_util'])} busy), "
        f"generator {_pct(r['gen_cpu_util'])} busy, latency p50 {_fmt(r['p50_us'], 0)} "
        f"p99 {_fmt(r['p99_us'], 0)} us"
    )


def _relay_like(opts: Options, ctx: Context, kinds: tuple[ServerKind, ...]) -> dict[str, Any]:
    from systemx.bench.relay import run_relay

    per_kind = _alternate(opts, ctx, kinds, run_relay, _relay_line)
    out: dict[str, Any] = {
        "size": opts.size,
        "pairs": opts.pairs,
        "inflight": opts.inflight,
        "cork": opts.cork,
    }
    main_kind = kinds[0]
    out.update(median_result(per_kind[main_kind]))
    _add_baselines(out, per_kind, main_kind, _MSG_FIGURES, _MSG_CPU, "MSG", ctx)
    _profile(main_kind, opts, run_relay, ctx)
    return out


def _with_bun(opts: Options, kinds: tuple[ServerKind, ...]) -> tuple[ServerKind, ...]:
    """``kinds`` plus the reference router (``--ref``) and the Bun baseline (``--bun``)."""
    if opts.ref and kinds[0] == "systemx":
        kinds = (*kinds, "ref")
    return (*kinds, "bun") if opts.bun else kinds


def scenario_relay(opts: Options, ctx: Context) -> dict[str, Any]:
    ctx.say(f"relay: {opts.pairs} pairs, {opts.inflight} in flight per side, {opts.size} B data")
    kinds: tuple[ServerKind, ...] = ("systemx", "bare") if opts.bare else ("systemx",)
    return _relay_like(opts, ctx, _with_bun(opts, kinds))


def scenario_bare(opts: Options, ctx: Context) -> dict[str, Any]:
    ctx.say(f"bare relay: {opts.pairs} pairs, {opts.inflight} in flight per side, {opts.size} B data")
    return _relay_like(opts, ctx, _with_bun(opts, ("bare",)))


def _exchange_with_baselines(
    opts: Options,
    ctx: Context,
    one: OneRun,
    line: Callable[[dict[str, Any]], str],
    head: dict[str, Any],
    figures: tuple[str, ...],
    cpu_key: str,
    unit: str,
) -> dict[str, Any]:
    """Runs of the exchange and of the baselines asked for, alternating with it.

    The bare relay unless ``--no-bare``, the reference router with ``--ref``,
    the Bun baseline with ``--bun``.
    """
    kinds: tuple[ServerKind, ...] = ("systemx", "bare") if opts.bare else ("systemx",)
    kinds = _with_bun(opts, kinds)
    if len(kinds) == 1:
        runs = _repeat("systemx", opts, one, ctx, line)
        return {**head, **median_result(runs)}
    per_kind = _alternate(opts, ctx, kinds, one, line)
    _profile("systemx", opts, one, ctx)
    out: dict[str, Any] = {**head, **median_result(per_kind["systemx"])}
    _add_baselines(out, per_kind, "systemx", figures, cpu_key, unit, ctx)
    return out


def scenario_latency(opts: Options, ctx: Context) -> dict[str, Any]:
    from systemx.bench.relay import run_latency

    ctx.say(f"latency: one pair, one MSG in flight, {opts.samples} samples, {opts.size} B data")

    def line(r: dict[str, Any]) -> str:
        return (
            f"one-way p50 {_fmt(r['p50_us'], 1)} us, p99 {_fmt(r['p99_us'], 1)} us, "
            f"server {_fmt(r['server_cpu_us_per_msg'])} us/MSG"
        )

    head = {"size": opts.size}
    return _exchange_with_baselines(opts, ctx, run_latency, line, head, _MSG_FIGURES, _MSG_CPU, "MSG")


def scenario_callsetup(opts: Options, ctx: Context) -> dict[str, Any]:
    from systemx.bench.callsetup import run_callsetup

    ctx.say(f"callsetup: {opts.pairs} pairs dialling in parallel (DIAL RING ANSWER CONNECTED HANGUP)")

    def line(r: dict[str, Any]) -> str:
        return (
            f"{_fmt(r['calls_per_s'], 0)} calls/s, server {_fmt(r['server_cpu_us_per_call'])} us/call "
            f"({_pct(r['server_cpu_util'])} busy), "
            f"setup p50 {_fmt(r['p50_us'], 0)} p99 {_fmt(r['p99_us'], 0)} us"
        )

    head = {"pairs": opts.pairs}
    return _exchange_with_baselines(opts, ctx, run_callsetup, line, head, _CALL_FIGURES, _CALL_CPU, "call")


def scenario_connect(opts: Options, ctx: Context) -> dict[str, Any]:
    from systemx.bench.connect import run_connect

    ctx.say(f"connect: {opts.conns} connections each REGISTERing")

    def line(r: dict[str, Any]) -> str:
        return (
            f"{_fmt(r['registrations_per_s'], 0)} registrations/s, "
            f"server {_fmt(r['server_cpu_us_per_registration'])} us/registration "
            f"(handshake {_fmt(r['server_cpu_us_per_handshake'])} + REGISTER "
            f"{_fmt(r['server_cpu_us_per_register'])}), RSS {_fmt(r['rss_kb_per_conn'])} KiB/conn"
        )

    head = {"conns": opts.conns}
    return _exchange_with_baselines(
        opts, ctx, run_connect, line, head, _CONNECT_FIGURES, _CONNECT_CPU, "registration"
    )


def scenario_idle(opts: Options, ctx: Context) -> dict[str, Any]:
    from systemx.bench.idle import run_idle

    ctx.say(f"idle: {opts.conns} registered connections, idle {opts.settle:g} s; RSS growth per connection")

    def line(r: dict[str, Any]) -> str:
        return (
            f"{_fmt(r['bytes_per_idle_conn'], 0)} bytes per idle registered connection "
            f"(RSS {_fmt(r['rss_before_kb'])} -> {_fmt(r['rss_after_kb'])} KiB)"
        )

    head = {"conns": opts.conns, "settle": opts.settle}
    if not opts.ref:
        return {**head, **median_result(_repeat("systemx", opts, run_idle, ctx, line))}
    per_kind = _alternate(opts, ctx, ("systemx", "ref"), run_idle, line)
    out: dict[str, Any] = {**head, **median_result(per_kind["systemx"])}
    _add_baselines(out, per_kind, "systemx", _IDLE_FIGURES, _IDLE_BYTES, "conn", ctx, "bytes/conn")
    return out


def scenario_party(opts: Options, ctx: Context) -> dict[str, Any]:
    from systemx.bench.party import run_party

    corked = ", sender corks its writes" if opts.cork else ""
    ctx.say(
        f"party: {opts.participants} participants, one sender, {opts.inflight} PARTY_MSGs in flight{corked}"
    )
    runs = _repeat(
        "systemx",
        opts,
        run_party,
        ctx,
        lambda r: (
            f"{_fmt(r['deliveries_per_s'], 0)} deliveries/s, "
            f"server {_fmt(r['server_cpu_us_per_delivery'], 3)} us/delivery "
            f"({_pct(r['server_cpu_util'])} busy, generator {_pct(r['gen_cpu_util'])}), "
            f"fan-out p50 {_fmt(r['p50_us'], 0)} p99 {_fmt(r['p99_us'], 0)} us"
        ),
    )
    return {"participants": opts.participants, "cork": opts.cork, **median_result(runs)}


def scenario_presence(opts: Options, ctx: Context) -> dict[str, Any]:
    from systemx.bench.presence import effective_registrations, run_presence

    n = effective_registrations(opts.registrations)
    if n != opts.registrations:
        ctx.say(f"  (open-file limit: {opts.registrations} registrations reduced to {n})")
    opts = _replace(opts, registrations=n)
    ctx.say(f"presence: {n} registered connections, selective PRESENCE queries, {opts.inflight} in flight")

    def line(r: dict[str, Any]) -> str:
        kinds = ", ".join(
            f"{k} {_fmt(r.get(f'{k}_server_cpu_us_per_query'), 1)}" for k in ("domain", "capability", "near")
        )
        return (
            f"{_fmt(r['queries_per_s'], 0)} queries/s, "
            f"server {_fmt(r['server_cpu_us_per_query'], 1)} us/query ({kinds})"
        )

    runs = _repeat("systemx", opts, run_presence, ctx, line)
    out: dict[str, Any] = {"registrations": n, **median_result(runs)}
    presence_core = ctx.suite.presence_core
    if opts.core_entries > 0 and presence_core is not None:
        core = presence_core(ctx.say, opts.core_entries)
        if core is not None:
            out["core"] = core
    return out


def _replace(opts: Options, **changes: Any) -> Options:
    import dataclasses

    return dataclasses.replace(opts, **changes)


_RUNNERS: dict[str, Callable[[Options, Context], dict[str, Any]]] = {
    "relay": scenario_relay,
    "bare": scenario_bare,
    "latency": scenario_latency,
    "callsetup": scenario_callsetup,
    "connect": scenario_connect,
    "idle": scenario_idle,
    "party": scenario_party,
    "presence": scenario_presence,
}


def _plan(scenario: str, opts: Options) -> list[tuple[str, Options]]:
    if scenario == "party":
        sizes = [opts.participants] if opts.participants > 0 else [200, 1000]
        return [("party", _replace(opts, participants=n)) for n in sizes]
    if scenario != "all":
        return [(scenario, opts)]
    plan = [
        ("relay", _replace(opts, size=100)),
        ("relay", _replace(opts, size=4096)),
        ("latency", opts),
        ("callsetup", opts),
        ("connect", opts),
        ("idle", opts),
    ]
    plan += _plan("party", opts)
    plan.append(("presence", opts))
    return plan


def _set_priority(nice: int) -> int | None:
    """Raise this process's priority (inherited by the servers it starts); the value set, or None."""
    if nice == 0 or not hasattr(os, "setpriority"):
        return None
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:
        return None
    return nice


def _emit(line: dict[str, Any]) -> None:
    sys.stdout.write(msgspec.json.encode(line).decode() + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None, suite: Suite | None = None) -> int:
    """Run the scenario named in ``argv``; 0 when every check passed."""
    suite = suite or Suite()
    parser = build_parser(suite)
    ns = parser.parse_args(argv)
    if ns.bun:
        if ns.scenario not in BUN_SCENARIOS:
            parser.error(f"--bun applies to {', '.join(sorted(BUN_SCENARIOS))}, not {ns.scenario}")
        missing = suite.baselines["bun"].missing()
        if missing is not None:
            print(f"{parser.prog}: --bun: {missing}", file=sys.stderr, flush=True)
            return 2
    reference = None
    if ns.ref:
        if ns.scenario not in REF_SCENARIOS:
            parser.error(f"--ref applies to {', '.join(sorted(REF_SCENARIOS))}, not {ns.scenario}")
        try:
            reference = Reference.locate(ns.ref)
        except ServerError as exc:
            print(f"{parser.prog}: --ref: {exc}", file=sys.stderr, flush=True)
            return 2
    opts = _options(ns)
    raise_fd_limit()
    nice = _set_priority(ns.nice)
    if opts.pin and (os.cpu_count() or 1) >= 2:
        # The server gets CPU 0; the generator (and its children) the others.
        pin_to_cpus(0, set(range(1, os.cpu_count() or 2)))

    def say(text: str) -> None:
        if not opts.quiet:
            print(text, flush=True)

    ctx = Context(suite, say, reference)

    status = 0
    plan = _plan(ns.scenario, opts)
    for index, (scenario, sc_opts) in enumerate(plan):
        if sc_opts.profile and len(plan) > 1:
            sc_opts = _replace(sc_opts, profile=f"{sc_opts.profile}.{index}-{scenario}")
        line: dict[str, Any] = {"scenario": scenario}
        try:
            line.update(_RUNNERS[scenario](sc_opts, ctx))
            line["ok"] = True
        except (Violation, ServerError, RuntimeError, OSError) as exc:
            print(f"FAILED {scenario}: {exc}", file=sys.stderr, flush=True)
            line["ok"] = False
            line["error"] = str(exc)
            status = 1
        line["runs"] = sc_opts.runs
        line["nice"] = nice
        if sc_opts.profile:
            line["profile"] = sc_opts.profile
        line["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        _emit(line)
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""The benchmark suite still runs and still checks: a regression guard, not a timing test.

Every scenario runs for about a second with small sizes against a real
``systemx serve`` (and the bare relay) through ``python -m benchmarks``; the
run must pass its frame checks, exit 0 and print one JSON line with the
expected keys. Nothing here asserts a figure. The ``--bun`` tests also run the
Bun relay and are skipped when no ``bun`` executable is found; the ``--ref``
tests run the reference router from ``$SYSTEMX_REFERENCE_DIR`` (else
``.bench/reference``) and are skipped when there is no usable checkout or no
``bun``. The last tests put a faulty relay in front of the generator and
expect it to notice.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

from benchmarks.servers import BUN_ENV, find_bun
from systemx.bench.servers import reference_problem
from tests.conftest import run_command

pytestmark = pytest.mark.slow

SHORT = ["--duration", "1", "--warmup", "0.3"]
COMMON = {"scenario", "ok", "runs", "date"}

needs_bun = pytest.mark.skipif(
    find_bun() is None,
    reason=f"no bun executable (set {BUN_ENV}, put bun on PATH or run `make bench-bun-install`)",
)
REFERENCE_DIR = os.environ.get("SYSTEMX_REFERENCE_DIR") or str(
    Path(__file__).resolve().parents[2] / ".bench" / "reference"
)
needs_reference = pytest.mark.skipif(
    find_bun() is None or reference_problem(REFERENCE_DIR) is not None,
    reason=f"no bun or no reference checkout ({reference_problem(REFERENCE_DIR)}; `make reference`)",
)


async def _bench(
    *args: str, timeout: float = 120.0, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    return await run_command(sys.executable, "-m", "benchmarks", *args, timeout=timeout, env=env)


def _json_lines(stdout: str) -> list[dict[str, Any]]:
    lines = [msgspec.json.decode(line) for line in stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line in:\n{stdout}"
    return lines


async def _passes(*args: str) -> list[dict[str, Any]]:
    code, out, err = await _bench(*args)
    assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    results = _json_lines(out)
    for result in results:
        assert result["ok"] is True
        assert result.keys() >= COMMON
    return results


def _has(result: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if k not in result]
    assert not missing, f"missing {missing} in {result}"
    for k in keys:
        value = result[k]
        assert value is None or isinstance(value, int | float | bool | dict), (k, value)


async def test_relay_against_exchange_and_bare_relay() -> None:
    (result,) = await _passes("relay", "--pairs", "10", *SHORT)
    assert result["scenario"] == "relay"
    _has(
        result,
        "size",
        "msgs",
        "msgs_per_s",
        "server_cpu_us_per_msg",
        "p50_us",
        "p99_us",
        "bare_cpu_us_per_msg",
        "bare_msgs_per_s",
        "ratio_to_bare",
        "rss_kb",
    )
    assert result["msgs"] > 0
    assert result["server_cpu_us_per_msg"] is not None
    assert result["ratio_to_bare"] is not None


async def test_relay_4k_corked_with_two_generator_processes() -> None:
    (result,) = await _passes(
        "relay", "--pairs", "6", "--size", "4096", "--procs", "2", "--cork", "--no-bare", *SHORT
    )
    _has(result, "msgs", "msgs_per_s", "server_cpu_us_per_msg", "p50_us", "p99_us")
    assert result["size"] == 4096
    assert result["cork"] is True
    assert result["msgs"] > 0


async def test_latency_against_exchange_and_bare_relay() -> None:
    (result,) = await _passes("latency", "--samples", "200", "--warm-samples", "50")
    _has(result, "samples", "p50_us", "p99_us", "server_cpu_us_per_msg", "bare_cpu_us_per_msg", "bare_p50_us")
    assert result["samples"] == 200
    assert result["ratio_to_bare"] is not None


async def test_latency_without_the_bare_relay() -> None:
    (result,) = await _passes("latency", "--no-bare", "--samples", "200", "--warm-samples", "50")
    _has(result, "samples", "p50_us", "server_cpu_us_per_msg")
    assert not [key for key in result if "bare" in key]


async def test_callsetup_against_exchange_and_bare_call_router() -> None:
    # The bare relay places the calls too: the generator checks every frame of both.
    (result,) = await _passes("callsetup", "--pairs", "10", "--calls", "200", "--warmup", "0.3")
    _has(
        result,
        "calls",
        "calls_per_s",
        "server_cpu_us_per_call",
        "p50_us",
        "p99_us",
        "bare_calls_per_s",
        "bare_cpu_us_per_call",
    )
    assert result["calls"] == 200
    assert result["bare_cpu_us_per_call"] is not None


async def test_callsetup_that_asks_for_ringing_checks_it() -> None:
    # Each DIAL asks for RINGING: every call must get one naming it, before CONNECTED.
    (result,) = await _passes("callsetup", "--ringing", "--pairs", "5", "--calls", "100", "--warmup", "0.3")
    assert result["calls"] == 100
    assert result["ratio_to_bare"] is not None


async def test_connect_against_exchange_and_bare_relay() -> None:
    (result,) = await _passes("connect", "--conns", "200")
    _has(
        result,
        "registrations_per_s",
        "server_cpu_us_per_registration",
        "server_cpu_us_per_handshake",
        "server_cpu_us_per_register",
        "rss_kb_per_conn",
        "bare_cpu_us_per_registration",
        "bare_cpu_us_per_handshake",
        "bare_cpu_us_per_register",
    )
    assert result["registrations"] == 200
    assert result["ratio_to_bare"] is not None


async def test_idle_memory_of_the_exchange() -> None:
    (result,) = await _passes("idle", "--conns", "200", "--settle", "0.2")
    _has(result, "idle_conns", "bytes_per_idle_conn", "rss_before_kb", "rss_after_kb")
    assert result["idle_conns"] == 200
    assert result["bytes_per_idle_conn"] is not None
    assert not [key for key in result if key.startswith("ref_")]


async def test_party() -> None:
    (result,) = await _passes("party", "--participants", "50", *SHORT)
    _has(result, "participants", "deliveries", "deliveries_per_s", "server_cpu_us_per_delivery", "p50_us")
    assert result["participants"] == 50
    assert result["deliveries"] > 0
    assert result["cork"] is False


async def test_party_with_a_corking_sender() -> None:
    (result,) = await _passes("party", "--participants", "30", "--cork", *SHORT)
    _has(result, "deliveries", "server_cpu_us_per_delivery")
    assert result["cork"] is True
    # Every message reached all 29 others, checked frame by frame by the generator ("ok").
    assert result["deliveries"] > 0


async def test_presence() -> None:
    (result,) = await _passes("presence", "--registrations", "500", "--core-entries", "2000", *SHORT)
    _has(
        result,
        "registrations",
        "queries_per_s",
        "server_cpu_us_per_query",
        "domain_server_cpu_us_per_query",
        "capability_server_cpu_us_per_query",
        "near_server_cpu_us_per_query",
    )
    assert result["registrations"] == 500


# --------------------------------------------------------------------------
# The Bun baseline (--bun).


@needs_bun
async def test_relay_against_exchange_bare_and_bun_relays() -> None:
    (result,) = await _passes("relay", "--bun", "--pairs", "10", *SHORT)
    _has(
        result,
        "msgs",
        "server_cpu_us_per_msg",
        "bare_cpu_us_per_msg",
        "ratio_to_bare",
        "bun_cpu_us_per_msg",
        "bun_msgs_per_s",
        "bun_p50_us",
        "bun_p99_us",
        "ratio_to_bun",
    )
    assert result["bun_cpu_us_per_msg"] is not None
    assert result["ratio_to_bun"] is not None


@needs_bun
async def test_latency_against_exchange_and_bun_relay() -> None:
    (result,) = await _passes("latency", "--bun", "--samples", "200", "--warm-samples", "50")
    _has(result, "samples", "server_cpu_us_per_msg", "bun_cpu_us_per_msg", "bun_p50_us", "ratio_to_bun")
    assert result["samples"] == 200
    assert result["ratio_to_bun"] is not None


@needs_bun
async def test_callsetup_against_exchange_and_bun_baseline() -> None:
    (result,) = await _passes("callsetup", "--bun", "--pairs", "5", *SHORT)
    _has(result, "calls", "server_cpu_us_per_call", "bun_cpu_us_per_call", "bun_calls_per_s", "ratio_to_bun")
    assert result["calls"] > 0
    assert result["bun_cpu_us_per_call"] is not None
    assert result["ratio_to_bun"] is not None


@needs_bun
async def test_connect_against_exchange_and_bun_relay() -> None:
    (result,) = await _passes("connect", "--bun", "--conns", "200")
    _has(
        result,
        "server_cpu_us_per_registration",
        "bun_cpu_us_per_registration",
        "bun_cpu_us_per_handshake",
        "bun_cpu_us_per_register",
        "ratio_to_bun",
    )
    assert result["registrations"] == 200
    assert result["bun_cpu_us_per_registration"] is not None
    assert result["ratio_to_bun"] is not None


# --------------------------------------------------------------------------
# The reference router (--ref DIR).


@needs_reference
async def test_connect_against_exchange_and_reference_router() -> None:
    (result,) = await _passes("connect", "--ref", REFERENCE_DIR, "--no-bare", "--conns", "200", "--runs", "2")
    _has(
        result,
        "server_cpu_us_per_registration",
        "ref_cpu_us_per_registration",
        "ref_cpu_us_per_handshake",
        "ref_cpu_us_per_register",
        "ref_rss_kb_per_conn",
        "ref_ratio",
    )
    # One ratio per pair of runs (exchange run i over reference run i), and their median.
    assert len(result["ref_ratios"]) == 2
    assert result["ref_ratio"] is not None
    assert min(result["ref_ratios"]) <= result["ref_ratio"] <= max(result["ref_ratios"])


@needs_reference
async def test_callsetup_and_relay_against_the_reference_router() -> None:
    (calls,) = await _passes("callsetup", "--ref", REFERENCE_DIR, "--no-bare", "--pairs", "5", *SHORT)
    _has(calls, "calls", "ref_cpu_us_per_call", "ref_calls_per_s", "ref_ratio")
    assert calls["ref_cpu_us_per_call"] is not None
    (relay,) = await _passes("relay", "--ref", REFERENCE_DIR, "--no-bare", "--pairs", "5", *SHORT)
    _has(relay, "msgs", "ref_cpu_us_per_msg", "ref_msgs_per_s", "ref_p50_us", "ref_ratio")
    assert relay["ref_ratio"] is not None


@needs_reference
async def test_idle_memory_against_the_reference_router() -> None:
    (result,) = await _passes("idle", "--ref", REFERENCE_DIR, "--conns", "200", "--settle", "0.2")
    _has(result, "bytes_per_idle_conn", "ref_bytes_per_idle_conn", "ref_ratio")
    assert result["ref_bytes_per_idle_conn"] is not None
    assert result["ref_ratios"] and result["ref_ratio"] is not None


async def test_ref_without_a_checkout_exits_2_and_says_how_to_get_one(tmp_path: Path) -> None:
    code, out, err = await _bench("connect", "--ref", str(tmp_path), "--conns", "10", timeout=60.0)
    assert code == 2, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert "not a checkout of the reference router" in err, err
    assert "make reference" in err, err
    assert "{" not in out, out


def test_ref_is_refused_for_a_scenario_the_reference_cannot_run(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["party", "--ref", "/nonexistent"])
    assert exc.value.code == 2
    assert "--ref applies to" in capsys.readouterr().err


async def test_bun_flag_without_bun_exits_2_and_says_how_to_install() -> None:
    env = {**os.environ, BUN_ENV: "/nonexistent", "PATH": os.path.dirname(sys.executable)}
    code, out, err = await _bench("relay", "--bun", *SHORT, env=env, timeout=60.0)
    assert code == 2, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert "make bench-bun-install" in err, err
    assert "/nonexistent" in err, err
    assert "{" not in out, out


# --------------------------------------------------------------------------
# A relay that breaks one promise: the generator must fail the run.


class _FaultyLink(WSListener):
    def __init__(self, relay: _FaultyRelay) -> None:
        self.relay = relay
        self.transport: WSTransport | None = None
        self.peer: _FaultyLink | None = None
        self.address = ""
        self.forwarded = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            transport.disconnect()
            return
        msg = msgspec.json.decode(frame.get_payload_as_bytes())
        if self.peer is None:
            self.address = msg["address"]
            other = self.relay.waiting.pop(msg["pair"], None)
            if other is None:
                self.relay.waiting[msg["pair"]] = self
                return
            self.peer, other.peer = other, self
            paired = msgspec.json.encode({"type": "PAIRED", "pair": msg["pair"]})
            for link in (self, other):
                assert link.transport is not None
                link.transport.send(WSMsgType.TEXT, paired)
            return
        self.forwarded += 1
        msg["from"] = self.address
        if self.forwarded == 40:
            fault = self.relay.fault
            if fault == "drop":
                return
            if fault == "alter":
                msg["data"] = msg["data"][:-1] + "!"
            elif fault == "spoof":
                msg["from"] = "mallory@relay.bench.local"
            elif fault == "duplicate":
                assert self.peer.transport is not None
                self.peer.transport.send(WSMsgType.TEXT, msgspec.json.encode(msg))
        assert self.peer.transport is not None
        self.peer.transport.send(WSMsgType.TEXT, msgspec.json.encode(msg))


class _FaultyRelay:
    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.waiting: dict[str, _FaultyLink] = {}

    def listener(self, request: WSUpgradeRequest) -> WSListener:
        return _FaultyLink(self)


@pytest.mark.parametrize(
    ("fault", "complaint", "cork"),
    [
        ("drop", "lost", False),
        ("drop", "lost", True),
        ("alter", "data altered", False),
        ("spoof", "MSG from", False),
        ("duplicate", "duplicate", False),
    ],
)
async def test_generator_fails_the_run_on_a_broken_relay(fault: str, complaint: str, cork: bool) -> None:
    server = await ws_create_server(_FaultyRelay(fault).listener, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        args = ["bare", "--url", f"ws://127.0.0.1:{port}", "--pairs", "2", "--no-pin", *SHORT]
        code, out, err = await _bench(*args, *(["--cork"] if cork else []), timeout=60.0)
    finally:
        server.close()
    assert code != 0, f"the run passed despite a {fault} fault:\n{out}"
    assert complaint in err, err
    (result,) = _json_lines(out)
    assert result["ok"] is False
    assert complaint in result["error"]


def test_cli_rejects_an_unknown_scenario() -> None:
    from benchmarks.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["no-such-scenario"])
    assert exc.value.code == 2


def test_help_lists_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.cli import SCENARIOS, main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for scenario in SCENARIOS:
        assert scenario in text

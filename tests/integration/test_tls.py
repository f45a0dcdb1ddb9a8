"""``wss://``: the exchange serving TLS with a certificate made for the test."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme

from tests.conftest import ServerFactory, SystemXProcess
from tests.wsclient import TIMEOUT, WSClient


async def _tls_server(systemx_server: ServerFactory, tmp_path: Path) -> tuple[SystemXProcess, ssl.SSLContext]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_path)
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(cert_path, append=True)
    cert.private_key_pem.write_to_path(key_path)
    server = await systemx_server(
        env={"TLS_ENABLED": "true", "TLS_CERT_PATH": str(cert_path), "TLS_KEY_PATH": str(key_path)}
    )
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server, client_context


async def test_wss_register_round_trip(systemx_server: ServerFactory, tmp_path: Path) -> None:
    server, context = await _tls_server(systemx_server, tmp_path)
    assert server.url.startswith("wss://127.0.0.1:")

    alice = await WSClient.connect(server.url, ssl_context=context)
    bob = await WSClient.connect(server.url + "/any/path", ssl_context=context)
    registered = await alice.register("alice@secure.example.com")
    assert registered["session_id"]
    await bob.register("bob@secure.example.com")

    alice.send_json({"type": "DIAL", "to": "bob@secure.example.com", "ringing": True})
    ring = await bob.expect("RING")
    assert ring["from"] == "alice@secure.example.com"
    bob.send_json({"type": "ANSWER", "call_id": ring["call_id"]})
    await alice.expect("CONNECTED", call_id=ring["call_id"], skip=("RINGING",))
    alice.send_json({"type": "MSG", "call_id": ring["call_id"], "data": "over tls"})
    await bob.expect("MSG", call_id=ring["call_id"], data="over tls")
    # Large frames take the exchange's other write path (header and payload as two buffers).
    big = ["x" * 20_000, "y" * 70_000, "z"]
    for data in big:
        alice.send_json({"type": "MSG", "call_id": ring["call_id"], "data": data})
    for data in big:
        await bob.expect("MSG", call_id=ring["call_id"], data=data)

    await alice.close()
    await bob.close()


async def test_https_healthz(systemx_server: ServerFactory, tmp_path: Path) -> None:
    server, context = await _tls_server(systemx_server, tmp_path)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.get(server.http_url + "/healthz", ssl=context) as response,
    ):
        assert response.status == 200
        assert json.loads(await response.read())["status"] == "ok"


async def test_unreadable_certificate_is_a_config_error(tmp_path: Path) -> None:
    missing = ["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(tmp_path / "missing.key")]
    server = SystemXProcess(tmp_path, args=missing)
    with pytest.raises(RuntimeError, match="systemx: TLS_CERT_PATH"):
        await server.start()
    assert server.proc is not None and server.proc.returncode == 2

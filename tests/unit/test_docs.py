"""The docs cannot drift from the code: state diagram, message vocabulary, reasons, examples."""

from __future__ import annotations

import enum
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest

from systemx.core.calls import mermaid
from systemx.protocol import codes
from systemx.protocol.messages import ClientMessage, ServerMessage, decode_client, decode_server

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = ROOT / "PROTOCOL.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_state_diagram", ROOT / "docs" / "gen_state_diagram.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tags(union: Any) -> set[str]:
    return {t.__struct_config__.tag for t in union.__args__}


CLIENT_TAGS = _tags(ClientMessage)
SERVER_TAGS = _tags(ServerMessage)
ALL_TAGS = sorted(CLIENT_TAGS | SERVER_TAGS)

REASON_ENUMS = [
    obj
    for name in codes.__all__
    if isinstance(obj := getattr(codes, name), type) and issubclass(obj, enum.Enum)
]


@pytest.fixture(scope="module")
def protocol() -> str:
    return PROTOCOL.read_text(encoding="utf-8")


def _json_examples(text: str) -> list[str]:
    return re.findall(r"```json\n(.*?)```", text, re.DOTALL)


# ------------------------------------------------------------------ diagram


@pytest.mark.parametrize("path", [ARCHITECTURE, PROTOCOL], ids=lambda p: p.name)
def test_state_diagram_matches_the_transition_table(path: Path) -> None:
    gen = _load_generator()
    text = path.read_text(encoding="utf-8")
    assert gen.BEGIN in text, f"{path.name} has no state diagram markers"
    assert gen.render(text) == text, f"{path.name} is stale: run python docs/gen_state_diagram.py"
    region = text.split(gen.BEGIN, 1)[1].split(gen.END, 1)[0]
    assert region == f"\n```mermaid\n{mermaid()}```\n"


def test_generator_refuses_unpaired_markers() -> None:
    gen = _load_generator()
    with pytest.raises(ValueError):
        gen.render("no markers here")
    with pytest.raises(ValueError):
        gen.render(f"{gen.BEGIN}\nold\n")


def test_generator_replaces_only_the_marked_region() -> None:
    gen = _load_generator()
    text = f"before\n{gen.BEGIN}\nstale\n{gen.END}\nafter\n"
    assert gen.render(text) == f"before\n{gen.block()}\nafter\n"


# -------------------------------------------------------------- vocabulary


@pytest.mark.parametrize("tag", ALL_TAGS)
def test_every_message_has_a_reference_entry(protocol: str, tag: str) -> None:
    assert re.search(rf"^#### `{tag}`", protocol, re.MULTILINE), f"no '#### `{tag}`' heading"


@pytest.mark.parametrize("tag", ALL_TAGS)
def test_every_message_has_a_json_example(protocol: str, tag: str) -> None:
    types = {
        value.get("type")
        for block in _json_examples(protocol)
        if isinstance(value := msgspec.json.decode(block), dict)
    }
    assert tag in types, f"no JSON example of {tag}"


def test_every_json_example_is_a_valid_message(protocol: str) -> None:
    blocks = _json_examples(protocol)
    assert blocks
    for block in blocks:
        value = msgspec.json.decode(block)  # every example is real JSON
        tag = value.get("type") if isinstance(value, dict) else None
        if tag not in CLIENT_TAGS and tag not in SERVER_TAGS:
            continue  # not a message: /healthz body, webhook body
        raw = block.encode()
        decoders = ([decode_client] if tag in CLIENT_TAGS else []) + (
            [decode_server] if tag in SERVER_TAGS else []
        )
        errors = []
        for decode in decoders:
            try:
                decode(raw)
                break
            except msgspec.ValidationError as exc:
                errors.append(str(exc))
        else:
            pytest.fail(f"example of {tag} does not decode: {errors}\n{block}")


@pytest.mark.parametrize("enum_type", REASON_ENUMS, ids=lambda e: e.__name__)
def test_every_reason_and_close_code_is_documented(protocol: str, enum_type: type[enum.Enum]) -> None:
    missing = [m.value for m in enum_type if f"`{m.value}`" not in protocol]
    assert not missing, f"PROTOCOL.md does not mention {enum_type.__name__} values {missing}"


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -N for repeats."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for heading in re.findall(r"^#{1,6} (.+)$", prose, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.mark.parametrize("path", [ARCHITECTURE, PROTOCOL], ids=lambda p: p.name)
def test_internal_links_resolve(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    anchors = _anchors(text)
    broken = sorted({link for link in re.findall(r"\]\(#([^)]+)\)", text) if link not in anchors})
    assert not broken, f"{path.name} links to missing headings: {broken}"


def test_readme_and_env_example_list_every_variable() -> None:
    from systemx.config import ENV_VARS

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    env_example = (ROOT / ".env.example").read_text(encoding="utf-8")
    for var in ENV_VARS:
        assert f"`{var}`" in readme, f"README.md configuration table lacks {var}"
        assert f"{var}=" in env_example, f".env.example lacks {var}"


def test_readme_states_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make serve" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci

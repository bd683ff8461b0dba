"""The committed vLLM API-surface snapshots against the adapter, without vLLM.

``scripts/vllm_api_surface.py`` reads which vLLM symbols the adapter uses from
the adapter's AST; ``patches/api_surface/vllm-X.json`` records, per vLLM
version, what those symbols are. (a) Every snapshot records exactly what the
adapter uses today, and every override, ``super()`` call and call into vLLM
fits the recorded signature. (b) The supported versions' snapshots agree apart
from ``KNOWN_DIFFERENCES``, each handled by the adapter, and every symbol the
adapter needs exists in each.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from maskkv_vllm.vllm_adapter.version import (
    SUPPORTED_VLLM_VERSION,
    SUPPORTED_VLLM_VERSIONS,
)

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOTS = ROOT / "patches" / "api_surface"
REGENERATE = (
    "python scripts/vllm_api_surface.py VLLM_SOURCE_OR_WHEEL "
    "-o patches/api_surface/vllm-X.json (see patches/README.md)"
)


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "vllm_api_surface", ROOT / "scripts" / "vllm_api_surface.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


surface = _load_script()
USES = surface.adapter_uses()
VERSIONS = sorted(p.stem.removeprefix("vllm-") for p in SNAPSHOTS.glob("vllm-*.json"))

CLI_ENV_SETUP = (
    "vllm.entrypoints.serve.utils.api_utils:cli_env_setup",  # <= 0.32
    "vllm.entrypoints.common.startup:cli_env_setup",  # >= 0.33
)
ALTERNATIVES = [CLI_ENV_SETUP]
"""Keys of which one suffices: ``serve.find_cli_env_setup`` tries them in turn."""

KNOWN_DIFFERENCES = {
    "0.33.0": {
        CLI_ENV_SETUP[0]: "moved in 0.33; serve.find_cli_env_setup tries both",
        CLI_ENV_SETUP[1]: "its 0.33 location, absent from 0.32",
        "vllm.model_executor.layers.vocab_parallel_embedding:ParallelLMHead": (
            "0.33 adds the keyword-only quant_method=None; our call binds to both "
            "(test_calls_into_vllm_fit_the_recorded_signatures)"
        ),
        "vllm.v1.kv_cache_interface:FullAttentionSpec": (
            "0.33 adds the field is_draft (kw-only, default False, compare=False): "
            "model.PoolAttention copies every field of vLLM's spec into "
            "DiffusionKVSpec, and 0.33's merge skips compare=False fields"
        ),
    },
}
"""Supported version -> the keys whose entries differ from the primary pin's,
each with how the adapter handles it (``defined_in`` is not compared: where a
symbol lives behind an unchanged import path is no part of the surface)."""


def snapshot(version: str) -> dict[str, dict]:
    data = json.loads((SNAPSHOTS / f"vllm-{version}.json").read_text())
    assert data["vllm_version"] == version
    return data["symbols"]


# -- signatures ---------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # posonly, pos, kw, varpos, varkw
    default: bool


def parse(params: list[str]) -> list[Param]:
    """The snapshot's ``["self", "n=1", "/", "*", "k", "**kw"]`` as ``Param``s."""
    out, kind = [], "pos"
    for p in params:
        if p == "/":
            out = [Param(q.name, "posonly", q.default) for q in out]
        elif p == "*":
            kind = "kw"
        elif p.startswith("**"):
            out.append(Param(p[2:], "varkw", True))
        elif p.startswith("*"):
            out.append(Param(p[1:], "varpos", True))
            kind = "kw"
        else:
            name, eq, _ = p.partition("=")
            out.append(Param(name, kind, bool(eq)))
    return out


def _bound(params: list[str], decorators: list[str]) -> list[Param]:
    """A method's params as a caller passes them: without self / cls."""
    parsed = parse(params)
    return parsed if "staticmethod" in decorators else parsed[1:]


def callable_params(entry: dict) -> list[Param] | None:
    """What a call of this entry binds to; None when the snapshot cannot say."""
    if entry["kind"] == "class":
        return None if "init" not in entry else parse(entry["init"])
    if entry["kind"] == "function":
        return parse(entry["params"])
    if entry["kind"] == "method":
        return _bound(entry["params"], entry["decorators"])
    return None


def call_problem(params: list[Param], call: ast.Call) -> str | None:
    """Why ``call`` does not bind to ``params`` (None when it does)."""
    positional = [p for p in params if p.kind in ("posonly", "pos")]
    names = {p.name for p in params if p.kind in ("pos", "kw")}
    kinds = {p.kind for p in params}
    splat = any(isinstance(a, ast.Starred) for a in call.args)
    keywords = [k.arg for k in call.keywords]
    n = len(call.args)
    if not splat and n > len(positional) and "varpos" not in kinds:
        return f"{n} positional arguments for {len(positional)}"
    unknown = [k for k in keywords if k and k not in names and "varkw" not in kinds]
    if unknown:
        return f"no parameter {unknown}"
    if splat or None in keywords:
        return None
    given = {p.name for p in positional[:n]} | set(keywords)
    missing = [p.name for p in params if p.kind in KINDS and not p.default]
    missing = [name for name in missing if name not in given]
    return f"required {missing} not passed" if missing else None


KINDS = ("posonly", "pos", "kw")
METHOD_KINDS = ("staticmethod", "classmethod", "property", "cached_property")


def _method_kind(decorators: list[str]) -> str:
    return next((d for d in decorators if d in METHOD_KINDS), "method")


def _positional_match(ours: list[Param], i: int, b: Param, by_name: bool):
    """(our param that receives base param ``b``, or None; a problem, or None)."""
    kinds = {p.kind for p in ours}
    named = {p.name: p for p in ours if p.kind in ("pos", "kw")}
    if by_name:
        found = named.get(b.name)
        return found, None if found or "varkw" in kinds else "no"
    at = [p for p in ours if p.kind in ("posonly", "pos")][i:][:1]
    at = at[0] if at else None
    if b.kind == "pos" and at is not None and at.name != b.name:
        return None, f"takes {at.name!r} where vLLM may pass {b.name!r} by name"
    need = {"varpos"} if b.kind == "posonly" else {"varpos", "varkw"}
    return at, None if at or need <= kinds else "no"


def override_problem(ours: list[Param], base: list[Param], by_name: bool) -> str | None:
    """Why our override would refuse a call vLLM may make of the base method.

    Args:
        ours, base: the two methods' params without self / cls.
        by_name: a protocol, whose callers pass arguments by keyword only.
    """
    kinds, named = {p.kind for p in ours}, {p.name: p for p in ours}
    base_pos = [p for p in base if p.kind in ("posonly", "pos")]
    for i, b in enumerate(base_pos):
        mine, why = _positional_match(ours, i, b, by_name)
        if why:
            return f"does not take {b.name!r} as vLLM passes it" if why == "no" else why
        if mine is not None and b.default and not mine.default:
            return f"requires {b.name!r}, optional in vLLM"
    for b in (p for p in base if p.kind == "kw"):
        mine = named.get(b.name)
        if mine is None and "varkw" not in kinds:
            return f"does not take the keyword {b.name!r}"
        if mine is not None and b.default and not mine.default:
            return f"requires {b.name!r}, optional in vLLM"
    for var, text in (("varpos", "*args"), ("varkw", "**kwargs")):
        if var in {p.kind for p in base} and var not in kinds:
            return f"takes no {text}"
    base_names = {p.name for p in base}
    extra = [p.name for p in ours if p.kind in KINDS and not p.default]
    extra = [name for name in extra if name not in base_names]
    return f"requires {extra}, unknown to vLLM" if extra else None


# -- (a) the snapshots are up to date with the adapter ------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_snapshot_records_exactly_what_the_adapter_uses(version):
    symbols = snapshot(version)
    want = surface.expected_keys({u.key for u in USES}, symbols)
    missing, stale = sorted(want - set(symbols)), sorted(set(symbols) - want)
    assert not missing and not stale, (
        f"vllm-{version}.json is out of date with the adapter (missing {missing}, "
        f"stale {stale}); regenerate it: {REGENERATE}"
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_overrides_accept_every_call_vllm_makes(version):
    symbols, bad = snapshot(version), []
    protocols = set(surface.PROTOCOLS.values())
    for use in (u for u in USES if u.how == "override"):
        base = symbols[use.key]
        if base["kind"] in ("absent", "external"):
            continue  # our own method (absent) or one vLLM does not define
        decorators = [ast.unparse(d) for d in use.node.decorator_list]
        if base["kind"] not in ("method", "property"):
            bad.append(f"{use.where}: overrides the {base['kind']} {use.key}")
            continue
        if _method_kind(decorators) != _method_kind(base["decorators"]):
            bad.append(
                f"{use.where}: {use.key} is a {_method_kind(base['decorators'])}"
            )
            continue
        ours = _bound(surface.params_of(use.node.args), decorators)
        by_name = use.key.rsplit(".", 1)[0] in protocols
        why = override_problem(
            ours, _bound(base["params"], base["decorators"]), by_name
        )
        if why:
            bad.append(f"{use.where}: {use.key} {why}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("version", VERSIONS)
def test_calls_into_vllm_fit_the_recorded_signatures(version):
    symbols, bad = snapshot(version), []
    for use in (u for u in USES if u.how in ("call", "self_call", "super")):
        entry = symbols.get(use.key)
        params = None if entry is None else callable_params(entry)
        if params is None:
            continue  # our own method, or a callee the snapshot cannot type
        why = call_problem(params, use.node)
        if why:
            bad.append(f"{use.where}: {use.key}: {why}")
    assert not bad, "\n".join(bad)


def _installed_vllm() -> Path | None:
    """The installed vLLM's source directory (found, not imported)."""
    spec = importlib.util.find_spec("vllm")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def test_the_installed_vllm_s_surface_is_its_snapshot():
    source = _installed_vllm()
    if source is None:
        pytest.skip("vLLM is not installed")
    snap = surface.snapshot(source)
    path = SNAPSHOTS / f"vllm-{snap['vllm_version']}.json"
    if not path.exists():
        pytest.skip(f"no snapshot for the installed vLLM {snap['vllm_version']}")
    assert surface.dumps(snap) == path.read_text(), REGENERATE


# -- (b) the snapshots agree with the support decision ------------------------


def test_every_supported_version_has_a_snapshot_and_the_pin_comes_first():
    assert SUPPORTED_VLLM_VERSIONS[0] == SUPPORTED_VLLM_VERSION
    assert set(SUPPORTED_VLLM_VERSIONS) <= set(VERSIONS)
    assert set(KNOWN_DIFFERENCES) <= set(SUPPORTED_VLLM_VERSIONS)


def _needed(use, symbols: dict[str, dict]) -> bool:
    """Whether the adapter needs the key to exist: all but our own names (the
    methods and ``self.`` attributes we add to a vLLM subclass)."""
    if use.how == "override":
        return False
    if use.how in ("self", "self_call"):
        parent = symbols.get(surface.parent_key(use.key))
        return parent is not None and parent["kind"] != "class"
    return True


@pytest.mark.parametrize("version", SUPPORTED_VLLM_VERSIONS)
def test_what_the_adapter_needs_exists_in_every_supported_version(version):
    symbols = snapshot(version)
    optional = {key for group in ALTERNATIVES for key in group}
    absent = sorted(
        {u.key for u in USES if u.key in symbols and _needed(u, symbols)} - optional
    )
    absent = [k for k in absent if symbols[k]["kind"] == "absent"]
    assert not absent, f"vLLM {version} lacks {absent}"
    for group in ALTERNATIVES:
        assert any(symbols[k]["kind"] != "absent" for k in group), group


def _surface(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "defined_in"}


@pytest.mark.parametrize("version", SUPPORTED_VLLM_VERSIONS[1:])
def test_supported_versions_differ_only_where_the_adapter_handles_it(version):
    pinned, other = snapshot(SUPPORTED_VLLM_VERSION), snapshot(version)
    assert set(pinned) == set(other)
    differ = {k for k in pinned if _surface(pinned[k]) != _surface(other[k])}
    assert differ == set(KNOWN_DIFFERENCES.get(version, {})), (
        f"vLLM {version} differs from {SUPPORTED_VLLM_VERSION} in "
        f"{sorted(differ)}: handle each and list it in KNOWN_DIFFERENCES, or drop "
        f"{version} from SUPPORTED_VLLM_VERSIONS"
    )


# -- the checker itself --------------------------------------------------------


def _call(src: str) -> ast.Call:
    return ast.parse(src, mode="eval").body


def test_call_binding_names_the_mismatch():
    params = parse(["a", "b=1", "*", "c", "d=2"])
    assert call_problem(params, _call("f(1, c=3)")) is None
    assert (
        call_problem(params, _call("f(1, 2, 3, c=3)")) == "3 positional arguments for 2"
    )
    assert call_problem(params, _call("f(1, c=3, e=4)")) == "no parameter ['e']"
    assert call_problem(params, _call("f(1)")) == "required ['c'] not passed"
    assert call_problem(params, _call("f(*xs, c=3)")) is None


def test_override_check_names_the_mismatch():
    base = parse(["request", "delay=False", "*", "k=None"])
    assert (
        override_problem(parse(["request", "*args", "**kwargs"]), base, False) is None
    )
    assert (
        override_problem(parse(["request", "delay=False", "*", "k=None"]), base, False)
        is None
    )
    assert "'delay'" in override_problem(
        parse(["request", "delay", "*", "k=None"]), base, False
    )
    assert "'k'" in override_problem(parse(["request", "delay=False"]), base, False)
    assert "'request'" in override_problem(
        parse(["req", "delay=False", "**kw"]), base, False
    )
    assert "['extra']" in override_problem(
        parse(["request", "delay=False", "extra", "*", "k=None"]), base, False
    )
    # vLLM builds models by keyword: a keyword-only __init__ meets the protocol.
    protocol = parse(["vllm_config", "prefix=''"])
    assert (
        override_problem(parse(["*", "vllm_config", "prefix=''"]), protocol, True)
        is None
    )

"""Metadata in setup.cfg, tool config in pyproject.toml; the core never needs vLLM."""

from __future__ import annotations

import ast
import configparser
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_has_no_project_table():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "project" not in data
    assert data["build-system"]["build-backend"] == "setuptools.build_meta"


def test_setup_cfg_holds_metadata_and_keeps_vllm_optional():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["name"] == "maskkv-vllm"
    requires = cfg["options"]["install_requires"]
    assert "vllm" not in requires and "ray" not in requires
    extras = cfg["options.extras_require"]
    assert {"vllm", "ray", "bench", "dev"} <= set(extras)
    assert cfg["options.packages.find"]["include"].split() == [
        "maskkv_vllm",
        "maskkv_vllm.*",
    ]


def test_console_script_installed():
    scripts = metadata.entry_points(group="console_scripts")
    assert any(
        ep.name == "maskkv" and ep.value == "maskkv_vllm.cli:main" for ep in scripts
    )


def test_vllm_and_ray_imported_only_in_their_subpackages():
    allowed = {"vllm": "vllm_adapter", "ray": "distributed"}
    for path in (ROOT / "maskkv_vllm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in allowed:
                    assert allowed[top] in path.parts, f"{path} imports {name}"


def test_core_imports_without_vllm():
    code = (
        "import sys; sys.modules['vllm'] = None; sys.modules['ray'] = None\n"
        "import maskkv_vllm.cli, maskkv_vllm.sampler.diffusion_sampler\n"
        "import maskkv_vllm.models.loader"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_vllm_plugin_entry_point_installed():
    plugins = metadata.entry_points(group="vllm.general_plugins")
    assert any(
        ep.name == "maskkv" and ep.value == "maskkv_vllm.vllm_adapter.plugin:register"
        for ep in plugins
    )


# Bottom to top: a module may import maskkv_vllm packages of a lower rank (or its
# own package), never a higher one; imports inside functions count too.
RANKS = {
    "_moved": 0,
    "machine_defaults": 0,
    "paging": 0,
    "models": 1,
    "eviction": 2,
    "config": 3,
    "sampling_params": 3,
    "kv_cache": 4,
    "openai_api": 4,
    "sampler": 5,
    "engine": 6,
    "vllm_adapter": 6,
    "calibration": 6,
    "entrypoints": 7,
    "evaluation": 7,
    "testbeds": 7,
    "bench": 7,
    "distributed": 8,
    "cli": 9,
}


def package_imports():
    """(importing module, its package, imported maskkv_vllm module) for every import."""
    for path in sorted((ROOT / "maskkv_vllm").rglob("*.py")):
        rel = path.relative_to(ROOT / "maskkv_vllm")
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue
        package = rel.parts[0].removesuffix(".py")
        module = "maskkv_vllm." + ".".join(rel.with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("maskkv_vllm."):
                    yield module, package, name


def test_every_package_has_a_rank():
    tops = {p.name.removesuffix(".py") for p in (ROOT / "maskkv_vllm").iterdir()}
    tops -= {"__init__", "__pycache__", "assets"}
    assert tops == set(RANKS)


def test_imports_only_point_down():
    up = []
    for module, package, name in package_imports():
        target = name.split(".")[1]
        if target != package and RANKS[target] >= RANKS[package]:
            up.append(f"{module} imports {name}")
    assert not up, "\n".join(up)


def test_no_import_cycles_inside_a_package():
    graph: dict[str, set[str]] = {}
    for module, _, name in package_imports():
        graph.setdefault(module, set()).add(name)

    def visit(node, path):
        if node in path:
            cycle = path[path.index(node) :] + [node]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        for nxt in graph.get(node, ()):
            visit(nxt, [*path, node])

    for start in graph:
        visit(start, [])


def test_bookkeeping_needs_neither_torch_nor_vllm():
    for path in (ROOT / "maskkv_vllm" / "paging").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                mod = node.module if isinstance(node, ast.ImportFrom) else None
                names = [mod] if mod else [a.name for a in node.names]
                assert not any(
                    n and n.split(".")[0] in ("torch", "vllm") for n in names
                )

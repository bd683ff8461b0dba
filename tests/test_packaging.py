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

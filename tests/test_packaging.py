"""Metadata in setup.cfg, tool config in pyproject.toml; the core never needs vLLM."""

from __future__ import annotations

import ast
import configparser
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

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
        "import maskkv_vllm.cli, maskkv_vllm.worker.model_runner\n"
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
# own package), never a higher one; imports inside functions count too, and an
# import is of the module it names (``from maskkv_vllm import cli``: of ``cli``).
RANKS = {
    "machine_defaults": 0,
    "paging": 0,
    "models": 1,
    "eviction": 2,
    "sampling_params": 3,
    "config": 4,  # the engine's defaults of request options (canvas_cache)
    "kv_cache": 5,
    "openai_api": 5,
    "sampler": 6,
    "worker": 7,
    "engine": 8,
    "vllm_adapter": 8,
    "calibration": 8,
    "entrypoints": 9,
    "evaluation": 9,
    "testbeds": 9,
    "bench": 9,
    "distributed": 10,
    "cli": 11,
}

# The same rule inside a package of subpackages, over its subpackages and its own
# modules (its "units"): vllm_adapter as vLLM is split, shared pieces at the bottom.
INNER_RANKS = {
    "vllm_adapter": {
        "hf_config": 0,
        "kv_spec": 0,
        "request_pages": 0,
        "params": 0,
        "qualnames": 0,
        "version": 0,
        "diffusion_state": 1,
        "core": 2,  # the engine core (vLLM's v1/core)
        "worker": 3,  # the model refuses a scheduler other than core's
        "engine_config": 4,  # names the scheduler, worker and validator classes
        "plugin": 5,
        "entrypoints": 6,
    },
    "testbeds": {"bert": 0},
}


def module_name(path: Path, root: Path) -> str:
    """``maskkv_vllm.a.b`` for ``maskkv_vllm/a/b.py`` or ``.../a/b/__init__.py``."""
    name = ".".join(path.relative_to(root).with_suffix("").parts)
    return name.removesuffix(".__init__")


def is_module(name: str, root: Path) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: Path, root: Path) -> Iterator[str]:
    """Every module the file at ``path`` imports, inside functions too.

    ``from a import b`` imports module ``a.b`` if there is one, else (``b`` a name
    defined in ``a``) module ``a``; relative imports are resolved first.
    """
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parent = package.rsplit(".", node.level - 1)[0] if node.level else ""
            base = ".".join(filter(None, [parent, node.module]))
            for alias in node.names:
                name = f"{base}.{alias.name}"
                yield name if is_module(name, root) else base


def package_imports(root: Path = ROOT) -> Iterator[tuple[str, str]]:
    """(importing module, imported maskkv_vllm module) for every import.

    The top-level ``__init__`` (``__version__``) is neither importer nor imported.
    """
    for path in sorted((root / "maskkv_vllm").rglob("*.py")):
        module = module_name(path, root)
        for name in imported_modules(path, root):
            if module != "maskkv_vllm" and name.startswith("maskkv_vllm."):
                yield module, name


def unit(module: str, depth: int) -> str:
    """Component ``depth`` of a dotted name (1: its package; 2: the unit inside)."""
    parts = module.split(".")
    return parts[depth] if depth < len(parts) else ""


def points_up(module: str, name: str) -> bool:
    package, target = unit(module, 1), unit(name, 1)
    if package != target:
        return RANKS[target] >= RANKS[package]
    ranks = INNER_RANKS.get(package, {})
    here, there = unit(module, 2), unit(name, 2)
    if here == there or here not in ranks or there not in ranks:
        return False  # inside one unit, or the package's __init__
    return ranks[there] >= ranks[here]


def upward_arrows(root: Path = ROOT) -> list[str]:
    return [
        f"{module} imports {name}"
        for module, name in package_imports(root)
        if points_up(module, name)
    ]


def import_cycle(root: Path = ROOT) -> list[str]:
    """One cycle of module imports (its modules, the first repeated last), or []."""
    graph: dict[str, set[str]] = {}
    for module, name in package_imports(root):
        graph.setdefault(module, set()).add(name)
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str]:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return []
        for nxt in sorted(graph.get(node, ())):
            if cycle := visit(nxt, [*path, node]):
                return cycle
        done.add(node)
        return []

    for start in sorted(graph):
        if cycle := visit(start, []):
            return cycle
    return []


def units(package: Path) -> set[str]:
    """A package's own modules and subpackages, by name."""
    modules = {p.stem for p in package.glob("*.py")} - {"__init__"}
    return modules | {p.parent.name for p in package.glob("*/__init__.py")}


def test_every_package_has_a_rank():
    assert units(ROOT / "maskkv_vllm") == set(RANKS)


def test_every_unit_of_a_package_of_subpackages_has_a_rank():
    for package in {p.parent.parent for p in ROOT.glob("maskkv_vllm/*/*/__init__.py")}:
        assert units(package) == set(INNER_RANKS.get(package.name, ())), package.name


def test_imports_only_point_down():
    up = set(upward_arrows())
    assert not up, "\n".join(sorted(up))


def test_no_import_cycles_inside_a_package():
    cycle = import_cycle()
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """A stand-in ``maskkv_vllm`` under ``root``: ``{relative path: source}``."""
    for rel, source in files.items():
        path = root / "maskkv_vllm" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
        for parent in path.relative_to(root).parents[:-1]:
            (root / parent / "__init__.py").touch()
    return root


@pytest.mark.parametrize(
    "line",
    [
        "import maskkv_vllm.cli",
        "from maskkv_vllm.cli import main",
        "from maskkv_vllm import cli",  # was missed: only the package was looked at
        "from .. import cli",  # was missed: relative imports were skipped
    ],
)
def test_every_spelling_of_an_upward_import_is_caught(tmp_path, line):
    root = write_tree(
        tmp_path,
        {"paging/page_pool.py": f"def f():\n    {line}\n", "cli.py": "main = 1\n"},
    )
    up = ["maskkv_vllm.paging.page_pool imports maskkv_vllm.cli"]
    assert upward_arrows(root) == up


@pytest.mark.parametrize(
    "line",
    [
        "from maskkv_vllm.vllm_adapter.entrypoints.validation import VALIDATOR_CLS",
        "from maskkv_vllm.vllm_adapter.entrypoints import validation",
        "from .entrypoints import validation",
    ],
)
def test_an_upward_import_between_units_of_vllm_adapter_is_caught(tmp_path, line):
    root = write_tree(
        tmp_path,
        {
            "vllm_adapter/engine_config.py": line + "\n",
            "vllm_adapter/entrypoints/validation.py": "VALIDATOR_CLS = 'v'\n",
            # Down (entrypoints 6 -> worker 3) and inside one unit: no arrow.
            "vllm_adapter/entrypoints/api.py": (
                "from maskkv_vllm.vllm_adapter.worker import selection\n"
                "from maskkv_vllm.vllm_adapter.entrypoints import validation\n"
            ),
            "vllm_adapter/worker/selection.py": "",
        },
    )
    up = [
        "maskkv_vllm.vllm_adapter.engine_config imports "
        "maskkv_vllm.vllm_adapter.entrypoints.validation"
    ]
    assert upward_arrows(root) == up


def test_a_name_of_the_top_level_package_is_no_arrow(tmp_path):
    root = write_tree(
        tmp_path, {"paging/page_pool.py": "from maskkv_vllm import __version__\n"}
    )
    assert upward_arrows(root) == []


def test_a_cycle_through_from_package_import_module_is_caught(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "paging/a.py": "from maskkv_vllm.paging import b\n",
            "paging/b.py": "def f():\n    from maskkv_vllm.paging import a\n",
        },
    )
    assert import_cycle(root) == [
        "maskkv_vllm.paging.a",
        "maskkv_vllm.paging.b",
        "maskkv_vllm.paging.a",
    ]


def test_bookkeeping_needs_neither_torch_nor_vllm():
    for path in (ROOT / "maskkv_vllm" / "paging").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                mod = node.module if isinstance(node, ast.ImportFrom) else None
                names = [mod] if mod else [a.name for a in node.names]
                assert not any(
                    n and n.split(".")[0] in ("torch", "vllm") for n in names
                )


def test_the_scheduler_and_its_view_of_the_cache_run_without_torch():
    # The scheduler decides admission, reservation and preemption by page counts:
    # plain Python, importable where torch is not (blocked here).
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['vllm'] = None\n"
        "import maskkv_vllm.engine.scheduler, maskkv_vllm.engine.kv_cache_manager\n"
        "import maskkv_vllm.paging.page_table_manager\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]

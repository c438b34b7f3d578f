"""The package's layers: a module imports only from its own layer or the ones below.

`LAYERS` is the order of docs/architecture.md's tree, bottom first. Every import counts,
also those inside functions (the lazy imports of heavy optional code), so an upward import
fails here however it is written.
"""

from __future__ import annotations

import ast
from pathlib import Path

import eqmcli

PACKAGE = Path(eqmcli.__file__).parent

LAYERS: list[set[str]] = [
    {"errors", "atomic", "devices", "seeds"},
    {"backbones", "losses"},
    {"run"},
    {"data", "distributed"},
    {"interop"},
    {"evaluation"},
    {"analysis"},
    {"train"},
    {"bench"},
    {"experiments"},
    {"plotting"},
    {"cli"},
    {"__main__"},
]
LAYER_OF = {part: index for index, layer in enumerate(LAYERS) for part in layer}


def _part(module: str) -> str:
    """The top-level part of an `eqmcli.<part>...` module name."""
    return module.split(".")[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `eqmcli` module the file imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("eqmcli.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "eqmcli":
                found += [(node.lineno, f"eqmcli.{a.name}") for a in node.names]
            elif node.module.startswith("eqmcli."):
                found.append((node.lineno, node.module))
    return found


def _modules() -> list[Path]:
    """Every module of the package but its own ``__init__.py``."""
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {_part(_module_name(path)) for path in _modules()}
    assert parts <= set(LAYER_OF), f"add to LAYERS: {sorted(parts - set(LAYER_OF))}"


def test_no_module_imports_from_a_higher_layer() -> None:
    upward = []
    for path in _modules():
        module = _module_name(path)
        own = LAYER_OF[_part(module)]
        for line, target in _imported(path):
            if LAYER_OF[_part(target)] > own:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from eqmcli.cli.common import user_errors\n")
    assert _imported(source) == [(2, "eqmcli.cli.common")]


def test_the_package_root_holds_only_the_foundations() -> None:
    loose = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert loose == LAYERS[0]

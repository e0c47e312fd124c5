"""The package's layering (DESIGN §1), read from its source with `ast`.

Every import of every module under ``specgrow/`` counts, at module level or inside a
function. `specgrow.pipeline` sits above `specgrow.lower`, which executes, reads and writes,
and `specgrow.verify`, which proves: neither of those imports the other, the pipeline or the
training API (`specgrow.grow`), `verify` and `spec` never import torch, `lower` does not
import SymPy when it is imported, and no imports run in a circle. The rules hold for what a
module reaches through other modules too, and a failure names the chain of imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "specgrow"


@dataclass(frozen=True)
class Import:
    name: str  # absolute: a module of the package when it names one, else what the statement names
    line: int
    at_import: bool  # run when the importing module is imported (not inside a function)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> list[Import]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []

    def visit(node, at_import: bool):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            at_import = False
        if isinstance(node, ast.Import):
            out.extend(Import(alias.name, node.lineno, at_import) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                name = f"{base}.{alias.name}"
                out.append(Import(name if name in MODULES else base, node.lineno, at_import))
        for child in ast.iter_child_nodes(node):
            visit(child, at_import)

    visit(ast.parse(path.read_text(encoding="utf-8")), True)
    return out


IMPORTS = {module: _imports(module, path) for module, path in MODULES.items()}


def _own(name: str) -> str | None:
    """The package's module that an import of ``name`` runs (None for other packages)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _edges(module: str, at_import_only: bool = False) -> list[str]:
    found = {_own(i.name) for i in IMPORTS[module] if i.at_import or not at_import_only}
    return sorted(found - {None, module})


def _within(name: str, *places: str) -> bool:
    return any(name == place or name.startswith(place + ".") for place in places)


def _reached(start: str, at_import_only: bool = False) -> dict[str, list[str]]:
    """Every module ``start`` imports, directly or through others: module -> the chain to it."""
    chains, todo = {start: [start]}, [start]
    while todo:
        module = todo.pop()
        for other in _edges(module, at_import_only):
            if other not in chains:
                chains[other] = chains[module] + [other]
                todo.append(other)
    return chains


def _violations(layer: str, forbidden: tuple[str, ...], external: tuple[str, ...] = (),
                at_import_only: bool = False) -> list[str]:
    """Chains from a module of ``layer`` to a forbidden module of the package, or to a module
    that imports one of the ``external`` packages."""
    out = []
    for start in MODULES:
        if not _within(start, layer):
            continue
        for module, chain in _reached(start, at_import_only).items():
            if _within(module, *forbidden) and not any(_within(m, *forbidden) for m in chain[:-1]):
                out.append(" -> ".join(chain))  # the first forbidden module on the way, not what it imports
            for imp in IMPORTS[module]:
                if _within(imp.name, *external) and (imp.at_import or not at_import_only):
                    out.append(" -> ".join(chain + [f"{imp.name} ({MODULES[module].relative_to(ROOT)}:{imp.line})"]))
    return sorted(set(out))


def test_the_package_is_read():
    assert {"specgrow.cli", "specgrow.grow", "specgrow.lower.stream", "specgrow.verify.prover",
            "specgrow.pipeline.apply"} <= set(MODULES)
    assert "specgrow.verify.prover" in _edges("specgrow.pipeline.proof")  # function-level imports count


def test_lower_imports_neither_verify_nor_the_pipeline_nor_the_training_api():
    found = _violations("specgrow.lower", ("specgrow.verify", "specgrow.pipeline", "specgrow.grow"))
    assert not found, "lower/ reaches:\n" + "\n".join(found)


def test_verify_imports_neither_lower_nor_the_pipeline_nor_the_training_api_nor_torch():
    found = _violations("specgrow.verify", ("specgrow.lower", "specgrow.pipeline", "specgrow.grow"), ("torch",))
    assert not found, "verify/ reaches:\n" + "\n".join(found)


def test_spec_never_imports_torch():
    found = _violations("specgrow.spec", (), ("torch",))
    assert not found, "spec/ reaches torch:\n" + "\n".join(found)


def test_the_training_api_takes_only_the_proving_step_from_the_pipeline():
    used = [m for m in _reached("specgrow.grow") if _within(m, "specgrow.pipeline")]
    assert used == ["specgrow.pipeline.proof"], used


def _cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A path of ``graph`` that comes back to where it started (None if there is none)."""
    state: dict[str, str] = {}  # node -> "open" while on the path, "done" after

    def search(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for other in graph[node]:
            if state.get(other) == "open":
                return path[path.index(other):] + [other]
            if other not in state and (found := search(other, path + [other])):
                return found
        state[node] = "done"
        return None

    for node in graph:
        if node not in state and (found := search(node, [node])):
            return found
    return None


def test_no_imports_in_a_circle():
    found = _cycle({module: _edges(module) for module in MODULES})
    assert found is None, "imports in a circle: " + " -> ".join(found)


def test_a_circle_is_found_and_named():
    assert _cycle({"d": ["a"], "a": ["b"], "b": ["c", "e"], "c": ["a"], "e": []}) == ["a", "b", "c", "a"]
    assert _cycle({"a": ["b"], "b": [], "c": ["a", "b"]}) is None


def test_lower_never_imports_sympy_at_import_time():
    """DESIGN: lower/ never imports sympy at import time (the IR imports it on first use):
    no module-level import reaches it, and importing every lower module leaves it unloaded."""
    found = _violations("specgrow.lower", (), ("sympy",), at_import_only=True)
    assert not found, "lower/ imports sympy when imported:\n" + "\n".join(found)
    lower = [m for m in MODULES if _within(m, "specgrow.lower")]
    code = f"import sys, {', '.join(lower)}\nassert 'sympy' not in sys.modules\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr

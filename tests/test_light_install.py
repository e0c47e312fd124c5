"""The checker without PyTorch: what ``pip install specgrow`` (no extras) gives.

``validate``, ``check``, ``prove`` and ``plan`` are a CI gate and a pre-commit hook, so they
must work, with the full install's verdicts, where torch and safetensors are not installed;
``apply`` and the training API need the ``torch`` extra and say so in one line.

Each test runs specgrow in a subprocess where torch and safetensors cannot be imported, in
one of two ways, put first on PYTHONPATH:

* ``missing``: a ``sitecustomize`` that sets ``sys.modules[name] = None``, so ``import torch``
  raises ModuleNotFoundError and ``importlib.util.find_spec("torch")`` is None, as when it is
  not installed;
* ``broken``: ``torch`` and ``safetensors`` packages whose ``__init__`` raises
  ModuleNotFoundError, so they are found but do not import (a broken install).

Both ``sitecustomize``s also write, at exit, the modules the command imported (to the file
named by ``SPECGROW_TEST_MODULES``), so the tests can check what the light commands load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import ERROR_LINE
from tests.test_golden import FILES as GOLDENS
from tests.test_golden import expectation

ROOT = Path(__file__).resolve().parents[1]
SIX = "examples/six.yaml"
EXAMPLES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.yaml"))
HINT = 'pip install "specgrow[torch]"'
EXTRA = ("torch", "safetensors")
# what the light commands must never import (the training API and the torch executor)
HEAVY = ("torch", "safetensors", "specgrow.lower", "specgrow.grow", "specgrow.models")

RECORD = """
import atexit, os, sys

def _record(path=os.environ.get("SPECGROW_TEST_MODULES")):
    if path:
        with open(path, "w") as f:
            f.write("\\n".join(sorted(name for name, module in sys.modules.items() if module is not None)))

atexit.register(_record)
"""


def _blocker(where: Path, kind: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    site = RECORD
    if kind == "missing":
        site += "".join(f"sys.modules[{name!r}] = None\n" for name in EXTRA)
    else:
        for name in EXTRA:
            (where / name).mkdir(exist_ok=True)
            (where / name / "__init__.py").write_text(
                f"raise ModuleNotFoundError(\"No module named '{name}' (blocked by a test)\", name={name!r})\n")
    (where / "sitecustomize.py").write_text(site)
    return where


@pytest.fixture(scope="module", params=["missing", "broken"])
def no_torch(request, tmp_path_factory):
    """A PYTHONPATH entry under which torch and safetensors cannot be imported."""
    return _blocker(tmp_path_factory.mktemp(f"no-torch-{request.param}"), request.param)


@pytest.fixture(scope="module")
def missing_torch(tmp_path_factory):
    return _blocker(tmp_path_factory.mktemp("no-torch-missing"), "missing")


def run_light(blocker: Path, args: list[str], record: Path | None = None, code: str | None = None):
    """Run ``python -m specgrow.cli ARGS`` (or ``python -c CODE``) from the repository root
    with torch blocked; ``record`` receives the names of the modules it imported."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("SPECGROW_TEST_MODULES", None)
    if record is not None:
        env["SPECGROW_TEST_MODULES"] = str(record)
    command = [sys.executable, "-c", code] if code is not None else [sys.executable, "-m", "specgrow.cli", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def heavy_imports(record: Path) -> list[str]:
    names = record.read_text().split()
    return [n for n in names if any(n == h or n.startswith(h + ".") for h in HEAVY)]


def test_blocker_blocks(no_torch):
    proc = run_light(no_torch, [], code="import torch")
    assert proc.returncode == 1 and "ModuleNotFoundError" in proc.stderr, proc.stderr
    proc = run_light(no_torch, [], code="import safetensors")
    assert proc.returncode == 1 and "ModuleNotFoundError" in proc.stderr, proc.stderr


def test_check_goldens_without_torch_gives_their_verdicts(missing_torch, tmp_path):
    """Every golden's verdict without torch is its ``# expect:`` line, REFUTED ones included
    (their counterexamples must not need torch), and nothing heavy is imported."""
    record = tmp_path / "modules"
    paths = [str(p.relative_to(ROOT)) for p in GOLDENS]
    proc = run_light(missing_torch, ["check", *paths, "--format", "json"], record)
    if proc.returncode not in (0, 1) or not proc.stdout:
        last = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        pytest.fail(f"check without torch exited {proc.returncode} with no report: {last}")
    found = {}
    for entry in json.loads(proc.stdout):
        name = Path(entry["spec"]).name
        found[name] = entry.get("verdict") or f"invalid: {entry.get('error')}"
    expected = {p.name: expectation(p)[0] for p in GOLDENS}
    wrong = {name: f"expected {verdict}, found {found.get(name, 'nothing')}"
             for name, verdict in expected.items() if found.get(name) != verdict}
    assert not wrong, f"{len(wrong)} of {len(expected)} goldens differ without torch: {wrong}"
    assert proc.returncode == (0 if set(expected.values()) == {"PROVED"} else 1)
    assert heavy_imports(record) == []


@pytest.mark.parametrize("args", [
    ["validate", *EXAMPLES],
    ["check", *EXAMPLES],
    ["check", SIX, "--format", "sarif"],
    ["prove", SIX],
    ["prove", SIX, "--json"],
    ["plan", SIX],
    ["plan", "examples/llama2-7b.yaml"],
], ids=lambda args: " ".join(a.removeprefix("examples/") for a in args[:3]))
def test_light_commands_without_torch_match_the_full_install(missing_torch, tmp_path, capsys, args):
    """Exit 0, the same stdout as in this (full) install, and no torch, safetensors or
    `specgrow.lower` imported."""
    from specgrow.cli import main

    record = tmp_path / "modules"
    proc = run_light(missing_torch, args, record)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert heavy_imports(record) == []
    cwd = os.getcwd()
    os.chdir(ROOT)  # the reports name the spec as given
    try:
        assert main(args) == 0
    finally:
        os.chdir(cwd)
    full = capsys.readouterr().out
    if "--json" in args or "sarif" in args:
        assert untimed(json.loads(proc.stdout)) == untimed(json.loads(full))
    elif args[0] != "check":  # check's text report has timings
        assert proc.stdout == full


def untimed(data):
    """JSON data minus its timings (the ``seconds`` of each obligation)."""
    if isinstance(data, dict):
        return {key: untimed(value) for key, value in data.items() if key != "seconds"}
    if isinstance(data, list):
        return [untimed(value) for value in data]
    return data


def test_prove_without_torch_writes_the_committed_certificate(missing_torch, tmp_path):
    from specgrow.verify.report import without_versions

    out = tmp_path / "six.md"
    proc = run_light(missing_torch, ["prove", SIX, "-o", str(out)])
    assert proc.returncode == 0, proc.stderr
    committed = (ROOT / "proofs" / "six.md").read_text(encoding="utf-8")
    assert without_versions(out.read_text(encoding="utf-8")) == without_versions(committed)


@pytest.mark.parametrize("extra", [[], ["--input", "examples/six.yaml"], ["--output-format", "dcp"]],
                         ids=["reference", "input", "dcp"])
def test_apply_without_torch_is_one_line_exit_2_nothing_written(no_torch, tmp_path, extra):
    out = tmp_path / "grown"
    proc = run_light(no_torch, ["apply", SIX, "--output", str(out), *extra])
    assert proc.returncode == 2, proc.stderr
    assert ERROR_LINE.match(proc.stderr), proc.stderr  # exactly one line, FILE:LINE:COL: error: ...
    assert proc.stderr.startswith("specgrow:1:1: error: apply needs PyTorch ("), proc.stderr
    assert proc.stderr.rstrip("\n").endswith(HINT), proc.stderr
    assert proc.stdout == ""
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no output, no temporary sibling


def test_apply_without_torch_is_refused_before_the_spec_is_read(missing_torch, tmp_path):
    """Even a bad spec gets the one line about torch: nothing else is looked at first."""
    proc = run_light(missing_torch, ["apply", str(tmp_path / "nope.yaml"), "--output", str(tmp_path / "g")])
    assert proc.returncode == 2 and ERROR_LINE.match(proc.stderr) and HINT in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


TRAINING_API = """
import specgrow
assert specgrow.load_spec("examples/six.yaml").steps  # the light part still works
for touch in ("specgrow.grow_module", "specgrow.GrowthSchedule", "specgrow.grow_adam_state",
              "__import__('specgrow.grow')", "exec('from specgrow import grow_module')"):
    try:
        eval(touch)
    except ImportError as err:
        print(f"{touch}\\t{err}")
    else:
        print(f"{touch}\\tno error")
"""


def test_training_api_without_torch_raises_import_error_with_the_hint(no_torch):
    proc = run_light(no_torch, [], code=TRAINING_API)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 5, proc.stdout  # each message is one line
    for line in lines:
        touch, message = line.split("\t")
        assert "needs PyTorch (" in message and message.endswith(HINT), line
    assert lines[0].split("\t")[1].startswith("specgrow.grow needs PyTorch ("), lines[0]


def test_the_light_install_leaves_torch_out():
    """``pip install specgrow`` pulls no torch; the ``torch`` extra and ``dev`` do."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def names(requirements):
        return {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
                for r in requirements}

    assert names(project["dependencies"]) == {"sympy", "pyyaml", "jsonschema", "numpy"}
    extras = project["optional-dependencies"]
    assert {"torch", "safetensors"} <= names(extras["torch"])
    assert "specgrow[torch]" in extras["dev"]

"""What an output folder records beside the weights: the spec, the certificate, the lineage and
the manifest.

`write_record` adds, to a folder whose weights are written, ``spec.yaml`` (the spec's bytes as
read), ``proof.md`` (the certificate), ``history/`` (when the input was itself a specgrow
output: every earlier growth's record, `specgrow.pipeline.lineage`) and last
``specgrow-manifest.json``. The manifest holds its format number; specgrow's version and, run
from a git checkout, its commit; how the growth was asked for (the command line's argv and
options, or a Python function and its plain-data arguments); the spec's path and sha256; the
seed; the input (its path and the sha256 of each of its files, or the reference model's
seed); the device; the versions of Python, torch, SymPy and safetensors; the proof (verdict,
number of obligations, sha256 of the certificate); the numeric check; the parameter counts;
the output's files (every one but the manifest) with their sha256; and the parent's manifest
sha256 when the input was grown.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
from pathlib import Path

import specgrow
from specgrow.lower.hashes import folder_files, hash_in_background, resolved
from specgrow.pipeline.lineage import CERTIFICATE, HISTORY, MANIFEST, MANIFEST_FORMAT, SPEC_COPY, keep_history

RECORD_FILES = (MANIFEST, CERTIFICATE, SPEC_COPY, HISTORY)  # never copied from the input as side files
PLAIN = (str, int, float, bool, type(None))
HASH = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")  # a SHA-1 or SHA-256 object name


def build_manifest(spec, plan, opened, device, proof: dict, check, output: dict, invocation: dict) -> dict:
    """The manifest of growing ``opened`` by ``plan`` (``proof``: a `specgrow.pipeline.proof.summary`;
    ``check``: the numeric check's result, or None when it did not run; ``invocation``:
    `command_line` or `python_call`). `write_record` adds the output's files and the parent."""
    return {
        "manifest_format": MANIFEST_FORMAT,
        "specgrow": release(),
        "invocation": invocation,
        "spec": {"path": spec.path, "sha256": spec.sha256, "copy": SPEC_COPY},
        "seed": spec.seed,
        "input": {key: resolved(value) for key, value in opened.manifest.items()},
        "device": str(device),
        "versions": versions(),
        "proof": {
            "verdict": proof["verdict"],
            "obligations": proof["obligations"],
            "certificate_sha256": hashlib.sha256(proof["markdown"].encode("utf-8")).hexdigest(),
        },
        "numeric_check": check.as_dict() if check is not None else None,
        "parameters": {"before": plan.before.parameter_count(), "after": plan.after.parameter_count()},
        "output": output,
    }


def write_record(folder: Path, spec, proof: dict, manifest: dict, input_path=None, hashes: dict | None = None) -> dict:
    """Write the spec, the certificate and, when ``input_path`` is a specgrow output, its lineage
    into ``folder``; then the manifest, with the sha256 of every file in the folder. ``hashes``:
    ``{relative path: sha256 or future}`` of files hashed already (weights, as they were written).
    Returns the manifest."""
    (folder / SPEC_COPY).write_bytes(spec.source)
    (folder / CERTIFICATE).write_text(proof["markdown"], encoding="utf-8")
    parent = keep_history(input_path, folder) if input_path is not None else None
    if parent is not None:
        manifest["parent"] = parent
    known = hashes or {}
    files, _ = folder_files(folder)
    pending = hash_in_background({rel: path for rel, path in files.items() if rel not in known})
    manifest["output"]["files"] = resolved({rel: known.get(rel) or pending[rel] for rel in files})
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def command_line(argv: list[str], options: dict) -> dict:
    """How ``specgrow`` was run: its arguments and the options they were parsed into."""
    return {"argv": ["specgrow", *argv], "options": {key: _plain(value) for key, value in options.items()}}


def python_call(function: str, **arguments) -> dict:
    """How a Python caller ran the growth: the function and those of its arguments that are plain
    data (paths as strings, dataclasses of plain fields as objects; the rest left out)."""
    plain = {name: _plain(value) for name, value in arguments.items()}
    return {"function": function, "arguments": {name: value for name, value in plain.items() if _is_plain(value)}}


def _plain(value):
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    return value


def _is_plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_plain(item) for key, item in value.items())
    return isinstance(value, PLAIN)


def release() -> dict:
    """specgrow's version and, run from a git checkout, its commit."""
    commit = checkout_commit()
    return {"version": specgrow.__version__, **({"commit": commit} if commit else {})}


def checkout_commit() -> str | None:
    """The commit of the git checkout specgrow runs from, read from its ``.git`` (no ``git``
    process); None when specgrow is not run from a checkout, or the commit cannot be read."""
    git = Path(specgrow.__file__).resolve().parent.parent / ".git"
    try:
        if git.is_file():  # a worktree or a submodule: "gitdir: PATH"
            git = (git.parent / git.read_text().strip().removeprefix("gitdir:").strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head if HASH.match(head) else None  # a detached HEAD
        common = git / (git / "commondir").read_text().strip() if (git / "commondir").is_file() else git
        return _ref(head.removeprefix("ref:").strip(), git, common)
    except (OSError, UnicodeDecodeError):
        return None


def _ref(ref: str, git: Path, common: Path) -> str | None:
    """The object name of ``ref``: from its loose file, else from ``packed-refs``."""
    for base in (git, common):
        if (base / ref).is_file():
            name = (base / ref).read_text().strip()
            return name if HASH.match(name) else None
    packed = common / "packed-refs"
    lines = packed.read_text().splitlines() if packed.is_file() else []
    found = [line.split()[0] for line in lines if line.endswith(" " + ref)]
    return found[0] if found and HASH.match(found[0]) else None


def versions() -> dict:
    """The versions the manifest records."""
    import safetensors
    import sympy
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "sympy": sympy.__version__, "safetensors": safetensors.__version__}

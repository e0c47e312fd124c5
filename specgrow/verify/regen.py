"""Regenerate the proof certificates in ``proofs/``: ``python -m specgrow.verify.regen [--check]``.

Run from the repository root (or pass ``--root``). Every spec in ``proofs/specs/`` and
``examples/`` is proved and its Markdown certificate written to ``proofs/<name>.md``.
``--check`` writes nothing and exits 1 naming each certificate that is missing, stale or
left without a spec. A certificate's versions line is not compared, so a new SymPy or Python
alone does not make it stale; a certificate that differs only there is not rewritten.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from specgrow.errors import SpecgrowError
from specgrow.verify.report import render_markdown, without_versions, write_atomic

SOURCES = ("proofs/specs", "examples")
OUTPUT = "proofs"
REGEN = "python -m specgrow.verify.regen"


def sources(root: Path) -> dict[str, str]:
    """``{certificate path: spec path}``, both relative to ``root`` (POSIX), in a stable order."""
    found: dict[str, str] = {}
    for folder in SOURCES:
        for spec in sorted([*(root / folder).glob("*.yaml"), *(root / folder).glob("*.yml")]):
            relative = spec.relative_to(root).as_posix()
            target = f"{OUTPUT}/{spec.stem}.md"
            if target in found:
                raise SpecgrowError(f"{relative} and {found[target]} would both write {target}; rename one",
                                    path=relative)
            found[target] = relative
    return found


def certificate(root: Path, spec_path: str) -> tuple[str, str]:
    """``(verdict, Markdown certificate)`` of a spec, named by its path relative to ``root``."""
    from specgrow.spec import load_spec_text
    from specgrow.verify.prover import prove_spec

    cert = prove_spec(load_spec_text((root / spec_path).read_bytes(), spec_path))
    return cert.verdict.value, render_markdown(cert)


def _is_fresh(path: Path, markdown: str) -> bool:
    return path.is_file() and without_versions(path.read_text(encoding="utf-8")) == without_versions(markdown)


def regenerate(root: Path, check: bool) -> list[str]:
    """Bring ``proofs/`` up to date (or only compare, with ``check``); returns the problems found."""
    targets = sources(root)
    problems = []
    for target, spec_path in targets.items():
        verdict, markdown = certificate(root, spec_path)
        path = root / target
        if _is_fresh(path, markdown):
            print(f"{target}: up to date ({verdict})")
        elif check:
            state = "stale" if path.exists() else "missing"
            problems.append(f"{target}: {state} (spec {spec_path}); regenerate with `{REGEN}`")
        else:
            write_atomic(path, markdown)
            print(f"{target}: written ({verdict})")
    for orphan in sorted((root / OUTPUT).glob("*.md")):
        target = orphan.relative_to(root).as_posix()
        if target in targets or orphan.name == "README.md":
            continue
        if check:
            problems.append(f"{target}: no spec in {' or '.join(SOURCES)} makes it; regenerate with `{REGEN}`")
        else:
            orphan.unlink()
            print(f"{target}: removed (no spec makes it)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGEN, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming every missing, stale or orphaned certificate")
    parser.add_argument("--root", default=".", help="repository root (default: the current directory)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not (root / SOURCES[0]).is_dir():
        print(f"{REGEN}: error: no {SOURCES[0]}/ under {root}; run from the repository root", file=sys.stderr)
        return 2
    try:
        problems = regenerate(root, args.check)
    except SpecgrowError as err:
        print(err.render(), file=sys.stderr)
        return err.exit_code
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""``specgrow audit DIR``: does a folder written by ``apply`` still hold what its record says?

Every difference is one line naming the file or the record:

- each file of DIR but the manifest is listed in the manifest with the same sha256, and each
  listed file is there (a file added later is reported as unlisted);
- ``spec.yaml`` has the spec's sha256, and re-proved it gives the manifest's verdict and the
  certificate in ``proof.md`` (its versions footer line aside);
- the lineage (`specgrow.pipeline.lineage`): walking ``history/`` from the parent back to the
  first growth, each entry's manifest has the sha256 that its child's ``parent`` records, and
  each entry's spec re-proves to its certificate.

The input is re-hashed only when its path is still there, and what differs there is a note
(the input may have changed since the growth), as is a growth written with
``--allow-unproved``. Needs neither torch nor safetensors: hashing and proving do not.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from specgrow.errors import InputError, SpecgrowError
from specgrow.lower.hashes import folder_files, hash_in_background, resolved, sha256_file
from specgrow.pipeline.lineage import CERTIFICATE, HISTORY, MANIFEST, MANIFEST_FORMAT, SPEC_COPY, entries


@dataclass
class Report:
    """What an audit found: one line per file or record that differs, notes, and counts."""

    folder: str
    problems: dict[str, str] = field(default_factory=dict)  # shown path -> its first difference
    notes: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def problem(self, shown: str, message: str) -> None:
        self.problems.setdefault(shown, message)

    def lines(self) -> list[str]:
        """The problem lines, the notes, then one summary line."""
        head = [f"{shown}: {message}" for shown, message in self.problems.items()]
        notes = [f"{self.folder}: note: {note}" for note in self.notes]
        if self.passed:
            return notes + [f"{self.folder}: OK: " + "; ".join(self.summary)]
        return head + notes + [f"{self.folder}: {len(self.problems)} difference(s) from the record"]


def audit(folder) -> Report:
    """Audit the output folder ``folder``; `InputError` (exit 2) when it is not one."""
    root, shown = Path(folder), os.fspath(folder)
    report = Report(shown)
    manifest = _top_manifest(root, shown, report)
    if manifest is None:
        return report
    files, skipped = folder_files(root)
    files.pop(MANIFEST, None)
    hashes = hash_in_background(files)  # hashed while the specs are re-proved
    inputs = _input_hashes(manifest.get("input"), report)
    verdict = _reproves(root, shown, manifest, report)
    earlier = _lineage(root, shown, manifest, report)
    _compare_files(shown, manifest["output"]["files"], resolved(hashes), skipped, report)
    input_line = _compare_input(manifest.get("input"), inputs, report)
    _notes(manifest, report)
    report.summary = [f"{len(files)} files agree with the manifest",
                      f"{SPEC_COPY} re-proves {verdict}, as {CERTIFICATE} says",
                      f"{earlier} earlier growth(s) in {HISTORY}/ agree"] + ([input_line] if input_line else [])
    return report


def _join(*parts: str) -> str:
    return os.path.join(*parts)


def _top_manifest(root: Path, shown: str, report: Report) -> dict | None:
    """The folder's manifest; None when it is damaged (reported), `InputError` when there is none,
    or one written before audit."""
    if not root.is_dir():
        raise InputError(f"'{shown}' is not a folder", path=shown)
    path = root / MANIFEST
    if not path.is_file():
        raise InputError(f"not a specgrow output: no {MANIFEST}", path=shown)
    manifest, problem = _read_manifest(path)
    if problem is not None:
        report.problem(_join(shown, MANIFEST), problem)
        return None
    if manifest.get("manifest_format") != MANIFEST_FORMAT:
        raise InputError(f"{MANIFEST}: format {manifest.get('manifest_format', 1)}, written by a specgrow "
                         f"before audit: it does not record every file (format {MANIFEST_FORMAT} does)", path=shown)
    return manifest


def _read_manifest(path: Path) -> tuple[dict, str | None]:
    """A manifest and None, or ``({}, what is wrong with it)``."""
    try:
        manifest = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        return {}, f"not JSON ({' '.join(str(exc).split())})"
    ok = isinstance(manifest, dict) and all(isinstance(manifest.get(key), dict) for key in ("spec", "proof", "output"))
    ok = ok and isinstance(manifest["output"].get("files"), dict)
    return (manifest, None) if ok else ({}, "not a specgrow manifest (spec, proof or output files missing)")


def _reproves(where: Path, shown: str, manifest: dict, report: Report) -> str | None:
    """Re-prove ``where``'s spec.yaml; report where it, the manifest or proof.md disagree. The
    verdict, or None when there is no spec to prove."""
    spec_file = where / SPEC_COPY
    if not spec_file.is_file():
        if manifest.get("manifest_format") is None:  # an entry written before specs were kept
            report.notes.append(f"{_join(shown, MANIFEST)} predates {SPEC_COPY} copies: not re-proved")
        else:
            report.problem(_join(shown, SPEC_COPY), "missing, so the certificate cannot be re-proved")
        return None
    data = spec_file.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest["spec"].get("sha256"):
        report.problem(_join(shown, SPEC_COPY), "sha256 differs from the spec's in the manifest")
        return None
    from specgrow.spec import load_spec_text
    from specgrow.verify.prover import prove_spec
    from specgrow.verify.report import render_markdown, without_versions

    try:
        cert = prove_spec(load_spec_text(data, str(manifest["spec"].get("path"))))
    except SpecgrowError as err:
        report.problem(_join(shown, SPEC_COPY), f"no longer a valid spec: {err.message}")
        return None
    verdict = cert.verdict.value
    if verdict != manifest["proof"].get("verdict"):
        report.problem(_join(shown, MANIFEST), f"records the verdict {manifest['proof'].get('verdict')}, but "
                                               f"{SPEC_COPY} re-proves {verdict}")
    certificate = where / CERTIFICATE
    if not certificate.is_file():
        report.problem(_join(shown, CERTIFICATE), "missing")
    elif without_versions(certificate.read_text(encoding="utf-8", errors="replace")) != \
            without_versions(render_markdown(cert)):
        report.problem(_join(shown, CERTIFICATE), f"differs from the certificate {SPEC_COPY} re-proves to")
    return verdict


def _lineage(root: Path, shown: str, manifest: dict, report: Report) -> int:
    """Walk ``history/`` from the parent back to the first growth; the number of entries."""
    found = entries(root)
    numbers = [number for number, _ in found]
    if numbers != list(range(1, len(found) + 1)):
        expected = ", ".join(str(number) for number in range(1, len(found) + 1))
        report.problem(_join(shown, HISTORY), f"entries numbered {', '.join(map(str, numbers))}; expected {expected}")
        return len(found)
    child, child_shown = manifest, _join(shown, MANIFEST)
    for number, entry in reversed(found):
        entry_shown = _join(shown, HISTORY, str(number))
        parent = child.get("parent")
        if not isinstance(parent, dict):
            report.problem(child_shown, f"records no parent, but {HISTORY}/{number} holds one")
            return len(found)
        manifest_file = entry / MANIFEST
        if not manifest_file.is_file():
            report.problem(_join(entry_shown, MANIFEST), "missing")
            return len(found)
        if sha256_file(manifest_file) != parent.get("manifest_sha256"):
            report.problem(_join(entry_shown, MANIFEST), f"sha256 differs from the parent's in {child_shown}")
        child, problem = _read_manifest(manifest_file)
        if problem is not None:
            report.problem(_join(entry_shown, MANIFEST), problem)
            return len(found)
        _reproves(entry, entry_shown, child, report)
        child_shown = _join(entry_shown, MANIFEST)
    if child.get("parent") is not None:
        report.problem(child_shown, f"records a parent whose record {HISTORY}/ does not hold")
    return len(found)


def _compare_files(shown: str, listed: dict, found: dict, skipped: list, report: Report) -> None:
    """Each file found against the manifest's list, and each listed file that is not there."""
    for rel, digest in found.items():
        if rel not in listed:
            report.problem(_join(shown, rel), "not listed in the manifest")
        elif listed[rel] != digest:
            report.problem(_join(shown, rel), "sha256 differs from the manifest")
    for rel in skipped:
        report.problem(_join(shown, rel), "a symbolic link out of the folder, not listed in the manifest")
    for rel in listed:
        if rel not in found and rel != MANIFEST:
            report.problem(_join(shown, rel), "listed in the manifest, but missing")


def _input_hashes(record, report: Report) -> dict | None:
    """The future sha256 of the input's listed files that are still there; None when there is
    nothing to re-check (the reference model, or an input that is gone: a note says so)."""
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict) or "path" not in record:
        return None
    where = Path(record["path"])
    if not where.exists():
        report.notes.append(f"the input '{where}' is not there: its files are not re-checked")
        return None
    present = folder_files(where)[0] if where.is_dir() else {where.name: where}
    return hash_in_background({rel: present[rel] for rel in record["files"] if rel in present})


def _compare_input(record, inputs: dict | None, report: Report) -> str | None:
    """Notes for the input's files that changed or went since the growth; the summary's words
    on the input (None when it was not re-checked)."""
    if inputs is None:
        return None
    changed = [rel for rel, digest in record["files"].items()
               if rel not in inputs or inputs[rel].result() != digest]
    where = Path(record["path"])
    for rel in changed:
        report.notes.append(f"input '{where / rel if where.is_dir() else where}': "
                            f"{'changed' if rel in inputs else 'gone'} since the growth")
    return f"the input's {len(record['files']) - len(changed)} of {len(record['files'])} files agree"


def _notes(manifest: dict, report: Report) -> None:
    """Notes for a growth written despite a failed proof or numeric check (--allow-unproved)."""
    if manifest["proof"].get("verdict") != "PROVED":
        report.notes.append(f"the spec was {manifest['proof'].get('verdict')} (written with --allow-unproved)")
    check = manifest.get("numeric_check")
    if isinstance(check, dict) and check.get("passed") is False:
        report.notes.append("the numeric check failed (written with --allow-unproved)")

"""Output paths never lose the user's data: overlaps with the inputs, files and links at the
output, folders that appear while `apply` runs, and the atomic swap of ``--overwrite``."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from specgrow import publish as publish_module
from specgrow.cli import main
from specgrow.errors import InputError
from specgrow.lower.checkpoint import atomic_directory
from specgrow.models.reference import random_state
from specgrow.publish import output_target, publish
from specgrow.shape import ModelShape
from specgrow.spec import load_spec
from tests.helpers import spec_text

ERROR_LINE = re.compile(r"^[^\n]+:\d+:\d+: error: [^\n]+\n$")
COMPLETE = ["config.json", "model.safetensors", "proof.md", "spec.yaml", "specgrow-manifest.json"]


def snapshot(root: Path) -> dict:
    """Every path under ``root`` (links not followed) with its bytes or link target."""
    found = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = ("link", os.readlink(path))
        elif path.is_file():
            found[name] = path.read_bytes()
        else:
            found[name] = "folder"
    return found


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def spec(tmp_path) -> str:
    """A tiny spec, with its input in ``data/``, as ``in.safetensors`` and as a folder ``in/``."""
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text([{"mlp": {"to": 48}}]))
    state = random_state(ModelShape.from_spec(load_spec(str(path)).model), seed=7)
    (tmp_path / "data" / "in").mkdir(parents=True)
    save_file(state, str(tmp_path / "data" / "in.safetensors"))
    save_file(state, str(tmp_path / "data" / "in" / "model.safetensors"))
    return str(path)


def refused(args, capsys, message: str, root: Path) -> None:
    """``args`` exits 2 with one line holding ``message`` and changes nothing under ``root``."""
    before = snapshot(root)
    code, _, err = run(args, capsys)
    assert code == 2 and ERROR_LINE.match(err), err
    assert message in err, err
    assert snapshot(root) == before


# 1. an output that overlaps the input

OVERLAPS = {  # (--input, --output) relative to tmp_path
    "same-folder": ("data/in", "data/in"),
    "dot-dot": ("data/in", "data/in/../in"),
    "inside-folder": ("data/in", "data/in/grown"),
    "containing-folder": ("data/in", "data"),
    "link-to-folder": ("data/in", "link"),
    "inside-link": ("data/in", "link/grown"),
    "link-as-input": ("link", "data/in"),
    "same-file": ("data/in.safetensors", "data/in.safetensors"),
    "containing-file": ("data/in.safetensors", "data"),
}


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("source,output", OVERLAPS.values(), ids=OVERLAPS.keys())
def test_output_overlapping_the_input_is_refused(tmp_path, spec, capsys, monkeypatch, source, output, overwrite):
    (tmp_path / "link").symlink_to(tmp_path / "data" / "in")
    monkeypatch.chdir(tmp_path)
    args = ["apply", spec, "--input", source, "-o", output, "-q"] + ["--overwrite"] * overwrite
    refused(args, capsys, f"output '{output}' overlaps the input '{source}'", tmp_path)


def test_output_hard_linked_to_the_input_file_is_refused(tmp_path, spec, capsys):
    os.link(tmp_path / "data" / "in.safetensors", tmp_path / "twin")
    args = ["apply", spec, "--input", str(tmp_path / "data" / "in.safetensors"), "-o", str(tmp_path / "twin"),
            "--overwrite"]
    refused(args, capsys, "overlaps the input", tmp_path)


def test_dcp_output_overlapping_its_input_is_refused(tmp_path, capsys):
    from tests.test_dcp import SIX, save_no_dist, six_states

    save_no_dist(six_states()[0], tmp_path / "ckpt")
    args = ["apply", SIX, "--input", str(tmp_path / "ckpt"), "-o", str(tmp_path / "ckpt"), "--overwrite", "-q"]
    refused(args, capsys, "overlaps the input", tmp_path)


def test_python_api_refuses_an_overlap_too(tmp_path, spec):
    from specgrow.pipeline.dcp import grow_dcp

    before = snapshot(tmp_path)
    with pytest.raises(InputError, match="overlaps the input"):
        grow_dcp(spec, str(tmp_path / "data" / "in"), str(tmp_path / "data" / "in"), overwrite=True, log=None)
    assert snapshot(tmp_path) == before


# 2. --overwrite replaces a folder, never a file or a symbolic link

@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("kind", ["file", "link-to-folder", "dangling-link"])
def test_output_that_is_a_file_or_a_link_is_refused(tmp_path, spec, capsys, kind, overwrite):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("precious")
    else:
        (tmp_path / "target").mkdir()
        (tmp_path / "target" / "keep.txt").write_text("x")
        out.symlink_to(tmp_path / ("target" if kind == "link-to-folder" else "nowhere"))
    what = "file" if kind == "file" else "symbolic link"
    args = ["apply", spec, "-o", str(out), "-q"] + ["--overwrite"] * overwrite
    refused(args, capsys, f"is a {what}: --overwrite replaces a folder, never a file or a symbolic link", tmp_path)


def test_overwrite_replaces_a_folder_and_leaves_no_sibling(tmp_path, spec, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    before = set(os.listdir(tmp_path))
    assert run(["apply", spec, "-o", str(out), "--overwrite", "-q"], capsys)[0] == 0
    assert sorted(os.listdir(out)) == COMPLETE
    assert set(os.listdir(tmp_path)) == before


# 3. a folder that appears at the output while apply runs is never replaced

def test_folder_appearing_during_apply_is_kept(tmp_path, spec, capsys, monkeypatch):
    import specgrow.pipeline.apply as apply_module

    out = tmp_path / "out"
    write = apply_module.write_checkpoint

    def write_while_another_run_publishes(*args, **kwargs):
        out.mkdir()
        (out / "theirs.txt").write_text("another run's output")
        return write(*args, **kwargs)

    monkeypatch.setattr(apply_module, "write_checkpoint", write_while_another_run_publishes)
    code, _, err = run(["apply", spec, "-o", str(out), "-q"], capsys)
    assert code == 2 and ERROR_LINE.match(err), err
    assert f"output '{out}' appeared while apply ran; nothing replaced" in err
    assert os.listdir(out) == ["theirs.txt"]
    assert not list(tmp_path.glob(".out.*"))  # the loser removed its temporary folder


def test_folder_appearing_during_a_dcp_apply_is_kept(tmp_path, capsys, monkeypatch):
    import specgrow.pipeline.dcp as dcp_module
    from tests.test_dcp import SIX

    out = tmp_path / "out"
    save = dcp_module.save_state

    def save_while_another_run_publishes(*args):
        out.mkdir()
        return save(*args)

    monkeypatch.setattr(dcp_module, "save_state", save_while_another_run_publishes)
    code, _, err = run(["apply", SIX, "-o", str(out), "--output-format", "dcp", "-q"], capsys)
    assert code == 2 and ERROR_LINE.match(err) and "appeared while apply ran; nothing replaced" in err, err
    assert os.listdir(out) == [] and not list(tmp_path.glob(".out.*"))


def no_renameat2(monkeypatch):
    monkeypatch.setattr(publish_module, "_renameat2", lambda: None)


def unsupported_renameat2(monkeypatch):
    """A file system without the flags: the call fails with EINVAL."""
    def call(*_):
        ctypes.set_errno(errno.EINVAL)
        return -1
    monkeypatch.setattr(publish_module, "_renameat2", lambda: call)


RENAMES = {"renameat2": lambda _: None, "missing": no_renameat2, "unsupported": unsupported_renameat2}


def folder(path: Path, *names: str) -> Path:
    path.mkdir()
    for name in names:
        (path / name).write_text(name)
    return path


@pytest.mark.parametrize("rename", RENAMES.values(), ids=RENAMES.keys())
def test_two_runs_publishing_one_output_have_one_winner(tmp_path, monkeypatch, rename):
    rename(monkeypatch)
    out = str(tmp_path / "out")
    with pytest.raises(InputError, match=f"output '{re.escape(out)}' appeared while apply ran; nothing replaced"):
        with atomic_directory(out, False) as loser:
            (loser / "b").write_text("loser")
            with atomic_directory(out, False) as winner:
                (winner / "a").write_text("winner")
    assert os.listdir(tmp_path) == ["out"] and os.listdir(out) == ["a"]


@pytest.mark.parametrize("rename", RENAMES.values(), ids=RENAMES.keys())
def test_publish_never_replaces_without_overwrite(tmp_path, monkeypatch, rename):
    rename(monkeypatch)
    final = tmp_path / "out"
    output_target(str(final), False)
    new = folder(tmp_path / ".out.tmp-1", "new")
    theirs = folder(final, "theirs")
    with pytest.raises(InputError, match="appeared while apply ran; nothing replaced"):
        publish(new, final, False, str(final))
    assert os.listdir(theirs) == ["theirs"] and os.listdir(new) == ["new"]
    assert sorted(os.listdir(tmp_path)) == [".out.tmp-1", "out"]  # no lock file left


def test_concurrent_apply_processes_have_one_winner(tmp_path, spec):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "specgrow.cli", "apply", spec, "-o", str(out), "-q"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((proc.wait(timeout=300), proc.stderr.read()) for proc in procs)
    for proc in procs:
        proc.stdout.close()
        proc.stderr.close()
    (won, _), (lost, err) = results
    assert (won, lost) == (0, 2) and ERROR_LINE.match(err), results
    assert "appeared while apply ran; nothing replaced" in err or "already exists" in err, err
    assert sorted(os.listdir(out)) == COMPLETE
    assert json.loads((out / "specgrow-manifest.json").read_text())["numeric_check"]["passed"]
    assert not list(tmp_path.glob(".out.*"))


# 4. --overwrite swaps the old output for the new one in one step

@pytest.mark.parametrize("rename", RENAMES.values(), ids=RENAMES.keys())
def test_overwrite_swaps_complete_folders(tmp_path, monkeypatch, rename):
    """At the moment the old output is removed, the new one is complete at the output already."""
    rename(monkeypatch)
    final = folder(tmp_path / "out", "old-1", "old-2")
    new = folder(tmp_path / ".out.tmp-1", "new-1", "new-2")
    seen = []
    remove = publish_module.shutil.rmtree

    def rmtree(path, **kwargs):
        seen.append((sorted(os.listdir(final)), sorted(os.listdir(path))))
        remove(path, **kwargs)

    monkeypatch.setattr(publish_module.shutil, "rmtree", rmtree)
    publish(new, final, True, str(final))
    assert seen == [(["new-1", "new-2"], ["old-1", "old-2"])]
    assert os.listdir(tmp_path) == ["out"] and sorted(os.listdir(final)) == ["new-1", "new-2"]


def test_overwrite_is_one_exchange_never_a_moment_without_output(tmp_path, monkeypatch):
    """With renameat2, `atomic_directory` swaps in one call: no plain rename ever takes the old
    output away before the new one is in place."""
    if publish_module._renameat2() is None:
        pytest.skip("renameat2 is not available here")
    out = folder(tmp_path / "out", "old")

    def forbidden(*_):
        raise AssertionError("a plain rename leaves the output missing for a moment")

    with monkeypatch.context() as patch:
        for owner in (os, Path):
            patch.setattr(owner, "rename", forbidden)
            patch.setattr(owner, "replace", forbidden)
        with atomic_directory(str(out), True) as tmp:
            (tmp / "new").write_text("new")
    assert os.listdir(out) == ["new"] and os.listdir(tmp_path) == ["out"]


def test_fallback_swap_puts_the_old_output_back_when_the_new_cannot_move_in(tmp_path, monkeypatch):
    no_renameat2(monkeypatch)
    final = folder(tmp_path / "out", "old")
    new = folder(tmp_path / ".out.tmp-1", "new")
    rename = os.rename
    calls = []

    def failing_second(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == 2:
            raise OSError(errno.EIO, "I/O error")
        rename(src, dst)

    monkeypatch.setattr(publish_module.os, "rename", failing_second)
    with pytest.raises(OSError):
        publish(new, final, True, str(final))
    assert calls == [".out.tmp-1.old", "out", "out"]
    assert os.listdir(final) == ["old"] and os.listdir(new) == ["new"]
    assert sorted(os.listdir(tmp_path)) == [".out.tmp-1", "out"]


@pytest.mark.parametrize("rename", RENAMES.values(), ids=RENAMES.keys())
@pytest.mark.parametrize("kind", ["file", "link"])
def test_overwrite_never_replaces_a_file_or_link_that_appeared(tmp_path, monkeypatch, rename, kind):
    rename(monkeypatch)
    final = tmp_path / "out"
    output_target(str(final), True)
    new = folder(tmp_path / ".out.tmp-1", "new")
    if kind == "file":
        final.write_text("precious")
    else:
        final.symlink_to(folder(tmp_path / "target", "keep"))
    before = snapshot(tmp_path)
    with pytest.raises(InputError, match="while apply ran; nothing replaced"):
        publish(new, final, True, str(final))
    assert snapshot(tmp_path) == before


def test_a_lock_left_by_a_killed_run_is_one_clear_error(tmp_path, monkeypatch):
    no_renameat2(monkeypatch)
    monkeypatch.setattr(publish_module, "LOCK_WAIT_S", 0.05)
    final = tmp_path / "out"
    (tmp_path / ".out.lock").write_text("")
    with pytest.raises(InputError, match=r"is locked by .*\.out\.lock"):
        publish(folder(tmp_path / ".out.tmp-1", "new"), final, False, str(final))
    assert not final.exists()


# 5. the certificate or the output never replaces the spec or the optimizer state

@pytest.mark.parametrize("how", ["same", "link", "hard-link", "dot-dot"])
def test_prove_refuses_to_write_over_its_spec(tmp_path, spec, capsys, how):
    target = {"same": spec, "link": str(tmp_path / "link.yaml"), "hard-link": str(tmp_path / "hard.yaml"),
              "dot-dot": str(tmp_path / "data" / ".." / "spec.yaml")}[how]
    if how == "link":
        os.symlink(spec, target)
    elif how == "hard-link":
        os.link(spec, target)
    refused(["prove", spec, "-o", target], capsys, f"output '{target}' overlaps the spec '{spec}'", tmp_path)


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_apply_refuses_an_output_over_its_spec_or_optimizer_state(tmp_path, spec, capsys, overwrite):
    extra = ["--overwrite"] * overwrite
    refused(["apply", spec, "-o", spec] + extra, capsys, "overlaps the spec", tmp_path)
    refused(["apply", spec, "-o", str(tmp_path)] + extra, capsys, "overlaps the spec", tmp_path)
    optimizer = str(tmp_path / "data" / "in.safetensors")  # any file: refused before it is read
    refused(["apply", spec, "-o", optimizer, "--optimizer", optimizer] + extra, capsys,
            "overlaps the optimizer state", tmp_path)

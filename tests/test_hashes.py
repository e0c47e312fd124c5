"""Hashing input files early, once, on a daemon worker (specgrow.lower.hashes)."""

from __future__ import annotations

import hashlib
import os
import threading

from specgrow.lower.hashes import folder_files, prefetch, sha256_later


def test_a_file_is_hashed_once_and_again_when_it_changes(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"a" * 5000)
    first = sha256_later(path)
    assert sha256_later(path) is first
    assert first.result(timeout=30) == hashlib.sha256(b"a" * 5000).hexdigest()
    path.write_bytes(b"b" * 6000)
    again = sha256_later(path)
    assert again is not first and again.result(timeout=30) == hashlib.sha256(b"b" * 6000).hexdigest()


def test_prefetch_hashes_every_file_of_a_folder(tmp_path):
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"y" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "tokenizer.json").write_bytes(b"{}")
    prefetch(tmp_path)
    prefetch(tmp_path / "missing")  # nothing to hash, and no error: the caller's reading reports it
    for name, data in (("model-00001-of-00002.safetensors", b"x" * 100), ("model-00002-of-00002.safetensors", b"y" * 100),
                       ("sub/tokenizer.json", b"{}")):
        future = sha256_later(tmp_path / name)
        assert future.result(timeout=30) == hashlib.sha256(data).hexdigest()
    worker = [t for t in threading.enumerate() if t.name == "specgrow-sha256"]
    assert len(worker) == 1 and worker[0].daemon  # a run that stops early does not wait for it


def test_folder_files_lists_every_regular_file_and_skips_links_out(tmp_path):
    inside = tmp_path / "in"
    (inside / "a" / "b").mkdir(parents=True)
    (inside / "a" / "b" / "deep.txt").write_text("deep")
    (inside / "top.json").write_text("{}")
    (inside / "alias.json").symlink_to("top.json")
    (tmp_path / "secret.txt").write_text("private")
    (inside / "notes.txt").symlink_to(tmp_path / "secret.txt")
    (inside / "out").symlink_to(tmp_path, target_is_directory=True)
    files, skipped = folder_files(inside)
    assert list(files) == ["a/b/deep.txt", "alias.json", "top.json"]
    assert skipped == ["notes.txt", "out"]


def test_an_unreadable_file_fails_its_future_not_the_worker(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"z")
    os.chmod(bad, 0)
    future = sha256_later(bad)
    if os.geteuid() == 0:  # root reads it anyway
        assert future.result(timeout=30) == hashlib.sha256(b"z").hexdigest()
    else:
        assert isinstance(future.exception(timeout=30), PermissionError)
    good = tmp_path / "good.safetensors"
    good.write_bytes(b"ok")
    assert sha256_later(good).result(timeout=30) == hashlib.sha256(b"ok").hexdigest()

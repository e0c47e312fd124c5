"""Our safetensors reader and streaming writer: the official library both ways, every fault, shards."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct

import pytest
import torch
from huggingface_hub import load_torch_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from specgrow.errors import CheckpointError, InputError
from specgrow.lower.safetensors_io import (
    DTYPE_CODES, CheckpointFiles, SafetensorsReader, SafetensorsWriter, dtype_code, index_json, parse_size,
    plan_shards, shard_names,
)

FLOATS = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2]
OTHERS = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]
SHAPES = {"scalar": (), "vector": (7,), "cube": (5, 3, 2)}


class Opaque:
    """A class ``weights_only`` loading must refuse to unpickle."""


def sample(dtype, shape, seed):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if not dtype.is_floating_point:
        return torch.randint(0, 100, shape, generator=g).to(dtype)
    return torch.randn(shape, generator=g).to(dtype)


def tensors_of(dtype):
    return {name: sample(dtype, shape, seed) for seed, (name, shape) in enumerate(SHAPES.items())}


def entries_of(tensors):
    return [(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]


def bits(t):
    return t.contiguous().reshape(-1).view(torch.uint8)


def same(a, b) -> bool:
    """Equal dtype, shape and bytes (float8 has no ``torch.equal``; NaN equals itself)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def write(path, tensors, metadata=None, band=2):
    """Write ``tensors`` with our writer, ``band`` rows per call."""
    with SafetensorsWriter(path, entries_of(tensors), metadata) as out:
        for name, t in tensors.items():
            for start in range(0, len(t), band) if t.dim() else [None]:
                out.write(name, t if start is None else t[start:start + band])


def raw_file(path, header, data=b""):
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path


def one_line(err) -> str:
    """The error's message, after checking it renders as one line with no chained traceback."""
    assert "\n" not in err.render()
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    return err.message


@pytest.mark.parametrize("dtype", FLOATS + OTHERS, ids=str)
def test_our_writer_in_bands_is_read_by_safetensors(tmp_path, dtype):
    tensors = tensors_of(dtype)
    write(tmp_path / "m.safetensors", tensors, {"format": "pt"})
    loaded = load_file(tmp_path / "m.safetensors")
    assert sorted(loaded) == sorted(tensors)
    assert all(same(loaded[name], t) for name, t in tensors.items())
    with safe_open(tmp_path / "m.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}


@pytest.mark.parametrize("dtype", FLOATS + OTHERS, ids=str)
def test_safetensors_files_are_read_whole_and_by_rows(tmp_path, dtype):
    tensors = tensors_of(dtype)
    save_file(tensors, tmp_path / "m.safetensors", metadata={"format": "pt"})
    with SafetensorsReader(tmp_path / "m.safetensors") as f:
        assert sorted(f.names()) == sorted(tensors)
        assert f.metadata == {"format": "pt"}
        for name, t in tensors.items():
            assert (f.dtype(name), f.shape(name)) == (dtype, tuple(t.shape))
            assert f.nbytes(name) == t.numel() * t.element_size()
            assert same(f.read(name), t)
        assert same(f.read_rows("cube", 1, 4), tensors["cube"][1:4])
        assert same(f.read_rows("vector", 3, 7), tensors["vector"][3:7])
        assert same(f.read_rows("scalar", 0, 1), tensors["scalar"])
        assert same(f.read_rows("cube", 2, 2), tensors["cube"][2:2])


def test_header_is_written_first_padded_and_in_entry_order(tmp_path):
    path = tmp_path / "m.safetensors"
    entries = [("b", torch.float32, (4, 3)), ("a", torch.bfloat16, (5,))]
    out = SafetensorsWriter(path, entries, {"format": "pt"})
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert (8 + length) % 8 == 0
    if hasattr(os, "posix_fallocate"):  # the whole file is reserved up front
        assert len(raw) == 8 + length + 58
    header = json.loads(raw[8:8 + length])
    assert list(header) == ["__metadata__", "b", "a"]
    assert header["a"] == {"dtype": "BF16", "shape": [5], "data_offsets": [48, 58]}
    out.write("b", torch.ones(4, 3))
    with pytest.raises(ValueError, match="not complete"):
        out.sha256()
    out.write("a", torch.zeros(5, dtype=torch.bfloat16))
    out.close()
    assert out.sha256() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.stat().st_size == 8 + length + 58
    with SafetensorsReader(path) as f:
        assert f.names() == ["b", "a"] and f.metadata == {"format": "pt"}


def test_a_disk_too_small_fails_before_anything_is_written(tmp_path, monkeypatch):
    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(InputError, match=r"not enough disk space: 1,\d{3} bytes needed for m\.safetensors"):
        SafetensorsWriter(tmp_path / "m.safetensors", [("a", torch.float32, (256,))])


def test_a_file_system_that_cannot_preallocate_is_written_as_is(tmp_path, monkeypatch):
    def unsupported(fd, offset, size):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported, raising=False)
    path = tmp_path / "m.safetensors"
    with SafetensorsWriter(path, [("a", torch.float32, (3,))]) as out:
        out.write("a", torch.arange(3.0))
    assert out.sha256() == hashlib.sha256(path.read_bytes()).hexdigest()
    with SafetensorsReader(path) as f:
        assert same(f.read_rows("a", 0, 3), torch.arange(3.0))


@pytest.mark.parametrize("name", ["w" * n for n in range(1, 9)])
def test_header_padding_matches_the_safetensors_library(tmp_path, name):
    with SafetensorsWriter(tmp_path / "ours.safetensors", [(name, torch.float32, (2,))]) as out:
        out.write(name, torch.ones(2))
    save_file({name: torch.ones(2)}, tmp_path / "theirs.safetensors")
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "theirs.safetensors").read_bytes()


def test_zero_sized_tensors_round_trip(tmp_path):
    tensors = {"empty": torch.zeros(0, 4), "x": torch.arange(6.0).reshape(3, 2), "none": torch.zeros(2, 0)}
    write(tmp_path / "m.safetensors", tensors)
    loaded = load_file(tmp_path / "m.safetensors")
    assert all(same(loaded[name], t) for name, t in tensors.items())
    with SafetensorsReader(tmp_path / "m.safetensors") as f:
        assert same(f.read("none"), tensors["none"]) and same(f.read_rows("x", 1, 3), tensors["x"][1:])


def test_dtype_codes_round_trip():
    assert all(dtype_code(dtype) == code for code, dtype in DTYPE_CODES.items())
    with pytest.raises(ValueError, match="complex64 has no safetensors code"):
        dtype_code(torch.complex64)


@pytest.fixture
def writer(tmp_path):
    out = SafetensorsWriter(tmp_path / "m.safetensors", [("a", torch.float32, (3, 2)), ("b", torch.float32, (2,))])
    yield out
    out._file.close()


def test_writer_refuses_tensors_out_of_order(writer):
    writer.write("a", torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"expected rows of tensor 'a' \(1 of 3 rows written\), got rows of 'b'"):
        writer.write("b", torch.zeros(2))
    writer.write("a", torch.zeros(2, 2))
    writer.write("b", torch.zeros(1))
    with pytest.raises(ValueError, match="tensor 'a' is already complete"):
        writer.write("a", torch.zeros(0, 2))


def test_writer_refuses_wrong_dtype_shape_name_and_rows(writer):
    with pytest.raises(ValueError, match="expected dtype torch.float32, got torch.float16"):
        writer.write("a", torch.zeros(1, 2, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"expected rows of shape \(2,\), got a chunk of shape \(1, 3\)"):
        writer.write("a", torch.zeros(1, 3))
    with pytest.raises(ValueError, match="tensor 'c' is not among this file's entries"):
        writer.write("c", torch.zeros(1))
    with pytest.raises(ValueError, match="has 3 rows: 0 written, 4 more are too many"):
        writer.write("a", torch.zeros(4, 2))


def test_writer_close_refuses_an_incomplete_file(tmp_path):
    with pytest.raises(ValueError, match=r"tensor 'b' is incomplete: 0 of 2 rows written"):
        with SafetensorsWriter(tmp_path / "m.safetensors", [("a", torch.int8, ()), ("b", torch.int8, (2,))]) as out:
            out.write("a", torch.tensor(3, dtype=torch.int8))


def test_writer_exit_on_an_error_just_closes(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with SafetensorsWriter(tmp_path / "m.safetensors", [("a", torch.int8, (2,))]) as out:
            raise RuntimeError("boom")
    assert out._file.closed


def valid_header():
    return {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


FAULTS = {
    "empty file": (b"", "not a safetensors file: it holds 0 bytes, expected at least 8"),
    "3-byte file": (b"abc", "not a safetensors file: it holds 3 bytes"),
    "header longer than the file": (struct.pack("<Q", 1000) + b"{}", "its length 1000 exceeds the 2 bytes after it"),
    "header over 100 MB": (struct.pack("<Q", 2**40) + b"{}", "exceeds the 100 MB limit"),
    "not UTF-8": ((b"\xff\xfe", b""), "not UTF-8"),
    "not JSON": ((b"{nope", b""), r"corrupt safetensors header: not JSON \(Expecting"),
    "JSON array": (([], b""), "expected a JSON object, found list"),
    "metadata not strings": (({"__metadata__": {"step": 1}}, b""), "__metadata__ to map strings to strings"),
    "entry not an object": (({"a": [0, 8]}, b""), "tensor 'a': expected an object with dtype, shape and data_"),
    "unknown dtype": (({"a": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, b"\0"), 'unknown dtype "F4"'),
    "negative dim": (({"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}, b""), "non-negative integers"),
    "offsets reversed": (({"a": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}}, b""), "0 <= begin <= end"),
    "offsets disagree with shape": (
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4),
        r"tensor 'a': data_offsets \[0, 4\] hold 4 bytes, shape \(2,\) of F32 needs 8"),
    "overlap": (
        ({**valid_header(), "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
        "tensor 'b' starts at byte 4 of the data, inside the tensor before it"),
    "gap": (
        ({**valid_header(), "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}, b"\0" * 20),
        r"bytes \[8, 12\) of the data belong to no tensor"),
    "trailing bytes": ((valid_header(), b"\0" * 12), r"bytes \[8, 12\) of the data belong to no tensor"),
    "data shorter than the header says": ((valid_header(), b"\0" * 5), "tensor 'a' ends at byte 8 of the data"),
}


@pytest.mark.parametrize("case", FAULTS)
def test_each_fault_is_one_checkpoint_error_line(tmp_path, case):
    content, pattern = FAULTS[case]
    path = tmp_path / "bad.safetensors"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        raw_file(path, *content)
    with pytest.raises(CheckpointError, match=pattern) as info:
        SafetensorsReader(path)
    assert one_line(info.value).startswith("cannot read checkpoint: ")
    assert info.value.path == str(path)


def test_a_truncated_file_names_the_cut_tensor(tmp_path):
    path = tmp_path / "m.safetensors"
    write(path, {"a": torch.zeros(16, 4), "b": torch.zeros(64, 8)})
    os.truncate(path, path.stat().st_size - 100)
    with pytest.raises(CheckpointError) as info:
        SafetensorsReader(path)
    assert one_line(info.value) == (
        "cannot read checkpoint: truncated safetensors file: tensor 'b' ends at byte 2304 of the data, "
        "the file holds 2204")


def test_missing_names_bad_rows_and_unreadable_paths(tmp_path):
    write(tmp_path / "m.safetensors", {"a": torch.zeros(3, 2), "s": torch.tensor(1.0)})
    with SafetensorsReader(tmp_path / "m.safetensors") as f:
        with pytest.raises(CheckpointError, match="tensor 'nope' is missing from .*m.safetensors"):
            f.read("nope")
        with pytest.raises(ValueError, match=r"has 3 rows: expected 0 <= start <= stop <= 3, got \[2, 4\)"):
            f.read_rows("a", 2, 4)
        with pytest.raises(ValueError, match=r"tensor 's' is 0-d: expected rows \[0, 1\)"):
            f.read_rows("s", 0, 0)
    for path in (tmp_path / "absent.safetensors", tmp_path):
        with pytest.raises(InputError, match="cannot read checkpoint"):
            SafetensorsReader(path)


def test_reads_touch_only_their_bytes_and_a_short_read_is_an_error(tmp_path):
    path = tmp_path / "m.safetensors"
    write(path, {"a": torch.arange(6.0).reshape(3, 2), "b": torch.ones(10_000)})  # more than a read buffer
    with SafetensorsReader(path) as f:
        os.truncate(path, path.stat().st_size - 400)  # the file changes underneath
        assert same(f.read_rows("a", 1, 3), torch.arange(2.0, 6.0).reshape(2, 2))
        assert same(f.read_rows("b", 0, 9900), torch.ones(9900))
        with pytest.raises(CheckpointError, match=r"short read: rows \[0, 10000\) of tensor 'b' need 40000 bytes, "
                                                  "the file gave 39600"):
            f.read("b")


@pytest.mark.parametrize("text, size", [
    ("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("2GiB", 2 * 2**30), ("100KB", 100_000), ("123", 123),
    (" 3 mib ", 3 * 2**20), (4096, 4096),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GB", "5XB", "1.5GB", "-1", "0", 0, "5 GB extra"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def names_of(shards):
    return [[name for name, _, _ in shard] for shard in shards]


def test_plan_shards_is_greedy_in_order():
    e = [(name, torch.uint8, (n,)) for name, n in [("a", 8), ("b", 8), ("c", 32), ("d", 8), ("e", 9)]]
    assert names_of(plan_shards(e, 16)) == [["a", "b"], ["c"], ["d"], ["e"]]  # 16 fits exactly; c is oversize
    assert names_of(plan_shards(e, 4)) == [["a"], ["b"], ["c"], ["d"], ["e"]]
    assert names_of(plan_shards(e, None)) == [["a", "b", "c", "d", "e"]]
    assert shard_names(1) == ["model.safetensors"]
    assert shard_names(3)[1] == "model-00002-of-00003.safetensors"


def model_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3), torch.nn.LayerNorm(3))
    return model, {name: t.detach().clone() for name, t in model.state_dict().items()}


def write_sharded(folder, tensors, limit):
    """Our writer's sharded output, as ``specgrow apply`` writes it; returns the index."""
    shards = plan_shards(entries_of(tensors), limit)
    files = shard_names(len(shards))
    for shard, file in zip(shards, files):
        write(folder / file, {name: tensors[name] for name, _, _ in shard}, {"format": "pt"})
    index = index_json(shards, files)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return index


def test_index_is_huggingfaces_and_loads_into_a_model(tmp_path):
    _, tensors = model_state()
    index = write_sharded(tmp_path, tensors, 200)  # 128 + 32 bytes, then 96 + 3 * 12
    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    assert index == {"metadata": {"total_size": 292}, "weight_map": {
        "0.weight": first, "0.bias": first, "1.weight": second, "1.bias": second, "2.weight": second,
        "2.bias": second}}
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3), torch.nn.LayerNorm(3))
    load_torch_model(fresh, tmp_path, strict=True)
    assert all(torch.equal(fresh.state_dict()[name], t) for name, t in tensors.items())


def check_serves(files, tensors):
    assert sorted(files.names()) == sorted(tensors)
    for name, t in tensors.items():
        assert (files.dtype(name), files.shape(name), files.nbytes(name)) == (
            t.dtype, tuple(t.shape), t.numel() * t.element_size())
        assert same(files.read(name), t) and same(files.read_rows(name, 1, 2), t[1:2])


def test_checkpoint_files_over_our_shards(tmp_path):
    _, tensors = model_state()
    write_sharded(tmp_path, tensors, 64)
    with CheckpointFiles(tmp_path) as files:
        check_serves(files, tensors)
        assert [p.name for p in files.files()] == ["model.safetensors.index.json"] + shard_names(4)
        with pytest.raises(CheckpointError, match="tensor 'nope' is missing from"):
            files.shape("nope")


def test_checkpoint_files_over_library_shards_and_single_files(tmp_path):
    _, tensors = model_state()
    weight_map = {name: f"model-0000{1 if name.startswith('0.') else 2}-of-00002.safetensors" for name in tensors}
    for file in set(weight_map.values()):
        save_file({name: tensors[name] for name in tensors if weight_map[name] == file}, tmp_path / file)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 292}, "weight_map": weight_map}))
    with CheckpointFiles(tmp_path) as files:
        check_serves(files, tensors)
    single = tmp_path / "single"
    single.mkdir()
    save_file(tensors, single / "model.safetensors")
    for path in (single, single / "model.safetensors"):
        with CheckpointFiles(path) as files:
            check_serves(files, tensors)
            assert files.files() == [single / "model.safetensors"]


def broken_index(tmp_path, change):
    _, tensors = model_state()
    index = write_sharded(tmp_path, tensors, 64)
    change(index)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as info:
        CheckpointFiles(tmp_path)
    return one_line(info.value)


def test_a_missing_shard_is_named(tmp_path):
    message = broken_index(tmp_path, lambda index: os.remove(tmp_path / "model-00002-of-00004.safetensors"))
    assert message.startswith("shard 'model-00002-of-00004.safetensors' listed in the index is missing")


def test_an_index_must_match_its_shards(tmp_path):
    last = "model-00004-of-00004.safetensors"
    message = broken_index(tmp_path, lambda index: index["weight_map"].update({"0.bias": last}))
    assert message == f"tensor '0.bias' is listed under shard '{last}', which does not hold it"
    twice = {"0.bias": torch.zeros(8), "0.weight": torch.zeros(8, 4)}
    message = broken_index(tmp_path, lambda index: write(tmp_path / "model-00002-of-00004.safetensors", twice))
    assert message.startswith("tensor '0.weight' is stored in both 'model-00001-of-00004.safetensors' and")


def test_an_index_must_be_json_with_a_weight_map(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(CheckpointError, match='expected a JSON object whose "weight_map" maps'):
        CheckpointFiles(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{")
    with pytest.raises(CheckpointError, match="corrupt checkpoint index: not JSON"):
        CheckpointFiles(tmp_path)


def test_checkpoint_files_over_torch_state_dicts(tmp_path):
    _, tensors = model_state()
    torch.save(tensors, tmp_path / "state.pt")
    torch.save(tensors, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)  # cannot be mmapped
    (tmp_path / "hf").mkdir()
    torch.save(tensors, tmp_path / "hf" / "pytorch_model.bin")
    for path in (tmp_path / "state.pt", tmp_path / "legacy.pth", tmp_path / "hf"):
        with CheckpointFiles(path) as files:
            check_serves(files, tensors)


@pytest.mark.parametrize("content, pattern", [
    (torch.zeros(3), "expected a state dict .a dict of tensors., found a Tensor"),
    ({"w": torch.zeros(3), "step": 7}, "expected a state dict of tensors, but entry 'step' holds a int"),
    ({"w": Opaque()}, "cannot read checkpoint: UnpicklingError: it holds objects other than tensors, which "
                      "weights_only loading refuses .Unsupported global: GLOBAL .*Opaque"),
])
def test_torch_files_that_are_not_state_dicts(tmp_path, content, pattern):
    torch.save(content, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match=pattern) as info:
        CheckpointFiles(tmp_path / "state.pt")
    one_line(info.value)


def test_garbage_and_empty_folders(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot read checkpoint: UnpicklingError"):
        CheckpointFiles(tmp_path / "junk.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in folder: expected one of model.safetensors, "
                                              "model.safetensors.index.json, pytorch_model.bin"):
        CheckpointFiles(tmp_path / "empty")
    with pytest.raises(InputError, match="no such file or folder"):
        CheckpointFiles(tmp_path / "absent")
    with pytest.raises(InputError, match="unsupported checkpoint file type '.npz'"):
        CheckpointFiles(raw_file(tmp_path / "x.npz", b"{}"))

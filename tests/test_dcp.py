"""torch.distributed checkpoints: read chunk by chunk, grown across ranks, resharded."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from safetensors.torch import load_file

from specgrow.cli import main
from specgrow.lower.stream import grow_state
from specgrow.models.reference import random_state
from specgrow.spec import load_spec
from specgrow.transforms import compile_spec

ROOT = Path(__file__).resolve().parents[1]
SIX = str(ROOT / "examples" / "six.yaml")
ERROR_LINE = re.compile(r"^[^\n]+:\d+:\d+: error: [^\n]+\n$")
SMALL = 4096  # bytes per band in the multi-rank test, so that every tensor takes several bands


def six_states():
    """The reference model of six.yaml's original shape, and the state grown from it in memory."""
    spec = load_spec(SIX)
    plan = compile_spec(spec)
    state = random_state(plan.before, spec.seed)
    return state, grow_state(state, plan.concrete(), "cpu")[-1]


def save_no_dist(state: dict, folder: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(folder), no_dist=True)


def load_no_dist(like: dict, folder: Path) -> dict:
    """The checkpoint at ``folder`` regathered into full plain tensors shaped like ``like``."""
    out = {name: torch.zeros_like(t) for name, t in like.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(out, checkpoint_id=str(folder), no_dist=True)
    return out


def _init(rank: int, world: int, rendezvous: Path) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)


def _save_sharded(rank: int, world: int, rendezvous: Path, folder: Path) -> None:
    """A training job's checkpoint: the model as DTensors, Shard(0) over ``world`` ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    _init(rank, world, rendezvous)
    try:
        mesh = init_device_mesh("cpu", (world,))
        state, _ = six_states()
        dcp.save({name: distribute_tensor(t, mesh, [Shard(0)]) for name, t in state.items()},
                 checkpoint_id=str(folder))
    finally:
        dist.destroy_process_group()


def _grow_ranks(rank: int, world: int, rendezvous: Path, source: Path, folder: Path, record: Path) -> None:
    """One output rank: grow in small bands, recording the rows of every input read and chunk load."""
    import functools

    import specgrow.lower.numeric as numeric
    import specgrow.pipeline.dcp as dcp_module
    from specgrow.lower.dcp_read import DcpFiles
    from specgrow.lower.stream import StepSource

    _init(rank, world, rendezvous)
    original = numeric.bands  # the numeric check reads in small bands too (it does not change the output)
    numeric.bands = functools.wraps(original)(lambda src, key, max_bytes=None: original(src, key, SMALL))
    phase, reads, chunks = ["grow"], [], []

    def in_phase(name, fn):
        def run(*args):
            before, phase[0] = phase[0], name
            try:
                return fn(*args)
            finally:
                phase[0] = before
        return run

    def recording(fn, log):
        def run(self, name, *args):
            if self.path == source:
                log.append((phase[0], name, args[1] - args[0] if len(args) == 2 else int(args[0].sizes[0])))
            return fn(self, name, *args)
        return run

    DcpFiles.read_rows, DcpFiles._chunk = recording(DcpFiles.read_rows, reads), recording(DcpFiles._chunk, chunks)
    dcp_module._check = in_phase("check", dcp_module._check)
    StepSource._moments_of = in_phase("moments", StepSource._moments_of)
    try:
        manifest = dcp_module.grow_dcp(SIX, source, folder, world, band_bytes=SMALL, log=None)
        assert (manifest is not None) == (rank == 0)
    finally:
        dist.destroy_process_group()
    (record / f"rank{rank}.json").write_text(json.dumps({"reads": reads, "chunks": chunks}))


@pytest.mark.slow
def test_dcp_saved_by_2_ranks_is_grown_by_3_and_regathered_bit_for_bit(tmp_path):
    source, grown, record = tmp_path / "in", tmp_path / "out", tmp_path / "record"
    record.mkdir()
    mp.spawn(_save_sharded, args=(2, tmp_path / "pg-save", source), nprocs=2)
    mp.spawn(_grow_ranks, args=(3, tmp_path / "pg-grow", source, grown, record), nprocs=3)

    state, expected = six_states()
    got = load_no_dist(expected, grown)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    manifest = json.loads((grown / "specgrow-manifest.json").read_text())
    assert manifest["output"]["world_size"] == 3 and manifest["proof"]["verdict"] == "PROVED"
    assert manifest["numeric_check"]["passed"]
    assert not list(tmp_path.glob(".out.tmp-*"))

    # No rank read a whole input tensor: chunks loaded are the 2 input ranks' halves, and every
    # read of the growth is a band of the rank's rows. Exceptions, by design: the mean/std of a
    # `like_old` source are read in bands of 8 MB (each of these tiny tensors fits in one band;
    # the banding is fixed so the draws match a single process bit for bit), and the numeric
    # check on rank 0 reads the norm gains (vectors) whole.
    rows = {name: t.shape[0] for name, t in state.items()}
    band_rows = {name: max(1, (8 << 20) // (4 * max(1, t[0].numel()))) for name, t in state.items()}
    phases = set()
    for rank in range(3):
        log = json.loads((record / f"rank{rank}.json").read_text())
        assert log["chunks"] and log["reads"]
        for phase, name, count in log["chunks"]:
            assert count <= -(-rows[name] // 2), (rank, name, count)
        for phase, name, count in log["reads"]:
            phases.add(phase)
            if phase == "moments":
                assert count <= band_rows[name]
            elif phase == "grow" or state[name].dim() > 1:
                assert count < rows[name], (rank, phase, name, count)
    assert phases == {"grow", "moments", "check"}


def test_dcp_input_grows_into_dcp_and_into_safetensors_like_apply(tmp_path, capsys):
    state, expected = six_states()
    save_no_dist(state, tmp_path / "in")
    assert main(["apply", SIX, "--output", str(tmp_path / "ref"), "--quiet"]) == 0
    assert main(["apply", SIX, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "st"),
                 "--output-format", "safetensors", "--quiet"]) == 0
    reference, from_dcp = load_file(tmp_path / "ref" / "model.safetensors"), load_file(tmp_path / "st" / "model.safetensors")
    assert sorted(reference) == sorted(from_dcp)
    assert all(torch.equal(reference[name], from_dcp[name]) for name in reference)

    assert main(["apply", SIX, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "dcp")]) == 0  # default: dcp
    out = capsys.readouterr().out
    assert "on 1 rank(s); proof PROVED; numeric check passed" in out
    got = load_no_dist(expected, tmp_path / "dcp")
    assert all(torch.equal(got[name], reference[name]) for name in reference)
    assert {"proof.md", "specgrow-manifest.json", ".metadata"} <= {p.name for p in (tmp_path / "dcp").iterdir()}


def test_dcp_under_a_model_key_with_optimizer_entries(tmp_path):
    """A training checkpoint {"model": ..., "optim": ...}: the model is found and grown, the optimizer left out."""
    state, expected = six_states()
    save_no_dist({"model": state, "optim": {"state": {"embed.weight": {"exp_avg": torch.zeros(3)}}}}, tmp_path / "in")
    assert main(["apply", SIX, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--quiet"]) == 0
    got = load_no_dist({"model." + name: t for name, t in expected.items()}, tmp_path / "out")
    assert all(torch.equal(got["model." + name], expected[name]) for name in expected)
    stored = dcp.FileSystemReader(str(tmp_path / "out")).read_metadata().state_dict_metadata
    assert not [name for name in stored if not name.startswith("model.")]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_huggingface_names_in_dcp_grow_like_apply_on_the_folder(tmp_path, kind):
    """A HF model's state_dict saved as DCP grows, by the family of model.arch, into the tensors
    `apply` writes for the same model's HF folder (GPT-2: fused c_attn, Conv1D layouts, tied head)."""
    transformers = pytest.importorskip("transformers")
    from test_hf import save_tiny, spec_for

    from specgrow.pipeline.dcp import grow_dcp

    save_tiny(kind, tmp_path / "hf", **({"num_key_value_heads": 2} if kind == "llama" else {}))
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    save_no_dist({name: t.clone() for name, t in model.state_dict().items()}, tmp_path / "in")
    steps = [{"mlp": {"to": 96}}, {"heads": {"add": 4}}, {"layers": {"add": 1, "at": 1}}]
    spec = spec_for(tmp_path / "hf", steps + [{"hidden": {"to": 64, "method": "duplicate"}}], tmp_path / "spec.yaml")
    assert main(["apply", spec, "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "st"), "-q"]) == 0
    grow_dcp(spec, tmp_path / "in", tmp_path / "out", 1, band_bytes=512, log=None)
    expected = load_file(tmp_path / "st" / "model.safetensors")
    got = load_no_dist(expected, tmp_path / "out")
    assert all(torch.equal(got[name], expected[name]) for name in expected)


@pytest.mark.parametrize("damage, message", [
    (lambda folder: (folder / ".metadata").write_bytes(b"not a pickle"), "cannot read DCP metadata"),
    (lambda folder: (folder / ".metadata").unlink(), "DCP checkpoint without .metadata"),
    (lambda folder: next(folder.glob("*.distcp")).write_bytes(b"PK\x03\x04 truncated"), "cannot read its chunk"),
], ids=["corrupt-metadata", "missing-metadata", "corrupt-chunk"])
def test_damaged_dcp_is_one_clear_error_and_writes_nothing(tmp_path, capsys, damage, message):
    state, _ = six_states()
    save_no_dist(state, tmp_path / "in")
    damage(tmp_path / "in")
    for fmt in ("dcp", "safetensors"):
        code = main(["apply", SIX, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                     "--output-format", fmt, "--quiet"])
        err = capsys.readouterr().err
        assert code == 1 and ERROR_LINE.match(err) and message in err, (fmt, err)
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_chunks_of_any_layout_are_read_by_rows(tmp_path):
    """Chunks that split columns too (e.g. a 2-D sharding) are assembled; only the chunks a read
    intersects are loaded."""
    import dataclasses

    from torch.distributed.checkpoint import DefaultSavePlanner
    from torch.distributed.checkpoint.planner import WriteItemType

    from specgrow.lower.dcp_read import DcpFiles

    full = torch.arange(60, dtype=torch.float32).reshape(10, 6)
    boxes = [((0, 0), (4, 3)), ((0, 3), (4, 3)), ((4, 0), (6, 6))]

    class Boxes(DefaultSavePlanner):
        def create_local_plan(self):
            plan = super().create_local_plan()
            item = plan.items[0]
            items = [dataclasses.replace(item, index=dataclasses.replace(item.index, offset=torch.Size(at)),
                                         type=WriteItemType.SHARD, tensor_data=dataclasses.replace(
                                             item.tensor_data, chunk=dataclasses.replace(
                                                 item.tensor_data.chunk, offsets=torch.Size(at), sizes=torch.Size(size))))
                     for at, size in boxes]
            self.plan = dataclasses.replace(plan, items=items)
            return self.plan

        def resolve_data(self, item):
            (r, c), (h, w) = item.tensor_data.chunk.offsets, item.tensor_data.chunk.sizes
            return full[r:r + h, c:c + w].clone()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": full}, checkpoint_id=str(tmp_path), planner=Boxes(), no_dist=True)
    files = DcpFiles(tmp_path)
    assert files.names() == ["w"] and files.shape("w") == (10, 6) and files.dtype("w") == torch.float32
    for start, stop in [(0, 10), (1, 3), (3, 5), (6, 10)]:
        assert torch.equal(files.read_rows("w", start, stop), full[start:stop])
    files.read_rows("w", 0, 2)
    files.chunk_loads.clear()
    files.read_rows("w", 5, 9)  # the last box only
    assert files.chunk_loads == [("w", 6)]


def test_world_size_out_must_match_the_process_group(tmp_path):
    from specgrow.errors import InputError
    from specgrow.pipeline.dcp import grow_dcp

    with pytest.raises(InputError, match="world_size_out 2: this process group has 1 rank"):
        grow_dcp(SIX, None, tmp_path / "out", 2)
    assert not (tmp_path / "out").exists()

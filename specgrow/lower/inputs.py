"""The input of a growth, opened as roles of the spec's original model.

`open_input` opens what ``specgrow apply`` reads: nothing (the reference model drawn from
the spec's seed), a specgrow file or folder, a HuggingFace folder whose config.json must
describe the spec's model (`hf_config`), or a DCP folder (`open_dcp`). Every tensor's name,
shape and dtype is checked against the spec before anything is computed, every band read is
checked finite, and every file of the input is hashed on a worker thread for the manifest
(`specgrow.lower.hashes.hash_input`). The input is only ever opened for reading.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from specgrow.arch import FAMILIES, REFERENCE
from specgrow.arch.hf import family_of, read_config, refuse_mismatches, validate_config
from specgrow.errors import InputError, SpecError
from specgrow.lower.checkpoint import RoleSource
from specgrow.lower.dcp_read import DcpFiles, is_dcp
from specgrow.lower.hashes import hash_input
from specgrow.lower.links import refuse_outside
from specgrow.lower.numeric import streamed_logits
from specgrow.lower.safetensors_io import CheckpointFiles
from specgrow.lower.stream import StateSource
from specgrow.models.reference import random_state


@dataclass
class Opened:
    """An input checkpoint, seen as roles of the spec's original model."""

    source: object
    family: object
    prefix: str
    config: dict | None  # the HF config.json, None for specgrow's own inputs
    manifest: dict
    shape: object  # the spec's original model
    files: object = None  # the open checkpoint files, None for the embedded default
    path: Path | None = None  # the input file or folder (a HF folder when config is set)

    def close(self):
        if self.files is not None:
            self.files.close()

    def reopen(self):
        """A second reader of the input's files (a DCP folder, or files `CheckpointFiles` reads)."""
        return DcpFiles(self.path, self.family) if is_dcp(self.path) else CheckpointFiles(self.path)

    def reference_logits(self, tokens, pool: ThreadPoolExecutor):
        """The input's logits, computed on ``pool`` from a second reader of its own."""
        def run():
            if self.files is None:
                return streamed_logits(self.shape, self.source, tokens)
            with self.reopen() as files:
                source = RoleSource(files, self.family, self.shape, str(self.path), check_finite=True)
                return streamed_logits(self.shape, source, tokens)
        return pool.submit(run)


def open_input(spec, plan, path: str | None) -> Opened:
    """The input checkpoint as roles of ``plan.before``, every tensor checked against the spec."""
    arch = spec.model.arch
    if path is None:
        if arch != "reference":
            raise SpecError(f"model.arch {arch}: apply needs --input DIR, a HuggingFace checkpoint folder "
                            "(only the reference model has an embedded default)", path=spec.path)
        source = StateSource.of_state(random_state(plan.before, spec.seed), plan.before)
        return Opened(source, REFERENCE, "", None, {"reference_model_seed": spec.seed}, plan.before)
    where = Path(path)
    if not where.exists():
        raise InputError(f"cannot read input checkpoint: no such file or folder '{where}'", path=path)
    if is_dcp(where):  # a torch.distributed checkpoint, grown here into safetensors
        if arch != "reference":
            raise SpecError(f"model.arch {arch}: a DCP input grows into safetensors only for the reference model; "
                            "use --output-format dcp", path=spec.path)
        return open_dcp(spec, plan, where)
    config = hf_config(where)
    if config is None and arch != "reference":
        raise SpecError(f"model.arch {arch}: --input must be a HuggingFace folder with config.json, "
                        f"found '{path}'", path=spec.path)
    family = REFERENCE if config is None else FAMILIES[family_of(config, str(where))]
    files = CheckpointFiles(where)  # raises for a corrupt or incomplete checkpoint
    try:
        if config is not None:  # every mismatch of config and tensor shapes, each at its line in the spec
            refuse_mismatches(spec, where, shapes={name: files.shape(name) for name in files.names()})
        source = RoleSource(files, family, plan.before, path, check_finite=True)
    except Exception:
        files.close()
        raise
    manifest = hash_input(where)
    return Opened(source, family, source.prefix, config, manifest, plan.before, files, where)


def open_dcp(spec, plan, path, hash_files: bool = True) -> Opened:
    """A DCP folder as an `Opened` input: roles of ``plan.before`` by the family of the spec's arch."""
    family = FAMILIES[spec.model.arch]
    files = DcpFiles(path, family)
    try:
        source = RoleSource(files, family, plan.before, str(path), check_finite=True)
    except Exception:
        files.close()
        raise
    manifest = {**(hash_input(path) if hash_files else {"path": str(path)}), "format": "dcp",
                "model_key": files.wrapper.rstrip(".") or None}
    return Opened(source, family, source.prefix, None, manifest, plan.before, files, Path(path))


def hf_config(path) -> dict | None:
    """The validated config.json of a HuggingFace input folder; None for any other input (a
    file, a DCP folder, a folder written by specgrow apply for the reference model)."""
    where = Path(path)
    if not where.is_dir() or is_dcp(where) or not (where / "config.json").is_file():
        return None
    refuse_outside(where / "config.json", where)
    config = read_config(where)
    if "specgrow_config" in config:
        return None
    validate_config(config, str(where / "config.json"))
    return config

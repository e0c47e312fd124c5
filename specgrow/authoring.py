"""Authoring a spec for a HuggingFace folder: ``specgrow init`` and ``validate``/``check --input``.

`spec_for_folder` writes a complete spec whose ``model`` section restates the folder's
config.json, every field spelled out, with ``steps: []`` for the user to fill in.
`FolderCheck` holds one folder that specs are checked against: its config.json and the shape
of every stored tensor, read from the safetensors headers alone (`specgrow.arch.hf.cross_check_all`).
Reading the headers needs PyTorch; without it (the checker-only install), or without
safetensors weights, the config alone is checked and a note says so.

Never imports torch, except through the headers' reader, and only when a folder is checked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from specgrow.arch.hf import expected_model, folder_config, refuse_mismatches
from specgrow.errors import CheckpointError, InputError, SpecError
from specgrow.extras import HINT
from specgrow.spec import load_spec_text
from specgrow.spec.types import PROJECTIONS

STEPS_HELP = """\
# Fill in the growth steps, applied in order; for example:
#   steps:
#     - mlp: {{to: {mlp}}}
#     - layers: {{add: 1}}
# then: specgrow validate SPEC --input DIR; specgrow check SPEC; specgrow apply SPEC --input DIR --output OUT
steps: []
"""


def spec_for_folder(folder: str) -> str:
    """The text of a spec for the HuggingFace checkpoint in ``folder``, its steps left to fill in."""
    config = folder_config(folder)
    model = expected_model(config, str(Path(folder) / "config.json"))
    dims = [f"{name}: {value}" for name, value in model["dims"].items()]
    unused = "  # not used: position learned" if model["position"] == "learned" else ""
    lines = [
        f"# A specgrow spec for the HuggingFace checkpoint {json.dumps(folder, ensure_ascii=False)}",
        f"# (model_type {config['model_type']}): its model section restates config.json.",
        "specgrow: 1",
        "model:",
        f"  arch: {model['arch']}",
        "  dims: {" + ", ".join(dims[:6]) + ",",
        "         " + ", ".join(dims[6:]) + "}",
        f"  norm: {model['norm']}",
        f"  norm_eps: {_float(model['norm_eps'])}",
        f"  activation: {model['activation']}",
        f"  position: {model['position']}",
        f"  rope_theta: {_float(model.get('rope_theta', 10000.0))}{unused}",
        *([f"  rope_scaling: {_scaling(model['rope_scaling'])}"] if model.get("rope_scaling") else []),
        f"  final_norm: {_bool(model['final_norm'])}",
        f"  tie_embeddings: {_bool(model['tie_embeddings'])}",
        f"  bias: {_bias(model['bias'])}",
        # the features only some families have, written where they are not the default
        *[f"  {key}: {model[key]}" for key, default in (("qk_norm", "none"), ("norm_position", "pre"))
          if model.get(key, default) != default],
        *_gemma_lines(model),
        # Phi-3 and GPT-NeoX: partial rotary, parallel residual
        *([f"  rotary_dims: {model['rotary_dims']}"] if model.get("rotary_dims") is not None else []),
        *(["  parallel_residual: true"] if model.get("parallel_residual") else []),
        *_moe_lines(model),
        "seed: 0",
    ]
    text = "\n".join(lines) + "\n" + STEPS_HELP.format(mlp=2 * model["dims"]["mlp"])
    _check_model(text, str(Path(folder) / "config.json"))
    return text


def _gemma_lines(model: dict) -> list[str]:
    """The Gemma fields of ``model`` (`expected_model`) that are not the default, as spec lines: (1+w)
    gains, the embedding normaliser, the softcaps, query_pre_attn_scalar, the layer types (unless every
    layer attends fully; four a line) and Gemma 3's local RoPE base. None for the other families."""
    lines = []
    if model.get("norm_offset", 0):
        lines.append(f"  norm_offset: {int(model['norm_offset'])}")
    if model.get("embed_scale"):
        lines.append("  embed_scale: true")
    for key in ("attn_softcap", "logit_softcap", "attn_scale"):
        if model.get(key) is not None:
            lines.append(f"  {key}: {_float(model[key])}")
    types = model.get("layer_types") or []
    if any(kind != "full_attention" for kind in types):
        rows = [", ".join(types[i:i + 4]) for i in range(0, len(types), 4)]
        lines.append("  layer_types: [" + (",\n" + " " * 16).join(rows) + "]")
    if model.get("rope_local_theta") is not None:
        lines.append(f"  rope_local_theta: {_float(model['rope_local_theta'])}")
    return lines


def _moe_lines(model: dict) -> list[str]:
    """The ``moe`` section of ``model`` (`expected_model`: Mixtral, Qwen3-MoE) as a spec line, every field
    spelled out; none for a dense model."""
    moe = model.get("moe")
    if moe is None:
        return []
    dense = f", dense_layers: [{', '.join(map(str, moe['dense_layers']))}]" if moe.get("dense_layers") else ""
    return [f"  moe: {{experts: {moe['experts']}, top_k: {moe['top_k']}, width: {moe['width']}, "
            f"renormalize: {_bool(moe['renormalize'])}{dense}}}"]


def _check_model(text: str, config_path: str) -> None:
    """`CheckpointError` when the model section is not valid (a config no spec can restate, e.g. more
    kv heads than heads); checked with one step filled in, whose own errors do not count."""
    try:
        load_spec_text(text.replace("\nsteps: []\n", "\nsteps: [{layers: {add: 1}}]\n"))
    except SpecError as err:
        if err.message.startswith("model"):
            raise CheckpointError(f"config.json describes a model no spec can restate: {err.message}",
                                  path=config_path) from None


def _float(value: float) -> str:
    """A float that YAML 1.1 readers (PyYAML) read as a float too: ``1.0e-05``, not ``1e-05``."""
    mantissa, e, exponent = repr(float(value)).partition("e")
    return (mantissa if "." in mantissa else mantissa + ".0") + e + exponent


def _scaling(scaling: dict) -> str:
    """A rope scaling as a YAML flow mapping, its type first: ``{type: llama3, factor: 8.0, ...}``."""
    keys = sorted(scaling, key=lambda key: (key != "type", key))
    values = {key: _bool(v) if isinstance(v, bool) else _float(v) if isinstance(v, float) else str(v)
              for key, v in scaling.items()}
    return "{" + ", ".join(f"{key}: {values[key]}" for key in keys) + "}"


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _bias(projections: tuple[str, ...]) -> str:
    if projections in ((), PROJECTIONS):
        return _bool(bool(projections))
    return "[" + ", ".join(projections) + "]"


def write_new(path: str, text: str) -> None:
    """Write ``text`` to the new file ``path``: the complete file appears there or nothing does,
    and nothing at ``path`` is ever replaced (a file that appears meanwhile included)."""
    target = Path(path)
    refused = InputError(f"'{path}' already exists; nothing written (init never replaces a file)", path=path)
    if os.path.lexists(target):
        raise refused
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.link(tmp, target)  # unlike a rename, fails where something is at `target`
    except FileExistsError:
        raise refused from None
    finally:
        tmp.unlink(missing_ok=True)


class FolderCheck:
    """A HuggingFace folder that specs are checked against (``--input DIR``), read once.

    Construction raises the folder's own one-line error (missing, no config.json, unsupported
    model_type) and calls ``note`` with one line when tensor shapes cannot be checked.
    """

    def __init__(self, folder: str, note):
        folder_config(folder)
        self.folder = folder
        self.shapes, why = weight_shapes(folder)
        if why is not None:
            note(f"{folder}: note: {why}")

    def __call__(self, spec) -> None:
        """Raise `SpecErrors` with every disagreement of ``spec`` with the folder, if any."""
        refuse_mismatches(spec, self.folder, self.shapes)

    def summary(self) -> str:
        """What a spec that passed matches, e.g. ``matches DIR (config.json, 24 tensor shapes)``."""
        tensors = "" if self.shapes is None else f", {len(self.shapes)} tensor shapes"
        return f"matches {self.folder} (config.json{tensors})"


def weight_shapes(folder: str) -> tuple[dict | None, str | None]:
    """``(name -> shape of every stored tensor, None)`` from the folder's safetensors headers, or
    ``(None, why not)`` when PyTorch is missing or the folder holds no safetensors weights."""
    not_checked = "tensor shapes not checked (config.json only)"
    try:
        from specgrow.lower.safetensors_io import header_shapes
    except ImportError as err:
        return None, f"{not_checked}: reading safetensors headers needs PyTorch ({err}): {HINT}"
    shapes = header_shapes(folder)
    if shapes is None:
        return None, f"{not_checked}: the folder holds no model.safetensors or model.safetensors.index.json"
    return shapes, None

"""HuggingFace ``config.json``: what it says about the model, and the grown model's config.

`validate_config` checks the type and range of every key a family reads (dims within the
spec's own bounds), so that a wrong value is one line naming the key, not a failure later.
`expected_model` reads the fields a spec restates (dims, norm, activation, positions,
biases, ...) so that `cross_check` can refuse a spec that describes another model before
anything is written. `grown_config` rewrites the width and depth keys and keeps the rest;
RoPE is written both as ``rope_parameters`` and as the legacy ``rope_theta``/``rope_scaling``.

>>> cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
...        "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 100, "max_position_embeddings": 32,
...        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}
>>> expected_model(cfg)["dims"]["key"], expected_model(cfg)["activation"], expected_model(cfg)["bias"]
(16, 'swiglu', ())
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from specgrow.errors import CheckpointError
from specgrow.shape import ModelShape
from specgrow.spec.schema import load_schema
from specgrow.spec.types import PROJECTIONS

GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
                    "relu": "relu", "silu": "silu", "swish": "silu"}
# The keys each family reads, by kind: a dim of the spec (its bounds), or a kind of `KINDS`.
# A key that is absent or null takes its default.
GPT2_KEYS = {"n_embd": "hidden", "n_head": "heads", "n_inner": "mlp", "n_layer": "layers", "vocab_size": "vocab",
             "n_positions": "positions", "layer_norm_epsilon": "eps", "activation_function": "string",
             "scale_attn_weights": "boolean", "scale_attn_by_inverse_layer_idx": "boolean",
             "add_cross_attention": "boolean", "tie_word_embeddings": "boolean"}
LLAMA_KEYS = {"hidden_size": "hidden", "num_attention_heads": "heads", "num_key_value_heads": "kv_heads",
              "head_dim": "key", "intermediate_size": "mlp", "num_hidden_layers": "layers", "vocab_size": "vocab",
              "max_position_embeddings": "positions", "rms_norm_eps": "eps", "hidden_act": "string",
              "rope_theta": "theta", "rope_parameters": "object", "rope_scaling": "object",
              "partial_rotary_factor": "number", "tie_word_embeddings": "boolean", "attention_bias": "boolean",
              "mlp_bias": "boolean", "sliding_window": "window", "use_sliding_window": "boolean",
              "layer_types": "strings"}
ROPE_KEYS = {"rope_type": "string", "type": "string", "rope_theta": "theta"}  # in rope_parameters, rope_scaling
KINDS = {  # kind: (what is expected, test)
    "eps": ("a finite number >= 0", lambda v: _is_number(v) and 0 <= v < math.inf),
    "theta": ("a finite number > 0", lambda v: _is_number(v) and 0 < v < math.inf),
    "number": ("a finite number", lambda v: _is_number(v) and math.isfinite(v)),
    "window": ("an integer >= 0 (0: no sliding window)", lambda v: _is_int(v) and 0 <= v < 2**63),
    "boolean": ("true or false", lambda v: isinstance(v, bool)),
    "string": ("a string", lambda v: isinstance(v, str)),
    "object": ("an object", lambda v: isinstance(v, dict)),
    "strings": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
}


def family_of(config: dict, path: str) -> str:
    model_type = config.get("model_type")
    if model_type == "gpt2":
        return "gpt2"
    if model_type in ("llama", "mistral", "qwen2"):
        return "llama"
    raise CheckpointError(f"config.json: model_type {_found(model_type)} is not supported "
                          "(expected gpt2, llama, mistral or qwen2)", path=path)


def read_config(directory: Path) -> dict:
    """The JSON object of ``directory/config.json``; one-line errors, however the file is broken."""
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"), parse_int=_parse_int, object_pairs_hook=_object)
    except FileNotFoundError:
        raise CheckpointError("the input directory has no config.json", path=str(directory)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read config.json: {exc}", path=str(path)) from None
    except ValueError as exc:  # from `_object`
        raise CheckpointError(f"config.json: {exc}", path=str(path)) from None
    except RecursionError:
        raise CheckpointError("cannot read config.json: JSON nested too deeply", path=str(path)) from None
    if not isinstance(config, dict):
        raise CheckpointError("config.json: expected a JSON object", path=str(path))
    return config


class _Huge:
    """An integer with more digits than Python converts (``sys.get_int_max_str_digits``)."""

    def __init__(self, digits: int):
        self.digits = digits


def _parse_int(text: str):
    try:
        return int(text)
    except ValueError:
        return _Huge(len(text.lstrip("-")))


def _object(pairs: list) -> dict:
    """A JSON object; `ValueError` naming the key of a `_Huge` integer (in a list, too)."""
    for key, value in pairs:
        huge = _huge_in(value)
        if huge is not None:
            raise ValueError(f"{key}: expected a number, found an integer of {huge.digits} digits")
    return dict(pairs)


def _huge_in(value) -> _Huge | None:
    if isinstance(value, list):
        return next((huge for huge in map(_huge_in, value) if huge is not None), None)
    return value if isinstance(value, _Huge) else None


def validate_config(config: dict, path: str) -> None:
    """`CheckpointError` at the first key the config's family reads whose value has the wrong
    type or range (dims within the spec's bounds), naming the key, what it expects and what it found."""
    gpt2 = family_of(config, path) == "gpt2"
    for key, kind in (GPT2_KEYS if gpt2 else LLAMA_KEYS).items():
        _check_value(key, config.get(key), kind, path)
    for outer in () if gpt2 else ("rope_parameters", "rope_scaling"):
        for key, kind in ROPE_KEYS.items():
            _check_value(f"{outer}.{key}", (config.get(outer) or {}).get(key), kind, path)
    types, layers = config.get("layer_types"), config.get("num_hidden_layers")
    if not gpt2 and types is not None and layers is not None and len(types) != layers:
        raise CheckpointError(f"config.json: layer_types: expected one type per layer ({layers}), "
                              f"found {len(types)}", path=path)


def _check_value(key: str, value, kind: str, path: str) -> None:
    if value is None:
        return
    if kind in KINDS:
        expected, test = KINDS[kind]
    else:
        bounds = load_schema()["$defs"]["dims"]["properties"][kind]
        low, high = bounds["minimum"], bounds["maximum"]
        expected, test = f"an integer in {low}..{high}", lambda v: _is_int(v) and low <= v <= high
    if not test(value):
        raise CheckpointError(f"config.json: {key}: expected {expected}, found {_found(value)}", path=path)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _found(value) -> str:
    """A JSON value, shown briefly: containers by their kind, long numbers by their digits."""
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "an object"
    if _is_int(value) and abs(value) >= 10**20:
        return f"an integer of {len(str(abs(value)))} digits"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _require(config: dict, key: str, path: str):
    if key not in config or config[key] is None:
        raise CheckpointError(f"config.json has no '{key}'", path=path)
    return config[key]


def rope_theta(config: dict, path: str) -> float:
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    for source in (params, scaling):
        kind = source.get("rope_type", source.get("type", "default"))
        if kind != "default":
            raise CheckpointError(f"config.json: rope_type '{kind}' is not supported (expected default)", path=path)
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        raise CheckpointError("config.json: partial_rotary_factor other than 1 is not supported", path=path)
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def expected_model(config: dict, path: str = "config.json") -> dict:
    """The spec's ``model`` section that describes this config (defaults expanded)."""
    family = family_of(config, path)
    if family == "gpt2":
        hidden, heads = _require(config, "n_embd", path), _require(config, "n_head", path)
        activation = config.get("activation_function", "gelu_new")
        if activation not in GPT2_ACTIVATIONS:
            raise CheckpointError(f"config.json: activation_function {_found(activation)} is not supported",
                                  path=path)
        for flag, wanted in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                             ("add_cross_attention", False)):
            if config.get(flag, wanted) != wanted:
                raise CheckpointError(f"config.json: {flag} {config[flag]} is not supported "
                                      f"(expected {wanted})", path=path)
        return {
            "arch": "gpt2",
            "dims": {"hidden": hidden, "mlp": config.get("n_inner") or 4 * hidden, "heads": heads,
                     "kv_heads": heads, "key": hidden // heads, "value": hidden // heads,
                     "layers": _require(config, "n_layer", path), "vocab": _require(config, "vocab_size", path),
                     "positions": _require(config, "n_positions", path)},
            "norm": "layernorm", "norm_eps": float(config.get("layer_norm_epsilon", 1e-5)),
            "activation": GPT2_ACTIVATIONS[activation], "position": "learned", "final_norm": True,
            "tie_embeddings": bool(config.get("tie_word_embeddings", True)), "bias": PROJECTIONS,
        }
    hidden, heads = _require(config, "hidden_size", path), _require(config, "num_attention_heads", path)
    if config.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json: hidden_act {_found(config['hidden_act'])} is not supported "
                              "(expected silu: the gated MLP is swiglu)", path=path)
    head_dim = config.get("head_dim") or hidden // heads
    model_type = config["model_type"]
    if model_type == "qwen2":
        bias: tuple[str, ...] = ("q", "k", "v")
    elif model_type == "mistral":
        bias = ()
    else:
        attention, mlp = PROJECTIONS[:4], PROJECTIONS[4:]  # q k v o | up gate down
        bias = (attention if config.get("attention_bias") else ()) + (mlp if config.get("mlp_bias") else ())
    return {
        "arch": "llama",
        "dims": {"hidden": hidden, "mlp": _require(config, "intermediate_size", path), "heads": heads,
                 "kv_heads": config.get("num_key_value_heads") or heads, "key": head_dim, "value": head_dim,
                 "layers": _require(config, "num_hidden_layers", path), "vocab": _require(config, "vocab_size", path),
                 "positions": _require(config, "max_position_embeddings", path)},
        "norm": "rmsnorm", "norm_eps": float(config.get("rms_norm_eps", 1e-6)), "activation": "swiglu",
        "position": "rope", "rope_theta": rope_theta(config, path), "final_norm": True,
        "tie_embeddings": bool(config.get("tie_word_embeddings", False)), "bias": bias,
    }


def cross_check(model, config: dict, path: str) -> None:
    """`CheckpointError` at the first field where the spec's ``model`` and the config disagree."""
    expected = expected_model(config, path)
    found = {"arch": model.arch, "dims": vars(model.dims), "norm": model.norm, "norm_eps": model.norm_eps,
             "activation": model.activation, "position": model.position, "rope_theta": model.rope_theta,
             "final_norm": model.final_norm, "tie_embeddings": model.tie_embeddings, "bias": model.bias}
    for key, want in expected.items():
        items = want.items() if isinstance(want, dict) else [(None, want)]
        for sub, value in items:
            have = found[key][sub] if sub else found[key]
            same = math.isclose(have, value, rel_tol=1e-9) if isinstance(value, float) else have == value
            if not same:
                name = f"model.{key}.{sub}" if sub else f"model.{key}"
                shown = list(value) if isinstance(value, tuple) else value
                raise CheckpointError(f"{name}: the spec says {_show(have)}, but config.json describes "
                                      f"{_show(shown)}; restate the model as the checkpoint has it", path=path)


def _show(value) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def layer_origins(spec) -> list[int]:
    """For each layer of the grown model, the original layer it is, or sits after (inserted)."""
    origins = list(range(spec.model.dims.layers))
    for step in spec.steps:
        if step.kind == "layers":
            neighbour = origins[max(step.at - 1, 0)]
            origins[step.at:step.at] = [neighbour] * step.add
    return origins


def grown_config(config: dict, after: ModelShape, origins: list[int]) -> dict:
    """``config`` with the grown widths, depth and norm eps; inserted layers take their neighbour's layer type."""
    out = dict(config)
    layer = after.layers[0]
    if out["model_type"] == "gpt2":
        out.update(n_embd=after.hidden, n_head=layer.heads, n_inner=layer.mlp, n_layer=len(after.layers),
                   layer_norm_epsilon=after.norm_eps)
        return out
    out.update(hidden_size=after.hidden, intermediate_size=layer.mlp, num_attention_heads=layer.heads,
               num_key_value_heads=layer.kv_heads, head_dim=layer.key, num_hidden_layers=len(after.layers),
               rms_norm_eps=after.norm_eps)  # hidden growth rescales eps by h/h' (gain-and-eps)
    if isinstance(config.get("layer_types"), list):
        out["layer_types"] = [config["layer_types"][i] for i in origins]
    params = dict(config.get("rope_parameters") or {"rope_type": "default"})
    params.setdefault("rope_type", "default")
    params["rope_theta"] = after.rope_theta
    out["rope_parameters"] = params
    out["rope_theta"] = after.rope_theta
    out["rope_scaling"] = None
    return out


def shortest_window(config: dict) -> int | None:
    """The smallest sliding-attention window any layer uses (None: every layer attends fully)."""
    window = config.get("sliding_window")
    if not window:
        return None
    if config.get("model_type") == "qwen2" and not config.get("use_sliding_window", False):
        return None
    types = config.get("layer_types")
    if isinstance(types, list) and "sliding_attention" not in types:
        return None
    return int(window)

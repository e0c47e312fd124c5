"""HuggingFace ``config.json``: what it says about the model, and the grown model's config.

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
from specgrow.spec.types import PROJECTIONS

GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
                    "relu": "relu", "silu": "silu", "swish": "silu"}


def family_of(config: dict, path: str) -> str:
    model_type = config.get("model_type")
    if model_type == "gpt2":
        return "gpt2"
    if model_type in ("llama", "mistral", "qwen2"):
        return "llama"
    raise CheckpointError(f"config.json: model_type '{model_type}' is not supported "
                          "(expected gpt2, llama, mistral or qwen2)", path=path)


def read_config(directory: Path) -> dict:
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError("the input directory has no config.json", path=str(directory)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read config.json: {exc}", path=str(path)) from None
    if not isinstance(config, dict):
        raise CheckpointError("config.json: expected a JSON object", path=str(path))
    return config


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
            raise CheckpointError(f"config.json: activation_function '{activation}' is not supported", path=path)
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
        raise CheckpointError(f"config.json: hidden_act '{config['hidden_act']}' is not supported "
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

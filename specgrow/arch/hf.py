"""HuggingFace ``config.json``: what it says about the model, and the grown model's config.

`validate_config` checks the type and range of every key a family reads (dims within the
spec's own bounds), so that a wrong value is one line naming the key, not a failure later.
`expected_model` reads the fields a spec restates (dims, norm, activation, positions,
biases, ...) so that `cross_check` can refuse a spec that describes another model before
anything is written; `cross_check_all` reports every disagreement with a folder at once, its
config and its tensors' shapes, each at its line in the spec. `grown_config` rewrites the
width and depth keys and keeps the rest; RoPE is written both as ``rope_parameters`` and as
the legacy ``rope_theta``/``rope_scaling``.

>>> cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
...        "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 100, "max_position_embeddings": 32,
...        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}
>>> expected_model(cfg)["dims"]["key"], expected_model(cfg)["activation"], expected_model(cfg)["bias"]
(16, 'swiglu', ())
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from specgrow.arch import FAMILIES, grown_family
from specgrow.errors import CheckpointError, InputError, SpecError, SpecErrors
from specgrow.shape import EXPERT_ROLES, GLOBAL_ROLES, LAYER_ROLES, ModelShape
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
              "partial_rotary_factor": "number", "original_max_position_embeddings": "context",
              "tie_word_embeddings": "boolean", "attention_bias": "boolean", "mlp_bias": "boolean",
              "sliding_window": "window", "use_sliding_window": "boolean", "max_window_layers": "count",
              "layer_types": "strings"}
QWEN3_KEYS = {key: kind for key, kind in LLAMA_KEYS.items() if key != "mlp_bias"}  # no MLP biases
OLMO2_KEYS = {key: kind for key, kind in QWEN3_KEYS.items()  # no sliding window either
              if key not in ("sliding_window", "use_sliding_window", "max_window_layers", "layer_types")}
KEYS = {"gpt2": GPT2_KEYS, "llama": LLAMA_KEYS, "qwen3": QWEN3_KEYS, "olmo2": OLMO2_KEYS}
# The defaults transformers' config classes give a key that is absent (a null one is treated alike here;
# transformers would fail on most of them): Qwen3Config's head_dim is 128 and its num_key_value_heads 32,
# whatever hidden and heads are; Olmo2Config's rms_norm_eps is 1e-5.
DEFAULTS = {"llama": {"rms_norm_eps": 1e-6}, "qwen3": {"rms_norm_eps": 1e-6, "head_dim": 128, "num_key_value_heads": 32},
            "olmo2": {"rms_norm_eps": 1e-5}}
# Gemma 2 and Gemma 3 text (Gemma2Config, Gemma3TextConfig): the MLP reads hidden_activation (hidden_act, in
# older configs, is not read), the scores are scaled by query_pre_attn_scalar^-1/2, the softcaps are null for
# none; Gemma 3 keeps its rope parameters per layer type, built from the legacy rope_theta (full layers),
# rope_local_base_freq (sliding layers), rope_scaling (full layers) and sliding_window_pattern when absent.
GEMMA2_KEYS = {**{key: kind for key, kind in LLAMA_KEYS.items()
                  if key not in ("hidden_act", "mlp_bias", "use_sliding_window", "max_window_layers")},
               "hidden_activation": "string", "hidden_act": "string", "query_pre_attn_scalar": "theta",
               "attn_logit_softcapping": "theta", "final_logit_softcapping": "theta",
               "use_bidirectional_attention": "boolean"}
GEMMA3_KEYS = {**GEMMA2_KEYS, "rope_local_base_freq": "theta", "sliding_window_pattern": "context"}
KEYS.update(gemma2=GEMMA2_KEYS, gemma3=GEMMA3_KEYS)
# transformers' defaults for keys that are absent (a null softcap or sliding_window is kept: none)
GEMMA_DEFAULTS = {
    "gemma2": {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "rope_theta": 10000.0,
               "sliding_window_pattern": 2},
    "gemma3": {"attn_logit_softcapping": None, "final_logit_softcapping": None, "rope_theta": 1_000_000.0,
               "rope_local_base_freq": 10000.0, "sliding_window_pattern": 6},
}
GEMMA_COMMON_DEFAULTS = {"rms_norm_eps": 1e-6, "head_dim": 256, "num_key_value_heads": 4, "query_pre_attn_scalar": 256,
                         "sliding_window": 4096, "tie_word_embeddings": True}
GEMMA_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_python_tanh", "gelu_new")  # the tanh gelu, as transformers names it
GEMMA_LAYER_TYPES = ("full_attention", "sliding_attention")
# Phi-3 (Phi3Config) and GPT-NeoX (GPTNeoXConfig): partial rotary (Phi-3's partial_rotary_factor, default 1;
# GPT-NeoX's rotary_pct, default 0.25; either inside rope_parameters first), GPT-NeoX's head_size = hidden // heads,
# rotary_emb_base (its top-level rope_theta is not read), LayerNorm eps, use_parallel_residual, attention_bias
PHI3_KEYS = {key: kind for key, kind in LLAMA_KEYS.items()
             if key not in ("attention_bias", "mlp_bias", "use_sliding_window", "max_window_layers", "layer_types")}
NEOX_KEYS = {"hidden_size": "hidden", "num_attention_heads": "heads", "intermediate_size": "mlp", "head_dim": "key",
             "num_hidden_layers": "layers", "vocab_size": "vocab", "max_position_embeddings": "positions",
             "layer_norm_eps": "eps", "hidden_act": "string", "rotary_pct": "number", "rotary_emb_base": "theta",
             "rope_parameters": "object", "rope_scaling": "object", "use_parallel_residual": "boolean",
             "attention_bias": "boolean", "tie_word_embeddings": "boolean"}
KEYS.update(phi3=PHI3_KEYS, gpt_neox=NEOX_KEYS)
DEFAULTS.update(phi3={"rms_norm_eps": 1e-5}, gpt_neox={"layer_norm_eps": 1e-5, "hidden_act": "gelu", "rotary_pct": 0.25,
                                                       "use_parallel_residual": True, "attention_bias": True})
# Mixtral (MixtralConfig) and Qwen3-MoE (Qwen3MoeConfig): the experts' count as num_local_experts (both classes map
# num_experts onto it), top-k, Mixtral's expert width intermediate_size and RoPE base 1e6 by default; Qwen3-MoE's
# expert width moe_intermediate_size (intermediate_size: its dense layers'), norm_topk_prob, dense layers by
# mlp_only_layers and decoder_sparse_step, head_dim hidden // heads when absent. router_jitter_noise only
# scales the input in training: the function in eval mode, which growth preserves, does not see it.
MOE_KEYS = {"num_local_experts": "count", "num_experts": "count", "num_experts_per_tok": "context"}
MIXTRAL_KEYS = {**{key: kind for key, kind in LLAMA_KEYS.items() if key not in (
    "attention_bias", "mlp_bias", "use_sliding_window", "max_window_layers", "layer_types")},
    **MOE_KEYS, "router_jitter_noise": "eps"}
QWEN3_MOE_KEYS = {**{key: kind for key, kind in QWEN3_KEYS.items() if key not in ("max_window_layers", "layer_types")},
                  **MOE_KEYS, "moe_intermediate_size": "mlp", "norm_topk_prob": "boolean",
                  "decoder_sparse_step": "context", "mlp_only_layers": "indices"}
KEYS.update(mixtral=MIXTRAL_KEYS, qwen3_moe=QWEN3_MOE_KEYS)
DEFAULTS.update(mixtral={"rms_norm_eps": 1e-5, "num_key_value_heads": 8, "rope_theta": 1e6,
                         "num_local_experts": 8, "num_experts_per_tok": 2},
                qwen3_moe={"rms_norm_eps": 1e-6, "num_key_value_heads": 4, "num_local_experts": 128,
                           "num_experts_per_tok": 8, "moe_intermediate_size": 768, "norm_topk_prob": False,
                           "decoder_sparse_step": 1})
ARCHITECTURES = {"mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}  # upcycled checkpoints' class
PARTIAL_ROTARY = {"phi3": ("partial_rotary_factor", 1.0), "gpt_neox": ("rotary_pct", 0.25)}  # top-level key, default
ROPE_KEYS = {"rope_type": "string", "type": "string", "rope_theta": "theta"}  # in rope_parameters, rope_scaling
ROPE_TYPES = ("default", "linear", "llama3", "yarn", "dynamic")
# The keys each rope type reads besides rope_type and rope_theta (transformers' modeling_rope_utils), by
# kind, and the ones it cannot do without. The spec's `rope_scaling` holds these (and `type`).
SCALING_KEYS = {
    "linear": {"factor": "theta"},
    "dynamic": {"factor": "theta"},
    "llama3": {"factor": "theta", "low_freq_factor": "theta", "high_freq_factor": "theta",
               "original_max_position_embeddings": "context"},
    "yarn": {"factor": "theta", "original_max_position_embeddings": "context", "beta_fast": "eps",
             "beta_slow": "eps", "attention_factor": "theta", "mscale": "eps", "mscale_all_dim": "eps",
             "truncate": "boolean"},
}
REQUIRED_SCALING = {"linear": ("factor",), "dynamic": ("factor",), "llama3": tuple(SCALING_KEYS["llama3"]),
                    "yarn": ()}
KINDS = {  # kind: (what is expected, test)
    "eps": ("a finite number >= 0", lambda v: _is_number(v) and 0 <= v < math.inf),
    "theta": ("a finite number > 0", lambda v: _is_number(v) and 0 < v < math.inf),
    "number": ("a finite number", lambda v: _is_number(v) and math.isfinite(v)),
    "window": ("an integer >= 0 (0: no sliding window)", lambda v: _is_int(v) and 0 <= v < 2**63),
    "count": ("an integer >= 0", lambda v: _is_int(v) and 0 <= v < 2**63),
    "context": ("an integer in 1..1000000000", lambda v: _is_int(v) and 1 <= v <= 10**9),
    "boolean": ("true or false", lambda v: isinstance(v, bool)),
    "string": ("a string", lambda v: isinstance(v, str)),
    "object": ("an object", lambda v: isinstance(v, dict)),
    "strings": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "indices": ("a list of integers >= 0", lambda v: isinstance(v, list) and all(_is_int(x) and 0 <= x < 2**63
                                                                                 for x in v)),
}


def family_of(config: dict, path: str) -> str:
    """The name of the family (`specgrow.arch.FAMILIES`) whose ``model_types`` hold the config's model_type."""
    model_type = config.get("model_type")
    for family in FAMILIES.values():
        if isinstance(model_type, str) and model_type in family.model_types:
            return family.name
    if model_type == "gemma3":  # Gemma3ForConditionalGeneration: a vision tower around a gemma3_text model
        raise CheckpointError("config.json: model_type gemma3 is the multimodal Gemma 3, which is not supported: "
                              "use its text model (model_type gemma3_text, Gemma3ForCausalLM)", path=path)
    raise CheckpointError(f"config.json: model_type {_found(model_type)} is not supported "
                          f"(expected {MODEL_TYPES})", path=path)


MODEL_TYPES = "gpt2, llama, mistral, qwen2, qwen3, olmo2, gemma2, gemma3_text, phi3, gpt_neox, mixtral or qwen3_moe"


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
    family = family_of(config, path)
    gpt2 = family == "gpt2"
    for key, kind in KEYS[family].items():
        _check_value(key, config.get(key), kind, path)
    for outer in () if gpt2 else ("rope_parameters", "rope_scaling"):
        for key, kind in ROPE_KEYS.items():
            _check_value(f"{outer}.{key}", (config.get(outer) or {}).get(key), kind, path)
    types, layers = config.get("layer_types"), config.get("num_hidden_layers")
    if not gpt2 and types is not None and layers is not None and len(types) != layers:
        raise CheckpointError(f"config.json: layer_types: expected one type per layer ({layers}), "
                              f"found {len(types)}", path=path)
    if family in ("gemma2", "gemma3"):
        _validate_gemma(config, path)


def _validate_gemma(config: dict, path: str) -> None:
    """The Gemma keys `validate_config`'s table cannot say: each layer type is known, and Gemma 3's
    per-layer-type rope parameters are objects (or null) whose keys have the right kinds."""
    for i, kind in enumerate(config.get("layer_types") or ()):
        if kind not in GEMMA_LAYER_TYPES:
            raise CheckpointError(f"config.json: layer_types[{i}]: expected full_attention or sliding_attention, "
                                  f"found {_found(kind)}", path=path)
    if config["model_type"] != "gemma3_text":
        return
    for layer_type in GEMMA_LAYER_TYPES:
        params = (config.get("rope_parameters") or {}).get(layer_type)
        _check_value(f"rope_parameters.{layer_type}", params, "object", path)
        for key, kind in ROPE_KEYS.items():
            _check_value(f"rope_parameters.{layer_type}.{key}", (params or {}).get(key), kind, path)


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


def _get(config: dict, key: str, default):
    """``config[key]``, or ``default`` when the key is absent or null."""
    value = config.get(key)
    return default if value is None else value


def _rope_source(config: dict) -> tuple[str, dict]:
    """``(key, object)`` of the rope settings transformers builds the model from: the legacy
    ``rope_scaling`` when it is set (it replaces ``rope_parameters``), else ``rope_parameters``."""
    if config.get("rope_scaling"):
        return "rope_scaling", config["rope_scaling"]
    return "rope_parameters", config.get("rope_parameters") or {}


def rope_parameters(config: dict, path: str) -> dict:
    """The rope parameters transformers builds the model with, standardized as it does:
    ``rope_type``, ``rope_theta`` (from the object, else the top-level ``rope_theta``, else 10000)
    and the keys the rope type reads, with ``original_max_position_embeddings`` filled in for
    llama3 and yarn (a top-level value first, then the object's, then ``max_position_embeddings``)
    and a yarn ``factor`` left null derived from the two lengths. Keys that do not change the
    frequencies are dropped (yarn's beta_fast and beta_slow when null or 0, mscale and
    mscale_all_dim unless both are set and attention_factor is not, truncate when true).
    `CheckpointError` for a rope type other than default, linear, llama3, yarn or dynamic, per-layer
    rope parameters, a partial rotary factor, or a missing or ill-typed parameter, naming the key.
    Phi-3 and GPT-NeoX: the partial rotary factor is theirs (`rotary_factor`), phi3 takes the default
    rope type only, and GPT-NeoX's base is ``rotary_emb_base`` where the object has no rope_theta.

    >>> rope_parameters({"rope_scaling": {"type": "linear", "factor": 2}, "rope_theta": 5e5}, "config.json")
    {'rope_type': 'linear', 'rope_theta': 500000.0, 'factor': 2.0}
    """
    outer, source = _rope_source(config)
    if any(isinstance(value, dict) for value in source.values()):
        raise CheckpointError(f"config.json: {outer}: per-layer-type rope parameters are not supported (expected "
                              "one object with rope_type and its parameters)", path=path)
    type_key = "rope_type" if "rope_type" in source else "type"
    kind = source.get(type_key, "default")
    model_type = config.get("model_type")
    if model_type == "phi3" and kind != "default":  # Phi3Config: su and yarn are read as longrope
        raise CheckpointError(f"config.json: {outer}.{type_key}: rope type {_found(kind)} is not supported for phi3 "
                              "(expected default; Phi-3's su, yarn and longrope are all LongRoPE, whose factor lists "
                              "are sized by the rotary width)", path=path)
    if kind not in ROPE_TYPES:
        raise CheckpointError(f"config.json: {outer}.{type_key}: rope type {_found(kind)} is not supported "
                              "(expected default, linear, llama3, yarn or dynamic)", path=path)
    partial = _get(source, "partial_rotary_factor", config.get("partial_rotary_factor"))
    if partial is not None and partial != 1.0 and model_type not in PARTIAL_ROTARY:  # phi3, gpt_neox: rotary_dims
        raise CheckpointError("config.json: partial_rotary_factor other than 1 is not supported", path=path)
    top = "rotary_emb_base" if model_type == "gpt_neox" else "rope_theta"  # GPTNeoXConfig reads no rope_theta
    theta = _get(source, "rope_theta", _get(config, top, DEFAULTS.get(model_type, {}).get("rope_theta", 10000.0)))
    out = {"rope_type": kind, "rope_theta": float(theta)}
    if kind == "default":
        return out
    params = dict(source)
    if kind in ("llama3", "yarn"):  # transformers' standardize_rope_params
        params["original_max_position_embeddings"] = _get(
            config, "original_max_position_embeddings",
            _get(params, "original_max_position_embeddings", config.get("max_position_embeddings")))
        _check_value(f"{outer}.original_max_position_embeddings", params["original_max_position_embeddings"],
                     "context", path)
    if kind == "yarn" and params.get("factor") is None and params["original_max_position_embeddings"]:
        positions = config.get("max_position_embeddings")  # transformers: factor from the two lengths
        if _is_int(positions):
            params["factor"] = positions / params["original_max_position_embeddings"]
    for key, value_kind in SCALING_KEYS[kind].items():
        value = params.get(key)
        if value is None:
            if key in REQUIRED_SCALING[kind] or key == "factor":
                raise CheckpointError(f"config.json: {outer}.{key}: rope type {kind} needs it, found none", path=path)
            continue
        _check_value(f"{outer}.{key}", value, value_kind, path)
        out[key] = value if value_kind in ("context", "boolean") else float(value)
    if kind == "yarn":
        for key in ("beta_fast", "beta_slow"):  # transformers: `or 32`, `or 1`
            if not out.get(key):
                out.pop(key, None)
        if "attention_factor" in out or not (out.get("mscale") and out.get("mscale_all_dim")):
            out.pop("mscale", None)
            out.pop("mscale_all_dim", None)
        if params.get("truncate", True) is None:  # transformers: `if truncate:`
            out["truncate"] = False
        if out.get("truncate") is True:
            del out["truncate"]
    return out


def rope_settings(config: dict, path: str) -> tuple[float, dict]:
    """``(rope_theta, the spec's rope_scaling)`` of a config (``{}``: no scaling), by `rope_parameters`."""
    params = rope_parameters(config, path)
    scaling = {key: value for key, value in params.items() if key not in ("rope_type", "rope_theta")}
    return params["rope_theta"], ({"type": params["rope_type"], **scaling} if params["rope_type"] != "default" else {})


def rope_theta(config: dict, path: str) -> float:
    return rope_settings(config, path)[0]


def rotary_factor(config: dict, path: str) -> tuple[float, str]:
    """``(factor, the key it came from)``: the share of each head's dims that turn, as Phi3Config and
    GPTNeoXConfig read it: ``partial_rotary_factor`` of the rope object (`_rope_source`), else the top-level
    ``partial_rotary_factor`` (phi3) or ``rotary_pct`` (gpt_neox), else 1 (phi3) or 0.25 (gpt_neox).
    `CheckpointError` unless it is a number in (0, 1]."""
    outer, source = _rope_source(config)
    top, default = PARTIAL_ROTARY[config["model_type"]]
    key, factor = (f"{outer}.partial_rotary_factor", source["partial_rotary_factor"]) \
        if source.get("partial_rotary_factor") is not None else (top, _get(config, top, default))
    if not (_is_number(factor) and 0 < factor <= 1):
        raise CheckpointError(f"config.json: {key}: expected a number in (0, 1], found {_found(factor)}", path=path)
    return factor, key


def rotary_dims(config: dict, path: str, head_dim: int) -> int | None:
    """The spec's ``rotary_dims`` of a phi3 or gpt_neox config: ``int(head_dim * factor)`` as transformers
    computes it (`rotary_factor`), None when every dim turns. `CheckpointError` for an odd width or none
    (transformers then turns a width of other frequencies, or nothing)."""
    factor, key = rotary_factor(config, path)
    dims = int(head_dim * factor)
    if dims % 2 or dims < 2:
        raise CheckpointError(f"config.json: {key}: {factor} turns int({head_dim} x {factor}) = {dims} dims of each "
                              "head; specgrow supports an even number of rotary dims, at least 2", path=path)
    return None if dims == head_dim else dims


def rotary_field(config: dict, path: str, head_dim: int) -> dict:
    """``{"rotary_dims": n}`` for `expected_model` when only some dims turn; ``{}`` when all do (the
    spec's default: it has no null for it)."""
    dims = rotary_dims(config, path, head_dim)
    return {} if dims is None else {"rotary_dims": dims}


def grown_rotary_factor(rotary: int | None, head_dim: int, old: float) -> float:
    """The factor that turns ``rotary`` of ``head_dim`` dims (None: all) in transformers' ``int(head_dim *
    factor)``: the ``old`` one when it still does, else ``rotary / head_dim`` nudged up to the next float
    while the product rounds below (``int(98 * (64 / 98)) == 63``).

    >>> grown_rotary_factor(64, 98, 0.25), int(98 * grown_rotary_factor(64, 98, 0.25))
    (0.653061224489796, 64)
    """
    rotary = head_dim if rotary is None else rotary
    if int(head_dim * old) == rotary:
        return old
    factor = rotary / head_dim
    while int(head_dim * factor) < rotary:
        factor = math.nextafter(factor, 2.0)
    if int(head_dim * factor) != rotary:  # cannot happen: the product grows by at most one ulp a step
        raise ValueError(f"no factor turns {rotary} of {head_dim} dims")
    return factor


def effective_scaling(scaling: dict, positions: int) -> dict:
    """A rope scaling (the spec's ``rope_scaling`` keys) with the defaults both transformers and
    `specgrow.rope` fill in spelled out and the keys its type does not read dropped: two scalings
    compute the same frequencies iff these are equal."""
    out = dict(scaling)
    kind = out.get("type")
    if kind not in SCALING_KEYS:
        return out
    out = {key: value for key, value in out.items() if key == "type" or key in SCALING_KEYS[kind]}
    if kind == "yarn":
        if not out.get("original_max_position_embeddings"):
            out["original_max_position_embeddings"] = positions
        out["beta_fast"] = out.get("beta_fast") or 32.0
        out["beta_slow"] = out.get("beta_slow") or 1.0
        out.setdefault("truncate", True)
        if "attention_factor" in out or not (out.get("mscale") and out.get("mscale_all_dim")):
            out.pop("mscale", None)
            out.pop("mscale_all_dim", None)
    return out


def _same(have, want) -> bool:
    if isinstance(want, dict) and isinstance(have, dict):
        return have.keys() == want.keys() and all(_same(have[key], want[key]) for key in want)
    if isinstance(want, float) and _is_number(have):
        return math.isclose(have, want, rel_tol=1e-9)
    return have == want


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
            **_fixed(family, "qk_norm", "norm_position"),
        }
    if family in ("gemma2", "gemma3"):
        return gemma_model(config, path, family)
    if family == "gpt_neox":
        return neox_model(config, path)
    hidden, heads = _require(config, "hidden_size", path), _require(config, "num_attention_heads", path)
    if config.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json: hidden_act {_found(config['hidden_act'])} is not supported "
                              "(expected silu: the gated MLP is swiglu)", path=path)
    defaults = DEFAULTS.get(family, DEFAULTS["llama"])
    head_dim = _get(config, "head_dim", defaults.get("head_dim") or hidden // heads)
    kv_heads = config.get("num_key_value_heads", defaults.get("num_key_value_heads")) or heads
    model_type = config["model_type"]
    attention, mlp = PROJECTIONS[:4], PROJECTIONS[4:]  # q k v o | up gate down
    if model_type == "qwen2":
        bias: tuple[str, ...] = ("q", "k", "v")
    elif model_type == "mistral":
        bias = ()
    elif family in ("qwen3", "olmo2"):  # attention_bias: q, k, v and o; the MLP has none
        bias = attention if config.get("attention_bias") else ()
    elif family in ("phi3", "mixtral"):  # their projections have no biases, whatever the config says
        bias = ()
    else:
        bias = (attention if config.get("attention_bias") else ()) + (mlp if config.get("mlp_bias") else ())
    theta, scaling = rope_settings(config, path)
    return {
        "arch": family,
        "dims": {"hidden": hidden, "mlp": _require(config, "intermediate_size", path), "heads": heads,
                 "kv_heads": kv_heads, "key": head_dim, "value": head_dim,
                 "layers": _require(config, "num_hidden_layers", path), "vocab": _require(config, "vocab_size", path),
                 "positions": _require(config, "max_position_embeddings", path)},
        "norm": "rmsnorm", "norm_eps": float(_get(config, "rms_norm_eps", defaults["rms_norm_eps"])),
        "activation": "swiglu", "position": "rope", "rope_theta": theta,
        **({"rope_scaling": scaling} if scaling else {}),
        "final_norm": True, "tie_embeddings": bool(config.get("tie_word_embeddings", False)), "bias": bias,
        **_fixed(family, "qk_norm", "norm_position"),
        **(rotary_field(config, path, head_dim) if family == "phi3" else {}),
        **(moe_field(config, path) if FAMILIES[family].experts != "none" else {}),
    }


def experts_of(config: dict, path: str) -> tuple[int, int]:
    """``(experts, top_k)`` of a Mixtral or Qwen3-MoE config: num_local_experts, or num_experts (both
    classes map one onto the other), and num_experts_per_tok, with their classes' defaults."""
    defaults = DEFAULTS[config["model_type"]]
    given = {key: config[key] for key in ("num_local_experts", "num_experts") if config.get(key) is not None}
    if len(set(given.values())) > 1:
        raise CheckpointError(f"config.json: num_local_experts {given['num_local_experts']} and num_experts "
                              f"{given['num_experts']} disagree (transformers reads them as one)", path=path)
    experts = next(iter(given.values()), defaults["num_local_experts"])
    return experts, _get(config, "num_experts_per_tok", defaults["num_experts_per_tok"])


def moe_layers(config: dict, path: str) -> list[bool]:
    """Which layers are mixtures of experts: every one (Mixtral), or as Qwen3-MoE decides it: layer i unless
    it is in mlp_only_layers, none when there are no experts, else every decoder_sparse_step-th."""
    layers = _get(config, "num_hidden_layers", 0)
    if config["model_type"] == "mixtral":
        return [True] * layers
    experts, step = experts_of(config, path)[0], _get(config, "decoder_sparse_step", 1)
    dense = set(_get(config, "mlp_only_layers", []))
    return [i not in dense and experts > 0 and (i + 1) % step == 0 for i in range(layers)]


def moe_field(config: dict, path: str) -> dict:
    """``{"moe": ...}`` of `expected_model` for a Mixtral or Qwen3-MoE config; ``{}`` when no layer has experts."""
    moe = moe_layers(config, path)
    if not any(moe):
        return {}
    experts, top_k = experts_of(config, path)
    mixtral = config["model_type"] == "mixtral"
    defaults = DEFAULTS[config["model_type"]]
    width = _require(config, "intermediate_size", path) if mixtral else \
        _get(config, "moe_intermediate_size", defaults["moe_intermediate_size"])
    renormalize = True if mixtral else bool(_get(config, "norm_topk_prob", defaults["norm_topk_prob"]))
    dense = [i for i, has in enumerate(moe) if not has]
    return {"moe": {"experts": experts, "top_k": top_k, "width": width, "renormalize": renormalize,
                    **({"dense_layers": dense} if dense else {})}}  # the spec has no empty list for none


def _fixed(family: str, *names: str) -> dict:
    """The values of the model fields ``names`` that every checkpoint of ``family`` has (its table's
    `specgrow.arch.Family.features`), in that order."""
    features = dict(FAMILIES[family].features)
    return {name: features[name] for name in names}


def mismatches(model, config: dict, path: str) -> list[tuple[str, object, object]]:
    """``(field, the spec's value, the config's value)`` of every field of the spec's ``model`` that
    disagrees with the config, in the order of `expected_model` (e.g. ``model.dims.mlp``); the rope
    scalings as dicts (``{}``: none), compared by `effective_scaling`, numbers with `math.isclose`."""
    found = {"arch": model.arch, "dims": vars(model.dims), "norm": model.norm, "norm_eps": model.norm_eps,
             "activation": model.activation, "position": model.position, "rope_theta": model.rope_theta,
             "rope_scaling": dict(model.rope_scaling), "final_norm": model.final_norm,
             "tie_embeddings": model.tie_embeddings, "bias": model.bias, "qk_norm": model.qk_norm,
             "norm_position": model.norm_position}
    found.update(norm_offset=model.norm_offset, embed_scale=model.embed_scale,  # the Gemma fields
                 attn_softcap=model.attn_softcap, logit_softcap=model.logit_softcap, attn_scale=model.attn_scale,
                 layer_types=list(model.layer_types) or ["full_attention"] * model.dims.layers,
                 rope_local_theta=model.rope_local_theta)
    found.update(rotary_dims=model.rotary_dims, parallel_residual=model.parallel_residual)  # Phi-3, GPT-NeoX
    found["moe"] = None if not model.experts else {  # Mixtral, Qwen3-MoE
        "experts": model.experts, "top_k": model.top_k, "width": model.expert_mlp, "renormalize": model.renormalize,
        "dense_layers": list(model.dense_layers)}
    expected = expected_model(config, path)
    expected.setdefault("moe", None)
    if expected["moe"] is not None:  # no dense layers: the spec leaves dense_layers out
        expected["moe"].setdefault("dense_layers", [])
    if expected["position"] == "rope":
        expected.setdefault("rope_scaling", {})
    if expected["arch"] in PARTIAL_ROTARY:  # every dim turns: the spec leaves rotary_dims out
        expected.setdefault("rotary_dims", None)
    out = []
    for key, want in expected.items():
        if key == "rope_scaling":
            have = found[key]
            positions = model.dims.positions
            if not _same(effective_scaling(have, positions), effective_scaling(want, positions)):
                out.append(("model.rope_scaling", have, want))
            continue
        if key == "moe" and (want is None or found[key] is None):  # experts on one side only
            if found[key] != want:
                out.append(("model.moe", found[key], want))
            continue
        for sub, value in want.items() if isinstance(want, dict) else [(None, want)]:
            have = found[key][sub] if sub else found[key]
            if not _same(have, value):
                out.append((f"model.{key}.{sub}" if sub else f"model.{key}", have, value))
    return out


def cross_check(model, config: dict, path: str) -> None:
    """`CheckpointError` at the first field where the spec's ``model`` and the config disagree."""
    wrong = mismatches(model, config, path)
    if wrong:
        name, have, want = wrong[0]
        raise CheckpointError(f"{name}: the spec says {_spec_value(name, have)}, but config.json describes "
                              f"{_config_value(name, want)}; restate the model as the checkpoint has it", path=path)


def folder_config(folder) -> dict:
    """The validated config.json of the HuggingFace folder ``folder``; one-line errors for a missing
    folder, a missing or broken config.json, or an unsupported model_type."""
    where = Path(folder)
    if not where.is_dir():
        problem = "is not a folder" if where.exists() else "does not exist"
        raise InputError(f"'{folder}' {problem}: expected a HuggingFace checkpoint folder with config.json",
                         path=str(folder))
    config = read_config(where)
    validate_config(config, str(where / "config.json"))
    return config


def cross_check_all(spec, folder, shapes: dict | None = None) -> list[SpecError]:
    """Every disagreement between ``spec``'s model and the HuggingFace ``folder``, each one line
    located at its field in the spec, in file order: the fields config.json describes, then the
    tensors (``shapes``: each stored tensor's name -> shape, e.g. from the safetensors headers;
    None checks config.json alone). A tensor whose difference a config field already explains is
    not reported again; with another arch, tensors are not compared at all."""
    config = folder_config(folder)
    wrong = mismatches(spec.model, config, str(Path(folder) / "config.json"))
    found = [(name, f"the spec says {_written_value(spec, name, have)}, but config.json describes "
                    f"{_config_value(name, want)}") for name, have, want in wrong]
    explained = {name for name, _, _ in wrong}
    if shapes is not None and "model.arch" not in explained:
        found += [(name, message) for name, message, causes in tensor_mismatches(spec.model, shapes)
                  if not explained & {name, *causes}]
    errors = [_at(spec, name, message) for name, message in found]
    return sorted(errors, key=lambda error: (error.line, error.column))


def refuse_mismatches(spec, folder, shapes: dict | None = None) -> None:
    """`SpecErrors` with every line of `cross_check_all`, if there is any."""
    errors = cross_check_all(spec, folder, shapes)
    if errors:
        raise SpecErrors(errors)


def _at(spec, name: str, message: str) -> SpecError:
    mark = spec.written(name).mark
    return SpecError(f"{name}: {message}", path=spec.path, line=mark.line, column=mark.column)


def _written_value(spec, name: str, have) -> str:
    """The spec's value of field ``name`` as written (the default, said so, when left out)."""
    written = spec.written(name)
    if not written.given:
        return f"{_spec_value(name, have)} (not written: the default)"
    if isinstance(have, dict):  # an object: the spec's value as read
        return _plain(have)
    if name == "model.bias" and isinstance(written.value, bool):
        return f"{_plain(written.value)} ({_bias_words(have)})"
    return _plain(written.value)


def _spec_value(name: str, value) -> str:
    if name == "model.bias" and value in ((), PROJECTIONS):
        return f"{_plain(bool(value))} ({_bias_words(value)})"
    return _plain(value)


def _config_value(name: str, value) -> str:
    return _bias_words(value) if name == "model.bias" else _plain(value)


def _bias_words(projections: tuple[str, ...]) -> str:
    return f"biases on {', '.join(projections)}" if projections else "no biases"


def _plain(value) -> str:
    """A spec value as YAML would show it: ``true``, ``1e-05``, ``swiglu``, ``[q, k]``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_plain, value)) + "]"
    if isinstance(value, dict):  # a rope scaling: its type first
        if not value:
            return "no rope scaling"
        keys = sorted(value, key=lambda key: (key != "type", key))
        return "{" + ", ".join(f"{key}: {_plain(value[key])}" for key in keys) + "}"
    if value is None:  # a softcap or rope_local_theta left out
        return "null"
    return str(value)


# ------------------------------------------------------------------ tensors against the spec's model
SPACE_DIMS = {"residual": ("hidden",), "vocab": ("vocab",), "positions": ("positions",), "mlp": ("mlp",),
              "q": ("heads", "key"), "k": ("kv_heads", "key"), "v": ("kv_heads", "value"), "o": ("heads", "value")}


def tensor_mismatches(model, shapes: dict) -> list[tuple[str, str, tuple[str, ...]]]:
    """``(field, message, causes)`` for each kind of disagreement between the stored tensors
    ``shapes`` (name -> shape) and those of the spec's ``model``: one line per field and kind
    (missing, unexpected, of another shape), naming the first tensor and how many more. ``causes``
    are the fields that could explain it (the dims of an axis of another size). Each stored tensor is
    looked for as the checkpoint holds it (`specgrow.arch.Family.layout`: a module's name, or
    ``save_pretrained``'s, experts one tensor per expert)."""
    family, shape = FAMILIES[model.arch], ModelShape.from_spec(model)
    prefix = family.prefix_of(shapes)
    try:
        stored = family.stored_tensors(shape, prefix)
    except ValueError as exc:  # e.g. GPT-2's fused c_attn.bias with a bias on q only
        return [("model.bias", str(exc), ())]
    present = {_parse(family, prefix, name)[1] for name in shapes}  # the layers the checkpoint has
    found = []  # (field, kind, name, detail, causes)
    expected = set()
    for _, item, layer in stored:
        for part in family.layout(item, layer, prefix, shape, shapes):
            expected.add(part.name)
            want, have = part.shape(shape), tuple(shapes.get(part.name, ()))
            if part.name not in shapes:
                field = "model.dims.layers" if layer is not None and layer not in present else _field_of(item)
                found.append((field, "missing", part.name, None, ()))
            elif have != want:
                causes = _dims_of(part, want, have)
                field = causes[0] if len(causes) == 1 else "model.dims"
                found.append((field, "shape", part.name, (want, have), causes))
    if shape.tie_embeddings:  # a tied checkpoint may still store the head
        head = family.stored_of("unembed.weight", None)
        expected |= {family.name_of(head, None, prefix), family.saved_name(head, None, prefix)}
    for name in shapes:
        if name not in expected and not family.is_ignored(name):
            item, layer = _parse(family, prefix, name)
            beyond = layer is not None and layer >= len(shape.layers)
            field = "model.dims.layers" if beyond else "model.arch" if item is None else _field_of(item)
            found.append((field, "extra", name, None, ()))
    return _grouped(found)


def _grouped(found: list) -> list[tuple[str, str, tuple[str, ...]]]:
    groups: dict = {}
    for field, kind, name, detail, causes in found:
        groups.setdefault((field, kind), []).append((name, detail, causes))
    out = []
    for (field, kind), items in groups.items():
        name, detail, causes = items[0]
        more = f" (and {len(items) - 1} more like it)" if len(items) > 1 else ""
        if kind == "missing":
            message = f"tensor '{name}'{more} of the spec's model is missing from the checkpoint"
        elif kind == "extra":
            message = f"the checkpoint holds tensor '{name}'{more}, which the spec's model does not have"
        else:
            by = f" (set by {', '.join(c.rpartition('.')[2] for c in causes)})" if len(causes) > 1 else ""
            message = (f"tensor '{name}'{more} has shape {list(detail[1])} in the checkpoint, the spec's model "
                       f"expects {list(detail[0])}{by}")
        out.append((field, message, causes))
    return out


def _parse(family, prefix: str, name: str):
    """``(stored, layer)`` of a stored tensor's name by the family's table (under any name it may have:
    the module's, ``save_pretrained``'s, or one expert's); ``(None, None)`` if none fits."""
    for item in family.globals:
        if name in (family.name_of(item, None, prefix), family.saved_name(item, None, prefix)):
            return item, None
    for item in family.layer:
        for template in (item.template, item.saved, *item.per_expert):
            if template is None:
                continue
            pattern = re.escape(prefix + template).replace(r"\{\}", r"(\d+)", 1).replace(r"\{e\}", r"\d+")
            match = re.fullmatch(pattern, name)
            if match:
                return item, int(match.group(1))
    return None, None


def _field_of(item) -> str:
    """The model field that decides whether a stored tensor exists."""
    role = item.roles[0]
    if role in EXPERT_ROLES:
        return "model.moe"
    if role.endswith("norm.bias"):
        return "model.norm"
    if role.startswith("final_norm."):
        return "model.final_norm"
    if role.endswith(".bias"):
        return "model.bias"
    return {"pos.weight": "model.position", "unembed.weight": "model.tie_embeddings",
            "mlp.gate.weight": "model.activation"}.get(role, "model.arch")


def _dims_of(part, want: tuple, got: tuple) -> tuple[str, ...]:
    """The fields that size the axes where ``got`` differs from ``want`` (every axis if their ranks differ):
    ``model.dims.*``, and ``model.moe.experts`` / ``model.moe.width`` for the experts' axes."""
    item, layer = part.stored, part.layer
    roles = (part.role,) if part.role is not None else item.roles
    spaces = [(GLOBAL_ROLES if layer is None else LAYER_ROLES)[role][0 if part.role is None else 1:] for role in roles]
    moe = roles[0] in EXPERT_ROLES
    stacked = 0 if part.role is not None else item.axis  # the axis the roles are concatenated along
    axes = [[f for s in spaces for f in _space_fields(s[a], moe)] if a == stacked else _space_fields(spaces[0][a], moe)
            for a in range(len(spaces[0]))]
    axes = axes[::-1] if item.transposed else axes
    wrong = range(len(axes)) if len(got) != len(want) else [i for i in range(len(want)) if got[i] != want[i]]
    return tuple(dict.fromkeys(d for i in wrong for d in axes[i]))


def _space_fields(space: str, moe: bool) -> list[str]:
    if space == "experts" or (moe and space == "mlp"):
        return ["model.moe.experts" if space == "experts" else "model.moe.width"]
    return [f"model.dims.{d}" for d in SPACE_DIMS[space]]


def layer_origins(spec) -> list[int]:
    """For each layer of the grown model, the original layer it is, or sits after (inserted)."""
    origins = list(range(spec.model.dims.layers))
    for step in spec.steps:
        if step.kind == "layers":
            neighbour = origins[max(step.at - 1, 0)]
            origins[step.at:step.at] = [neighbour] * step.add
    return origins


def grown_config(config: dict, after: ModelShape, origins: list[int]) -> dict:
    """``config`` with the grown widths, depth and norm eps; inserted layers take their neighbour's
    layer type. The rope parameters are written as transformers standardizes them (`rope_parameters`):
    in ``rope_parameters`` (rope_type, rope_theta and the scaling's keys), in the legacy top-level
    ``rope_theta``, and in the legacy ``rope_scaling`` (the scaling without rope_theta; null when
    there is none), so that transformers rebuilds the same frequencies for the grown head_dim.

    Mixtral and Qwen3-MoE: the experts' keys (`_experts_grown`). A dense checkpoint whose layers were
    upcycled becomes a config of the family its experts make it (`specgrow.arch.grown_family`: llama ->
    mixtral, qwen3 -> qwen3_moe; `_upcycled`)."""
    out = dict(config)
    layer = after.layers[0]
    if out["model_type"] == "gpt2":
        out.update(n_embd=after.hidden, n_head=layer.heads, n_inner=layer.mlp, n_layer=len(after.layers),
                   layer_norm_epsilon=after.norm_eps)
        return out
    if out["model_type"] == "gpt_neox":
        return _neox_grown(out, config, after)
    out.update(hidden_size=after.hidden, intermediate_size=layer.mlp, num_attention_heads=layer.heads,
               num_key_value_heads=layer.kv_heads, head_dim=layer.key, num_hidden_layers=len(after.layers),
               rms_norm_eps=after.norm_eps)  # hidden growth rescales eps by h/h' (gain-and-eps)
    family = family_of(config, "config.json")
    target = grown_family(FAMILIES[family], after).name
    types = layer_types(config)
    if target != family:
        out = _upcycled(out, config, family, target)
    elif types is not None:
        out["layer_types"] = [types[i] for i in origins]
    if FAMILIES[target].experts != "none":
        _experts_grown(out, config, after, target)
    if out["model_type"] == "gemma3_text":  # rope parameters per layer type
        return _gemma3_grown_rope(out, config, after)
    params = rope_parameters(config, "config.json")
    params["rope_theta"] = after.rope_theta
    out["rope_parameters"] = params
    out["rope_theta"] = after.rope_theta
    scaled = params["rope_type"] != "default"
    out["rope_scaling"] = {key: value for key, value in params.items() if key != "rope_theta"} if scaled else None
    if out["model_type"] == "phi3":  # the rotary width kept over the grown head_dim
        factor = grown_rotary_factor(after.rotary_dims, layer.key, rotary_factor(config, "config.json")[0])
        out["rope_parameters"]["partial_rotary_factor"] = out["partial_rotary_factor"] = factor
    return out


def _upcycled(out: dict, config: dict, family: str, target: str) -> dict:
    """``out`` as a config of ``target``, the family a ``family`` checkpoint becomes with experts: its
    model_type and class, without the keys only ``family`` reads (llama's attention_bias and mlp_bias,
    qwen3's layer_types and max_window_layers). `CheckpointError` for layers of mixed attention types
    (qwen3_moe's sliding window is every layer's or none's)."""
    types = layer_types(config)
    if types is not None and len(set(types)) > 1:
        raise CheckpointError(f"config.json: layer_types: {target} has one attention type for every layer (its "
                              f"sliding window is every layer's or none's), this {family} checkpoint has "
                              f"{', '.join(sorted(set(types)))} layers", path="config.json")
    out = {key: value for key, value in out.items() if key not in KEYS[family] or key in KEYS[target]}
    out.update(model_type=target, architectures=[ARCHITECTURES[target]])
    if types:
        out["use_sliding_window"] = types[0] == "sliding_attention"
    return out


def _experts_grown(out: dict, config: dict, after: ModelShape, target: str) -> None:
    """The experts' keys of a grown Mixtral or Qwen3-MoE config, in place: the count (num_local_experts, and
    num_experts, which older transformers read for qwen3_moe), top-k, the expert width (Mixtral's
    intermediate_size; Qwen3-MoE's moe_intermediate_size, its intermediate_size the dense layers' width),
    norm_topk_prob, and the dense layers listed in mlp_only_layers (decoder_sparse_step kept when every MoE
    layer still falls on it, else 1)."""
    moe = [s for s in after.layers if s.experts]
    dense = [i for i, s in enumerate(after.layers) if not s.experts]
    if moe:
        out.update(num_local_experts=moe[0].experts, num_experts_per_tok=moe[0].top_k)
        if target == "qwen3_moe" or "num_experts" in config:
            out["num_experts"] = moe[0].experts
    if target == "mixtral":
        if moe:
            out["intermediate_size"] = moe[0].mlp
        return
    out["intermediate_size"] = after.layers[dense[0]].mlp if dense else config.get("intermediate_size",
                                                                                   out["intermediate_size"])
    if moe:
        out.update(moe_intermediate_size=moe[0].mlp, norm_topk_prob=after.renormalize)
    step = _get(config, "decoder_sparse_step", 1)
    if any((i + 1) % step for i, s in enumerate(after.layers) if s.experts):
        step = 1
    out.update(decoder_sparse_step=step, mlp_only_layers=dense)


def layer_types(config: dict) -> list | None:
    """Each layer's attention type: ``layer_types`` as given, or as Qwen2/Qwen3 configs derive them
    (sliding from layer ``max_window_layers`` on, when ``use_sliding_window``); None for the others."""
    types = config.get("layer_types")
    if isinstance(types, list):
        return types
    if config.get("model_type") in ("gemma2", "gemma3_text"):
        return gemma_layer_types(config)
    if config.get("model_type") not in ("qwen2", "qwen3"):
        return None
    window = config.get("sliding_window", 4096) if config.get("use_sliding_window", False) else None
    first = _get(config, "max_window_layers", 28)
    return ["sliding_attention" if window is not None and i >= first else "full_attention"
            for i in range(_get(config, "num_hidden_layers", 0))]


def shortest_window(config: dict) -> int | None:
    """The smallest sliding-attention window any layer uses (None: every layer attends fully)."""
    window = config.get("sliding_window")
    if config.get("model_type") in ("gemma2", "gemma3_text") and "sliding_window" not in config:
        window = GEMMA_COMMON_DEFAULTS["sliding_window"]
    if not window:
        return None
    if config.get("model_type") in ("qwen2", "qwen3", "qwen3_moe") and not config.get("use_sliding_window", False):
        return None
    types = layer_types(config)
    if isinstance(types, list) and "sliding_attention" not in types:
        return None
    return int(window)


# ------------------------------------------------------------------ GPT-NeoX (Pythia)
def neox_model(config: dict, path: str) -> dict:
    """The spec's ``model`` of a GPT-NeoX config, with GPTNeoXConfig's defaults: head_size = hidden // heads
    (no kv grouping), LayerNorms with biases, biased dense layers (query_key_value and dense by
    ``attention_bias``, default true; the MLP's always), partial rotary (`rotary_dims`), parallel residual by
    ``use_parallel_residual`` (default true), an untied head by default."""
    hidden, heads = _require(config, "hidden_size", path), _require(config, "num_attention_heads", path)
    defaults = DEFAULTS["gpt_neox"]
    activation = _get(config, "hidden_act", defaults["hidden_act"])
    if activation not in GPT2_ACTIVATIONS:
        raise CheckpointError(f"config.json: hidden_act {_found(activation)} is not supported (expected gelu, "
                              "gelu_new, gelu_pytorch_tanh, relu or silu)", path=path)
    head_size = hidden // heads
    if config.get("head_dim") not in (None, head_size):  # the rotary embedding would read it, the attention not
        raise CheckpointError(f"config.json: head_dim: gpt_neox's attention uses hidden_size // num_attention_heads "
                              f"= {head_size}, found {_found(config['head_dim'])}", path=path)
    theta, scaling = rope_settings(config, path)
    attention = PROJECTIONS[:4] if _get(config, "attention_bias", defaults["attention_bias"]) else ()
    return {
        "arch": "gpt_neox",
        "dims": {"hidden": hidden, "mlp": _require(config, "intermediate_size", path), "heads": heads,
                 "kv_heads": heads, "key": head_size, "value": head_size,
                 "layers": _require(config, "num_hidden_layers", path), "vocab": _require(config, "vocab_size", path),
                 "positions": _require(config, "max_position_embeddings", path)},
        "norm": "layernorm", "norm_eps": float(_get(config, "layer_norm_eps", defaults["layer_norm_eps"])),
        "activation": GPT2_ACTIVATIONS[activation], "position": "rope", "rope_theta": theta,
        **({"rope_scaling": scaling} if scaling else {}),
        "final_norm": True, "tie_embeddings": bool(_get(config, "tie_word_embeddings", False)),
        "bias": attention + ("up", "down"), **_fixed("gpt_neox", "qk_norm", "norm_position"),
        **rotary_field(config, path, head_size),
        "parallel_residual": bool(_get(config, "use_parallel_residual", defaults["use_parallel_residual"])),
    }


def _neox_grown(out: dict, config: dict, after: ModelShape) -> dict:
    """`grown_config` of GPT-NeoX: widths, depth and eps, and the rope settings in ``rope_parameters``
    (with the ``partial_rotary_factor`` that keeps the rotary width over the grown head_size) and in the
    legacy ``rotary_pct``, ``rotary_emb_base`` and ``rope_scaling`` older transformers read."""
    layer = after.layers[0]
    out.update(hidden_size=after.hidden, intermediate_size=layer.mlp, num_attention_heads=layer.heads,
               num_hidden_layers=len(after.layers), layer_norm_eps=after.norm_eps)
    if out.get("head_dim") is not None:
        out["head_dim"] = layer.key
    factor = grown_rotary_factor(after.rotary_dims, layer.key, rotary_factor(config, "config.json")[0])
    params = {**rope_parameters(config, "config.json"), "rope_theta": after.rope_theta, "partial_rotary_factor": factor}
    scaled = params["rope_type"] != "default"
    out.update(rope_parameters=params, rotary_pct=factor, rotary_emb_base=after.rope_theta,
               rope_scaling={key: value for key, value in params.items() if key != "rope_theta"} if scaled else None)
    return out


# ------------------------------------------------------------------ Gemma 2 and Gemma 3 (text)
def _given(config: dict, key: str, default):
    """``config[key]`` when the key is there, null included (a null softcap is none), else ``default``."""
    return config[key] if key in config else default


def gemma_model(config: dict, path: str, family: str) -> dict:
    """The spec's ``model`` of a Gemma 2 (``gemma2``) or Gemma 3 text (``gemma3``) config, with the
    defaults of Gemma2Config / Gemma3TextConfig: (1+w) RMSNorm gains of one eps everywhere (the QK-norm's
    too), embeddings x sqrt(hidden), sandwich norms, the tanh-gelu gated MLP, scores scaled by
    ``query_pre_attn_scalar``^-1/2, softcaps (Gemma 3's attention ignores ``attn_logit_softcapping``:
    transformers never passes it on), per-layer attention types. `CheckpointError` for what the spec
    cannot say: another hidden_activation, bidirectional attention, a scaled RoPE on sliding layers."""
    gemma3, defaults = family == "gemma3", {**GEMMA_COMMON_DEFAULTS, **GEMMA_DEFAULTS[family]}
    activation = _get(config, "hidden_activation", "gelu_pytorch_tanh")
    if activation not in GEMMA_ACTIVATIONS:
        raise CheckpointError(f"config.json: hidden_activation {_found(activation)} is not supported "
                              "(expected gelu_pytorch_tanh: the gated MLP is geglu_tanh)", path=path)
    if config.get("use_bidirectional_attention"):
        raise CheckpointError("config.json: use_bidirectional_attention true is not supported "
                              "(specgrow's attention is causal)", path=path)
    theta, scaling, local = gemma_rope(config, path)
    head_dim = _get(config, "head_dim", defaults["head_dim"])
    softcaps = [_given(config, key, defaults[key]) for key in ("attn_logit_softcapping", "final_logit_softcapping")]
    return {
        "arch": family,
        "dims": {"hidden": _require(config, "hidden_size", path), "mlp": _require(config, "intermediate_size", path),
                 "heads": _require(config, "num_attention_heads", path),
                 "kv_heads": _get(config, "num_key_value_heads", defaults["num_key_value_heads"]),
                 "key": head_dim, "value": head_dim, "layers": _require(config, "num_hidden_layers", path),
                 "vocab": _require(config, "vocab_size", path),
                 "positions": _require(config, "max_position_embeddings", path)},
        "norm": "rmsnorm", "norm_eps": float(_get(config, "rms_norm_eps", defaults["rms_norm_eps"])),
        "activation": "geglu_tanh", "position": "rope", "rope_theta": theta,
        **({"rope_scaling": scaling} if scaling else {}),
        "final_norm": True, "tie_embeddings": bool(_get(config, "tie_word_embeddings", True)),
        "bias": PROJECTIONS[:4] if config.get("attention_bias") else (),  # q k v o; the MLP has none
        **_fixed(family, "qk_norm", "norm_position", "norm_offset", "embed_scale"),
        "attn_softcap": None if gemma3 or softcaps[0] is None else float(softcaps[0]),
        "logit_softcap": None if softcaps[1] is None else float(softcaps[1]),
        "attn_scale": float(_get(config, "query_pre_attn_scalar", defaults["query_pre_attn_scalar"])),
        "layer_types": list(layer_types(config)),
        **({"rope_local_theta": local} if gemma3 else {}),
    }


def gemma_layer_types(config: dict) -> list[str]:
    """Each layer's attention type as Gemma2Config / Gemma3TextConfig derive it when ``layer_types`` is
    absent: sliding but every ``sliding_window_pattern``-th layer (Gemma 2: 2; Gemma 3: 6, or the config's)."""
    family = "gemma3" if config.get("model_type") == "gemma3_text" else "gemma2"
    every = GEMMA_DEFAULTS[family]["sliding_window_pattern"]
    if family == "gemma3":
        every = _get(config, "sliding_window_pattern", every)
    return ["sliding_attention" if (i + 1) % every else "full_attention"
            for i in range(_get(config, "num_hidden_layers", 0))]


def gemma_rope(config: dict, path: str) -> tuple[float, dict, float | None]:
    """``(rope_theta, the spec's rope_scaling, rope_local_theta)``: Gemma 2's one RoPE (`rope_settings`),
    or Gemma 3's full-attention RoPE and sliding-attention base (`gemma3_rope_parameters`)."""
    if config.get("model_type") != "gemma3_text":
        theta, scaling = rope_settings(config, path)
        return theta, scaling, None
    full, sliding = gemma3_rope_parameters(config, path)
    scaling = {key: value for key, value in full.items() if key not in ("rope_type", "rope_theta")}
    scaling = {"type": full["rope_type"], **scaling} if full["rope_type"] != "default" else {}
    return full["rope_theta"], scaling, sliding["rope_theta"]


def gemma3_rope_parameters(config: dict, path: str) -> tuple[dict, dict]:
    """The rope parameters of Gemma 3's full- and sliding-attention layers, as Gemma3TextConfig builds them
    (``rope_parameters`` keyed by layer type; the legacy ``rope_scaling`` updates the full-attention one;
    a missing rope_theta comes from the legacy ``rope_theta`` (default 1e6), resp. ``rope_local_base_freq``
    (default 1e4)), each standardized by `rope_parameters`. `CheckpointError` for keys of
    ``rope_parameters`` that are no layer type (transformers ignores them) and for a scaled RoPE on
    sliding-attention layers (``rope_local_theta`` is unscaled)."""
    given = config.get("rope_parameters") or {}
    stray = [key for key in given if key not in GEMMA_LAYER_TYPES]
    if stray:
        raise CheckpointError(f"config.json: rope_parameters.{stray[0]}: gemma3_text keeps its rope parameters "
                              "per layer type (expected full_attention and sliding_attention objects only)", path=path)
    full, sliding = dict(given.get("full_attention") or {}), dict(given.get("sliding_attention") or {})
    full.update(config.get("rope_scaling") or {})
    defaults = GEMMA_DEFAULTS["gemma3"]
    if full.get("rope_theta") is None:
        full["rope_theta"] = _get(config, "rope_theta", defaults["rope_theta"])
    if sliding.get("rope_theta") is None:
        sliding["rope_theta"] = _get(config, "rope_local_base_freq", defaults["rope_local_base_freq"])
    out = []
    for layer_type, params in (("full_attention", full), ("sliding_attention", sliding)):
        alone = {"rope_parameters": params, "max_position_embeddings": config.get("max_position_embeddings"),
                 "partial_rotary_factor": config.get("partial_rotary_factor")}
        try:
            out.append(rope_parameters(alone, path))
        except CheckpointError as err:  # name the layer type's object
            named = f"config.json: rope_parameters.{layer_type}"
            raise CheckpointError(err.message.replace("config.json: rope_parameters", named, 1), path=path) from None
    if out[1]["rope_type"] != "default" and "sliding_attention" in layer_types(config):
        raise CheckpointError(f"config.json: rope_parameters.sliding_attention.rope_type: rope type "
                              f"{out[1]['rope_type']} on sliding-attention layers is not supported (expected default: "
                              "the spec's rope_local_theta is unscaled)", path=path)
    return out[0], out[1]


def _gemma3_grown_rope(out: dict, config: dict, after: ModelShape) -> dict:
    """`grown_config`'s rope keys for Gemma 3: ``rope_parameters`` per layer type, standardized, and the
    legacy ``rope_theta``, ``rope_local_base_freq`` and ``rope_scaling`` that older transformers read."""
    full, sliding = gemma3_rope_parameters(config, "config.json")
    full["rope_theta"] = after.rope_theta
    if after.rope_local_theta is not None:
        sliding["rope_theta"] = after.rope_local_theta
    out["rope_parameters"] = {"full_attention": full, "sliding_attention": sliding}
    out["rope_theta"], out["rope_local_base_freq"] = full["rope_theta"], sliding["rope_theta"]
    scaled = full["rope_type"] != "default"
    out["rope_scaling"] = {key: value for key, value in full.items() if key != "rope_theta"} if scaled else None
    return out

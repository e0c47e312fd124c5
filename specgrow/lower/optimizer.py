"""Adam and AdamW state grown with the weights, and saved optimizer state files.

`grow_adam_state` grows the state of a model's parameters through the concrete steps of a
plan; `grow_optimizer_file` does it for a saved ``optimizer.state_dict()`` (``apply
--optimizer``), keyed by parameter ids or by names. Moments transform like gradients, not
like parameters. For a block of the grown tensor copied from old elements with scale ``s``,
let ``S`` be the sum of the scales of every block that reads the same old element (``S = 2``
for the two copies of a duplicated unit's fan-in weights, ``S = 1`` for its two halved
fan-out weights, ``S = s`` for a rescaled tensor). Gradients of symmetric copies are equal,
so the grown gradient is ``g / S``; specgrow sets

* ``exp_avg``: ``m / S`` (the exponential average of those gradients), and
* ``exp_avg_sq`` (and ``max_exp_avg_sq``): ``v / (S * s)**2``,

which makes Adam's next update of the block ``s`` times the old update, so the grown model
after one step computes what the old model computes after its step: exactly for copied
blocks (``s = 1``, e.g. duplicated fan-in rows: ``m / 2``, ``v / 4``), and up to the new
gradient's ``1 - beta2`` share of ``v`` for scaled blocks (e.g. halved fan-out rows keep
``m`` and take ``4 v``, because Adam's step does not shrink with the gradient).

New slices (zero or random init) get ``exp_avg = 0`` and ``exp_avg_sq`` = the mean of the
old tensor's ``exp_avg_sq`` (a tensor new as a whole: the mean over the same role in every
old layer). With ``v = 0`` Adam's first step of a new coordinate would be
``lr * (1 - beta1) / sqrt(1 - beta2)``, about 3.2 × the learning rate whatever its gradient;
seeded with the typical old ``v`` it is sized like the old coordinates' steps. Step
counters are kept (a new tensor takes its origin's). `torch.optim.Optimizer.load_state_dict`
does not check shapes, so every state tensor is checked against its parameter here.

Moments of fused tensors (GPT-2's ``c_attn``, Phi-3's ``qkv_proj`` and ``gate_up_proj``, GPT-NeoX's
``query_key_value`` interleaved head by head) are split into roles and put back exactly as the
weights are (`RoleSource`, `stored_tensors`), so each moment stays with its weight.
"""

from __future__ import annotations

import torch

from specgrow.arch import Family, stored_shape
from specgrow.errors import CheckpointError, InputError
from specgrow.ir import Const, Old, Random
from specgrow.lower.checkpoint import MemoryTensors, RoleSource, stored_tensors, unshared
from specgrow.lower.safetensors_io import torch_load
from specgrow.lower.selection import indices, outer, scatter
from specgrow.lower.stream import StateSource, whole
from specgrow.shape import ModelShape

MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # exp_avg: like m; the others like v
ADAM_KEYS = frozenset(MOMENTS + ("step",))


def grow_adam_state(state: dict[str, dict], groups: list[dict], params: dict[str, torch.Tensor],
                    family: Family, prefix: str, before: ModelShape, steps) -> tuple[dict, list[dict]]:
    """Grow Adam state keyed by stored parameter name through concrete ``steps``.

    ``state`` maps a parameter name to its state (``step``, ``exp_avg``, ``exp_avg_sq``,
    optionally ``max_exp_avg_sq``); ``groups`` are param groups whose ``params`` are names;
    ``params`` gives each name's tensor (for the shape check). Returns the grown state and
    groups, keyed by the grown model's names. Raises `CheckpointError` for state that is not
    Adam's or does not match the parameters' shapes.
    """
    _check_state(state, params)
    after = steps[-1].after if steps else before
    origins = _role_origins(before, steps)
    grown_groups = _grown_groups(groups, family, prefix, before, after, origins)
    if not state:
        return {}, grown_groups
    kinds = sorted({key for entry in state.values() for key in entry if key in MOMENTS})
    device = next(iter(state.values()))["exp_avg"].device
    moments = {}
    for kind in kinds:
        named = {}
        for name, p in params.items():
            entry = state.get(name, {})
            named[name] = entry[kind].detach() if kind in entry else torch.zeros(p.shape, device=device)
        moments[kind] = {key: t.to(_work_dtype(t)) for key, t in _roles(named, family, before).items()}
    for step in steps:
        moments = _moment_step(step, moments)
    step_of = _role_steps(state, family, prefix, before)
    members = {name for group in grown_groups for name in group["params"]}
    out = {}
    for kind, roles in moments.items():
        source = StateSource(roles)
        for name, value in stored_tensors(source, family, prefix, after).items():
            if name in members:
                out.setdefault(name, {})[kind] = value.to(_dtype_of(state, kind))
    inputs = [t for entry in state.values() for t in entry.values() if torch.is_tensor(t)]
    for entry in out.values():
        entry.update(unshared(entry, inputs))
    for name, stored, layer in family.stored_tensors(after, prefix):
        if name not in members:
            continue
        origin = origins[(stored.roles[0], layer)]
        out[name]["step"] = step_of[origin].clone() if torch.is_tensor(step_of[origin]) else step_of[origin]
    return out, grown_groups


def _check_state(state: dict, params: dict) -> None:
    for name, entry in state.items():
        if name not in params:
            raise CheckpointError(f"optimizer state for '{name}', which the model does not have", path="optimizer")
        unknown = sorted(set(entry) - ADAM_KEYS)
        if unknown or "exp_avg" not in entry or "exp_avg_sq" not in entry:
            raise CheckpointError(f"optimizer state of '{name}' has keys {sorted(entry)}: specgrow grows "
                                  "Adam/AdamW state (step, exp_avg, exp_avg_sq, max_exp_avg_sq) only",
                                  path="optimizer")
        for kind in MOMENTS:
            if kind in entry and tuple(entry[kind].shape) != tuple(params[name].shape):
                raise CheckpointError(f"optimizer state '{kind}' of '{name}' has shape {tuple(entry[kind].shape)}, "
                                      f"but the parameter has shape {tuple(params[name].shape)}: the optimizer "
                                      "state belongs to another model", path="optimizer")


def _dtype_of(state, kind):
    for entry in state.values():
        if kind in entry:
            return entry[kind].dtype
    return torch.float32


def _roles(named: dict[str, torch.Tensor], family: Family, shape: ModelShape) -> dict:
    source = RoleSource(MemoryTensors(named), family, shape, "optimizer")
    return {key: whole(source, key) for key in source.keys()}


def _role_steps(state: dict, family: Family, prefix: str, before: ModelShape) -> dict:
    """Each role key of ``before`` -> the step counter of the parameter holding it (the largest as default)."""
    counters = [entry["step"] for entry in state.values() if "step" in entry]
    default = max(counters, key=float) if counters else torch.tensor(0.0)
    out = {}
    for name, stored, layer in family.stored_tensors(before, prefix):
        for role in stored.roles:
            out[(role, layer)] = state.get(name, {}).get("step", default)
    return out


def _role_origins(before: ModelShape, steps) -> dict:
    """Each role key after ``steps`` -> the role key of ``before`` it grew from (a new tensor: its role's first)."""
    origins = {key: key for key in before.tensor_keys()}
    for step in steps:
        new = dict(origins)
        for edit in step.edits:
            if edit.source is not None:
                new[(edit.role, edit.layer)] = origins[edit.source]
            else:  # a new tensor: its role's first, else (an upcycled layer's router) its layer's grown tensor
                new[(edit.role, edit.layer)] = next(
                    (origins[k] for k in sorted(origins, key=_order) if k[0] == edit.role),
                    next((origins[e.source] for e in step.edits if e.layer == edit.layer and e.source is not None),
                         None))
                if new[(edit.role, edit.layer)] is None:
                    raise CheckpointError(f"no tensor to take optimizer settings from for the new {edit.role} "
                                          f"(layer {edit.layer})", path="optimizer")
        consumed = {e.source for e in step.edits if e.source is not None} - {(e.role, e.layer) for e in step.edits}
        origins = {k: v for k, v in new.items() if k not in consumed}
    return origins


def _order(key):
    return (key[1] is not None, key[1] or 0, key[0])


def _grown_groups(groups: list[dict], family: Family, prefix: str, before: ModelShape, after: ModelShape,
                  origins: dict) -> list[dict]:
    """The param groups of the grown model: each grown tensor joins the group of the tensor it grew from."""
    owner = {}
    for index, group in enumerate(groups):
        for name in group["params"]:
            owner[name] = index
    name_of = {}
    for name, stored, layer in family.stored_tensors(before, prefix):
        for role in stored.roles:
            name_of[(role, layer)] = name
    out = [{**{k: v for k, v in g.items() if k != "params"}, "params": []} for g in groups]
    for name, stored, layer in family.stored_tensors(after, prefix):
        origin = name_of[origins[(stored.roles[0], layer)]]
        if origin in owner:  # a frozen tensor stays out of the optimizer
            out[owner[origin]]["params"].append(name)
    return out


def _moment_step(step, moments: dict[str, dict]) -> dict[str, dict]:
    """Adam moments (role key -> fp32 tensor, per kind) after one concrete step (module docstring)."""
    out = {kind: dict(roles) for kind, roles in moments.items()}
    for kind in out:
        for edit in step.edits:
            if edit.source is not None:
                out[kind].pop(edit.source, None)
    for edit in step.edits:
        total = _scale_sums(edit) if edit.source is not None else None
        for kind, roles in moments.items():
            old = roles[edit.source] if edit.source is not None else None
            value = torch.empty(edit.new_shape, dtype=_first(roles).dtype, device=_first(roles).device)
            seed = 0.0 if kind == "exp_avg" else _seed_v(roles, edit)
            for block in edit.blocks:
                where = tuple(indices(sel, value.device) for sel in block.where)
                src = block.source
                if isinstance(src, Old):
                    index = outer(tuple(indices(sel, value.device) for sel in src.index), old.shape, value.device)
                    s = total.to(value)[index]
                    part = old[index] / s if kind == "exp_avg" else old[index] / (s * src.scale) ** 2
                    scatter(value, where, _repeated(part, block))
                elif isinstance(src, (Const, Random)):
                    scatter(value, where, seed)
                else:
                    raise TypeError(f"unknown block source {src!r}")
            out[kind][(edit.role, edit.layer)] = value
    return out


def _repeats(block) -> int:
    """How many times an ``Old`` block reads each selected old element: 1, or for a selection with
    fewer axes than the block (`specgrow.ir.Old`: upcycling's experts) the length of the leading axes."""
    extra = len(block.where) - len(block.source.index)
    count = 1
    for sel in block.where[:extra]:
        count *= sel.length()
    return count


def _repeated(part: torch.Tensor, block) -> torch.Tensor:
    """``part`` (the old selection's moments) repeated along the block's leading axes it lacks."""
    extra = len(block.where) - len(block.source.index)
    if not extra:
        return part
    lead = tuple(sel.length() for sel in block.where[:extra])
    return part.reshape((1,) * extra + tuple(part.shape)).expand(lead + tuple(part.shape))


def _first(roles: dict) -> torch.Tensor:
    return next(iter(roles.values()))


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 for fp32 and narrower moments, fp64 for fp64."""
    return torch.promote_types(t.dtype, torch.float32)


def _scale_sums(edit) -> torch.Tensor:
    """Per old element: the sum of the scales of every block that reads it (0 where none does)."""
    total = torch.zeros(edit.old_shape, dtype=torch.float64)
    for block in edit.blocks:
        if isinstance(block.source, Old):
            index = outer(tuple(indices(sel, "cpu") for sel in block.source.index), total.shape, "cpu")
            total[index] += float(block.source.scale) * _repeats(block)
    total[total == 0] = 1.0  # never read; avoids 0/0 in unread elements
    return total


def _seed_v(roles: dict, edit) -> float:
    """The second moment given to new slices: the old tensor's mean, or its role's mean over old layers."""
    if edit.source is not None:
        return float(roles[edit.source].mean()) if roles[edit.source].numel() else 0.0
    same = [t for (role, _), t in roles.items() if role == edit.role and t.numel()]
    return float(torch.cat([t.reshape(-1) for t in same]).mean()) if same else 0.0


# ------------------------------------------------------------------ a saved optimizer state
OPTIMIZER_FILE = "optimizer.pt"


def load_optimizer_file(path: str) -> dict:
    """A saved ``optimizer.state_dict()`` (``torch.save``), loaded with ``weights_only=True``."""
    try:
        data = torch_load(path)
    except FileNotFoundError:
        raise InputError(f"cannot read optimizer state: no such file '{path}'", path=path) from None
    except Exception as exc:  # unpickling refused, corrupt or truncated file
        raise CheckpointError(f"cannot load optimizer state (torch.load, weights_only=True): "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", path=path) from None
    if not isinstance(data, dict) or not isinstance(data.get("state"), dict) \
            or not isinstance(data.get("param_groups"), list):
        raise CheckpointError("expected an optimizer state_dict: a dict with 'state' and 'param_groups'", path=path)
    return data


def parameter_names(family: Family, shape: ModelShape, config: dict | None, path: str) -> list[str]:
    """The model's parameter names in ``named_parameters()`` order (the ids of an optimizer built on it)."""
    if config is None:
        from specgrow.models.reference import ReferenceModel

        with torch.device("meta"):
            return [name for name, _ in ReferenceModel(shape).named_parameters()]
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        raise CheckpointError("an optimizer state keyed by parameter ids needs `transformers` to know the "
                              "HuggingFace model's parameter order (pip install transformers), or save it keyed "
                              "by names (torch.distributed.checkpoint.state_dict.get_optimizer_state_dict)",
                              path=path) from None
    cfg = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return [name for name, _ in model.named_parameters()]


def grow_optimizer_file(path: str, family: Family, prefix: str, before: ModelShape, after: ModelShape,
                        steps, config_before: dict | None, config_after: dict | None) -> dict:
    """The grown optimizer state_dict of the file at ``path``, keyed as the input was (ids or names)."""
    data = load_optimizer_file(path)
    stored = {name: stored_shape(s, before, layer)
              for name, s, layer in family.stored_tensors(before, prefix)}
    groups = data["param_groups"]
    by_name = all(isinstance(p, str) for g in groups for p in g.get("params", []))
    if by_name:
        names = None
        named_groups = [dict(g) for g in groups]
        state = dict(data["state"])
    else:
        names = parameter_names(family, before, config_before, path)
        ids = [p for g in groups for p in g.get("params", [])]
        if sorted(ids) != list(range(len(ids))) or len(ids) != len(names):
            raise CheckpointError(f"the optimizer state lists {len(ids)} parameter ids, but the spec's model has "
                                  f"{len(names)} parameters: the optimizer state belongs to another model", path=path)
        if len(groups) > 1 and any(g["params"] != list(range(g["params"][0], g["params"][0] + len(g["params"])))
                                   for g in groups if g["params"]):
            raise CheckpointError("an optimizer state with several param groups keyed by ids cannot be matched to "
                                  "parameter names; save it keyed by names", path=path)
        named_groups = [{**g, "params": [names[i] for i in g["params"]]} for g in groups]
        state = {names[i]: entry for i, entry in data["state"].items()}
    unknown = [n for g in named_groups for n in g["params"] if _canonical(n, family, prefix) not in stored]
    if unknown:
        raise CheckpointError(f"the optimizer state names parameter '{unknown[0]}', which the spec's model does "
                              "not have: the optimizer state belongs to another model", path=path)
    rename = {n: _canonical(n, family, prefix) for g in named_groups for n in g["params"]}
    named_groups = [{**g, "params": [rename[n] for n in g["params"]]} for g in named_groups]
    state = {rename.get(n, n): entry for n, entry in state.items()}
    params = {name: torch.empty(shape, device="meta") for name, shape in stored.items()}
    new_state, new_groups = grow_adam_state(state, named_groups, params, family, prefix, before, steps)
    if by_name:
        return {"state": new_state, "param_groups": new_groups}
    new_names = parameter_names(family, after, config_after, path)
    index = {_canonical(name, family, prefix): i for i, name in enumerate(new_names)}
    missing = [n for g in new_groups for n in g["params"] if n not in index]
    if missing:
        raise CheckpointError(f"grown parameter '{missing[0]}' is not a parameter of the grown model", path=path)
    return {"state": {index[n]: entry for n, entry in new_state.items()},
            "param_groups": [{**g, "params": sorted(index[n] for n in g["params"])} for g in new_groups]}


def _canonical(name: str, family: Family, prefix: str) -> str:
    """A parameter name with the checkpoint's model prefix (``model.`` / ``transformer.``) as stored; a
    saved name (`specgrow.arch.Stored.saved`: GPT-NeoX's ``embed_out.weight``) becomes the module's."""
    name = family.module_name(name, prefix)
    for known in family.prefixes:
        if known and name.startswith(known):
            name = name[len(known):]
            break
    return name if name.startswith("lm_head.") else prefix + name

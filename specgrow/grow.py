"""Growing inside a training loop: `grow_module`, Adam state, and `GrowthSchedule`.

`grow_module` runs the same edits as ``specgrow apply`` on a live ``nn.Module`` (specgrow's
reference model, or a HuggingFace GPT-2 / LLaMA / Mistral / Qwen2 model) and returns a new
module, after the spec was proved and the grown logits were checked against the old ones.

Given an Adam or AdamW optimizer it also returns a new optimizer of the same class and
hyper-parameters whose state was grown with the weights (`grow_adam_state`). Moments
transform like gradients, not like parameters. For a block of the grown tensor copied from
old elements with scale ``s``, let ``S`` be the sum of the scales of every block that reads
the same old element (``S = 2`` for the two copies of a duplicated unit's fan-in weights,
``S = 1`` for its two halved fan-out weights, ``S = s`` for a rescaled tensor). Gradients of
symmetric copies are equal, so the grown gradient is ``g / S``; specgrow sets

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

>>> import torch
>>> from specgrow.spec import load_spec_text
>>> from specgrow.models.reference import build, random_state
>>> from specgrow.shape import ModelShape
>>> spec = load_spec_text('''
... specgrow: 1
... model: {dims: {hidden: 8, mlp: 16, heads: 2, layers: 1, vocab: 11, positions: 4}}
... steps: [{mlp: {to: 24}}]
... ''')
>>> shape = ModelShape.from_spec(spec.model)
>>> model = build(shape, random_state(shape, seed=0))
>>> optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
>>> bigger, optimizer = grow_module(model, spec, optimizer)
>>> bigger.layers[0].mlp.up.weight.shape, len(optimizer.param_groups[0]["params"])
(torch.Size([24, 8]), 12)
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

try:
    import torch
except ImportError as _err:  # without the torch extra: one line saying how to get it
    from specgrow.extras import needs_torch

    raise ImportError(needs_torch("specgrow.grow", str(_err))) from None

from specgrow.arch import FAMILIES, REFERENCE, Family, stored_shape
from specgrow.errors import CheckpointError, InputError, NumericCheckError, SpecError
from specgrow.ir import Const, Old, Random
from specgrow.lower.checkpoint import RoleSource
from specgrow.lower.numeric import compare, tokens_for
from specgrow.lower.safetensors_io import _Tensors, torch_load
from specgrow.lower.stream import StateSource, _scatter, chain, indices, outer, whole
from specgrow.shape import ModelShape

MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # exp_avg: like m; the others like v
ADAM_KEYS = frozenset(MOMENTS + ("step",))


# ------------------------------------------------------------------ named tensors as a checkpoint
class MemoryTensors(_Tensors):
    """In-memory named tensors with the read API of checkpoint files (`RoleSource` reads them)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def names(self) -> list[str]:
        return list(self.tensors)

    def _info(self, name: str) -> tuple:
        t = self.tensors[name]
        return t.dtype, tuple(t.shape)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self.tensors[name][start:stop]

    def close(self) -> None:
        pass


def stored_tensors(source, family: Family, prefix: str, shape: ModelShape) -> dict[str, torch.Tensor]:
    """The tensors a ``family`` checkpoint of ``shape`` stores, assembled whole from a role ``source``."""
    out = {}
    for name, stored, layer in family.stored_tensors(shape, prefix):
        parts = [whole(source, (role, layer)) for role in stored.roles]
        value = parts[0] if len(parts) == 1 else torch.cat(parts)
        out[name] = value.T.contiguous() if stored.transposed else value
    return out


# ------------------------------------------------------------------ which model is this
@dataclass
class _Kind:
    family: Family
    prefix: str
    config: dict | None  # a HF model's config as a dict; None for the reference model


def _kind_of(model, spec, before: ModelShape, first: bool) -> _Kind:
    """The module's family; `SpecError`/`CheckpointError` when it is not the model ``before`` describes."""
    from specgrow.models.reference import ReferenceModel

    if isinstance(model, ReferenceModel):
        if spec.model.arch != "reference":
            raise SpecError(f"model.arch is {spec.model.arch}, but the module is specgrow's reference model",
                            path=spec.path)
        if model.shape != before:
            raise CheckpointError(f"the module's shape is not the one the spec grows from: module {_brief(model.shape)}, "
                                  f"spec {_brief(before)}", path="model")
        return _Kind(REFERENCE, "", None)
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise InputError(f"grow_module: cannot grow a {type(model).__name__}; expected specgrow's ReferenceModel "
                         "or a HuggingFace GPT-2/LLaMA/Mistral/Qwen2 causal LM", path="model")
    from specgrow.arch.hf import cross_check, family_of

    data = config.to_dict()
    family = FAMILIES[family_of(data, "model.config")]
    if first:  # later stages: every tensor's shape is checked against the stage's start by RoleSource
        cross_check(spec.model, data, "model.config")
    names = [name for name, _ in model.state_dict().items()]
    return _Kind(family, family.prefix_of(names), data)


def _brief(shape: ModelShape) -> str:
    widths = sorted({(s.mlp, s.heads, s.kv_heads, s.key, s.value) for s in shape.layers})
    return f"hidden {shape.hidden}, {len(shape.layers)} layers, (mlp, heads, kv_heads, key, value) {widths}"


def _named_state(model) -> dict[str, torch.Tensor]:
    return {name: t.detach() for name, t in model.state_dict().items()}


# ------------------------------------------------------------------ the module
def grow_module(model, spec, optimizer=None, *, allow_unproved: bool = False, check: bool = True):
    """``(grown model, grown optimizer)``: the spec's edits on a live module (and its Adam state).

    ``spec`` is a `specgrow.spec.Spec` or a path. The spec is proved first (anything not
    PROVED raises `UnprovedError` unless ``allow_unproved``); with ``check`` the grown
    logits are compared with the old ones on seeded tokens (`NumericCheckError` beyond the
    dtype's tolerance, see `specgrow.lower.numeric`). The input module and optimizer are
    not modified. Without an optimizer the second item is None.
    """
    from specgrow.transforms import compile_spec

    spec = _as_spec(spec)
    _proved(spec, allow_unproved)
    plan = compile_spec(spec)
    return _grow(model, optimizer, spec, plan.steps, allow_unproved=allow_unproved, check=check)


def _grow(model, optimizer, spec, steps, *, allow_unproved: bool, check: bool):
    before, after = steps[0].before, steps[-1].after
    kind = _kind_of(model, spec, before, steps[0].index == 0)
    concrete = [step.concrete() for step in steps]
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    named = _named_state(model)
    source = RoleSource(MemoryTensors(named), kind.family, before, "model")
    grown_named = _unshared(stored_tensors(chain(source, concrete, device), kind.family, kind.prefix, after),
                            named.values())
    grown = _build(model, kind, after, grown_named, steps, device, dtype)
    if check:
        _check(model, grown, kind, before, spec, steps, allow_unproved, dtype, device)
    if optimizer is None:
        return grown, None
    return grown, _grow_optimizer(optimizer, model, grown, kind, before, concrete)


def _build(model, kind: _Kind, after: ModelShape, state: dict, steps, device, dtype):
    if kind.config is None:
        from specgrow.models.reference import build

        grown = build(after, state, device)
    else:
        from specgrow.arch.hf import grown_config

        config = grown_config(kind.config, after, _origins(steps))
        config_class = type(model.config)
        with torch.device(device):
            grown = type(model)(config_class.from_dict(config)).to(dtype)
        missing, unexpected = grown.load_state_dict(state, strict=False)
        tied = getattr(grown, "_tied_weights_keys", None) or ()
        left = [name for name in missing if not kind.family.is_ignored(name) and name not in tied
                and not (after.tie_embeddings and name.endswith("lm_head.weight"))]
        if left or unexpected:
            raise CheckpointError(f"the grown module does not take the grown tensors: missing {left[:3]}, "
                                  f"unexpected {unexpected[:3]}", path="model")
        if after.tie_embeddings:
            grown.tie_weights()
    grown.train(model.training)
    return grown


def _origins(steps) -> list[int]:
    """For each layer after ``steps``, the layer before them it is, or sits after (inserted)."""
    origins = list(range(len(steps[0].before.layers)))
    for step in steps:
        if step.kind == "layers":
            count = len(step.after.layers) - len(step.before.layers)
            at = _inserted_at(step)
            origins[at:at] = [origins[max(at - 1, 0)]] * count
    return origins


def _inserted_at(step) -> int:
    return min(e.layer for e in step.edits if e.source is None)


def _logits(model, kind: _Kind, tokens):
    out = model(tokens)
    logits = out if kind.config is None else out.logits
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


@torch.no_grad()
def _check(model, grown, kind, before, spec, steps, allow_unproved, dtype, device):
    tokens = tokens_for(before, spec.seed, device)
    modes = model.training, grown.training
    model.eval(), grown.eval()
    try:
        result = compare(_logits(model, kind, tokens), _logits(grown, kind, tokens), dtype, spec.seed)
    finally:
        model.train(modes[0]), grown.train(modes[1])
    if not result.passed:
        mark = spec.step_marks[steps[0].index]
        message = f"the grown module changes the function: {result.summary()}"
        if not allow_unproved:
            raise NumericCheckError(message, path=spec.path, line=mark.line, column=mark.column)
        warnings.warn(f"{spec.path}:{mark.line}:{mark.column}: {message} (allow_unproved)", stacklevel=4)


# ------------------------------------------------------------------ the optimizer
def _grow_optimizer(optimizer, model, grown, kind: _Kind, before: ModelShape, steps):
    names = {id(p): name for name, p in model.named_parameters()}
    groups, state = [], {}
    for group in optimizer.param_groups:
        members = []
        for p in group["params"]:
            if id(p) not in names:
                raise InputError("the optimizer holds a parameter that is not in the model", path="optimizer")
            members.append(names[id(p)])
            if p in optimizer.state and optimizer.state[p]:
                state[names[id(p)]] = optimizer.state[p]
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": members})
    new_state, new_groups = grow_adam_state(state, groups, dict(model.named_parameters()), kind.family,
                                            kind.prefix, before, steps)
    params = dict(grown.named_parameters())
    order = {name: i for i, name in enumerate(params)}  # named_parameters() order, as optimizers list them
    out = type(optimizer)([{**g, "params": [params[n] for n in sorted(g["params"], key=order.__getitem__)]}
                           for g in new_groups])
    out.defaults = dict(optimizer.defaults)  # each group carries its own hyper-parameters
    for name, value in new_state.items():
        out.state[params[name]] = value
    return out


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
        entry.update(_unshared(entry, inputs))
    for name, stored, layer in family.stored_tensors(after, prefix):
        if name not in members:
            continue
        origin = origins[(stored.roles[0], layer)]
        out[name]["step"] = step_of[origin].clone() if torch.is_tensor(step_of[origin]) else step_of[origin]
    return out, grown_groups


def _unshared(tensors: dict, inputs) -> dict:
    """``tensors`` with every one that shares memory with an input tensor copied (the input stays untouched)."""
    taken = {t.untyped_storage().data_ptr() for t in inputs if t.device.type != "meta"}
    return {name: t.clone() if t.device.type != "meta" and t.untyped_storage().data_ptr() in taken else t
            for name, t in tensors.items()}


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
            else:
                new[(edit.role, edit.layer)] = next(origins[k] for k in sorted(origins, key=_order)
                                                    if k[0] == edit.role)
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
                    _scatter(value, where, part)
                elif isinstance(src, (Const, Random)):
                    _scatter(value, where, seed)
                else:
                    raise TypeError(f"unknown block source {src!r}")
            out[kind][(edit.role, edit.layer)] = value
    return out


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
            total[index] += block.source.scale
    total[total == 0] = 1.0  # never read; avoids 0/0 in unread elements
    return total


def _seed_v(roles: dict, edit) -> float:
    """The second moment given to new slices: the old tensor's mean, or its role's mean over old layers."""
    if edit.source is not None:
        return float(roles[edit.source].mean()) if roles[edit.source].numel() else 0.0
    same = [t for (role, _), t in roles.items() if role == edit.role and t.numel()]
    return float(torch.cat([t.reshape(-1) for t in same]).mean()) if same else 0.0


# ------------------------------------------------------------------ growth plans in training
class GrowthSchedule:
    """Apply a staged spec's stages at their training steps.

    >>> # schedule = GrowthSchedule(load_spec("plan.yaml"))
    >>> # for step in range(total):
    >>> #     model, optimizer = schedule.step(step, model, optimizer)
    >>> #     ... forward, backward, optimizer.step() ...

    The whole plan is proved when the schedule is made (anything not PROVED raises
    `UnprovedError` unless ``allow_unproved``). ``step(n, model, optimizer)`` returns the
    model and optimizer unchanged, or grown by every stage whose ``at_step`` is ``<= n`` and
    not yet applied (so resuming past a stage applies it). ``grown_at`` lists the training
    steps at which it grew.
    """

    def __init__(self, spec, *, allow_unproved: bool = False, check: bool = True):
        from specgrow.transforms import compile_spec

        self.spec = _as_spec(spec)
        if not self.spec.stages:
            raise SpecError("GrowthSchedule needs a spec with `stages` (a growth plan)", path=self.spec.path)
        _proved(self.spec, allow_unproved)
        self.plan = compile_spec(self.spec)
        self.allow_unproved, self.check = allow_unproved, check
        self.applied = 0
        self.grown_at: list[int] = []

    @property
    def pending(self) -> list:
        return list(self.spec.stages[self.applied:])

    def step(self, step: int, model, optimizer=None):
        while self.applied < len(self.spec.stages) and self.spec.stages[self.applied].at_step <= step:
            stage = self.spec.stages[self.applied]
            model, optimizer = _grow(model, optimizer, self.spec, self.plan.steps[stage.start:stage.stop],
                                     allow_unproved=self.allow_unproved, check=self.check)
            self.applied += 1
            self.grown_at.append(step)
        return model, optimizer


def _as_spec(spec):
    if isinstance(spec, (str, os.PathLike)):
        from specgrow.spec import load_spec

        return load_spec(spec)
    return spec


_PROVED: dict[str, str] = {}  # spec sha256 -> verdict, so a schedule's stages are not re-proved


def _proved(spec, allow_unproved: bool) -> None:
    if spec.sha256 in _PROVED and _PROVED[spec.sha256] == "PROVED":
        return
    from specgrow.lower.apply import prove

    cert = prove(spec, allow_unproved, log=lambda message: warnings.warn(message, stacklevel=3),
                 hint="the module is not grown (allow_unproved=True grows it anyway)")
    _PROVED[spec.sha256] = cert.verdict.value


# ------------------------------------------------------------------ a saved optimizer state (apply --optimizer)
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
    """A parameter name with the checkpoint's model prefix (``model.`` / ``transformer.``) as stored."""
    for known in family.prefixes:
        if known and name.startswith(known):
            name = name[len(known):]
            break
    return name if name.startswith("lm_head.") else prefix + name

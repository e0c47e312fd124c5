"""Growing inside a training loop: `grow_module`, Adam state, and `GrowthSchedule`.

`grow_module` runs the same edits as ``specgrow apply`` on a live ``nn.Module`` (specgrow's
reference model, or a HuggingFace model of a family of `specgrow.arch`: GPT-2, LLaMA, Mistral, Qwen2,
Qwen3, OLMo 2, Gemma 2, Gemma 3 text, Phi-3, GPT-NeoX, Mixtral, Qwen3-MoE) and returns a new
module, after the spec was proved and the grown logits were checked against the old ones.

Given an Adam or AdamW optimizer it also returns a new optimizer of the same class and
hyper-parameters whose state was grown with the weights (`grow_adam_state`: moments
transform like gradients, not like parameters; `specgrow.lower.optimizer` gives the rules).
`GrowthSchedule` applies a staged spec's stages at their training steps.

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

from specgrow.arch import FAMILIES, REFERENCE, Family, grown_family
from specgrow.errors import CheckpointError, InputError, NumericCheckError, SpecError
from specgrow.lower.checkpoint import MemoryTensors, RoleSource, stored_tensors, unshared
from specgrow.lower.numeric import compare, tokens_for
from specgrow.lower.optimizer import grow_adam_state
from specgrow.lower.stream import chain
from specgrow.pipeline.proof import prove
from specgrow.shape import ModelShape


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
                         "or a HuggingFace causal LM of a family specgrow reads (GPT-2, LLaMA, Mistral, Qwen2, "
                         "Qwen3, OLMo 2, Gemma 2, Gemma 3 text, Phi-3, GPT-NeoX, Mixtral, Qwen3-MoE)", path="model")
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
    family = grown_family(kind.family, after)  # the module's, or the MoE family upcycling makes it
    if optimizer is not None and family is not kind.family:
        raise InputError(f"grow_module: growing optimizer state from {kind.family.name} into {family.name} "
                         "(upcycled experts) is not supported", path="optimizer")
    grown_named = unshared(stored_tensors(chain(source, concrete, device), family, kind.prefix, after),
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
        with torch.device(device):
            if config["model_type"] == kind.config["model_type"]:
                grown = type(model)(type(model.config).from_dict(config)).to(dtype)
            else:  # upcycled into another family (llama -> mixtral): its own config and model classes
                from transformers import AutoConfig, AutoModelForCausalLM

                grown = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config)).to(dtype)
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
        warnings.warn(f"{spec.path}:{mark.line}:{mark.column}: warning: {message}; growing it anyway "
                      "(allow_unproved=True)", stacklevel=4)


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
    cert = prove(spec, allow_unproved, hint="the module is not grown (allow_unproved=True grows it anyway)",
                 anyway="growing it anyway (allow_unproved=True)",
                 log=lambda line: warnings.warn(line, stacklevel=3))
    _PROVED[spec.sha256] = cert.verdict.value

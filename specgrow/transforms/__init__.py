"""The expansions; `compile_spec` turns a canonical `Spec` into a `Plan` of edits.

>>> from specgrow.spec import load_spec_text
>>> spec = load_spec_text(b'''
... specgrow: 1
... model: {dims: {hidden: 8, mlp: 16, heads: 2, layers: 1, vocab: 11, positions: 4}}
... steps: [{mlp: {to: 24}}]
... ''')
>>> plan = compile_spec(spec)
>>> plan.after.layers[0].mlp
24
>>> [e.role for e in plan.steps[0].edits]
['mlp.up.weight', 'mlp.down.weight']
"""

from __future__ import annotations

from specgrow.ir import Plan, StepPlan
from specgrow.shape import ModelShape
from specgrow.transforms import experts, heads, hidden, key, layers, mlp, value
from specgrow.transforms.common import Context

COMPILERS = {
    "mlp": mlp.compile_step, "heads": heads.compile_step, "value": value.compile_step,
    "key": key.compile_step, "hidden": hidden.compile_step, "layers": layers.compile_step,
    "experts": experts.compile_step, "upcycle": experts.compile_upcycle,
}


def compile_steps(steps, shape: ModelShape, seed: int) -> Plan:
    """Compile steps in order, each on the shape the previous one left."""
    plans, current = [], shape
    for index, step in enumerate(steps):
        grown = COMPILERS[step.kind](step, current, Context(seed, index, step, current.norm_offset))
        plans.append(StepPlan(index, step.kind, current, grown.after, grown.edits,
                              grown.eps_scale, grown.eps_dims))
        current = grown.after
    return Plan(tuple(plans), shape, current)


def compile_spec(spec) -> Plan:
    return compile_steps(spec.steps, ModelShape.from_spec(spec.model), spec.seed)

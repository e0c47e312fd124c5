"""Render a `Plan` as the per-tensor table of ``specgrow plan`` (no torch)."""

from __future__ import annotations

from specgrow.ir import Plan


def describe_step(step) -> str:
    fields = []
    for name in ("to", "add", "at", "method", "rescale", "placement"):
        if hasattr(step, name):
            fields.append(f"{name}={getattr(step, name)}")
    if hasattr(step, "layers"):
        fields.append("layers=" + ",".join(map(str, step.layers)))
    return f"{step.kind}(" + ", ".join(fields) + ")"


def _shape(dims) -> str:
    return str(tuple(int(d) for d in dims))


def _block(block) -> str:
    where = ", ".join(s.describe() for s in block.where)
    return f"[{where}]={block.source.describe()}"


def render(plan: Plan, steps, padding=(), arch: str = "reference", stages=()) -> str:
    """One section per step: a row per edited tensor, moved tensors summarised.

    Tensors are named as the ``arch`` family stores them; shapes are in the ``[out, in]``
    layout. ``padding[i]`` is true for a step added to pad every layer to one width (HF
    families). With ``stages`` (a growth plan's `Stage`s) each stage gets a heading line.
    """
    from specgrow.arch import FAMILIES, grown_family
    from specgrow.shape import EXPERT_ROLES

    family = FAMILIES[arch]
    grown = grown_family(family, plan.after)  # an upcycled llama's experts are named as mixtral's

    def name_of(role, layer):
        return (grown if role in EXPERT_ROLES else family).display_name(role, layer)

    concrete = plan.concrete()
    lines = []
    if arch != "reference":
        experts = f" (experts as {grown.name} checkpoints)" if grown is not family else ""
        lines.append(f"tensors as {arch} checkpoints name them{experts}; shapes [out, in] ([q] a part of a fused "
                     "tensor, .T stored transposed)")
    first = {stage.start: (number, stage) for number, stage in enumerate(stages)}
    for step_plan, step in zip(concrete.steps, steps):
        if step_plan.index in first:
            number, stage = first[step_plan.index]
            owned = concrete.steps[stage.start:stage.stop]
            before, after = owned[0].before.parameter_count(), owned[-1].after.parameter_count()
            span = f"step {stage.start}" if stage.stop - stage.start == 1 else f"steps {stage.start}-{stage.stop - 1}"
            lines.append(f"stages[{number}] (at step {stage.at_step}): {span}  params {before:,} -> {after:,}")
        before, after = step_plan.before.parameter_count(), step_plan.after.parameter_count()
        added = "  (added: HF configs need every layer at one width)" if padding and padding[step_plan.index] else ""
        lines.append(f"step {step_plan.index}: {describe_step(step)}  params {before:,} -> {after:,}{added}")
        if step_plan.eps_scale != 1:
            lines.append(f"  norm_eps: {step_plan.before.norm_eps:g} -> {step_plan.after.norm_eps:g}")
        rows, moved = [], []
        for edit in step_plan.edits:
            name = name_of(edit.role, edit.layer)
            if edit.is_identity():
                moved.append(f"{name_of(*edit.source)} -> {name}")
                continue
            old = "new" if edit.old_shape is None else _shape(edit.old_shape)
            blocks = "  ".join(_block(b) for b in edit.blocks)
            rows.append((name, f"{old} -> {_shape(edit.new_shape)}", blocks))
        width = max((len(r[0]) for r in rows), default=0)
        shapes = max((len(r[1]) for r in rows), default=0)
        for name, shape, blocks in rows:
            lines.append(f"  {name:<{width}}  {shape:<{shapes}}  {blocks}")
        if moved:
            lines.append(f"  moved unchanged: {len(moved)} tensors ({moved[0]}, ...)")
    return "\n".join(lines)


__all__ = ["render", "describe_step"]

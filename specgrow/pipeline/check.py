"""A failed numeric check, judged: the first step that changes the function, then an error
(nothing is written) or, with ``allow_unproved``, a warning."""

from __future__ import annotations

from specgrow.errors import NumericCheckError
from specgrow.lower.numeric import compare, streamed_logits
from specgrow.lower.stream import chain
from specgrow.pipeline.proof import NOTHING_WRITTEN


def first_failing_step(plan, concrete, source, tokens, reference, dtype, seed, device) -> int:
    """The index of the first step after which the logits differ from ``reference``."""
    grown = chain(source, concrete.steps, device)  # one chain: every step's state shares its caches
    for index, step in enumerate(plan.steps):
        if not compare(reference, streamed_logits(step.after, grown.after(index + 1), tokens), dtype, seed).passed:
            return index
    return len(plan.steps) - 1


def refuse_or_warn(spec, plan, index: int, result, allow_unproved: bool, log) -> None:
    """`NumericCheckError` at step ``index`` of the spec, or with ``allow_unproved`` a warning to ``log``."""
    mark = spec.step_marks[index]
    message = (f"{spec.step_path(index)} ({plan.steps[index].kind}) changes the function: numeric check failed, "
               f"{result.summary()}")
    if not allow_unproved:
        raise NumericCheckError(f"{message}; {NOTHING_WRITTEN}", path=spec.path, line=mark.line, column=mark.column)
    log(f"{spec.path}:{mark.line}:{mark.column}: warning: {message}; writing it (--allow-unproved)")

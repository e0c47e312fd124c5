"""Render proof certificates: text, JSON and SARIF for ``specgrow check``; Markdown for ``prove``.

Pure formatting of the plain data in `specgrow.verify.result` (no sympy, no torch). An
*outcome* is what checking one spec gave: a `Certificate`, or the `SpecgrowError` that
stopped it (an unreadable or invalid spec). Every failure is located at its step's line
and column, one line each, in the same ``FILE:LINE:COL: error: MESSAGE`` form as every
other specgrow error. The Markdown certificate holds no timings, so two renderings of the
same proof compare equal except for their one ``Versions:`` footer line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePath
from typing import NamedTuple, Union
from urllib.parse import quote

from specgrow import __version__
from specgrow.errors import SpecgrowError, each_error
from specgrow.verify.result import Certificate, Counterexample, Obligation, StageProof, StepProof, Verdict

Outcome = Union[Certificate, SpecgrowError]

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/os/schemas/sarif-schema-2.1.0.json"
VERSIONS_PREFIX = "Versions: "
RULES = (  # (ruleId, name, description): one SARIF rule per kind of result `check` reports
    ("specgrow/refuted", "Refuted",
     "The grown model does not compute the same function: a sublayer's residual or side condition "
     "is nonzero, confirmed by a concrete counterexample."),
    ("specgrow/unknown", "Unknown",
     "The prover could not decide a sublayer (rewriting got stuck); an UNKNOWN verdict never passes."),
    ("specgrow/invalid", "Invalid",
     "The spec could not be read, or it is not a valid growth spec."),
)


def _one_line(text) -> str:
    return " ".join(str(text).split())


def obligation_count(cert: Certificate) -> int:
    return sum(len(step.obligations) for step in cert.steps)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _obligation_problem(ob: Obligation) -> str:
    if ob.stuck:  # UNKNOWN: where rewriting stopped (it names the residual, if any)
        parts = [f"stuck at {_one_line(ob.stuck)}"]
    else:
        parts = [f"residual {_one_line(ob.residual)}"] if ob.residual else []
    parts += [f"side condition {_one_line(c.text)} simplifies to {_one_line(c.value)}, not 0"
              for c in ob.side_conditions if not c.holds]
    if ob.hint:
        parts.append(_one_line(ob.hint))
    return "; ".join(parts) or f"{_one_line(ob.statement)} does not hold"


class Failure(NamedTuple):
    line: int
    column: int
    verdict: Verdict
    message: str  # "steps[i] (kind) VERDICT: sublayer: what is wrong"; in a growth plan
    # "stages[j].steps[i] (kind, at step N) VERDICT: ..."
    witness: Counterexample | None = None  # REFUTED: the step's own witness


def failures(cert: Certificate) -> list[Failure]:
    """Where and why each obligation that is not PROVED fails, in step order.

    A step or certificate that is not PROVED without a failing obligation still gives one
    entry, so a non-PROVED certificate always has at least one.

    >>> from specgrow.verify.result import StepProof
    >>> ob = Obligation(0, "mlp", (0, 1), Verdict.REFUTED, "mlp'([x, 0]) = [mlp(x), 0]",
    ...                 residual="gelu(x*W1)*W2", hint="needs W2 = 0")
    >>> step = StepProof(0, "mlp", "mlp: p -> 2p", 17, 5, Verdict.REFUTED, (ob,))
    >>> failures(Certificate("s.yaml", "ab", Verdict.REFUTED, (step,)))[0].message
    'steps[0] (mlp) REFUTED: mlp: residual gelu(x*W1)*W2; needs W2 = 0'
    """
    found = []
    for step in cert.steps:
        at = "" if step.at_step is None else f", at step {step.at_step}"
        where = f"{step.label} ({step.kind}{at})"
        bad = [ob for ob in step.obligations if ob.verdict is not Verdict.PROVED]
        for ob in bad:
            found.append(Failure(step.line, step.column, ob.verdict,
                                 f"{where} {ob.verdict.value}: {ob.sublayer}: {_obligation_problem(ob)}",
                                 step.counterexample))
        if step.verdict is not Verdict.PROVED and not bad:
            found.append(Failure(step.line, step.column, step.verdict,
                                 f"{where} {step.verdict.value}: {_one_line(step.description)}", step.counterexample))
    if cert.verdict is not Verdict.PROVED and not found:
        found.append(Failure(1, 1, cert.verdict, f"{cert.verdict.value}: the composition of the steps is not proved"))
    return found


def witnesses(cert: Certificate) -> list[Counterexample]:
    """Every witness of a certificate: each refuted step's, then each refuted stage's."""
    return [s.counterexample for s in (*cert.steps, *cert.stages) if s.counterexample is not None] or \
        ([cert.counterexample] if cert.counterexample is not None else [])


def counterexample_summary(cert: Certificate, cx: Counterexample | None = None) -> str | None:
    """Dims, seed and max |Δ| of a witness (default: the certificate's first), on one line."""
    cx = cx if cx is not None else cert.counterexample
    if cx is None:
        return None
    dims = ", ".join(f"{k}={v}" for k, v in cx.dims.items())
    label = _grown_alone(cert, cx)
    alone = f"{label} grown alone from random weights; " if label else ""
    gain = "" if cx.norm_gain == 1 else f"; norm gains x{cx.norm_gain:g}"
    bias = "" if cx.bias_scale == 1 else f"; biases x{cx.bias_scale:g}"
    return (f"counterexample: {alone}dims {dims}; seed {cx.seed}{gain}{bias}; max |Δ| {cx.max_abs_diff:.3g} "
            f"(tolerance {cx.tolerance})")


def stage_summary(cert: Certificate, stage: StageProof) -> str:
    """``stages[1] (at step 6000): REFUTED (3 steps, 5 obligations)``."""
    steps = cert.steps[stage.start:stage.stop]
    obligations = sum(len(step.obligations) for step in steps)
    return (f"stages[{stage.index}] (at step {stage.at_step}): {stage.verdict.value} "
            f"({_plural(len(steps), 'step')}, {_plural(obligations, 'obligation')})")


# ---------------------------------------------------------------- text
def spec_lines(outcome: Outcome) -> list[str]:
    """The text report of one spec: its verdict line (then, for a growth plan, one line per
    stage), then one located line per failure."""
    if isinstance(outcome, SpecgrowError):
        return [error.render() for error in each_error(outcome)]
    cert = outcome
    lines = [f"{cert.spec_path}: {cert.verdict.value} ({_plural(len(cert.steps), 'step')}, "
             f"{_plural(obligation_count(cert), 'obligation')}, {cert.seconds:.2f} s)"]
    lines += [f"{cert.spec_path}: {stage_summary(cert, stage)}" for stage in cert.stages]
    lines += [f"{cert.spec_path}:{f.line}:{f.column}: error: {f.message}" for f in failures(cert)]
    lines += [f"{cert.spec_path}: note: {counterexample_summary(cert, cx)}" for cx in witnesses(cert)]
    return lines


def render_text(outcomes: list[Outcome]) -> str:
    """Every spec's lines, then ``N specs: a PROVED, b REFUTED, c UNKNOWN, d invalid``."""
    counts = {v: sum(isinstance(o, Certificate) and o.verdict is v for o in outcomes) for v in Verdict}
    invalid = sum(isinstance(o, SpecgrowError) for o in outcomes)
    lines = [line for outcome in outcomes for line in spec_lines(outcome)]
    lines.append(f"{_plural(len(outcomes), 'spec')}: " + ", ".join(f"{n} {v.value}" for v, n in counts.items())
                 + f", {invalid} invalid")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- json
def _error_dict(err: SpecgrowError) -> dict:
    return {"spec": err.path, "error": _one_line(err.message), "line": err.line, "column": err.column}


def _json_entries(outcome: Outcome) -> list[dict]:
    if isinstance(outcome, SpecgrowError):
        return [_error_dict(error) for error in each_error(outcome)]
    return [outcome.as_dict()]


def render_json(outcomes: list[Outcome]) -> str:
    """A JSON list: `Certificate.as_dict()` per proved spec, ``{"spec", "error", "line", "column"}`` per
    error of an invalid one (each spec named by the key ``spec``)."""
    data = [entry for outcome in outcomes for entry in _json_entries(outcome)]
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------- sarif
def _uri(path: str) -> str:
    pure = PurePath(path)
    if pure.is_absolute():
        return Path(path).as_uri()
    return quote(pure.as_posix())


def _sarif_result(rule: str, message: str, path: str, line: int, column: int) -> dict:
    return {
        "ruleId": rule,
        "ruleIndex": [r[0] for r in RULES].index(rule),
        "level": "error",
        "message": {"text": message},
        "locations": [{"physicalLocation": {
            "artifactLocation": {"uri": _uri(path)},
            "region": {"startLine": max(int(line), 1), "startColumn": max(int(column), 1)},
        }}],
    }


def _sarif_results(outcome: Outcome) -> list[dict]:
    if isinstance(outcome, SpecgrowError):
        return [_sarif_result("specgrow/invalid", _one_line(error.message), error.path, error.line, error.column)
                for error in each_error(outcome)]
    cert = outcome
    results = []
    for f in failures(cert):
        refuted = f.verdict is Verdict.REFUTED
        summary = counterexample_summary(cert, f.witness)
        message = f"{f.message}; {summary}" if refuted and summary else f.message
        results.append(_sarif_result("specgrow/refuted" if refuted else "specgrow/unknown",
                                     message, cert.spec_path, f.line, f.column))
    return results


def render_sarif(outcomes: list[Outcome]) -> str:
    """A SARIF 2.1.0 log: one error result per failing obligation and per invalid spec."""
    driver = {
        "name": "specgrow",
        "version": __version__,
        "rules": [{"id": rule, "name": name, "shortDescription": {"text": text},
                   "defaultConfiguration": {"level": "error"}} for rule, name, text in RULES],
    }
    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": driver},
            "columnKind": "unicodeCodePoints",
            "results": [r for outcome in outcomes for r in _sarif_results(outcome)],
        }],
    }
    return json.dumps(log, indent=2, ensure_ascii=False) + "\n"


FORMATS = {"text": render_text, "json": render_json, "sarif": render_sarif}


# ---------------------------------------------------------------- markdown
def _code(text) -> str:
    text = _one_line(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _cell(text) -> str:
    return _one_line(text).replace("|", "\\|")


def _layers(layers: tuple[int, ...]) -> str:
    if not layers:
        return ""
    return (", layer " if len(layers) == 1 else ", layers ") + ", ".join(map(str, layers))


def _number(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_number(v) for v in value) + "]"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _obligation_markdown(ob: Obligation, level: str = "###") -> list[str]:
    bullets = []
    if ob.rules:
        bullets.append("- Rules applied: " + ", ".join(f"{_code(name)} ×{count}" for name, count in ob.rules))
    if ob.lemmas:
        bullets.append("- Lemmas used: " + ", ".join(_code(lemma) for lemma in ob.lemmas))
    if ob.assumptions:
        bullets.append("- Assumed: " + "; ".join(_one_line(a) for a in ob.assumptions))
    if ob.side_conditions:
        bullets.append("- Side conditions:")
        bullets += [f"  - {_code(c.text)} simplifies to {_code(c.value)}: {'discharged' if c.holds else 'NOT zero'}"
                    for c in ob.side_conditions]
    if ob.residual:
        bullets.append(f"- Residual: {_code(ob.residual)}")
    if ob.hint:
        bullets.append(f"- Hint: {_one_line(ob.hint)}")
    if ob.stuck:
        bullets.append(f"- Stuck at: {_code(ob.stuck)}")
    if ob.checked:
        bullets.append(f"- Checked independently: {_one_line(ob.checked)}")
    lines = [f"{level} {ob.sublayer}{_layers(ob.layers)}: {ob.verdict.value}", "", f"Statement: {_code(ob.statement)}"]
    return lines + ([""] + bullets if bullets else []) + [""]


def _versions_line(cert: Certificate) -> str:
    versions = {"specgrow": __version__, **cert.versions}
    return VERSIONS_PREFIX + ", ".join(f"{name} {versions[name]}" for name in sorted(versions))


def _step_markdown(step: StepProof, level: str) -> list[str]:
    lines = [f"{level} {step.label} ({step.kind}): {step.verdict.value}", "",
             f"{_one_line(step.description)} (line {step.line}, column {step.column})", ""]
    for ob in step.obligations:
        lines += _obligation_markdown(ob, level + "#")
    return lines


def render_markdown(cert: Certificate) -> str:
    """The readable proof certificate of one spec (no timings; versions in the last line).

    A growth plan's steps are grouped under one heading per stage.

    >>> from specgrow.verify.result import StepProof
    >>> ob = Obligation(0, "mlp", (0, 1), Verdict.PROVED, "mlp'([x, 0]) = [mlp(x), 0]", (("zero-split", 2),))
    >>> step = StepProof(0, "mlp", "mlp: p -> 2p", 17, 5, Verdict.PROVED, (ob,))
    >>> text = render_markdown(Certificate("s.yaml", "ab", Verdict.PROVED, (step,), ("residual [x, 0]",)))
    >>> section = text[text.index("## steps[0]"):]
    >>> print(section[:section.index("---")].strip())
    ## steps[0] (mlp): PROVED
    <BLANKLINE>
    mlp: p -> 2p (line 17, column 5)
    <BLANKLINE>
    ### mlp, layers 0, 1: PROVED
    <BLANKLINE>
    Statement: `mlp'([x, 0]) = [mlp(x), 0]`
    <BLANKLINE>
    - Rules applied: `zero-split` ×2
    """
    lines = [
        f"# Proof certificate: {cert.spec_path}", "",
        "| | |", "|---|---|",
        f"| spec | `{_cell(cert.spec_path)}` |",
        f"| sha256 | `{cert.spec_sha256}` |",
        f"| verdict | **{cert.verdict.value}** |",
        f"| steps | {len(cert.steps)} |",
        *([f"| stages | {len(cert.stages)} |"] if cert.stages else []),
        f"| obligations | {obligation_count(cert)} |", "",
        f"Floating point: {cert.floating_point}", "",
    ]
    if cert.invariants:
        lines += ["## Representation after each step", "", "| after | invariant |", "|---|---|"]
        for i, invariant in enumerate(cert.invariants):
            label = f"{cert.steps[i].label} ({cert.steps[i].kind})" if i < len(cert.steps) else f"#{i}"
            lines.append(f"| {label} | {_cell(invariant)} |")
        lines.append("")
    if cert.stages:
        for stage in cert.stages:
            steps = cert.steps[stage.start:stage.stop]
            lines += [f"## stages[{stage.index}] (at step {stage.at_step}): {stage.verdict.value}", "",
                      f"Applied at training step {stage.at_step}: {_plural(len(steps), 'step')} "
                      f"(line {stage.line}, column {stage.column}).", ""]
            for step in steps:
                lines += _step_markdown(step, "###")
    else:
        for step in cert.steps:
            lines += _step_markdown(step, "##")
    for cx in witnesses(cert):
        lines += _witness_markdown(cert, cx)
    lines += ["---", "", _versions_line(cert)]
    return "\n".join(lines) + "\n"


def _grown_alone(cert: Certificate, cx: Counterexample) -> str:
    """The step or stage a witness grew alone (empty for the whole spec)."""
    if cx.step is not None:
        return cert.steps[cx.step].label if cx.step < len(cert.steps) else f"steps[{cx.step}]"
    return "" if cx.stage is None else f"stages[{cx.stage}]"


def _witness_markdown(cert: Certificate, cx: Counterexample) -> list[str]:
    """One witness: where it grew from, the scales of its random model, both logits, the difference."""
    label = _grown_alone(cert, cx)
    kind = "step" if cx.step is not None else "stage"
    alone = f" (random weights in the shape {label} starts from, grown by that {kind} alone)" if label else ""
    scales = ("" if cx.norm_gain == 1 else f", every norm gain times {cx.norm_gain:g}") \
        + ("" if cx.bias_scale == 1 else f", every bias times {cx.bias_scale:g}") \
        + ("" if not cx.zeroed else ", with " + ", ".join(map(_code, cx.zeroed)) + " zero (as earlier steps left them)") \
        + ("" if not cx.tied else ", with one row for every expert in " + ", ".join(map(_code, cx.tied))
           + " (earlier steps left their logits tied for every token)")
    logits = {name: "[" + ", ".join(f"{v:.12g}" for v in values) + "]"  # digits enough for a 1e-9 change
              for name, values in (("original", cx.reference), ("grown", cx.grown))}
    return [f"## Counterexample: {label}" if label else "## Counterexample", "",
            f"The reference model{alone} at " + ", ".join(f"{k}={v}" for k, v in cx.dims.items())
            + f", seed {cx.seed}{scales}, run in {cx.dtype} on the tokens {_code(_number(cx.tokens))}; "
            + "the first logits at the last token:", "",
            f"- original logits: {_code(logits['original'])}",
            f"- grown logits: {_code(logits['grown'])}",
            f"- max |Δ| = {cx.max_abs_diff:.3g} (tolerance {_one_line(cx.tolerance)})", ""]


def without_versions(markdown: str) -> str:
    """A Markdown certificate minus its versions line: what staleness is judged on."""
    return "\n".join(line for line in markdown.splitlines() if not line.startswith(VERSIONS_PREFIX))


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary sibling, then rename it onto ``path``."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)

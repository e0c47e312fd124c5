"""Growth plans (top-level ``stages``) through the prover and the command line.

Loading and malformed stages are in tests/test_spec.py and tests/malformed_cases.py; the
golden specs ``tests/golden/stages-*.yaml`` carry their verdicts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from specgrow.cli import main
from specgrow.spec import load_spec, load_spec_text
from specgrow.verify.prover import prove_spec
from specgrow.verify.report import render_markdown
from specgrow.verify.result import Verdict
from tests.helpers import BASE_DIMS, spec_text

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
LOCATED = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): error: (?P<msg>[^\n]+)$")


def plan_text(stages, **model) -> str:
    """A growth plan: ``stages`` is a list of (at_step, [steps])."""
    doc = {"specgrow": 1, "model": {"dims": dict(BASE_DIMS), "norm_eps": 1e-2, **model}, "seed": 0,
           "stages": [{"at_step": at, "steps": steps} for at, steps in stages]}
    return yaml.safe_dump(doc, sort_keys=False)


def write(tmp_path, text, name="plan.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


PRESERVING = [(1000, [{"mlp": {"to": 48}}]), (5000, [{"hidden": {"to": 24}}, {"layers": {"add": 1}}])]
SECOND_REFUTED = [(1000, [{"mlp": {"to": 48}}]), (5000, [{"layers": {"add": 1}},
                                                         {"mlp": {"to": 64, "init": {"w_out": {"normal": 0.5}}}}])]


# ---------------------------------------------------------------- the prover
def test_certificate_records_each_stage_and_its_steps():
    spec = load_spec_text(plan_text(SECOND_REFUTED), "plan.yaml")
    cert = prove_spec(spec)
    assert cert.verdict is Verdict.REFUTED
    assert [(s.index, s.at_step, s.start, s.stop, s.verdict) for s in cert.stages] == [
        (0, 1000, 0, 1, Verdict.PROVED), (1, 5000, 1, 3, Verdict.REFUTED)]
    assert [(s.stage, s.at_step, s.path, s.label) for s in cert.steps] == [
        (0, 1000, "stages[0].steps[0]", "stages[0].steps[0]"),
        (1, 5000, "stages[1].steps[0]", "stages[1].steps[0]"),
        (1, 5000, "stages[1].steps[1]", "stages[1].steps[1]")]
    assert [(s.line, s.column) for s in cert.stages] == [(m.line, m.column) for m in (st.mark for st in spec.stages)]


def test_a_plain_spec_has_no_stage_fields():
    cert = prove_spec(load_spec(ROOT / "proofs" / "specs" / "mlp.yaml"))
    assert cert.stages == () and all(s.stage is None and s.label == f"steps[{s.index}]" for s in cert.steps)
    data = cert.as_dict()
    assert "stages" not in data
    assert not {"stage", "at_step", "path"} & set(data["steps"][0])


def test_zeros_left_by_one_stage_are_not_assumed_by_the_next():
    """The model trains between stages: a slice a stage left zero is not zero when the next one runs.

    Growing the MLP of a freshly inserted layer with ``w_out: like_old`` copies the scale of a zero
    down projection: preserving within one growth, not after training."""
    steps = [{"layers": {"add": 1}}, {"mlp": {"to": 48, "layers": [3], "init": {"w_out": {"like_old": 1.0}}}}]
    plain = load_spec_text(spec_text(steps))  # same model, top-level steps
    assert plain.stages == () and prove_spec(plain).verdict is Verdict.PROVED
    assert prove_spec(load_spec_text(plan_text([(0, steps)]))).verdict is Verdict.PROVED  # one stage: same
    cert = prove_spec(load_spec_text(plan_text([(0, steps[:1]), (10, steps[1:])])))
    assert cert.verdict is Verdict.REFUTED and [s.verdict for s in cert.stages] == [Verdict.PROVED, Verdict.REFUTED]
    # grown through both stages without training nothing changes: the refuted step and its stage
    # each carry a witness of their own, grown alone from random weights of the shape they start from
    step, stage = cert.steps[1].counterexample, cert.stages[1].counterexample
    assert step is not None and step.step == 1 and len(step.dims["layers"]) == 4
    assert stage is not None and stage.stage == 1 and len(stage.dims["layers"]) == 4
    assert cert.counterexample == step
    markdown = render_markdown(cert)
    assert "(random weights in the shape stages[1].steps[0] starts from, grown by that step alone)" in markdown
    assert "(random weights in the shape stages[1] starts from, grown by that stage alone)" in markdown
    assert cert.as_dict()["stages"][1]["counterexample"]["stage"] == 1


# ---------------------------------------------------------------- check / prove / plan / validate
def test_check_text_reports_each_stage_and_locates_the_refuted_step(tmp_path, capsys):
    path = write(tmp_path, plan_text(SECOND_REFUTED))
    mark = load_spec(path).step_marks[2]
    code, out, _ = run(["check", path], capsys)
    lines = out.splitlines()
    assert code == 1
    assert lines[0].startswith(f"{path}: REFUTED (3 steps, ")
    assert lines[1].startswith(f"{path}: stages[0] (at step 1000): PROVED (1 step, ")
    assert lines[2].startswith(f"{path}: stages[1] (at step 5000): REFUTED (2 steps, ")
    located = [m for m in map(LOCATED.match, lines) if m]
    assert located and {(m["line"], m["col"]) for m in located} == {(str(mark.line), str(mark.column))}
    assert all(m["msg"].startswith("stages[1].steps[1] (mlp, at step 5000) REFUTED: mlp: residual ") for m in located)
    assert lines[-1] == "1 spec: 0 PROVED, 1 REFUTED, 0 UNKNOWN, 0 invalid"


def test_check_of_a_preserving_plan_passes(tmp_path, capsys):
    path = write(tmp_path, plan_text(PRESERVING))
    code, out, _ = run(["check", path], capsys)
    assert code == 0, out
    assert f"{path}: stages[1] (at step 5000): PROVED (2 steps, " in out


def test_check_json_carries_the_stage(tmp_path, capsys):
    path = write(tmp_path, plan_text(SECOND_REFUTED))
    plain = str(ROOT / "proofs" / "specs" / "mlp.yaml")
    code, out, _ = run(["check", path, plain, "--format", "json"], capsys)
    staged, flat = json.loads(out)
    assert code == 1
    assert [(s["index"], s["at_step"], s["start"], s["stop"], s["verdict"]) for s in staged["stages"]] == [
        (0, 1000, 0, 1, "PROVED"), (1, 5000, 1, 3, "REFUTED")]
    assert [(s["stage"], s["at_step"], s["path"], s["verdict"]) for s in staged["steps"]] == [
        (0, 1000, "stages[0].steps[0]", "PROVED"), (1, 5000, "stages[1].steps[0]", "PROVED"),
        (1, 5000, "stages[1].steps[1]", "REFUTED")]
    assert "stages" not in flat and "stage" not in flat["steps"][0]
    code, out, _ = run(["check", path, "--format", "sarif"], capsys)
    results = json.loads(out)["runs"][0]["results"]
    assert results and all(r["message"]["text"].startswith("stages[1].steps[1] (mlp, at step 5000) REFUTED")
                           for r in results)


def test_prove_markdown_groups_steps_by_stage(tmp_path, capsys):
    path = write(tmp_path, plan_text(SECOND_REFUTED))
    out = tmp_path / "cert.md"
    code, _, _ = run(["prove", path, "-o", str(out)], capsys)
    text = out.read_text()
    assert code == 1
    for needed in ("| steps | 3 |\n| stages | 2 |\n", "| stages[1].steps[1] (mlp) | residual stream x |",
                   "## stages[0] (at step 1000): PROVED\n\nApplied at training step 1000: 1 step (line ",
                   "### stages[0].steps[0] (mlp): PROVED\n", "#### mlp, layers 0, 1, 2: PROVED\n",
                   "## stages[1] (at step 5000): REFUTED\n\nApplied at training step 5000: 2 steps (line ",
                   "### stages[1].steps[1] (mlp): REFUTED\n", "## Counterexample"):
        assert needed in text, needed
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == ["## Representation after each step", "## stages[0] (at step 1000): PROVED",
                        "## stages[1] (at step 5000): REFUTED", "## Counterexample: stages[1].steps[1]", "## Counterexample: stages[1]"]


def test_plan_and_validate_group_by_stage(capsys):
    path = str(GOLDEN / "stages-llama-padding.yaml")
    code, out, _ = run(["plan", path], capsys)
    assert code == 0
    heads = [line for line in out.splitlines() if line.startswith(("stages[", "step "))]
    added = "  (added: HF configs need every layer at one width)"
    assert [re.sub(r"  params .*?(?=  \(|$)", "", line) for line in heads] == [
        "stages[0] (at step 2000): steps 0-1",
        "step 0: mlp(to=48, method=zero, layers=0)",
        "step 1: mlp(to=48, method=zero, layers=1)" + added,
        "stages[1] (at step 6000): steps 2-4",
        "step 2: heads(add=4, method=zero, layers=1)",
        "step 3: layers(add=1, at=1)",
        "step 4: heads(add=4, method=zero, layers=0,1)" + added,
    ]
    code, out, _ = run(["validate", path], capsys)
    assert code == 0 and out == f"{path}: valid (5 step(s) in 2 stage(s))\n"


def test_plan_of_a_plain_hf_spec_marks_padding_as_before(tmp_path, capsys):
    path = write(tmp_path, yaml.safe_dump({
        "specgrow": 1, "model": {"arch": "llama", "activation": "swiglu", "position": "rope",
                                 "dims": {"hidden": 16, "mlp": 32, "heads": 4, "layers": 2, "vocab": 29,
                                          "positions": 8}},
        "steps": [{"mlp": {"to": 48, "layers": [1]}}]}, sort_keys=False))
    code, out, _ = run(["plan", path], capsys)
    steps = [line for line in out.splitlines() if line.startswith(("stages[", "step "))]
    assert code == 0 and len(steps) == 2
    assert not steps[0].endswith("width)") and steps[1].endswith("(added: HF configs need every layer at one width)")


def test_apply_grows_through_every_stage(tmp_path, capsys):
    path = write(tmp_path, plan_text(PRESERVING))
    out = tmp_path / "grown"
    code, _, err = run(["apply", path, "-o", str(out), "-q"], capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["hidden"] == 24 and len(config["layers"]) == 4 and config["layers"][0]["mlp"] == 48
    manifest = json.loads((out / "specgrow-manifest.json").read_text())
    assert manifest["proof"]["verdict"] == "PROVED" and manifest["numeric_check"]["passed"]
    assert "## stages[1] (at step 5000): PROVED" in (out / "proof.md").read_text()

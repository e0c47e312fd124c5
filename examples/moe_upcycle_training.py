"""Upcycle a dense model into a mixture of experts during training, then double its experts.

    python examples/moe_upcycle_training.py [--out runs/moe_upcycle_training/] [--steps 300] [--quick]

A small dense reference model (SwiGLU MLPs, RoPE, RMSNorm) learns a toy copy task with AdamW:
each sequence is ``HALF`` random tokens followed by the same tokens again, and the loss is the
cross-entropy of the copied half. `specgrow.GrowthSchedule` applies the stages of the spec below:

- at 40 % of the steps, ``upcycle``: every dense MLP becomes 4 identical experts with top-2
  routing, renormalised, and a small random router (with renormalised top-k a mixture of
  identical experts is the MLP for any router; a zero router would tie every logit, and with
  identical selected experts its gradient is zero, so it would never learn to route);
- at 70 %, ``experts: {to: 8, method: duplicate}``: 4 -> 8 experts, top-2 -> top-4.

AdamW's state is grown with the weights (`specgrow.lower.optimizer`). At each growth the loss of
the same batch is computed by the model just before and just after: the spec is proved
function-preserving, so the two agree up to fp32 rounding; the script fails if they differ by
more than ``LOSS_ATOL``. Written to ``--out``: ``losses.csv`` (``step, loss, experts, params``,
the training loss of each step's batch before its update; at a growth step also the rows
``growth`` with the loss before and after), ``loss_vs_step.svg`` (written without dependencies)
and, with matplotlib (``pip install specgrow[plot]``), ``loss_vs_step.png``; both mark the growth
steps. ``--quick``: 30 steps, for a smoke run of a few seconds. Every run is seeded.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from specgrow.grow import GrowthSchedule
from specgrow.models.reference import build, random_state
from specgrow.shape import ModelShape
from specgrow.spec import load_spec_text

VOCAB, HALF, BATCH = 32, 12, 32
LR = 1e-3
LOSS_ATOL = 1e-4  # |loss after - loss before| on the same batch at a growth (fp32 logits agree to ~1e-6)
OUT = Path("runs/moe_upcycle_training")
SPEC = """\
specgrow: 1
model:
  arch: reference
  dims: {{hidden: 32, mlp: 64, heads: 2, kv_heads: 2, key: 16, value: 16, layers: 2,
         vocab: {vocab}, positions: {positions}}}
  norm: rmsnorm
  activation: swiglu
  position: rope
  final_norm: true
seed: 0
stages:
  - at_step: {upcycle}
    steps: [{{upcycle: {{experts: 4, top_k: 2, renormalize: true, init: {{router: {{normal: 0.02}}}}}}}}]
  - at_step: {duplicate}
    steps: [{{experts: {{to: 8, method: duplicate}}}}]
"""


def spec_for(steps: int):
    return load_spec_text(SPEC.format(vocab=VOCAB, positions=2 * HALF, upcycle=int(0.4 * steps),
                                      duplicate=int(0.7 * steps)))


def batch(gen: torch.Generator) -> torch.Tensor:
    first = torch.randint(0, VOCAB, (BATCH, HALF), generator=gen)
    return torch.cat([first, first], dim=1)


def loss_of(model, tokens) -> torch.Tensor:
    """Cross-entropy of predicting the copied half (positions HALF.. of the targets)."""
    logits = model(tokens[:, :-1])[:, HALF - 1:]
    return F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, HALF:].reshape(-1))


def experts_of(model) -> int:
    mlp = model.layers[0].mlp
    return mlp.router.weight.shape[0] if hasattr(mlp, "router") else 0


def train(steps: int) -> tuple[list[dict], list[dict]]:
    """(rows per step, one row per growth: step, loss before, loss after)."""
    torch.manual_seed(0)
    spec = spec_for(steps)
    shape = ModelShape.from_spec(spec.model)
    model = build(shape, random_state(shape, seed=0)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    schedule = GrowthSchedule(spec)
    gen = torch.Generator().manual_seed(1)
    rows, growths = [], []
    for step in range(steps):
        tokens = batch(gen)
        old = model
        model, optimizer = schedule.step(step, model, optimizer)
        if model is not old:
            with torch.no_grad():
                before, after = float(loss_of(old, tokens)), float(loss_of(model, tokens))
            growths.append(dict(step=step, before=before, after=after, experts=experts_of(model)))
            print(f"step {step}: grown to {experts_of(model)} experts; loss of the batch {before:.7f} before, "
                  f"{after:.7f} after (|diff| {abs(after - before):.2e})", file=sys.stderr)
        optimizer.zero_grad()
        loss = loss_of(model, tokens)
        loss.backward()
        optimizer.step()
        rows.append(dict(step=step, loss=loss.item(), experts=experts_of(model),
                         params=sum(p.numel() for p in model.parameters())))
    return rows, growths


def write_csv(rows, growths, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["kind", "step", "loss", "experts", "params"])
        for r in rows:
            writer.writerow(["train", r["step"], f"{r['loss']:.7f}", r["experts"], r["params"]])
        for g in growths:
            writer.writerow(["growth_before", g["step"], f"{g['before']:.7f}", "", ""])
            writer.writerow(["growth_after", g["step"], f"{g['after']:.7f}", g["experts"], ""])


def plot_svg(rows, growths, path: Path, width: int = 720, height: int = 400) -> None:
    """Loss against step as a plain SVG polyline, growth steps as dashed vertical lines."""
    left, right, top, bottom = 60, 20, 30, 40
    steps, losses = [r["step"] for r in rows], [r["loss"] for r in rows]
    lo, hi = min(losses), max(losses)
    hi = hi if hi > lo else lo + 1

    def x(step):
        return left + (width - left - right) * step / max(1, steps[-1])

    def y(loss):
        return top + (height - top - bottom) * (hi - loss) / (hi - lo)

    line = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in zip(steps, losses))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{width / 2}" y="18" text-anchor="middle">Toy copy task: dense -&gt; 4 experts (top-2) '
             f'-&gt; 8 experts (top-4), training loss per step</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
             f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle">training step</text>',
             f'<text x="{left - 6}" y="{y(hi):.1f}" text-anchor="end">{hi:.2f}</text>',
             f'<text x="{left - 6}" y="{y(lo):.1f}" text-anchor="end">{lo:.2f}</text>',
             f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" '
             'text-anchor="middle">loss (nats)</text>',
             f'<polyline points="{line}" fill="none" stroke="steelblue" stroke-width="1.5"/>']
    for g in growths:
        parts.append(f'<line x1="{x(g["step"]):.1f}" y1="{top}" x2="{x(g["step"]):.1f}" y2="{height - bottom}" '
                     'stroke="darkorange" stroke-dasharray="5,4"/>')
        parts.append(f'<text x="{x(g["step"]) + 4:.1f}" y="{top + 14}" fill="darkorange">{g["experts"]} experts '
                     f'(step {g["step"]})</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")


def plot_png(rows, growths, path: Path) -> bool:
    """The same plot with matplotlib; False without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="tab:blue", label="training loss")
    for i, g in enumerate(growths):
        ax.axvline(g["step"], color="tab:orange", linestyle="--", linewidth=0.9,
                   label="growth" if i == 0 else None)
        ax.annotate(f"{g['experts']} experts", (g["step"], ax.get_ylim()[1]), textcoords="offset points",
                    xytext=(4, -12), color="tab:orange")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (nats)")
    ax.set_title("Toy copy task: dense -> 4 experts (top-2) -> 8 experts (top-4)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default: {OUT}/)")
    parser.add_argument("--steps", type=int, default=300, help="training steps (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of 30 steps")
    args = parser.parse_args(argv)
    steps = 30 if args.quick else args.steps
    torch.set_num_threads(min(2, torch.get_num_threads()))
    rows, growths = train(steps)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, growths, args.out / "losses.csv")
    plot_svg(rows, growths, args.out / "loss_vs_step.svg")
    png = plot_png(rows, growths, args.out / "loss_vs_step.png")
    for g in growths:
        print(f"growth at step {g['step']} ({g['experts']} experts): loss {g['before']:.7f} before, "
              f"{g['after']:.7f} after, |diff| {abs(g['after'] - g['before']):.2e} (tolerance {LOSS_ATOL:g})")
    print(f"loss: {rows[0]['loss']:.4f} at step 0, {rows[-1]['loss']:.4f} at step {rows[-1]['step']}")
    print(f"wrote {args.out / 'losses.csv'}, {args.out / 'loss_vs_step.svg'}"
          + (f", {args.out / 'loss_vs_step.png'}" if png else " (pip install specgrow[plot] for a PNG as well)"))
    worst = max((abs(g["after"] - g["before"]) for g in growths), default=0.0)
    if worst > LOSS_ATOL:
        print(f"error: a growth changed the loss by {worst:.2e} > {LOSS_ATOL:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

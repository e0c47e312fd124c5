"""Grow a language model during training and compare it, at equal training FLOPs, with not growing.

    python examples/grow_during_training.py [--out runs/grow_during_training/] [--quick]

Three runs of the reference model as a byte-level language model (vocab 256) on the Python
documentation that ships with Python (``pydoc_data.topics``; the last 6 % of its UTF-8 bytes are
held out), all with AdamW, the same hyper-parameters, the same seed and the same batches in the
same order, each trained until it has spent the same budget of training FLOPs:

- ``small`` (a): the starting shape of ``grow_during_training.yaml`` for the whole budget;
- ``grown`` (b): the same model, grown by the spec's ``stages`` at their ``at_step`` with
  `specgrow.GrowthSchedule`, which also grows AdamW's state; the loss does not change at a growth;
- ``large`` (c): the final shape of the stages, trained from scratch (seeded like the spec).

FLOPs, per training step of ``B`` sequences of ``T`` tokens (forward + backward = 3 x forward,
Kaplan et al. 2020)::

    flops_per_step = 3 * (2 * N + 2 * T * sum over layers of heads * (key + value)) * B * T

``N`` is the model's *current* parameter count without the token-embedding and position tables
(row look-ups, no multiplications); the unembedding, every projection and every norm gain count.
The second term is attention: scores ``q k^T`` and the weighted sum of values over the full
``T x T`` grid, as the reference model computes them. After a growth ``N`` is the grown model's,
so run (b)'s FLOPs per step rise. The learning rate warms up over the first steps and follows a
cosine in the fraction of the budget spent, so all three runs see the same schedule on the x-axis.

Written to ``--out``:

- ``results.csv``: ``run, step, tokens, flops, val_loss, params`` (``params``: every parameter);
  ``val_loss`` is the mean cross-entropy in nats per byte over a fixed set of held-out windows,
  logged at step 0, at points spread over the budget (denser early, for the log axis) and at the
  end. At each growth run (b) has two rows with the same step: before (old ``params``) and after
  (new ``params``) the growth;
- ``loss_vs_flops.png``: validation loss against training FLOPs, growths marked (matplotlib,
  ``pip install specgrow[plot]``; without it only the CSV is written);
- ``spec.yaml``: the staged spec the run used.

It prints each run's loss at the budget and the FLOPs each run needed to reach run (a)'s final
loss. The defaults take four to five minutes on two otherwise idle CPU cores (torch uses two
threads; other busy processes on those cores slow it down many times); ``--quick`` divides the
budget and every ``at_step`` by 40 for a smoke run of about 15 seconds. Progress goes to stderr.
Every run is seeded: the same machine writes the same CSV twice.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

import specgrow
from specgrow.errors import SpecgrowError
from specgrow.models.reference import build, random_state
from specgrow.shape import ModelShape
from specgrow.transforms import compile_spec

SPEC = Path(__file__).with_name("grow_during_training.yaml")
OUT = Path("runs/grow_during_training")
RUNS = {"small": "(a) small model", "grown": "(b) small, grown during training", "large": "(c) large model"}
LOOKUPS = ("embed.weight", "pos.weight")  # tables read by index: no FLOPs

BUDGET = 2.5e12  # training FLOPs of each run
QUICK = 40  # --quick divides the budget and every stage's at_step by this
BATCH, CONTEXT = 16, 128  # sequences per step, tokens per sequence
VAL_FRACTION = 0.06  # the held-out tail of the corpus
VAL_WINDOWS = 64  # fixed held-out windows of CONTEXT tokens in every evaluation (--quick: 16)
LR, FINAL_LR, WARMUP_STEPS = 2e-2, 0.1, 50  # peak, end of the cosine (x peak), linear warm-up
BETAS, WEIGHT_DECAY, CLIP = (0.9, 0.95), 0.1, 1.0
THREADS = 2


def corpus(val_fraction: float = VAL_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """The Python documentation as bytes: (training bytes, held-out tail)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics))
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    cut = int(len(data) * (1 - val_fraction))
    return data[:cut], data[cut:]


def batches(train: torch.Tensor, seed: int):
    """Random windows of CONTEXT + 1 bytes, the same sequence for every run with the same seed."""
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(CONTEXT + 1)
    while True:
        starts = torch.randint(0, len(train) - CONTEXT, (BATCH,), generator=gen)
        yield train[starts[:, None] + offsets]  # (B, T + 1)


def held_out_windows(val: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` evenly spaced windows of CONTEXT + 1 held-out bytes."""
    starts = torch.linspace(0, len(val) - CONTEXT - 1, count).long()
    return val[starts[:, None] + torch.arange(CONTEXT + 1)]  # (count, T + 1)


def loss_of(model, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy of ``windows`` (n, T + 1)."""
    logits = model(windows[:, :-1])  # (n, T, vocab)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model, windows: torch.Tensor) -> float:
    return sum(float(loss_of(model, chunk)) * len(chunk) for chunk in windows.split(BATCH)) / len(windows)


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def step_flops(model) -> int:
    """Training FLOPs of one step of the model as it is now (see the module docstring)."""
    n = sum(p.numel() for name, p in model.named_parameters() if name not in LOOKUPS)
    attention = sum(s.heads * (s.key + s.value) for s in model.shape.layers)
    return 3 * (2 * n + 2 * CONTEXT * attention) * BATCH * CONTEXT


def learning_rate(step: int, spent: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps times a cosine in ``spent`` (fraction of the budget)."""
    cosine = FINAL_LR + (1 - FINAL_LR) * 0.5 * (1 + math.cos(math.pi * min(spent, 1.0)))
    return LR * min(1.0, (step + 1) / warmup) * cosine


def eval_points(budget: float, quick: bool) -> list[float]:
    """FLOPs after which to evaluate: a geometric grid (for the log axis) and a linear one."""
    geometric, linear = (6, 4) if quick else (20, 12)
    points = {budget * 100 ** (i / (geometric - 1) - 1) for i in range(geometric)}
    points |= {budget * i / linear for i in range(1, linear + 1)}
    return sorted(points)


class Growth:
    """Run (b)'s growth: the staged spec's `specgrow.GrowthSchedule`, called before every step."""

    def __init__(self, spec):
        self.schedule = specgrow.GrowthSchedule(spec)  # proves the whole plan now
        self.at_steps = {stage.at_step for stage in spec.stages}

    def due(self, step: int) -> bool:
        return step in self.at_steps

    def step(self, step: int, model, optimizer):
        return self.schedule.step(step, model, optimizer)


def train(run: str, model, windows, stream, budget: float, quick: bool, rows: list, growth=None):
    """Train ``model`` until the next step would pass ``budget`` FLOPs; append rows to ``rows``."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    warmup = max(1, WARMUP_STEPS // QUICK) if quick else WARMUP_STEPS
    points = eval_points(budget, quick)
    step = tokens = flops = 0
    started, reported = time.perf_counter(), 0

    def log():
        if rows and (rows[-1]["run"], rows[-1]["step"], rows[-1]["params"]) == (run, step, parameters(model)):
            return
        rows.append(dict(run=run, step=step, tokens=tokens, flops=flops, val_loss=evaluate(model, windows),
                         params=parameters(model)))

    log()
    while True:
        if growth is not None:
            if growth.due(step):
                log()  # before the growth
            model, optimizer = growth.step(step, model, optimizer)
            if growth.due(step):
                log()  # after: the same function, more parameters
        cost = step_flops(model)
        if flops + cost > budget:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, (flops + cost) / budget, warmup)
        loss = loss_of(model, next(stream))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        step, tokens, flops = step + 1, tokens + BATCH * CONTEXT, flops + cost
        if points and flops >= points[0]:
            log()
            points = [p for p in points if p > flops]
        if flops >= (reported + 1) * budget / 10:
            reported = int(10 * flops / budget)
            print(f"[{run}] {100 * flops / budget:3.0f}%  step {step}  {flops:.2e} FLOPs  "
                  f"params {parameters(model):,}  val loss {rows[-1]['val_loss']:.3f}  "
                  f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    log()


def staged_spec(path: Path, out: Path, quick: bool):
    """Load the staged spec (every ``at_step`` divided by QUICK with ``quick``); a copy goes to ``out``."""
    spec = specgrow.load_spec(path)  # errors name the user's file
    copy = out / "spec.yaml"
    text = path.read_text(encoding="utf-8")
    if not quick or not spec.stages:  # without stages, GrowthSchedule names the user's file
        copy.write_text(text, encoding="utf-8")
        return spec
    doc = yaml.safe_load(text)
    for stage in doc.get("stages", []):
        stage["at_step"] = max(1, stage["at_step"] // QUICK)
    copy.write_text(f"# {path.name} with every at_step divided by {QUICK} (--quick)\n"
                    + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return specgrow.load_spec(copy)


def reach(rows: list, run: str, target: float) -> float | None:
    """FLOPs at which ``run``'s validation loss first reaches ``target`` (linear between points)."""
    points = [(r["flops"], r["val_loss"]) for r in rows if r["run"] == run]
    for (f0, l0), (f1, l1) in zip(points, points[1:]):
        if l1 <= target:
            return f1 if l0 == l1 else f0 + (f1 - f0) * min(1.0, max(0.0, (l0 - target) / (l0 - l1)))
    return None


def summary(rows: list, budget: float, walls: dict) -> str:
    final = {run: [r for r in rows if r["run"] == run][-1] for run in RUNS}
    lines = [f"budget: {budget:.3g} training FLOPs per run (6 N tokens + attention; N without the "
             "embedding and position tables)",
             f"{'run':6}  {'steps':>6}  {'tokens':>9}  {'params':>9}  {'FLOPs':>9}  {'val loss':>8}  {'wall':>6}"]
    for run, r in final.items():
        lines.append(f"{run:6}  {r['step']:6d}  {r['tokens']:9,d}  {r['params']:9,d}  {r['flops']:9.3g}  "
                     f"{r['val_loss']:8.4f}  {walls[run]:5.0f}s")
    target = final["small"]["val_loss"]
    lines.append(f"FLOPs to reach (a)'s final loss {target:.4f}:")
    for run in RUNS:
        flops = reach(rows, run, target)
        lines.append(f"  {run:6} " + ("not reached within the budget" if flops is None else
                                      f"{flops:.3g} ({flops / budget:.2f} of the budget)"))
    return "\n".join(lines)


def plot(rows: list, growth_flops: list, budget: float, path: Path) -> bool:
    """Loss against FLOPs: the whole run (log x) and its second half (linear x); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colors = {"small": "tab:blue", "grown": "tab:orange", "large": "tab:green"}
    for ax, start in zip(axes, (0, budget / 2)):
        for run, label in RUNS.items():
            points = [(r["flops"], r["val_loss"]) for r in rows if r["run"] == run and r["flops"] > start]
            ax.plot(*zip(*points), marker=".", markersize=4, color=colors[run], label=label)
        for i, flops in enumerate(f for f in growth_flops if f > start):
            ax.axvline(flops, color=colors["grown"], linestyle="--", linewidth=0.8,
                       label="growth of (b)" if i == 0 else None)
        ax.set_xlabel("training FLOPs")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_xscale("log")
    axes[0].set_ylabel("validation loss (nats per byte)")
    axes[0].set_title("whole budget")
    axes[1].set_title("second half of the budget")
    axes[0].legend()
    fig.suptitle("Byte-level LM on the Python docs: growing during training, at equal training FLOPs")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    try:
        return experiment(argv)
    except SpecgrowError as error:  # a bad spec: one located line, as the command line reports it
        print(error.render(), file=sys.stderr)
        return error.exit_code


def experiment(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default: {OUT}/)")
    parser.add_argument("--spec", type=Path, default=SPEC, help="the staged growth spec (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: budget and at_steps divided by {QUICK}")
    args = parser.parse_args(argv)

    torch.set_num_threads(THREADS)
    args.out.mkdir(parents=True, exist_ok=True)
    budget = BUDGET / QUICK if args.quick else BUDGET
    spec = staged_spec(args.spec, args.out, args.quick)
    seed = spec.seed
    small = ModelShape.from_spec(spec.model)
    if small.positions < CONTEXT:
        parser.error(f"{args.spec}: model.dims.positions is {small.positions}, below the context length {CONTEXT}")
    train_bytes, val_bytes = corpus()
    windows = held_out_windows(val_bytes, VAL_WINDOWS // 4 if args.quick else VAL_WINDOWS)

    growth = Growth(spec)
    starts = {"small": small, "grown": small, "large": compile_spec(spec).after}

    rows, walls = [], {}
    for run, shape in starts.items():
        torch.manual_seed(seed)
        started = time.perf_counter()
        model = build(shape, random_state(shape, seed))
        train(run, model, windows, batches(train_bytes, seed), budget, args.quick, rows,
              growth if run == "grown" else None)
        walls[run] = time.perf_counter() - started
    grown_rows = [r for r in rows if r["run"] == "grown"]
    growth_flops = [b["flops"] for a, b in zip(grown_rows, grown_rows[1:]) if b["params"] != a["params"]]

    with open(args.out / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["run", "step", "tokens", "flops", "val_loss", "params"])
        writer.writeheader()
        writer.writerows({**r, "val_loss": f"{r['val_loss']:.6f}"} for r in rows)
    print(summary(rows, budget, walls))
    print(f"wrote {args.out / 'results.csv'}")
    if plot(rows, growth_flops, budget, args.out / "loss_vs_flops.png"):
        print(f"wrote {args.out / 'loss_vs_flops.png'}")
    else:
        print("loss_vs_flops.png not written: the plot needs matplotlib (pip install specgrow[plot])")
    return 0


if __name__ == "__main__":
    sys.exit(main())

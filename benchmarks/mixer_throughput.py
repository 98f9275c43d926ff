"""How fast is each token mixer? Forward (inference) and training-step (forward, backward, AdamW
step) images/s on CPU for every mixer of the `metaformer` study at the study's dims and input
size, with params and MACs (torch.utils.flop_counter) beside them and the ratio to attention.

Rounds are interleaved (every mixer once per round, in a rotated order) so that load from other
processes hits all mixers alike; the median over rounds is reported.

    .venv/bin/python benchmarks/mixer_throughput.py [--batch 64 --rounds 7 --threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from jobs.metaformer.mixers import MIXERS, build_metaformer
from jobs.metaformer.study import MetaFormerStudy, Params, count_macs, count_params

REFERENCE = "attention"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--batch", type=int, default=64, help="images per step (default 64, the study's)"
    )
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per mixer (7)")
    p.add_argument("--steps", type=int, default=5, help="steps timed together in a round (5)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1, as a trial)")
    return p.parse_args(argv)


def make_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], None]]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    @torch.no_grad()
    def forward() -> None:
        model.eval()
        model(x)

    def train_step() -> None:
        model.train()
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return {"forward": forward, "train": train_step}


def timed(fn: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    p, image = Params(), MetaFormerStudy.defaults["data"]["image_size"]
    x = torch.rand(args.batch, 3, image, image)
    y = torch.randint(0, 10, (args.batch,))
    cases, sizes = {}, {}
    for mixer in MIXERS:
        torch.manual_seed(0)
        model = build_metaformer(mixer, "none", tuple(p.dims), tuple(p.depths), image)
        sizes[mixer] = (count_params(model), count_macs(model, image))
        cases[mixer] = make_steps(model, x, y)
        for fn in cases[mixer].values():  # warm-up: allocator, kernels
            timed(fn, 2)
    times: dict[str, dict[str, list[float]]] = {m: {"forward": [], "train": []} for m in MIXERS}
    for r in range(args.rounds):
        order = MIXERS[r % len(MIXERS) :] + MIXERS[: r % len(MIXERS)]
        for mixer in order:
            for kind, fn in cases[mixer].items():
                times[mixer][kind].append(timed(fn, args.steps))
    rate = {
        m: {k: args.batch / statistics.median(v) for k, v in t.items()} for m, t in times.items()
    }
    ref = rate[REFERENCE]
    print(f"MetaFormer dims {p.dims} depths {p.depths}, {image}x{image} input, batch {args.batch}, "
          f"{args.threads} thread(s), median of {args.rounds} rounds x {args.steps} steps")  # fmt: skip
    print(f"{'mixer':12s} {'params':>8s} {'MACs(M)':>8s} {'MACs/att':>8s} {'fwd img/s':>10s} "
          f"{'fwd/att':>8s} {'train img/s':>11s} {'train/att':>9s}")  # fmt: skip
    for m in MIXERS:
        params, macs = sizes[m]
        print(
            f"{m:12s} {params:8d} {macs / 1e6:8.2f} {macs / sizes[REFERENCE][1]:8.2f} "
            f"{rate[m]['forward']:10.0f} {rate[m]['forward'] / ref['forward']:8.2f} "
            f"{rate[m]['train']:11.0f} {rate[m]['train'] / ref['train']:9.2f}"
        )


if __name__ == "__main__":
    main()

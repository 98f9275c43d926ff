"""A reviewer's check behind this report: which cued slot does a trained `topk1` read?

Trains one `topk1` trial (seed 0, the default spec) for a task, recovers every test slot's
digit class by matching its pixels against the seed's image pool, and prints how often the
one slot it reads is a cued one, the larger cued digit, or the cued digit farther from 4.5.

    .venv/bin/python docs/results/consciousness/topk1_selection.py greater   # or: sum
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np
import torch
from reported import Reported

from jobs.consciousness.models import SceneNet
from jobs.consciousness.scenes import PIXELS, image_pools, splits
from jobs.consciousness.study import ConsciousnessStudy, Params, sizes


def main(task: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    p = Params(select="topk", k=1, task=task)
    ctx = Reported(params=p, data={}, seed=0)
    ConsciousnessStudy().train(ctx)
    metrics, state = ctx.reports[-1]
    model = SceneNet(state["model_config"])
    model.load_state_dict(state["model"])
    model.eval()
    test = splits(0, 6, 2, task, sizes(p)).test
    lookup = {img.tobytes(): c for c, images in enumerate(image_pools(0)["test"]) for img in images}
    classes = np.array([[lookup[s.tobytes()] for s in scene] for scene in test.x[..., :PIXELS]])
    with torch.no_grad():
        read = model.attend(torch.as_tensor(test.x))[1].argmax(1).numpy()
    rows = np.arange(len(read))
    first, second = classes[rows, test.cued[:, 0]], classes[rows, test.cued[:, 1]]
    seen = classes[rows, read]
    farther = np.where(np.abs(first - 4.5) >= np.abs(second - 4.5), first, second)
    print(f"{task}: test accuracy {metrics['test_acc']:.3f}")
    print(f"  reads a cued slot:             {np.mean((read[:, None] == test.cued).any(1)):.3f}")
    print(f"  reads the larger cued digit:   {np.mean(seen == np.maximum(first, second)):.3f}")
    print(f"  reads the one farther from 4.5: {np.mean(seen == farther):.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "greater")

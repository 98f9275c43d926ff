"""What does sharing the source model save? `benchmarks/staged_reuse.py` for the few_shot
study: wall time of the same sweep with its stages (source model, LR choice) run once per
(config, seed) and shared by the trials vs re-run inside every trial.

    .venv/bin/python benchmarks/few_shot_reuse.py [--repeats 1] [--full] [--set k=v ...]
"""

from __future__ import annotations

from staged_reuse import run

if __name__ == "__main__":
    run(study="few_shot")

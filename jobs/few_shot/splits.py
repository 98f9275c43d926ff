"""Target-domain splits for the few-shot protocol (Lee et al., daintlab/fewshot-SFDA).

- `target_split`: 80/20 stratified; the 20% is the test set, the 80% is the pool that
  the shots and the validation images come from (and that SFUDA methods see unlabelled).
- `sample_shots`: k labelled shots per class + one validation image per class, from the pool
  (`validation_images`: the same validation images alone).
- label shift (`pareto_priors`, `subsample_to_priors`) and partial set (`partial_classes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from skeptic.data import stratified_split

SCENARIOS = ("standard", "label_shift", "partial")


def target_split(
    labels: np.ndarray, seed: int, test_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test) index arrays, stratified by class: about test_fraction of each class is test."""
    return stratified_split(labels, test_fraction, np.random.default_rng([seed, 11]))


def sample_shots(
    labels: np.ndarray, k: int, seed: int, class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(shots, val) indices into `labels`: exactly k per class for training and 1 per class
    for validation, for every class present in `labels`.

    The draw for a class is one permutation fixed by (seed, class): the validation image is
    its first element and the shots the next k, so for one seed the validation set is the
    same for every k and the 1-shot set is inside the k-shot set (the LR chosen on the
    1-shot validation set is then chosen on the very images the k-shot run validates on).
    Raises ValueError naming the class when it has fewer than k + 1 images.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1 shot per class, got {k}")
    shots, val = [], []
    for c in np.unique(labels):
        order = _class_order(labels, int(c), seed)
        if len(order) < k + 1:
            name = class_names[c] if class_names is not None else str(c)
            raise ValueError(
                f"class {name!r} (label {c}) has {len(order)} images in the target pool, "
                f"fewer than k + 1 = {k + 1} ({k} shots + 1 for validation)"
            )
        val.append(order[:1])
        shots.append(order[1 : k + 1])
    return np.sort(np.concatenate(shots)), np.sort(np.concatenate(val))


def validation_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """The validation indices `sample_shots` gives for this seed (one image per class),
    without drawing shots: SFUDA trials are measured on the same images, for the record."""
    firsts = [_class_order(labels, int(c), seed)[:1] for c in np.unique(labels)]
    return np.sort(np.concatenate(firsts))


def _class_order(labels: np.ndarray, c: int, seed: int) -> np.ndarray:
    """The images of class `c` in the order fixed by (seed, class)."""
    return np.random.default_rng([seed, 13, c]).permutation(np.flatnonzero(labels == c))


def pareto_priors(num_classes: int, imbalance: float) -> np.ndarray:
    """Power-law (Pareto / Zipf) class priors p_c ~ (c + 1)^-a, normalised, with
    p_0 / p_last = imbalance: the long-tailed target of label-distribution-shift benchmarks."""
    if imbalance < 1:
        raise ValueError(f"imbalance (largest / smallest class) must be >= 1, got {imbalance}")
    if num_classes < 2:
        return np.ones(num_classes)
    a = np.log(imbalance) / np.log(num_classes)
    p = (np.arange(num_classes) + 1.0) ** -a
    return p / p.sum()


def subsample_to_priors(labels: np.ndarray, priors: np.ndarray, seed: int) -> np.ndarray:
    """Sorted indices of the largest subset of `labels` whose class counts follow `priors`
    (for real image folders; generated shapes are drawn with the priors directly)."""
    priors = np.asarray(priors, dtype=float)
    counts = np.bincount(labels, minlength=len(priors))
    wanted = priors > 0
    scale = np.min(counts[wanted] / priors[wanted])
    take = np.floor(scale * priors + 1e-9).astype(int)
    rng = np.random.default_rng([seed, 17])
    keep = [rng.permutation(np.flatnonzero(labels == c))[:t] for c, t in enumerate(take) if t]
    return np.sort(np.concatenate(keep))


def partial_classes(num_classes: int, keep: int) -> list[int]:
    """The target's label set in the partial-set scenario: the first `keep` classes, as
    partial-set benchmarks do (Office-Home PDA keeps the first 25 of 65 alphabetically)."""
    if not 1 <= keep < num_classes:
        raise ValueError(f"partial set must keep 1..{num_classes - 1} classes, got {keep}")
    return list(range(keep))

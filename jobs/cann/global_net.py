"""The learned global arm: a small CNN that maps a view to one L2-normalised embedding, trained
on the database views alone with a supervised contrastive loss (Khosla et al. 2020: every
other view of the same place in the batch is a positive), each view seen through random
homographies and photometric changes of its own. Retrieval is cosine similarity (faiss).

It stands in for the paper's global baselines (NetVLAD, AP-GeM, DELG-global: networks
trained on landmark photos at scale), which cannot be downloaded here; at this scale it is
trained per sweep point and seed as an upstream stage, so every global trial of that point
and seed shares it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

TEMPERATURE = 0.1  # SupCon's default


class EmbedNet(nn.Module):
    """Four stride-2 conv blocks, global average pooling, a linear head, L2 normalised;
    views are shrunk to `size` px first (64: a quarter of the 128 px views' cost)."""

    def __init__(self, dim: int = 128, size: int = 64, width: int = 32) -> None:
        super().__init__()
        self.size = size
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        blocks = []
        for cin, cout in itertools.pairwise(chans):
            blocks += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(chans[-1], dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean(dim=(2, 3))
        return F.normalize(self.head(pooled), dim=1)


def _augment() -> v2.Compose:
    # the query views' kinds of change (places.py), drawn per image
    return v2.Compose(
        [
            v2.RandomPerspective(distortion_scale=0.3, p=0.8),
            v2.RandomAffine(degrees=30, scale=(0.75, 1.3)),
            v2.ColorJitter(brightness=0.4, contrast=0.4),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.3),
        ]
    )


def to_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """(n, S, S, 3) uint8 -> (n, 3, size, size) float in [0, 1] (area-averaged)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="area")


def supcon_loss(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Supervised contrastive loss of L2-normalised embeddings (mean over anchors with a
    positive)."""
    sim = z @ z.T / TEMPERATURE
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    has = positive.any(dim=1)
    mean_pos = log_prob.masked_fill(~positive, 0.0).sum(1)[has] / positive.sum(1)[has]
    return -mean_pos.mean()


def _batch(places: np.ndarray, per_place: int, n_places: int, rng: np.random.Generator):
    """Indices of `n_places` random places x `per_place` of their views (with repeats when a
    place has fewer views: the augmentation makes them differ)."""
    chosen = rng.choice(np.unique(places), size=n_places, replace=False)
    idx = [rng.choice(np.flatnonzero(places == p), per_place) for p in chosen]
    return np.concatenate(idx)


def train_embedding(
    images: np.ndarray,
    places: np.ndarray,
    *,
    steps: int,
    batch: int,
    lr: float,
    dim: int,
    size: int,
    seed: int,
    device: torch.device,
    log: Callable[[dict[str, float], int], None] | None = None,
) -> EmbedNet:
    """Train EmbedNet on database views labelled by place; `log(metrics, step)` every tenth."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = EmbedNet(dim, size).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    x_all, augment = to_tensor(images, size), _augment()
    per_place = 2
    n_places = min(batch // per_place, len(np.unique(places)))
    started = time.perf_counter()
    for step in range(steps):
        idx = _batch(places, per_place, n_places, rng)
        x = torch.stack([augment(x_all[i]) for i in idx]).to(device)
        y = torch.as_tensor(places[idx], device=device)
        loss = supcon_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step % 10 == 0 or step == steps - 1):
            log({"loss": loss.item(), "seconds": time.perf_counter() - started}, step)
    return net.eval()


@torch.no_grad()
def embed(net: EmbedNet, images: np.ndarray, device: torch.device, chunk: int = 256) -> np.ndarray:
    """(n, dim) float32 embeddings of (n, S, S, 3) uint8 views."""
    out = [
        net(to_tensor(images[i : i + chunk], net.size).to(device)).cpu()
        for i in range(0, len(images), chunk)
    ]
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, 1), np.float32)

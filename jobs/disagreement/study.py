"""Study `disagreement`: does a text-measured disagreement index track misinformation effects
better than counting misinformation?

Hodel & West, "Disagreement as a way to study misinformation and its effects" (arXiv
2408.08025; code hodeld/disagreement-misinfo) measure disagreement per text as the mean
SentiWordNet negative score of its nouns, adjectives and adverbs, average it per period,
and correlate it with misinformation: 10,000 vaccine tweets a month (March 2020 - March
2023) against a BERT classifier's misinformation count, Spearman rho 0.587 (37 months);
New York Times letters against "percent conspiracies" (1950-2007), rho 0.307 (58 years),
both recomputed from the repository's CSVs. Neither corpus can be downloaded and
SentiWordNet is not on the package registries, so the study has two parts, each a set of
arms (a trial computes measures and correlations; nothing trains but a 4-weight logistic
regression):

1. Validity (real lexicons, real text): the paper's formula with VADER, NRC and Empath
   (lexicons.py), the embedding stance distance of the real MiniLM, and their combination
   fitted on validation topics (measures.py), scored on a corpus of exchanges written for
   the study with known stance relations (corpus.py), with the topic present and removed.
   A seed is a test fold of topics: AUC of disagree vs agree replies and rho with the level.
2. Simulation (stated as such): periods whose latent effect is driven by misinformation
   exposure with weight alpha and other drivers with 1 - alpha; the effect moves the
   stance of posts, which quote the corpus by stance relation (simulate.py). Spearman rho
   of each measure's per-period series with the effect, swept over alpha x noise x what
   more disagreement displaces (agreement, neutral replies, or both: a structural choice
   the report shows, not one the data make) x measure x seed.

Where this run differs from the paper, and why:
- Lexicons: VADER, NRC and Empath in place of SentiWordNet (not installable); their
  "matched words" are the words each knows (lexicons.py); no sense to choose.
- Tagging, lemmas, stopwords: pattern's tagger (textblob), lemminflect, scikit-learn's
  stopword list, in place of NLTK's tagger, WordNet lemmatiser and stopwords (all need
  downloads).
- A text with no matched word scores 0; the paper's division gives NaN and the monthly
  mean skips it (coverage is reported).
- Text: 1,320 replies written for the study (110 topics), not tweets or letters: part 1's AUCs
  are about this corpus, whose agreeing replies to negative claims are negative and whose
  disagreements are a third each explicit, bare counter-claims and polite; it says what the
  index reads, not how often real disagreement sounds negative.
- Topic removal: the topic's terms masked with "it" (corpus.py); the paper's abstract says
  the measure works "even when the specific topic is entirely removed", and its code has no
  masking step (its letters are scored over all topics).

Data: the shipped corpus, or a corpus file or folder (data.name=table, data.path); data.size
caps the topics read (the first ones, files in name order).

Splits: the validation topics (data.val_fraction of the topics, drawn with data.seed) make
every choice (the combined weights, Tune's metric, the champion); each seed's test fold
gives the reported numbers. Part 2's test world quotes the seed's test fold of topics (so
its spread over seeds holds the corpus's own variation); its `val_rho` comes from a second
world quoting the validation topics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from jobs.disagreement import corpus, endpoint, evaluate, evidence, simulate, verdict
from jobs.disagreement.measures import COMBINED, MEASURES, VARIANTS, base_measures
from jobs.disagreement.scorer import Scorer, score
from skeptic.api import (
    Compare,
    DataPlan,
    Evidence,
    Judged,
    SpecError,
    Study,
    TrialContext,
    TrialResult,
    register_study,
)

ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]
NOISES = [0.5, 1.5]
UNSIMULATED = {"alpha": None, "noise": None, "displaced": None}  # part 1's arms: no world
VALIDITY_ARMS = {
    f"{m}_{text}": {"part": "validity", "measure": m, "text": text} | UNSIMULATED
    for m in MEASURES for text in VARIANTS
}  # fmt: skip
SIMULATION_ARMS = {
    f"sim_{m}": {"part": "simulation", "measure": m} for m in (evaluate.COUNT, *MEASURES)
}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    part: Literal["validity", "simulation"] = "validity"
    measure: Literal["vader", "nrc", "empath", "stance", "combined", "count"] = COMBINED
    text: Literal["present", "removed"] = "present"  # validity: the topic in the texts, or masked
    folds: int = Field(22, ge=2, le=100)  # test folds of topics (a seed tests fold seed % folds)
    alpha: float | None = Field(None, ge=0, le=1)  # simulation: misinformation's weight
    noise: float | None = Field(None, ge=0, le=10)  # simulation: the effect's noise in stance
    # simulation: what more disagreement displaces (simulate.py): a structural choice
    displaced: Literal["both", "agree", "neutral"] | None = None
    periods: int = Field(37, ge=4, le=10_000)  # simulation: months (the paper's tweets: 37)
    posts: int = Field(10_000, ge=3, le=1_000_000)  # simulation: posts a month (the paper's)

    @model_validator(mode="after")
    def _fits(self) -> Params:
        if self.part == "validity":
            if self.measure == evaluate.COUNT:
                raise ValueError("measure: count is part 2's (the simulation's); part 1 "
                                 "measures text")  # fmt: skip
            for name in UNSIMULATED:
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: part 1 (validity) simulates nothing; set alpha, "
                                     "noise and displaced to null in its arms")  # fmt: skip
            return self
        for name in UNSIMULATED:
            if getattr(self, name) is None:
                raise ValueError(f"{name}: a simulation trial needs alpha, noise and displaced "
                                 "(sweep.space or train)")  # fmt: skip
        if self.text != "present":
            raise ValueError("text: the simulation's posts keep their topic (text=present)")
        return self


def _seeds(spec: Any) -> int:
    seeds = spec.sweep.seeds
    return seeds if isinstance(seeds, int) else seeds.max


@register_study
class DisagreementStudy(Study):
    name = "disagreement"
    belief = (
        "Misinformation effects are driven by, and best measured through, the prevalence of "
        "misinformation."
    )
    paper = "Hodel & West, Disagreement as a way to study misinformation and its effects (2024)"
    Params = Params
    metric, mode = "val_rho", "max"
    report_metric = "test_rho"
    schedulers = ("fifo",)
    schedulers_reason = "a trial reports once: there is nothing for ASHA to stop or PBT to copy"
    defaults: ClassVar[dict] = {
        "resources": {"cpu": 1},
        "data": {"val_fraction": 0.2},  # data.size: the most topics read (files in name order)
        "sweep": {
            "space": {
                "alpha": {"grid": ALPHAS},
                "noise": {"grid": NOISES},
                "displaced": {"grid": list(simulate.DISPLACED)},
            },
            "arms": VALIDITY_ARMS | SIMULATION_ARMS,
            "seeds": 22,
        },
    }
    smoke: ClassVar[dict] = {
        "data": {"size": 24},  # topics: scoring the whole corpus takes ~20 s
        "train": {"folds": 2, "periods": 12, "posts": 200},
        "sweep": {
            "space": {
                "alpha": {"grid": [0.0, 1.0]},
                "noise": {"grid": [0.5]},
                "displaced": {"grid": ["both"]},
            },
            "arms": {k: VALIDITY_ARMS[k] for k in ("vader_present", "vader_removed",
                                                   "stance_present", "combined_present")}
            | {k: SIMULATION_ARMS[k] for k in ("sim_count", "sim_vader", "sim_combined")},
            "seeds": 2,
        },
    }  # fmt: skip
    endpoints = endpoint.ENDPOINTS

    # ---- data: the corpus and every measure of every reply, once per sweep --------------

    def prepare_data(self, spec: Any) -> dict[str, Any]:
        texts = corpus.load(spec.data.path or corpus.SHIPPED, spec.data.size)
        folds = Params(**spec.train).folds
        val, fold = corpus.split_topics(len(texts.topics), spec.data.val_fraction, folds,
                                        spec.data.seed)  # fmt: skip
        scores = base_measures(texts)
        weights = evaluate.fit_weights(texts, scores, val)
        return {"corpus": texts, "scores": scores, "weights": weights, "val_topics": val,
                "fold": fold}  # fmt: skip

    def check_data(self, spec: Any, *, scan: bool = True) -> DataPlan | None:
        d = spec.data
        if d.name not in ("shapes", "table"):
            raise SpecError(f"data.name: {d.name!r}; disagreement reads a corpus of exchanges "
                            "(data.name=table with data.path, or leave both unset)")  # fmt: skip
        if d.name == "table" and not d.path:
            raise SpecError("data.path: data.name=table needs a corpus file or folder (.json)")
        if scan:
            topics = corpus.read_topics(d.path or corpus.SHIPPED)[: d.size]
            corpus.check_sizes(len(topics), d.val_fraction, Params(**spec.train).folds)
        return None

    def check_spec(self, spec: Any, data: DataPlan | None) -> None:
        folds, seeds = Params(**spec.train).folds, _seeds(spec)
        if seeds > folds:
            raise SpecError(f"sweep.seeds: part 1 tests one fold of topics a seed; {seeds} "
                            f"seeds need train.folds >= {seeds} (it is {folds})")  # fmt: skip

    # ---- one trial: measures and correlations (evaluate.py) ------------------------------

    def train(self, ctx: TrialContext[Params]) -> None:
        p = ctx.params
        if p.part == "validity":
            metrics, state = evaluate.validity(p, ctx.seed, ctx.data)
            samples = len(ctx.data["corpus"])
        else:
            metrics, state = evaluate.simulation(p, ctx.seed, ctx.data), {}
            samples = 2 * p.periods * p.posts
        ctx.report(metrics, state, samples=samples, progress=1.0)

    def work(self, params: BaseModel, train_images: int) -> float:
        """Nothing is trained on images: the GPU-hours estimate is zero."""
        return 0.0

    # ---- the registered model: the combined scorer's regressions -------------------------

    def build_model(self, config: dict[str, Any]) -> nn.Module:
        return Scorer(config)

    def model_input_example(self, config: dict[str, Any]) -> np.ndarray:
        return np.array(["I disagree: the study you cite was retracted."], dtype=object)

    def predict(self, model: nn.Module, batch: np.ndarray) -> np.ndarray:
        """p(disagree) of each text of a batch of strings (the lone-text regression)."""
        texts = [str(t) for t in batch]
        return score(model, texts, [None] * len(texts))["score"]

    def model_metadata(self, config: dict[str, Any]) -> dict[str, Any]:
        index = "mean negative score of the matched nouns, adjectives and adverbs"
        return {"measures": config, "encoder": "all-MiniLM-L6-v2", "index": index}

    def champion_eligible(self, trial: TrialResult) -> bool:
        p = trial.params
        return (
            p.get("part") == "validity"
            and p.get("measure") == COMBINED
            and p.get("text") == "present"
        )

    def answer(self, model: nn.Module, request: endpoint.ScoreRequest) -> dict[str, Any]:
        return endpoint.answer(model, request)

    # ---- the verdict (verdict.py) and the report (evidence.py) ---------------------------

    def comparisons(self, spec: Any) -> list[Compare]:
        return verdict.comparisons(spec, Params(**spec.train))

    def decide(self, judged: Mapping[str, Judged]) -> tuple[bool | None, str]:
        return verdict.decide(judged)

    def evidence(self, results: list[TrialResult], spec: Any, judged: list[Judged]) -> Evidence:
        return evidence.evidence(results, judged)

"""Every key Skeptic writes to MLflow, defined once: what the writers (the sweep, its trials
and stages, champion registration) write and the readers (resume, the verdict, serving)
read. No other module spells a `skeptic.*` key as a string."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """How a trial's run ended (tag Tag.OUTCOME)."""

    COMPLETED = "completed"  # trained to the end
    STOPPED_EARLY = "stopped_early"  # the scheduler stopped it
    FAILED = "failed"  # an error (Tag.ERROR says which)
    INTERRUPTED = "interrupted"  # the sweep was stopped cleanly; resume continues it
    KILLED = "killed"  # the sweep quit at once (a second Ctrl-C): its checkpoint may lag


# A trial with one of these outcomes ended for good: a resume does not run it again.
ENDED = (Outcome.COMPLETED, Outcome.STOPPED_EARLY, Outcome.FAILED)


class Tag:
    """Run tags (and model-version tags: STUDY, SWEEP_ID, VERDICT, METRIC, SPLIT, score, param)."""

    # every run
    STUDY = "skeptic.study"
    # the sweep's parent run
    KIND = "skeptic.kind"  # SWEEP on a parent run
    SWEEP_ID = "skeptic.sweep_id"
    VERSION = "skeptic.version"  # Skeptic's own version
    GIT_COMMIT = "skeptic.git_commit"
    GIT_DIRTY = "skeptic.git_dirty"
    CODE_SOURCE = "skeptic.code_source"
    DATA_HASH = "skeptic.data_hash"
    BELIEF = "skeptic.belief"  # the study's belief and paper, as the sweep ran it
    PAPER = "skeptic.paper"
    VERDICT = "skeptic.verdict"
    VERDICT_SUMMARY = "skeptic.verdict_summary"
    STAGES_REUSED = "skeptic.stages_reused"
    CHAMPION_VERSION = "skeptic.champion_version"
    CHAMPION_RUN_ID = "skeptic.champion_run_id"
    LOOKS = "skeptic.looks"  # seeds per trial at each look, e.g. "3,5,7,9,10"
    LEVELS = "skeptic.look_levels"  # the significance level of each look
    ROUND = "skeptic.round"  # the look in progress (parent), or the one a trial ran in
    # a trial's run
    TRIAL_ID = "skeptic.trial_id"
    OUTCOME = "skeptic.outcome"
    ERROR = "skeptic.error"
    DEVICE = "skeptic.device"
    HOST = "skeptic.host"
    # a stage's run
    STAGE = "skeptic.stage"
    STAGE_KEY = "skeptic.stage_key"
    # a registered model version
    METRIC = "skeptic.metric"  # the name of the study's metric; its value is under score()
    SPLIT = "skeptic.split"  # the split that metric was measured on (validation)

    @staticmethod
    def upstream(stage: str) -> str:
        """On a trial or stage run: the run of the upstream stage it started from."""
        return f"skeptic.upstream.{stage}"

    @staticmethod
    def decision(comparison: str) -> str:
        """On the parent run: what the data decide for one deciding comparison."""
        return f"skeptic.cmp.{comparison}"

    @staticmethod
    def param(name: str) -> str:
        """On a model version: one parameter of its trial."""
        return f"skeptic.param.{name}"

    @staticmethod
    def score(metric: str) -> str:
        """On a model version: the value of the study's metric for its trial."""
        return f"skeptic.{metric}"


SWEEP = "sweep"  # the value of Tag.KIND on a sweep's parent run
CHAMPION = "champion"  # the registry alias of a study's best version so far
ERROR_CHARS = 5000  # the most of an error message a tag keeps


class MlflowTag:
    """MLflow's own tags that Skeptic sets."""

    PARENT_RUN_ID = "mlflow.parentRunId"
    GIT_COMMIT = "mlflow.source.git.commit"
    NOTE = "mlflow.note.content"  # a run's description (Markdown in the UI)
    EXPERIMENT_KIND = "mlflow.experimentKind"  # on an experiment: which UI view opens it
    SHARED_VIEW = "mlflow.sharedViewState."  # + a key: a runs-list view the UI's links open


# The experiment kind of a model-training experiment: unset, MLflow 3's UI opens the GenAI view.
TRAINING_EXPERIMENT = "custom_model_development"


class Param:
    """Params of the parent run (a trial's params are its training parameters, plus these)."""

    N_TRIALS = "n_trials"
    SEEDS = "seeds"
    SCHEDULER = "scheduler"
    SEED = "seed"  # a trial's or stage's seed
    ARM = "arm"  # a trial's arm, when the sweep has arms


class Metric:
    """Metrics every trial logs, beside the study's own."""

    EPOCH_TIME = "epoch_time"
    THROUGHPUT = "throughput"
    # seconds from Tune's start to the trial's code starting (worker start-up, queueing)
    STARTED_AFTER = "started_after_s"
    SEEDS = "seeds"  # on the parent run: seeds per trial at each look (step = the look)

    @staticmethod
    def comparison(name: str, field: str) -> str:
        """On the parent run, one value per look (step): cmp.<name>.diff / ci_low / ci_high
        / p / p_adjusted / n_a / n_b of a deciding comparison."""
        return f"cmp.{name}.{field}"

    @staticmethod
    def phase(name: str) -> str:
        """On the parent run: seconds the sweep spent in one phase (ray_start, trials, ...)."""
        return f"phase_{name}_s"


class Artifact:
    """Artifact paths."""

    REPRODUCE = "reproduce"  # folder on the parent run: SPEC, PACKAGES, DIFF
    SPEC = "spec.yaml"
    PACKAGES = "packages.yaml"
    DIFF = "skeptic.diff"  # Skeptic's own uncommitted changes
    REPORT = "report"  # folder on the parent run
    STAGE = "stage"  # folder on a stage run, holding STAGE_RESULT
    STAGE_RESULT = "result.pt"
    MODEL = "model"  # the logged model on the champion trial's run

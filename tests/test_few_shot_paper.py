"""Study few_shot, the `paper` preset: SHOT's ResNet-50 network (its parameter count, one
forward/backward step, rebuilt from its model_config), ImageNet weights from a local file
(model.weights_path: a real resnet50 state dict written here, wrapped and prefixed as
checkpoints are, and the errors that name the field), and the preset on an Office-Home-like
folder tree written here: it validates and dry-runs, its data streams from disk, and the
source stage and the adaptation runs read it."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
import torchvision
from PIL import Image

from jobs.few_shot import network
from jobs.few_shot.augment import FileImages, TensorImages, evaluate
from jobs.few_shot.finetune import finetune
from jobs.few_shot.network import ShotResNet, SmallCNN, WeightsError, load_backbone
from jobs.few_shot.sfuda import HPARAMS, adapt
from jobs.few_shot.study import PAPER, FewShot, Params, _scores
from skeptic.cli import main
from skeptic.contexts import OneProcess
from skeptic.planning import describe_plan
from skeptic.preflight import preflight
from skeptic.spec import SpecError, load_spec
from skeptic.stages import RunningStage

CPU = torch.device("cpu")
RESNET50_PARAMS = 25.6e6  # the figure for ResNet-50 (torchvision's: 25,557,032)
DOMAINS = ("Art", "Clipart", "Product", "Real_World")
CLASSES = ("Alarm_Clock", "Backpack", "Batteries", "Bed")


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- the network --------------------------------------------------------------------------------


def test_resnet50_has_the_papers_parameter_count():
    full = torchvision.models.resnet50(weights=None)
    assert abs(_count(full) - RESNET50_PARAMS) / RESNET50_PARAMS < 0.02
    net = ShotResNet(num_classes=65, bottleneck=256)
    # SHOT's net: the same backbone, its ImageNet head (2048 x 1000) replaced by the
    # bottleneck (2048 x 256 + BN) and the weight-normed classifier (256 x 65, g per class)
    backbone = _count(net.features)
    assert backbone + 2048 * 1000 + 1000 == _count(full)
    head = (2048 * 256 + 256) + 2 * 256 + (256 * 65 + 65 + 65)
    assert _count(net) == backbone + head
    assert abs(_count(net) - 24.05e6) / 24.05e6 < 0.02


def test_resnet50_forward_backward_on_a_tiny_batch():
    net = ShotResNet(num_classes=5, bottleneck=16)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 3])
    logits = net(x)
    assert logits.shape == (2, 5)
    torch.nn.functional.cross_entropy(logits, y).backward()
    assert net.features.resnet.conv1.weight.grad is not None
    assert net.bottleneck[0].weight.grad is not None
    assert net.classifier.parametrizations.weight.original1.grad is not None


def test_the_registered_model_rebuilds_from_its_config():
    study = FewShot()
    config = {"arch": "resnet50", "num_classes": 4, "bottleneck": 16, "width": 8,
              "input_shape": [3, 32, 32], "class_names": list(CLASSES)}  # fmt: skip
    trained = study.build_model(config)
    rebuilt = study.build_model(config)
    rebuilt.load_state_dict(trained.state_dict())
    x = torch.rand(2, 3, 32, 32)
    trained.eval(), rebuilt.eval()
    assert torch.equal(trained(x), rebuilt(x))
    assert study.model_input_example(config).shape == (2, 3, 32, 32)
    # configs written before `arch` existed are the small CNN's
    old = {"input_shape": [3, 16, 16], "num_classes": 10, "width": 4, "bottleneck": 16}
    assert isinstance(study.build_model(old), SmallCNN)


# ---- ImageNet weights from model.weights_path ---------------------------------------------------


@pytest.fixture(scope="module")
def resnet50_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).state_dict()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, resnet50_state) -> str:
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(resnet50_state, path)
    return str(path)


def test_a_torchvision_state_dict_loads_into_the_backbone(weights_file, resnet50_state):
    net = ShotResNet(num_classes=4, bottleneck=16)
    load_backbone(net, weights_file)
    loaded = net.features.resnet.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in resnet50_state.items() if k in loaded)
    assert "fc.weight" not in loaded  # the ImageNet head is dropped: the classifier is new


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module", "state_dict+module"])
def test_wrapped_and_prefixed_checkpoints_load(tmp_path, resnet50_state, wrap):
    state = resnet50_state
    if "module" in wrap:
        state = {f"module.{k}": v for k, v in state.items()}
    if wrap.startswith(("state_dict", "model")):
        state = {wrap.split("+")[0]: state, "epoch": 90}
    path = tmp_path / "ckpt.pth"
    torch.save(state, path)
    net = ShotResNet(num_classes=4, bottleneck=16)
    load_backbone(net, path)
    assert torch.equal(net.features.resnet.conv1.weight, resnet50_state["conv1.weight"])


def test_timm_resnet50_keys_are_torchvisions(tmp_path):
    timm = pytest.importorskip("timm")
    state = timm.create_model("resnet50", pretrained=False).state_dict()
    assert set(state) == set(torchvision.models.resnet50(weights=None).state_dict())
    torch.save(state, tmp_path / "timm.pth")
    load_backbone(ShotResNet(num_classes=4, bottleneck=16), tmp_path / "timm.pth")


def test_wrong_weights_files_name_the_field(tmp_path):
    net = ShotResNet(num_classes=4, bottleneck=16)
    with pytest.raises(WeightsError, match=r"model\.weights_path: not set"):
        load_backbone(net, None)
    with pytest.raises(WeightsError, match=r"model\.weights_path: .*no such file"):
        load_backbone(net, tmp_path / "absent.pth")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match=r"model\.weights_path: .*cannot read"):
        load_backbone(net, tmp_path / "notes.txt")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match=r"model\.weights_path: .*not a resnet50 state dict"):
        load_backbone(net, tmp_path / "r18.pth")
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "empty.pth")
    with pytest.raises(WeightsError, match=r"model\.weights_path: .*no state dict"):
        load_backbone(net, tmp_path / "empty.pth")


# ---- the preset on an Office-Home-like tree -----------------------------------------------------


@pytest.fixture(scope="module")
def office_home(tmp_path_factory) -> str:
    """root/<Domain>/<class>/*.jpg: four domains, four classes, 12 tiny images each (6 in
    Art, the source domain: the source stage's one step stays small on a CPU)."""
    root = tmp_path_factory.mktemp("office_home")
    for d, domain in enumerate(DOMAINS):
        for c, name in enumerate(CLASSES):
            folder = root / domain / name
            folder.mkdir(parents=True)
            for i in range(6 if domain == "Art" else 12):
                img = Image.new("RGB", (12, 10), (40 * d, 60 * c, 20 * i))
                img.paste((255, 255, 255), (c * 2, 2, c * 2 + 3, 8))
                img.save(folder / f"{name}_{i:05d}.jpg")
    return str(root)


def _paper_spec(*sets: str):
    return load_spec("few_shot", FewShot.defaults, Params, preset=("paper", PAPER.spec), sets=list(sets))


def _sets(office_home: str, weights: str | None) -> list[str]:
    # four classes: the partial set keeps 2 (the preset's 25 are Office-Home's), and a
    # milder label shift leaves k + 1 images of the smallest class in its pool
    sets = [f"data.path={office_home}", "train.partial_keep=2", "train.imbalance=2"]
    return sets + ([f"model.weights_path={weights}"] if weights else [])


def test_the_paper_preset_validates_and_dry_runs(office_home, weights_file, capsys):
    spec = _paper_spec(*_sets(office_home, weights_file))
    study = FewShot()
    preflight(study, spec)
    plan = study.check_data(spec)
    assert plan.classes == list(CLASSES)
    assert spec.data.stream and spec.train["arch"] == "resnet50"
    text = describe_plan(study, spec)
    assert "GPU-hours" in text and "stated:" in text and "Office-Home" in text
    sets = [x for s in _sets(office_home, weights_file) for x in ("--set", s)]
    assert main(["run", "few_shot", "--preset", "paper", "--dry-run", *sets]) == 0
    assert "preset paper" in capsys.readouterr().out


def test_resnet50_without_weights_is_a_spec_error(office_home, tmp_path, capsys):
    spec = _paper_spec(*_sets(office_home, None), "model.weights_path=null")
    with pytest.raises(SpecError, match=r"^model\.weights_path: arch resnet50"):
        preflight(FewShot(), spec)
    sets = [x for s in _sets(office_home, None) for x in ("--set", s)]
    unset = [*sets, "--set", "model.weights_path=null"]
    assert main(["run", "few_shot", "--preset", "paper", "--dry-run", *unset]) == 2
    assert "model.weights_path: arch resnet50" in capsys.readouterr().err
    # the preset's default file, absent here: a run refuses it, naming the field
    assert main(["run", "few_shot", "--preset", "paper", "--storage", str(tmp_path), *sets]) == 2
    assert "model.weights_path: no such file" in capsys.readouterr().err


def test_a_wrong_weights_file_is_a_spec_error(office_home, tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    spec = _paper_spec(*_sets(office_home, str(tmp_path / "r18.pth")))
    with pytest.raises(SpecError, match=r"^model\.weights_path: .*not a resnet50 state dict"):
        preflight(FewShot(), spec)


def test_the_paper_preset_is_one_process_per_trial(office_home, weights_file):
    spec = _paper_spec(*_sets(office_home, weights_file), "resources.workers=2")
    with pytest.raises(SpecError, match=r"^resources\.workers: few_shot runs each trial"):
        preflight(FewShot(), spec)


def test_work_counts_the_source_stage_and_the_adaptation():
    study = FewShot()
    p = Params(**{**PAPER.spec["train"], "method": "ft", "k": 3})
    assert study.work(p, 0) > 2 * 32 * 1000  # SAM's two passes a step, and the checks
    shot = study.work(Params(**{**PAPER.spec["train"], "method": "shot", "k": 0}), 0)
    assert shot > 15 * 0.8 * 4365  # 15 epochs over Clipart's pool
    source = {"source_domain": "Art", "source_epochs": 50}
    assert study.stage_work("source", source, 0) > 50 * 0.9 * 2427
    lr = {"method": "ft", "lr": None, "lr_grid": [1e-5, 1e-4, 1e-3], "steps": 1000,
          "batch_size": 32}  # fmt: skip
    assert study.stage_work("lr", lr, 0) == 3 * 2 * 32 * 1000
    assert study.stage_work("lr", {**lr, "method": "shot"}, 0) == 0


# ---- streamed from disk: the source stage and the adaptation runs -------------------------------


@pytest.fixture(scope="module")
def streamed(office_home, weights_file):
    spec = _paper_spec(
        *_sets(office_home, weights_file), "data.image_size=16", "resources.cpu=1",
        "train.bottleneck=16", "train.source_epochs=1",
    )  # fmt: skip
    return spec, FewShot().prepare_data(spec)


def test_the_preset_streams_file_paths_split_as_the_decoded_images(streamed):
    spec, data = streamed
    assert data["streamed"] and data["image_size"] == 16 and data["loader_workers"] == 0
    assert data["classes"] == list(CLASSES)
    assert all("/Art/" in f for f in data["xs_train"])
    assert all("/Clipart/" in f for f in data["standard.x_pool"])
    assert len(data["xs_train"]) + len(data["xs_val"]) == 4 * 6
    # the same split as the in-memory path of the same folder
    sets = _sets(spec.data.path, spec.model.weights_path)
    decoded = FewShot().prepare_data(_paper_spec(*sets, "data.stream=false", "data.image_size=8"))
    assert decoded["ys_train"].tolist() == data["ys_train"].tolist()
    assert decoded["standard.y_test"].tolist() == data["standard.y_test"].tolist()


def test_the_source_stage_trains_resnet50_from_the_weights_file(streamed, resnet50_state):
    spec, data = streamed
    study = FewShot()
    params = Params(**spec.train)
    config = {f: getattr(params, f) for f in study.stages[0].depends_on}
    ctx = RunningStage("source", config, 0, CPU, data, {}, weights_path=spec.model.weights_path)
    out = study.run_stage("source", ctx)  # one step: Art's 20 training images, one batch
    assert out["model_config"]["arch"] == "resnet50"
    assert out["model_config"]["input_shape"] == [3, 16, 16]
    assert 0 <= out["source_acc"] <= 1
    model = study.build_model(out["model_config"])
    model.load_state_dict(out["model"])
    # the backbone started from the file: one SGD step at 1e-3 stays close to it
    start = resnet50_state["layer4.2.conv3.weight"]
    assert torch.allclose(model.features.resnet.layer4[2].conv3.weight, start, atol=1e-2)


def test_adaptation_runs_read_the_target_from_disk(streamed):
    _, data = streamed
    pool = FileImages(data["standard.x_pool"], 16, CPU, workers=0)
    y = torch.as_tensor(data["standard.y_pool"])
    model = SmallCNN(3, 4, 2, bottleneck=6)
    shots = pool.subset([0, 5, 10, 15])
    points = list(finetune(model, shots, y[[0, 5, 10, 15]], "ft", 1e-3, 2, 1, 4, seed=0))
    assert [pt.step for pt in points] == [1, 2]
    tiny = dataclasses.replace(HPARAMS["shot"], batch_size=8, epochs=1)
    assert list(adapt(model, pool, "shot", 100, seed=0, cfg=tiny))
    scores = _scores(model, pool, y)
    assert 0 <= scores["acc"] <= 1 and 0 <= scores["mca"] <= 1
    # the streamed images are the decoded ones (resize to 16 x 16, [0, 1])
    x = pool.subset([0]).predict(torch.nn.Identity())
    assert x.shape == (1, 3, 16, 16) and 0 <= x.min() and x.max() <= 1
    loss, acc = evaluate(model, pool, y)
    assert (loss, acc) == pytest.approx(evaluate(model, TensorImages(_decode(pool)), y))
    # loader worker processes read the same images
    two = FileImages(data["standard.x_pool"][:6], 16, CPU, workers=1)
    assert torch.equal(_decode(two), _decode(pool.subset(range(6))))


def _decode(images: FileImages) -> torch.Tensor:
    return images.predict(torch.nn.Identity())


@dataclasses.dataclass
class _Trial(OneProcess):
    """The TrialContext a trial gets, for one process on the CPU."""

    params: Params
    data: dict
    upstream: dict
    seed: int = 0
    device: torch.device = CPU
    start_epoch: int = 0
    weights_path: str | None = None
    rank: int = 0
    world_size: int = 1
    reports: list = dataclasses.field(default_factory=list)

    def autocast(self):
        return contextlib.nullcontext()

    def prepare_model(self, model, *, conv=True):
        return model

    def shard(self, idx):
        return idx

    def log(self, metrics, step):
        pass

    def report(self, metrics, state, samples=0, progress=None):
        self.reports.append((metrics, state))


def test_streamed_trials_adapt_and_report(office_home):
    """The stages and the trials of a streamed sweep (the small CNN, to stay quick)."""
    spec = load_spec("few_shot", FewShot.defaults, Params, sets=[
        "data.name=imagefolder", f"data.path={office_home}", "data.stream=true",
        "data.image_size=16", "train.source_domain=Art", "train.target_domain=Clipart",
        "train.partial_keep=2", "train.imbalance=2", "train.width=2", "train.bottleneck=8",
        "train.source_epochs=1", "train.steps=2", "train.eval_every=1", "train.lr_grid=[0.001]",
        "train.shot_epochs=1",
    ])  # fmt: skip
    study = FewShot()
    data = study.prepare_data(spec)
    upstream: dict = {}
    for method, k in (("ft", 1), ("shot", 0)):
        params = Params(**{**spec.train, "method": method, "k": k})
        for stage in study.stages:
            config = {f: getattr(params, f) for f in stage.depends_on}
            ctx = RunningStage(stage.name, config, 0, CPU, data, dict(upstream))
            upstream[stage.name] = study.run_stage(stage.name, ctx)
        trial = _Trial(params, data, dict(upstream))
        study.train(trial)
        metrics, state = trial.reports[-1]
        assert 0 <= metrics["test_acc"] <= 1 and "source_only_acc" in metrics
        assert state["model_config"]["method"] == method
        assert len(trial.reports) == (2 if method == "ft" else 1)  # checks after steps 1, 2


def test_network_module_lists_its_archs():
    assert network.ARCHS == ("small", "resnet50")
    assert Params.model_fields["arch"].default == "small"

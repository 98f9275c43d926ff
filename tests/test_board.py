"""`skeptic board`: one offline page from a tracking store. Built here from a real store:
two real sweeps of the test study `effect` (the first undecided, the second held) and a
third that was stopped before its verdict; the page shows the belief, the latest finished
verdict and its comparisons, the whole history, and links to MLflow; it loads nothing from
the network (checked in a real browser too). User errors are one line, exit 2, nothing
written."""

from __future__ import annotations

import sqlite3
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from skeptic import board, review, tracking
from skeptic.cli import _ui_board, main
from skeptic.schema import CHAMPION, SWEEP, Metric, Tag
from skeptic.spec import load_spec
from skeptic.study import get_study

UI = "http://mlflow.example:5005"
UNDECIDED = ["--set", "sweep.seeds={min: 2, max: 4, step: 2}", "--set", "train.effect=0",
             "--set", "sweep.space.side.grid=[a, b]"]  # fmt: skip
HELD = ["--set", "train.effect=5", "--set", "sweep.seeds=3"]


class Page(HTMLParser):
    """What a test needs of the page: images, links, resources, each section's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: dict[str, str] = {}  # href -> text
        self.resources: list[str] = []  # anything else that could load: script, link, ...
        self.sections: dict[str, str] = {}
        self.badges: dict[str, list[str]] = {}  # section id -> its badges' text, in order
        self._section, self._href, self._badge = None, None, False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        elif tag in ("script", "link", "iframe", "object", "embed", "source", "video", "audio"):
            self.resources.append(tag)
        elif tag == "a":
            self._href = a["href"]
            self.links[self._href] = ""
        elif tag == "section" and "id" in a:
            self._section = a["id"]
            self.sections[self._section], self.badges[self._section] = "", []
        self._badge = tag == "span" and "badge" in a.get("class", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section = None
        if tag == "a":
            self._href = None

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self.links[self._href] += data
        if self._section is not None:
            self.sections[self._section] += data + " "
            if self._badge:
                self.badges[self._section].append(data)
        self._badge = False


@pytest.fixture(scope="module")
def store(ray_session, tmp_path_factory) -> dict:
    """A store with two finished sweeps of `effect` (undecided, then held) and one stopped
    before its verdict (as `skeptic run` leaves a sweep killed mid-way: a parent run ended
    KILLED, opened and closed by the same functions the runner uses)."""
    folder = tmp_path_factory.mktemp("board")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    patch = pytest.MonkeyPatch()
    patch.chdir(folder)
    try:
        for extra in (UNDECIDED, HELD):
            argv = ["run", "effect", "--tracking-uri", uri, "--storage", str(folder / "runs")]
            assert main([*argv, *extra]) == 0
        _killed_sweep(uri)
    finally:
        patch.undo()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("effect")
    parents = client.search_runs(
        [exp.experiment_id],
        f"tags.`{Tag.KIND}` = '{SWEEP}'",
        order_by=["attributes.start_time ASC"],
    )
    champion = client.get_model_version_by_alias("effect", CHAMPION).version
    return {"uri": uri, "folder": folder, "experiment": exp.experiment_id, "parents": parents,
            "champion": str(champion)}  # fmt: skip


def _killed_sweep(uri: str) -> str:
    study = get_study("effect")
    spec = load_spec("effect", study.defaults, study.Params, None, None, [])
    client = MlflowClient(uri)
    exp = tracking.ensure_experiment(client, "effect", uri)
    run = tracking.start_parent_run(client, exp, "effect-stopped", study, spec, "0" * 16, 9)
    tracking.close_sweep(client, exp, run, "KILLED")
    return run


@pytest.fixture(scope="module")
def page(store, tmp_path_factory) -> tuple[Path, Page]:
    out = tmp_path_factory.mktemp("out") / "board"
    assert (
        main(["board", "--tracking-uri", store["uri"], "--out", str(out), "--mlflow-url", UI]) == 0
    )
    index = out / "index.html"
    return index, Page(index.read_text())


@pytest.mark.slow
def test_the_page_shows_the_belief_the_latest_verdict_and_its_comparisons(store, page):
    _, parsed = page
    text = parsed.sections["effect"]
    assert get_study("effect").belief in text
    held = next(p for p in store["parents"] if p.data.tags.get(Tag.VERDICT) == "held")
    assert parsed.badges["effect"][0] == "held"  # the latest finished sweep's, not the killed
    assert held.data.tags[Tag.VERDICT_SUMMARY].splitlines()[0] in text
    words = " ".join(text.split())
    for name in ("b_vs_a", "c_vs_a"):  # the row: name, decision, b - a at the last look
        diff = held.data.metrics[Metric.comparison(name, "diff")]
        assert f"{name} {held.data.tags[Tag.decision(name)]} {diff:+.3g}" in words
    assert held.data.tags[Tag.decision("b_vs_a")] == "b better"


@pytest.mark.slow
def test_the_history_has_every_sweep_an_unfinished_one_as_such(store, page):
    _, parsed = page
    tags = [p.data.tags for p in store["parents"]]
    assert [t.get(Tag.VERDICT) for t in tags] == ["undecided", "held", None]
    text = parsed.sections["effect"]
    for t in tags:
        assert t[Tag.SWEEP_ID] in text
    # the section's badges: its verdict, then the history newest first
    assert parsed.badges["effect"] == ["held", "did not finish (killed)", "held", "undecided"]
    # trials: 2 sides x 4 seeds, 3 sides x 3 seeds, none of the 9 planned of the stopped one
    words = " ".join(text.split())
    for t, trials in zip(tags, ("undecided 8", "held 9", "did not finish (killed) 0 of 9")):
        assert f"{t[Tag.SWEEP_ID]} {trials}" in words


@pytest.mark.slow
def test_the_page_links_the_parent_runs_and_the_champion(store, page):
    _, parsed = page
    for parent in store["parents"]:
        assert f"{UI}/{review.run_page(store['experiment'], parent.info.run_id)}" in parsed.links
    champion = f"{UI}/{review.version_page('effect', store['champion'])}"
    assert champion in parsed.links
    assert store["champion"] in parsed.links[champion]


@pytest.mark.slow
def test_the_page_needs_nothing_but_itself(page):
    index, parsed = page
    text = index.read_text()
    assert len(parsed.images) >= 2  # the forest plot and the history
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,") or (index.parent / src).is_file(), src[:80]
    assert parsed.resources == []
    assert "url(" not in text and "@import" not in text
    external = [h for h in parsed.links if not h.startswith((UI, "#"))]
    assert external == []  # links only into the MLflow UI and the page itself


@pytest.mark.slow
def test_skeptic_ui_builds_the_board_beside_the_store_linked_to_its_ui(store):
    url = _ui_board(store["uri"], "http://127.0.0.1:5123")
    index = store["folder"] / board.BOARD_DIR / "index.html"
    assert url == index.as_uri()
    assert "http://127.0.0.1:5123/#/experiments/" in index.read_text()


@pytest.mark.slow
def test_an_old_run_without_its_belief_gets_it_from_the_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'old.db'}"
    run = _killed_sweep(uri)
    client = MlflowClient(uri)
    for key in (Tag.BELIEF, Tag.PAPER):
        client.delete_tag(run, key)
    assert main(["board", "--tracking-uri", uri, "--out", "b"]) == 0
    parsed = Page((tmp_path / "b" / "index.html").read_text())
    assert get_study("effect").belief in parsed.sections["effect"]
    assert parsed.badges["effect"][0] == "no finished sweep"


def _refused(argv: list[str], capsys: pytest.CaptureFixture, folder: Path) -> str:
    before = sorted(folder.rglob("*"))
    capsys.readouterr()  # what came before (MLflow creating a store) is not the command's
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("skeptic: error: ") and err.count("\n") == 1, err
    assert sorted(folder.rglob("*")) == before  # nothing written
    return err


@pytest.mark.slow
def test_user_errors_are_one_line_and_write_nothing(store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert "no MLflow store there yet" in _refused(
        ["board", "--tracking-uri", missing], capsys, tmp_path
    )
    (tmp_path / "file").write_text("x")
    for out in ("file", "file/below"):
        argv = ["board", "--tracking-uri", store["uri"], "--out", out]
        assert "--out" in _refused(argv, capsys, tmp_path)
    argv = ["board", "--tracking-uri", store["uri"], "--mlflow-url", "mlflow.lab:5000"]
    assert "--mlflow-url" in _refused(argv, capsys, tmp_path)
    empty = tmp_path / "empty.db"
    MlflowClient(f"sqlite:///{empty}").search_experiments()  # a store, with no sweep in it
    assert sqlite3.connect(empty).execute("select count(*) from runs").fetchone() == (0,)
    argv = ["board", "--tracking-uri", f"sqlite:///{empty}", "--out", "b"]
    assert "no sweeps" in _refused(argv, capsys, tmp_path)


def test_help_explains_it(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["board", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for words in ("--out DIR", "--mlflow-url URL", "--tracking-uri", "file://", "index.html"):
        assert words in out


@pytest.mark.slow
def test_in_a_browser_every_image_loads_and_nothing_comes_from_the_network(page, browser):
    index, _ = page
    tab = browser.new_page(viewport={"width": 1400, "height": 900})
    requests: list[str] = []
    tab.on("request", lambda request: requests.append(request.url))
    try:
        tab.goto(index.as_uri(), wait_until="load")
        widths = tab.eval_on_selector_all(
            "img", "imgs => imgs.map(i => i.complete && i.naturalWidth)"
        )
        verdict = tab.locator("#effect .head .badge")
        assert verdict.inner_text().strip().lower() == "held" and verdict.is_visible()
    finally:
        tab.close()
    assert len(widths) >= 2 and all(w and w > 0 for w in widths), widths
    assert requests and all(u.startswith(("file://", "data:")) for u in requests), requests

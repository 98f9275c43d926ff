"""The sweep's record: what `skeptic resume` needs, saved beside Tune's state."""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from skeptic.spec import SpecError

DEFAULT_STORAGE = "skeptic-runs"


@dataclass
class SweepRecord:
    """Saved as skeptic-sweep.json in the sweep's folder (Tune's experiment path)."""

    sweep_id: str
    study: str
    spec: dict[str, Any]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    folder: str  # the sweep's folder: Tune's experiment path (of the first round)
    command: str
    round: int = 0  # the look of a sequential seed rule in progress (0: the first)

    FILE: ClassVar[str] = "skeptic-sweep.json"

    def save(self) -> None:
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        (Path(self.folder) / self.FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def find(cls, sweep_id: str, storage: str | None) -> SweepRecord:
        root = Path(storage or DEFAULT_STORAGE).resolve()
        matches = list(root.glob(f"*/{sweep_id}/{cls.FILE}"))
        if not matches:
            raise SpecError(
                f"sweep {sweep_id!r}: no {cls.FILE} under {root}/<study>/ (check --storage)"
            )
        return cls(**json.loads(matches[0].read_text()))

    def round_folder(self, look: int) -> Path:
        """Tune's experiment folder of one round (look) of the sweep."""
        return Path(self.folder) if look == 0 else Path(self.folder) / f"round-{look}"

    def resume_command(self) -> str:
        """The exact command that finishes this sweep."""
        root = Path(self.folder).parent.parent
        command = f"skeptic resume {self.sweep_id}"
        if root != Path(DEFAULT_STORAGE).resolve():
            command += f" --storage {shlex.quote(str(root))}"
        return command


def sweep_folder(storage: str | None, study: str, sweep_id: str) -> Path:
    return Path(storage or DEFAULT_STORAGE).resolve() / study / sweep_id

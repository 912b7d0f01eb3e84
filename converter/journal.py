"""The record of an unfinished conversion, so an interrupted run (Ctrl-C, kill, disk full) is
resumed or started over on the next run, and says which; never mistaken for a finished one.

Only `manifest.json`, written last, marks a finished conversion. Until then `conversion-journal.json`
lists the output files already complete (written under a temporary name and renamed) together with
the inputs and settings they were made from. A matching journal lets the next run keep those files;
anything else is started over.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from phi4mm.converter.write import write_json_atomic

JOURNAL = "conversion-journal.json"
JOURNAL_FORMAT = 1
SOURCE_SUFFIX = ".bf16-source.gguf"  # the exact decoder the quantizer reads, removed when done
log = logging.getLogger(__name__)


def job_of(inputs: list[Path], quant: str, encoder_type: str) -> dict:
    """What a conversion's outputs depend on: settings, and each input file's path, size and mtime."""
    stats = {str(p.resolve()): [p.stat().st_size, p.stat().st_mtime_ns] for p in inputs}
    return {"format": JOURNAL_FORMAT, "quant": quant, "encoder_type": encoder_type, "inputs": stats}


@dataclass
class Journal:
    out_dir: Path
    job: dict
    done: dict[str, dict] = field(default_factory=dict)  # role -> manifest entry {"name", "bytes"}
    resumed: frozenset[str] = frozenset()  # roles kept from an interrupted run

    @classmethod
    def open(cls, out_dir: Path, job: dict) -> Journal:
        """Resume the unfinished conversion in out_dir if it was of the same job, else start over."""
        previous = _read(out_dir / JOURNAL)
        leftovers = sorted(p.name for pattern in ("*.partial", "*" + SOURCE_SUFFIX, "phi4mm-*.gguf")
                           for p in out_dir.glob(pattern))
        done = {}
        if previous.get("job") == job:
            done = {role: e for role, e in previous.get("done", {}).items() if _intact(out_dir, e)}
        if done:
            log.warning("resuming the unfinished conversion in %s: keeping %s (finished before it was "
                        "interrupted), converting the rest", out_dir, ", ".join(sorted(done)))
        elif previous or leftovers:
            why = ("its record is of other settings or other input files" if previous.get("job") not in (None, job)
                   else "none of its files is complete" if previous else "unfinished files without a record")
            log.warning("starting the conversion in %s over: it holds an unfinished conversion (%s)", out_dir, why)
        kept = {e["name"] for e in done.values()}
        for name in leftovers:  # temporaries go; finished outputs are kept or overwritten
            if name.endswith((".partial", SOURCE_SUFFIX)) and name not in kept:
                (out_dir / name).unlink(missing_ok=True)
        journal = cls(out_dir, job, dict(done), frozenset(done))
        journal._save()
        return journal

    def record(self, role: str, entry: dict) -> None:
        """Note that role's file is complete (after its atomic rename)."""
        self.done[role] = entry
        self._save()

    def forget(self, role: str) -> None:
        self.done.pop(role, None)
        self._save()

    def finish(self) -> None:
        """The manifest is written: nothing is unfinished any more."""
        (self.out_dir / JOURNAL).unlink(missing_ok=True)

    def _save(self) -> None:
        write_json_atomic(self.out_dir / JOURNAL, {"job": self.job, "done": self.done})


def _read(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _intact(out_dir: Path, entry: dict) -> bool:
    path = out_dir / str(entry.get("name", ""))
    return path.is_file() and os.path.getsize(path) == entry.get("bytes")

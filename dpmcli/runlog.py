"""Resumable sweeps: ``compare --out DIR`` records every finished run in DIR as it finishes.

The log lives beside the outputs while a sweep is under way::

    DIR/sweep.json        what decides the results (the resolved sweep, the model, dpmcli's version, the seed's
                          draws) and the log's id
    DIR/runs/NAME.json    one finished run: its row of the results, and the shape, dtype and sha256 of its samples
    DIR/runs/NAME.npy     its final samples (float64): the figures and any score over all runs need them

NAME is the run's label made safe as a file name, with a hash of the label. Every file is written
to a temporary file and renamed into place, the array before its record, so a record that exists is
whole: an interrupted or killed sweep loses at most the run it was on. ``--resume`` reads the log
back (after checking that sweep.json describes the same sweep) and runs only what is missing.

A :class:`RunLog` is a context manager around the sweep and the writing of its outputs. When the
block succeeds the log is removed (the outputs hold everything; the folder ends as an
uninterrupted sweep leaves it); when it fails with an error the folder goes back to what it was
(a fresh sweep's log removed, the log it replaced put back, the runs a resume recorded removed);
when it is interrupted (Ctrl-C, SIGTERM: exceptions that are not ``Exception``) the log stays, to
resume. ``writer=False`` (a rank of a torchrun job other than 0) reads the log but never writes.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import uuid
from pathlib import Path

import numpy as np

from . import __version__
from .errors import ConfigError, option_flag
from .noise import DRAW_VERSION
from .report import atomic_write, dumps_json, json_safe, save_npy

FORMAT = 1
SWEEP_FILE = "sweep.json"
RUNS = "runs"
REPLACED = ".replaced"  # suffix of the log a fresh sweep set aside, until it ends
OUTPUT_ONLY = ("cache_dir",)  # Sweep.to_dict() keys that do not change a result (none today; kept out should one appear)
FLAGS = {"class_label": "--class"}  # fields whose flag is not option_flag(name)
NAMES = {"dpmcli": "dpmcli version", "format": "log format", "trained_betas": "the trained betas",
         "draws": "the version of what a seed draws"}


def sweep_record(prepared) -> dict:
    """What decides a prepared sweep's results: its resolved options, the model, dpmcli's version and what a seed draws."""
    sweep, model = prepared.sweep, prepared.model
    betas = sweep.base.trained_betas
    return {
        "dpmcli": __version__,
        "draws": DRAW_VERSION,  # x_T and noise of a seed: runs recorded with other draws are not this sweep's
        "sweep": {k: v for k, v in sweep.to_dict().items() if k not in OUTPUT_ONLY},
        "model_info": model.describe(),
        "model_identity": model.identity(),
        # to_dict() writes trained betas as "<N values>": their digest tells two lists apart
        "trained_betas": None if betas is None else hashlib.sha256(np.asarray(betas, dtype=np.float64).tobytes()).hexdigest(),
    }


def safe_name(label: str) -> str:
    """A file name for a run: its label with only letters, digits, '.', '=' and '-' (others become '_'), and a hash."""
    stem = re.sub(r"[^A-Za-z0-9.=-]+", "_", label).strip("._")[:80]
    return f"{stem}-{hashlib.sha256(label.encode()).hexdigest()[:12]}"


def check_resumable(folder: str | Path, option: str = "--out") -> None:
    """Before any work: ``folder`` holds a sweep record to resume, else ConfigError (exit 2)."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a folder" if os.path.lexists(folder) else "does not exist"
        raise ConfigError(f"--resume: {folder} {what}; give the {option} folder of an interrupted sweep")
    if not (folder / SWEEP_FILE).is_file():
        raise ConfigError(
            f"--resume: {folder} holds no sweep record ({SWEEP_FILE}): nothing to resume (a finished sweep leaves none); "
            "run without --resume to start the sweep"
        )


def check_replaceable(folder: str | Path, option: str = "--out") -> None:
    """Before any work: a fresh sweep may set aside what ``folder`` holds of a run log (only files a log wrote), else ConfigError."""
    foreign = _foreign(Path(folder))
    if foreign is not None:
        raise ConfigError(f"{option}: {foreign}, not a dpmcli run log; give {option} a folder of its own")


class RunLog:
    """The run records of one sweep in ``folder`` (see the module's docstring for the layout)."""

    def __init__(self, folder: str | Path, sweep: dict, *, resume: bool = False, writer: bool = True, option: str = "--out"):
        self.folder, self.option, self.resume, self.writer = Path(folder), option, resume, writer
        self.runs = self.folder / RUNS
        self.sweep = json.loads(dumps_json({"format": FORMAT, **sweep}))  # as it reads back from sweep.json
        self.warnings: list[str] = []
        self.replaced = 0  # run records of another sweep in the folder, which a fresh sweep sets aside
        self._index: dict[str, dict] = {}  # label -> its record (only on resume)
        self._written: dict[str, str] = {}  # label -> stem, recorded by this process
        self._created: list[Path] = []  # folders this sweep made
        self._moved: list[str] = []  # names a fresh sweep set aside (NAME -> NAME.replaced)
        self._own = False  # whether sweep.json and runs/ in the folder are this sweep's
        self._record_failed = False
        if resume:
            check_resumable(self.folder, option)
            self.id = self._check_sweep()
            self._index = self._read_index()
        else:
            self.id = uuid.uuid4().hex
            if writer:
                check_replaceable(self.folder, option)
                self.replaced = len(list(self.runs.glob("*.json"))) if self.runs.is_dir() else 0

    # ---------------------------------------------------------------- reading

    @property
    def saved(self) -> int:
        """How many runs of this sweep are recorded in the folder."""
        return len(set(self._index) | set(self._written))

    def recorded(self, label: str) -> tuple[dict, np.ndarray | None] | None:
        """(row, final samples or None) of a recorded run, or None: not recorded (or damaged: then run it again)."""
        record = self._index.get(label)
        if record is None:
            return None
        row, info = copy.deepcopy(record["row"]), record["samples"]
        if info is None:
            return row, None
        path = self.runs / f"{safe_name(label)}.npy"  # (not the record's "file": a record names nothing outside runs/)
        try:
            samples = np.load(path, allow_pickle=False)
            damage = None
            if not isinstance(samples, np.ndarray) or list(samples.shape) != info.get("shape") or samples.dtype.str != info.get("dtype"):
                damage = "not the array its record describes"
            elif _sha256(samples) != info.get("sha256"):
                damage = "checksum mismatch"
        except Exception as exc:  # a missing, truncated or garbled .npy raises anything from OSError to SyntaxError
            damage = f"it cannot be read ({type(exc).__name__})"
        if damage is not None:
            self.warnings.append(f"{self.option}: the samples of {label} ({path.name}) are damaged ({damage}); running it again")
            del self._index[label]
            return None
        return row, samples

    def _check_sweep(self) -> str:
        """The id of the log in the folder, when it records this sweep; else ConfigError naming what differs."""
        path = self.folder / SWEEP_FILE
        try:
            stored = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ConfigError(f"--resume: {path} cannot be read ({type(exc).__name__}); run without --resume to start afresh") from None
        if not isinstance(stored, dict) or not isinstance(stored.get("id"), str):
            raise ConfigError(f"--resume: {path} is not a dpmcli sweep record; run without --resume to start afresh")
        differ = _differences({k: v for k, v in stored.items() if k != "id"}, self.sweep)
        if differ:
            shown = ", ".join(differ[:4]) + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
            raise ConfigError(f"--resume: {self.folder} holds another sweep: {shown}; give the same options, or run without --resume")
        return stored["id"]

    def _read_index(self) -> dict[str, dict]:
        """label -> record for every whole record of this sweep in runs/ (the others are ignored)."""
        index: dict[str, dict] = {}
        for path in sorted(self.runs.glob("*.json")) if self.runs.is_dir() else []:
            try:
                record = json.loads(path.read_bytes().decode("utf-8"))
            except (OSError, UnicodeDecodeError, ValueError, RecursionError):
                record = None
            whole = (
                isinstance(record, dict) and record.get("format") == FORMAT and isinstance(record.get("run"), str)
                and isinstance(record.get("row"), dict) and record["row"].get("run") == record["run"]
                and (record.get("samples") is None or isinstance(record.get("samples"), dict))
            )
            if not whole:
                self.warnings.append(f"{self.option}: run record {path.name} cannot be read; its run runs again")
            elif record.get("id") == self.id and path.stem == safe_name(record["run"]):
                index[record["run"]] = record
        return index

    # ---------------------------------------------------------------- writing

    def record(self, label: str, row: dict, samples: np.ndarray | None) -> None:
        """Record a finished run (row and final samples) atomically; a failed write is a warning, not an error."""
        if not self.writer:
            return
        stem = safe_name(label)
        try:
            self.runs.mkdir(exist_ok=True)
            info = None
            if samples is not None:
                array = np.ascontiguousarray(samples)
                save_npy(self.runs / f"{stem}.npy", array)
                info = {"file": f"{stem}.npy", "shape": list(array.shape), "dtype": array.dtype.str, "sha256": _sha256(array)}
            document = {"format": FORMAT, "id": self.id, "run": label, "row": row, "samples": info}
            # not dumps_json: the row keeps its order of keys, as the run made it
            text = json.dumps(json_safe(document), allow_nan=False, indent=1) + "\n"
            atomic_write(self.runs / f"{stem}.json", lambda handle: handle.write(text.encode()))
        except OSError as exc:
            if not self._record_failed:
                self._record_failed = True
                self.warnings.append(
                    f"{self.option}: cannot record runs in {self.runs} ({exc.strerror or exc}); the sweep goes on, "
                    "but an interruption loses the runs not recorded"
                )
            return
        self._written[label] = stem

    def __enter__(self) -> "RunLog":
        if self.writer:
            self._start()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if not self.writer:
            return
        if kind is None:
            self._finish()
        elif issubclass(kind, Exception):
            self._discard()
        else:  # interrupted: the records stay, to resume; the log they replaced is gone for good
            self._drop_replaced()

    def _start(self) -> None:
        """Make the folder; a fresh sweep sets an earlier log aside and writes its sweep record."""
        try:
            self._make_folder()
            self._drop_replaced()  # left by a fresh sweep that was killed: its own log is the one in place
            if self.resume:
                _remove_records(self.runs, temporary_only=True)  # what a killed write left
            else:
                for name in (SWEEP_FILE, RUNS):
                    if os.path.lexists(self.folder / name):
                        os.replace(self.folder / name, self.folder / (name + REPLACED))
                        self._moved.append(name)
                self._own = True  # from here on, sweep.json and runs/ are this sweep's
                text = dumps_json({**self.sweep, "id": self.id})
                atomic_write(self.folder / SWEEP_FILE, lambda handle: handle.write(text.encode()))
            self.runs.mkdir(exist_ok=True)
        except OSError as exc:
            self._discard()
            raise ConfigError(f"{self.option}: cannot write {self.folder}: {exc.strerror or exc}") from None

    def _make_folder(self) -> None:
        missing, folder = [], self.folder
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for created in reversed(missing):
            created.mkdir()
            self._created.append(created)

    def _finish(self) -> None:
        """The outputs are written: the log goes (its sweep record first, so a half-removed log is never resumed)."""
        with contextlib.suppress(OSError):
            os.unlink(self.folder / SWEEP_FILE)
        _remove_records(self.runs)
        self._drop_replaced()

    def _discard(self) -> None:
        """An error: the folder as it was before this sweep started."""
        if self.resume:
            for stem in self._written.values():
                for suffix in (".json", ".npy"):
                    with contextlib.suppress(OSError):
                        os.unlink(self.runs / f"{stem}{suffix}")
            _remove_records(self.runs, temporary_only=True)
        elif self._own:
            with contextlib.suppress(OSError):
                os.unlink(self.folder / SWEEP_FILE)
            _remove_records(self.runs)
        for name in self._moved:
            with contextlib.suppress(OSError):
                os.replace(self.folder / (name + REPLACED), self.folder / name)
        self._moved = []
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: never what was there before

    def _drop_replaced(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.folder / (SWEEP_FILE + REPLACED))
        _remove_records(self.folder / (RUNS + REPLACED))


def _is_record_file(path: Path) -> bool:
    """A file a run log writes: a record, samples, or the temporary file of one."""
    return path.is_file() and not path.is_symlink() and (path.suffix in (".json", ".npy") or _is_temporary(path))


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _foreign(folder: Path) -> str | None:
    """What in ``folder`` a run log would replace but did not write (a fresh sweep sets sweep.json and runs/ aside), else None."""
    runs, record = folder / RUNS, folder / SWEEP_FILE
    if os.path.lexists(runs) and (runs.is_symlink() or not runs.is_dir()):
        return f"{runs} is not a folder"
    if runs.is_dir():
        other = next((p for p in runs.iterdir() if not _is_record_file(p)), None)
        if other is not None:
            return f"{runs} holds {other.name}"
    if os.path.lexists(record):
        try:
            stored = json.loads(record.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            stored = None
        if not (isinstance(stored, dict) and isinstance(stored.get("id"), str) and "format" in stored):
            return f"{record} is not a sweep record"
    return None


def _remove_records(runs: Path, temporary_only: bool = False) -> None:
    """Remove the run records in ``runs`` (with ``temporary_only``, only the temporary files a killed write left), then the folder if empty."""
    if not runs.is_dir() or runs.is_symlink():
        return
    for path in runs.iterdir():
        if _is_record_file(path) and (_is_temporary(path) or not temporary_only):
            with contextlib.suppress(OSError):
                path.unlink()
    if not temporary_only:
        with contextlib.suppress(OSError):
            runs.rmdir()


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _flat(document: dict, prefix: tuple = ()):
    for key, value in document.items():
        if isinstance(value, dict) and value:
            yield from _flat(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _differences(stored: dict, now: dict) -> list[str]:
    """'--seed 0 (now 1)' for every value that differs between two sweep records."""
    before, after = dict(_flat(stored)), dict(_flat(now))
    out = []
    for path in sorted(set(before) | set(after), key=lambda p: list(map(str, p))):
        if before.get(path, ()) == after.get(path, ()):
            continue
        name = path[-1]
        if path[0] == "sweep":
            what = FLAGS.get(name, option_flag(name))
        elif path[0] in ("model_info", "model_identity"):
            what = "the model's " + ".".join(map(str, path[1:]) or ["identity"])
        else:
            what = NAMES.get(name, ".".join(map(str, path)))
        out.append(f"{what} {_shown(before, path)} (now {_shown(after, path)})")
    return out


def _shown(values: dict, path: tuple) -> str:
    if path not in values:
        return "unset"
    text = json.dumps(values[path], separators=(", ", ": "))
    return text if len(text) <= 60 else text[:57] + "..."

"""Output formats shared by every command: JSON (sorted keys, non-finite -> null), CSV, atomic files."""

from __future__ import annotations

import contextlib
import contextvars
import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import ConfigError


def json_safe(value):
    """Plain JSON types; NaN and +-Inf become None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def dumps_json(document) -> str:
    return json.dumps(json_safe(document), sort_keys=True, allow_nan=False, indent=2) + "\n"


def csv_text(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in json_safe(row).items()})
    return buffer.getvalue()


class OutputFiles:
    """Every file one command writes: all of them, or none.

    ``targets`` maps each output option to its path (None: not asked for), ``folders`` each
    folder option to its folder. Inside ``with OutputFiles(...)``, each write through
    :func:`atomic_path` to one of these (and so ``save_npy``, figures, image grids) goes to a
    temporary file beside its target; when the block ends without an error they all move into
    place, otherwise they are all removed, and a folder this run made goes too. A failed or
    interrupted run leaves every earlier file as it was and no new one. Writes elsewhere (a
    cache) are not held back.
    """

    def __init__(self, targets: dict[str, str | Path | None] | None = None, folders: dict[str, str | Path | None] | None = None):
        self.targets: dict[Path, str] = {}
        self.folders: dict[Path, str] = {}
        for option, path in (targets or {}).items():
            if path is not None:
                _check_file(option, Path(path))
                self._claim(self.targets, option, Path(path))
        for option, path in (folders or {}).items():
            if path is not None:
                _check_folder(option, Path(path))
                self._claim(self.folders, option, Path(path))
        self._staged: list[tuple[Path, Path]] = []
        self._created: list[Path] = []
        self.written: list[Path] = []

    def _claim(self, table: dict, option: str, path: Path) -> None:
        key = Path(os.path.abspath(path))
        other = self.targets.get(key) or self.folders.get(key)
        if other is not None:
            raise ConfigError(f"{option}: {path} is also the file of {other}; give each output a path of its own")
        table[key] = option

    def option_of(self, path: str | Path) -> str | None:
        """The option whose output ``path`` is: its own file, or a file inside its folder."""
        key = Path(os.path.abspath(path))
        if key in self.targets:
            return self.targets[key]
        return self.folders.get(key.parent)

    def make_folder(self, path: str | Path) -> None:
        """Create a folder output now (and its missing parents); removed again if the run fails."""
        folder = Path(path)
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        option = self.option_of(Path(path) / "_") or "--out"
        try:
            for created in reversed(missing):
                created.mkdir()
                self._created.append(created)
        except OSError as exc:
            raise ConfigError(f"{option}: cannot create {path}: {exc.strerror or exc}") from None

    def stage(self, target: Path, tmp: str) -> None:
        self._staged.append((target, Path(tmp)))

    def __enter__(self) -> "OutputFiles":
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, kind, error, traceback) -> None:
        _ACTIVE.reset(self._token)
        if kind is None:
            self._commit()
        else:
            self._discard()

    def _commit(self) -> None:
        try:
            for target, tmp in self._staged:
                _publish(tmp, target)
                self.written.append(target)
        except OSError as exc:
            self._discard()
            raise ConfigError(f"{self.option_of(target) or 'output'}: cannot write {target}: {exc.strerror or exc}") from None

    def _discard(self) -> None:
        for _, tmp in self._staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._staged = []
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: never what was there before


def _check_name(option: str, path: Path, folder: Path) -> None:
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    size = len(os.fsencode(path.name))
    if size > limit:
        raise ConfigError(f"{option}: the name {path.name[:24]}... is {size} bytes long; this file system allows {limit}")


def _check_file(option: str, path: Path) -> None:
    """Fail before any work if an output file could not be written."""
    folder = path.parent if str(path.parent) else Path(".")
    _check_name(option, path, folder)
    if path.is_dir():
        raise ConfigError(f"{option}: {path} is a folder")
    if not folder.is_dir():
        raise ConfigError(f"{option}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{option}: folder {folder} is not writable")


def _check_folder(option: str, path: Path) -> None:
    """Fail before any work if an output folder could not be made or written into."""
    _check_name(option, path, path.parent if str(path.parent) else Path("."))
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option}: {path} exists and is not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent if str(existing.parent) else Path(".")
    if not existing.is_dir():
        raise ConfigError(f"{option}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{option}: folder {existing} is not writable")


_ACTIVE: contextvars.ContextVar[OutputFiles | None] = contextvars.ContextVar("dpmcli_output_files", default=None)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp"):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    Inside :class:`OutputFiles` a path it lists is only staged, and moves into place with the others.
    """
    target = Path(path)
    outputs = _ACTIVE.get()
    option = outputs.option_of(target) if outputs is not None else None
    try:
        # a short prefix: a long file name must not overflow the name limit in its temporary twin
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:32]}.", suffix=suffix, dir=target.parent if str(target.parent) else ".")
    except OSError as exc:
        if option is None:
            raise
        raise ConfigError(f"{option}: cannot write {target}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        yield tmp
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if option is not None and isinstance(exc, OSError):
            raise ConfigError(f"{option}: cannot write {target}: {exc.strerror or exc}") from None
        raise
    if option is not None:
        outputs.stage(target, tmp)
        return
    try:
        _publish(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _publish(tmp: str | Path, target: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    os.replace(tmp, target)


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it into place."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        write(handle)


def save_npy(path: str | Path, array: np.ndarray) -> None:
    atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))

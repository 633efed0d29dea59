"""Files in and out safely: atomic writes, pickle refusal, one output-folder policy.

Every feds2r command that writes goes through this module, so that they all behave alike:

- :func:`write_atomic` writes a file through a uniquely named temporary file (``O_EXCL``) and a
  rename, so a reader never sees half a file, and removes the temporary file when it fails.
- :func:`check_output_file` checks a file destination such as ``--json PATH`` *before* the work
  starts (not a folder, in a writable place), so a bad path costs nothing.
- :func:`refuse_pickle` refuses a file whose first bytes are a pickle's (``torch.save`` output)
  before a byte of it is interpreted: unpickling runs whatever code the file contains.
- :func:`prepare_output` is the one rule of every output folder such as ``--out DIR``: reading
  only, it decides that the folder is new, empty, or an earlier output of the same command made
  with the same inputs, and refuses anything else with the folder left byte for byte as it was
  (:func:`judge_output` is that decision alone). Only then is it locked (``DIR/.feds2r.lock``
  holds the writer's PID, created with ``O_EXCL``; a lock left by a dead process is taken over)
  so that two runs cannot write into one folder, and marked in progress
  (``DIR/.feds2r_output.json``, ``"complete": false``) until :meth:`Output.finish` marks it
  complete, so a run killed midway leaves a folder that ``feds2r data check`` reports as
  incomplete.

Every problem a user can cause is an :class:`OutputError` or a :class:`PickleError` (each a
:class:`Feds2rError`: one message, exit status 2 in the CLI).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feds2r.errors import Feds2rError

LOCK_NAME = ".feds2r.lock"
STATE_NAME = ".feds2r_output.json"
_OURS = (LOCK_NAME, STATE_NAME)
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar"}
_MAX_HEADER = 100_000_000  # the largest JSON header the safetensors library itself accepts


class OutputError(Feds2rError):
    """An output path that cannot be used: a file where a folder is needed, read-only, taken."""


class PickleError(Feds2rError):
    """A file that is, or looks like, a pickle; it is refused without being read."""


def is_safetensors_head(head: bytes, size: int) -> bool:
    """Whether ``head``, the first 9 bytes of a file of ``size`` bytes, starts a safetensors file.

    A safetensors file is an 8-byte little-endian header length N, then N bytes of JSON that
    begin with ``{``. N is a multiple of 8 (the header is padded), so its first byte is 0x80 for
    about 1 file in 32: the same byte as pickle's protocol-2 magic. Checking the whole shape first
    tells the two apart.
    """
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= min(size - 8, _MAX_HEADER) and head[8:9] == b"{"


def refuse_pickle(path: str | Path) -> None:
    """Raise :class:`PickleError` if ``path`` is a pickle or a ``torch.save`` zip.

    Judged by the content (a pickle protocol opcode or a zip header at the start, unless the
    file has a safetensors header), never by the name alone: a safetensors file named
    ``model.bin`` is not a pickle, a pickle named ``model.safetensors`` is one. Only the first
    bytes are read. A file that does not exist is judged by its suffix (``.pt``, ``.pth``,
    ``.bin``, ...; the caller reports it missing).
    """
    path = Path(path)
    if path.is_file():
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
        pickled = head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"
        refused = pickled and not is_safetensors_head(head, size)
        what = "a pickle (torch.save) file"
    else:
        refused = path.suffix.lower() in _PICKLE_SUFFIXES
        what = f"named like a pickle (torch.save) file ({path.suffix})"
    if refused:
        raise PickleError(
            f"refusing to load {path}: it is {what}, and unpickling runs whatever code the file "
            "contains. feds2r loads only .safetensors weights with a JSON sidecar; ask the "
            "sender for a feds2r checkpoint (feds2r client train writes one)"
        )


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_creatable(path: Path, flag: str, what: str) -> None:
    """Raise unless ``path`` (not existing yet) could be created: a writable folder above it."""
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise OutputError(
            f"{flag} {path}: {base} is a file, not a folder, so the {what} cannot be created "
            "there; give a path inside a folder"
        )
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(
            f"{flag} {path}: the folder {base} is not writable; give a path you may write to"
        )


def check_output_file(path: str | Path, flag: str = "--json") -> Path:
    """Check a file destination before any work: not a folder, and creatable or writable.

    Returns the path. An existing file is fine (it is replaced atomically at the end).
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(
            f"{flag} {path} is a folder; give a file path such as {path / 'report.json'}"
        )
    if path.exists():
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise OutputError(
                f"{flag} {path}: its folder {path.parent} is not writable; give another path"
            )
        return path
    _check_creatable(path, flag, "file")
    return path


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Check a folder destination before any work, without creating anything.

    Refuses a file at ``path``, a folder that is not writable, or a place where it cannot be
    created. Whether its contents may be replaced is :func:`prepare_output`'s business.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file, not a folder; give a new or empty folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{flag} {path} is not writable; give a folder you may write to")
    else:
        _check_creatable(path, flag, "folder")
    return path


def write_atomic(path: str | Path, data: bytes, *, mode: int = 0o666) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename: never a half-written file.

    The temporary file (``.NAME.RANDOM.tmp`` beside ``path``) is created with ``O_EXCL`` and
    ``mode`` (less the umask) and is removed if anything fails. Raises :class:`OutputError` with
    the cause when ``path`` is a folder or cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create the folder {path.parent} for {path.name}: {_reason(exc)}"
        ) from None
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {_reason(exc)}") from None
        raise


def write_json(path: str | Path, data: object) -> None:
    """Write ``data`` as indented JSON (with a final newline) atomically."""
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _take_lock(lock: Path, flag: str, folder: Path) -> None:
    """Create ``lock`` holding our PID (``O_EXCL``); take over a lock whose process is dead."""
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                text = lock.read_text().strip()
            except OSError:
                text = ""
            pid = int(text) if text.isdigit() else -1
            if pid == os.getpid() or _pid_alive(pid):
                raise OutputError(
                    f"{flag} {folder} is in use by another feds2r run (PID {pid}, lock file "
                    f"{lock}); wait for it to finish or give another folder"
                ) from None
            # stale: its writer died. Remove it and retry the exclusive create; if two runs race
            # here, only one O_EXCL create succeeds and the other sees a live PID.
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        except OSError as exc:
            raise OutputError(
                f"{flag} {folder} is not writable ({_reason(exc)}); give a folder you may write to"
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return
    raise OutputError(f"{flag} {folder}: could not take the lock {lock}; try again")


@dataclass
class Output:
    """A claimed output folder (see :func:`prepare_output`); release it with :meth:`close`.

    ``previous`` is True when the folder held an earlier output of the same kind (complete or
    not); ``entries`` lists what it held (names, without feds2r's own lock and state files).
    ``fresh`` is True when the folder was new or empty.
    """

    path: Path
    kind: str
    previous: bool
    entries: list[str] = field(default_factory=list)
    created: bool = False
    inputs: dict[str, Any] | None = None
    keep: Callable[[Path], bool] | None = None
    _top: Path | None = None  # the highest folder this run created (``path`` or an ancestor)
    _closed: bool = False
    _finished: bool = False
    _begun: bool = False

    @property
    def fresh(self) -> bool:
        return not self.entries and not self.previous

    def begin(self) -> None:
        """Mark the folder in progress: call once the command has decided to write into it (a
        new or empty folder is marked at once). Until then the folder is as it was found."""
        if not self._begun:
            self._begun = True
            self._mark(complete=False)

    def clear(self) -> None:
        """Remove everything in the folder except the lock (only for its own earlier output)."""
        for name in os.listdir(self.path):
            if name == LOCK_NAME:
                continue
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        self.entries = []
        self._begun = False
        self.begin()

    def _mark(self, *, complete: bool) -> None:
        state: dict[str, Any] = {"kind": self.kind, "complete": complete}
        if self.inputs is not None:
            state["inputs"] = self.inputs
        write_json(self.path / STATE_NAME, state)

    def finish(self) -> None:
        """Mark the output complete (call after the last file) and release the lock."""
        self._mark(complete=True)
        self._finished = True
        self.close()

    def close(self) -> None:
        """Release the lock; the folder stays marked incomplete unless :meth:`finish` ran.

        A folder this run found new or empty and leaves without anything worth keeping (nothing
        written but the marker, or, for a resumable kind, no resumable state: ``keep``) is put
        back as it was found: removed if this run created it, emptied otherwise.
        """
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(FileNotFoundError):
            (self.path / LOCK_NAME).unlink()
        if self._finished or not self.fresh:
            return
        with contextlib.suppress(OSError):
            names = set(os.listdir(self.path))
            if names <= {STATE_NAME} or (self.keep is not None and not self.keep(self.path)):
                if self.created:
                    _remove_created(self.path, self._top or self.path)
                else:
                    _empty(self.path)

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _empty(path: Path) -> None:
    """Remove everything inside ``path`` (a folder that was empty before this run)."""
    for name in os.listdir(path):
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()


def _remove_created(path: Path, top: Path) -> None:
    """Remove ``path`` and the (empty) folders above it up to ``top``, which this run created."""
    path, top = path.absolute(), top.absolute()
    shutil.rmtree(path, ignore_errors=True)
    parent = path.parent
    while parent != top.parent and parent.is_relative_to(top):
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent


def read_state(folder: str | Path) -> dict | None:
    """The in-progress/complete marker of an output folder, or None if it has none."""
    try:
        state = json.loads((Path(folder) / STATE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def config_tables(folder: str | Path) -> set[str]:
    """The top-level tables of ``FOLDER/config.toml`` (what a run recorded), or an empty set."""
    import tomllib

    try:
        with open(Path(folder) / "config.toml", "rb") as f:
            return {k for k, v in tomllib.load(f).items() if isinstance(v, dict)}
    except (OSError, ValueError):
        return set()


def _what(path: Path, entries: list[str], state: dict | None) -> str:
    """What a folder holds, in words, for a refusal."""
    if state is not None and isinstance(state.get("kind"), str):
        return f"a `feds2r {state['kind']}` output"
    if "feds2r_world.json" in entries or "world.json" in entries:
        return "a dataset"
    shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
    return f"other files ({shown})"


Marker = str | Callable[[Path], bool]
"""How an earlier output of a kind is recognised without a state file: a file it always holds,
or a test of the folder (e.g. the tables of its ``config.toml``)."""


def _judge(
    path: Path,
    kind: str,
    marker: Marker | None,
    flag: str,
    command: str,
    inputs: dict[str, Any] | None,
    same: Callable[[Path], None] | None,
    hint: str,
) -> tuple[list[str], bool]:
    """Decide, reading only, whether ``path`` may receive this run: returns (entries, previous)
    or raises. The one rule every writing command follows (see :func:`prepare_output`)."""
    if not path.is_dir():
        return [], False
    entries = sorted(n for n in os.listdir(path) if n not in _OURS)
    state = read_state(path)
    if not entries:
        return [], False
    if state is not None and "kind" in state:
        previous = state.get("kind") == kind
    elif callable(marker):
        previous = marker(path)
    else:
        previous = marker is not None and marker in entries
    if not previous:
        raise OutputError(
            f"{flag} {path} already holds {_what(path, entries, state)}, not an earlier "
            f"`{command}` output; give a new or empty folder so that nothing is overwritten"
        )
    held = (state or {}).get("inputs")
    want = _plain(inputs) if inputs is not None else None
    if want is not None and isinstance(held, dict) and held != want:
        differ = sorted(k for k in set(held) | set(want) if held.get(k) != want.get(k))
        raise OutputError(
            f"{flag} {path} holds an earlier `{command}` output made with other settings "
            f"({', '.join(differ)} {'differs' if len(differ) == 1 else 'differ'}); it is left "
            f"as it is. {hint}"
        )
    if same is not None:
        same(path)
    return entries, True


def judge_output(
    path: str | Path,
    kind: str,
    *,
    marker: Marker | None = None,
    flag: str = "--out",
    command: str | None = None,
    inputs: dict[str, Any] | None = None,
    same: Callable[[Path], None] | None = None,
    hint: str = "Give the same settings, or another folder",
) -> bool:
    """:func:`prepare_output`'s judgement alone, reading only: raise unless ``path`` is new,
    empty or an earlier output of ``kind`` (with the same ``inputs``); return whether it is such
    an earlier output. For commands that write their folder in one atomic step of their own
    (``federate certs``, ``federate app``)."""
    path = check_output_dir(path, flag)
    command = command or f"feds2r {kind}"
    return _judge(path, kind, marker, flag, command, inputs, same, hint)[1]


def _plain(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value))


def prepare_output(
    path: str | Path,
    kind: str,
    *,
    marker: Marker | None = None,
    flag: str = "--out",
    command: str | None = None,
    inputs: dict[str, Any] | None = None,
    same: Callable[[Path], None] | None = None,
    keep: Callable[[Path], bool] | None = None,
    hint: str = "Give the same settings, or another folder",
) -> Output:
    """Check, create, lock and claim an output folder for one run of ``kind``.

    **The rule of every feds2r command that writes**: nothing is written into the folder until
    it is known to be new, empty, or an earlier output of the same ``kind`` (its state file
    says so, or ``marker`` recognises it) made with the same ``inputs`` (JSON values recorded
    in the state file) and accepted by ``same`` (a resumable run's own comparison, e.g. its
    config and data, raising :class:`Feds2rError` when they differ). Anything else is refused
    with the folder left byte for byte as it was, as is a file at ``path``, a read-only place
    or a folder locked by a live run.

    The folder is then locked (``.feds2r.lock``; removed again on refusal). A new or empty
    folder is marked in progress at once; an earlier output only when the caller calls
    :meth:`Output.begin` (or :meth:`Output.clear`, to replace it). The caller writes its files
    and calls :meth:`Output.finish`; on failure :meth:`Output.close` (or ``with``) releases
    the lock, leaves a folder it began marked incomplete, and puts a new or empty folder back
    as it found it when nothing worth keeping was written (``keep(path)``, e.g. a resumable
    training state, says what is).
    """
    path = check_output_dir(path, flag)
    command = command or f"feds2r {kind}"
    args = (kind, marker, flag, command, inputs, same, hint)
    _judge(path, *args)  # before anything is created, locked or marked
    created = not path.exists()
    top = path.absolute()
    while not top.parent.exists():
        top = top.parent
    if created:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create {flag} {path}: {_reason(exc)}") from None
    try:
        _take_lock(path / LOCK_NAME, flag, path)
    except BaseException:
        if created:
            _remove_created(path, top)
        raise
    try:
        entries, previous = _judge(path, *args)  # again under the lock: another run may have won
        out = Output(path, kind, previous, entries, created, inputs, keep, top if created else None)
        if out.fresh:
            out.begin()
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            (path / LOCK_NAME).unlink()
        if created:
            _remove_created(path, top)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise OutputError(f"{flag} {path} is not writable: {_reason(exc)}") from None
        raise
    return out


__all__ = [
    "LOCK_NAME",
    "STATE_NAME",
    "Output",
    "OutputError",
    "PickleError",
    "check_output_dir",
    "check_output_file",
    "config_tables",
    "is_safetensors_head",
    "judge_output",
    "prepare_output",
    "read_state",
    "refuse_pickle",
    "write_atomic",
    "write_json",
]

"""Published snapshots: the files the DAG factory reads (no database while DAGs are parsed).

One file per workflow, ``<workflows_dir>/<workflow id>.json``, written atomically (temp file,
fsync, rename) so a parser never sees half a file. A snapshot that cannot be loaded is reported
(``careflow workflows list``, the plugin API, the DAG factory's log) and never hides the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from careflow.compiler import CompiledWorkflow, compile_workflow
from careflow.exceptions import SnapshotError, this_user
from careflow.workflow import storable
from careflow.workflow.field_errors import field_path
from careflow.workflow.models import Workflow

SNAPSHOT_FORMAT = 1
SUFFIX = ".json"
#: Snapshot files are world-readable: they hold workflow definitions, never patient data.
SNAPSHOT_MODE = 0o644
#: Directories careflow creates for them are too, whatever the publishing user's umask: the DAG
#: processor and the workers may run as another user.
SNAPSHOT_DIR_MODE = 0o755


@dataclass(frozen=True)
class Snapshot:
    """A published workflow version as the factory sees it."""

    workflow_id: str
    version: int
    content_hash: str
    published_at: str
    start_date: str
    document: dict[str, Any]
    path: Path

    def to_json(self) -> dict[str, Any]:
        """The file's content."""
        return {
            "snapshot_format": SNAPSHOT_FORMAT,
            "workflow_id": self.workflow_id,
            "version": self.version,
            "content_hash": self.content_hash,
            "published_at": self.published_at,
            "start_date": self.start_date,
            "workflow": self.document,
        }


@dataclass(frozen=True)
class SnapshotProblem:
    """A snapshot file the factory could not load."""

    path: Path
    message: str


def snapshot_path(workflows_dir: Path, workflow_id: str) -> Path:
    """Where a workflow's snapshot lives."""
    return workflows_dir / f"{workflow_id}{SUFFIX}"


def write_snapshot(workflows_dir: Path, snapshot: Snapshot) -> Path:
    """Write a snapshot atomically; returns its path."""
    _make_dirs(workflows_dir)
    target = snapshot_path(workflows_dir, snapshot.workflow_id)
    data = json.dumps(snapshot.to_json(), ensure_ascii=False, indent=1, sort_keys=True).encode("utf-8")
    _write_atomically(target, data)
    return target


def _make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each :data:`SNAPSHOT_DIR_MODE` (a umask of 077 would
    leave them to their creator alone, and the DAG processor would find no workflow at all)."""
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:  # another publish made it meanwhile
            continue
        os.chmod(folder, SNAPSHOT_DIR_MODE)


def _write_atomically(target: Path, data: bytes) -> None:
    workflows_dir = target.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=workflows_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            # mkstemp creates the file 0600; the DAG processor and workers may run as another user.
            os.fchmod(fh.fileno(), SNAPSHOT_MODE)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(workflows_dir)


class ReplacedSnapshots:
    """The block in which a publish replaces snapshot files (around its transaction, so that it
    ends after the commit): each file :meth:`keep` was told of is put back as it was if the block
    fails, and forgotten if it does not. A commit that fails after the snapshot was written (a full
    disk, a deferred constraint) must not leave the DAG factory a version the database did not keep,
    and that the publish reported as failed.

    A kept file lives on under a second name (a hard link, which needs no space on a full disk) or,
    on a filesystem without hard links, as its bytes. That there was no file is kept as an empty
    file under such a name: a publish killed before its commit leaves it (:func:`left_kept`), and
    the next one knows that the snapshot it finds was never stored.
    """

    def __init__(self) -> None:
        self._kept: list[tuple[Path, Path | None, bytes | None]] = []
        #: the empty files that say there was no snapshot (removed when the block ends)
        self._none_before: list[Path] = []

    def keep(self, path: Path) -> None:
        """Keep the file at ``path`` (or that there is none) until the block ends."""
        aside = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}{KEPT_SUFFIX}")
        if not path.is_file():
            self._kept.append((path, None, None))
            try:
                aside.touch(exist_ok=False)  # no data: room for it even on a full disk
            except OSError:  # then the next publish's refusal says what to do
                return
            self._none_before.append(aside)
            return
        try:
            os.link(path, aside)
        except OSError:
            self._kept.append((path, None, path.read_bytes()))
        else:
            self._kept.append((path, aside, None))

    def __enter__(self) -> ReplacedSnapshots:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        kept, self._kept = self._kept, []
        for path, aside, content in reversed(kept):
            try:
                if exc_type is not None:
                    _put_back(path, aside, content)
            except OSError as exc:
                raise SnapshotError(
                    f"{path}: could not be put back as it was before this publish ({exc.strerror or exc}): "
                    "it holds a version the database did not keep; publish the workflow again"
                ) from exc
            finally:
                if aside is not None:
                    aside.unlink(missing_ok=True)
        marks, self._none_before = self._none_before, []
        for mark in marks:
            mark.unlink(missing_ok=True)


#: A file kept aside by :class:`ReplacedSnapshots`: ``.<workflow id>.<pid>.<8 hex digits>.kept``.
KEPT_SUFFIX = ".kept"
_KEPT_NAME = re.compile(r"\.(?P<stem>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}" + re.escape(KEPT_SUFFIX))


def left_kept(path: Path) -> list[Path]:
    """The files kept aside for the snapshot at ``path`` by publishes that ended without putting
    them back or letting them go: stopped (killed, the machine down) between writing the snapshot
    and their commit. Each holds the snapshot as it was before that publish, or nothing where
    there was none (:func:`kept_none`). A file whose process
    still runs on this machine is not among them: that publish may still be putting it back."""
    left = []
    try:
        with os.scandir(path.parent) as entries:
            names = [entry.name for entry in entries if entry.name.endswith(KEPT_SUFFIX)]
    except OSError:
        return []
    for name in sorted(names):
        match = _KEPT_NAME.fullmatch(name)
        if match is None or match["stem"] != path.stem:
            continue
        try:
            os.kill(int(match["pid"]), 0)
        except ProcessLookupError:
            left.append(path.with_name(name))
        except (OSError, OverflowError):  # another user's process (alive), or no pid at all
            pass
    return left


def kept_none(kept: Path) -> bool:
    """Whether ``kept``, a file :func:`left_kept` found, says there was no snapshot before the
    publish that left it (the publish of a new workflow)."""
    try:
        return kept.stat().st_size == 0
    except OSError:
        return False


def _put_back(path: Path, aside: Path | None, content: bytes | None) -> None:
    if aside is not None:
        if not (path.exists() and os.path.samefile(aside, path)):  # else never replaced
            os.replace(aside, path)
    elif content is not None:
        if not (path.is_file() and path.read_bytes() == content):  # else never replaced
            _write_atomically(path, content)
    elif path.is_file():  # not unlink(missing_ok): a read-only filesystem refuses even that
        path.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_snapshot(path: Path) -> Snapshot:
    """Load one snapshot file (SnapshotError naming the file and the problem)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{path.name}: not a readable JSON snapshot ({exc})") from exc
    found = raw.get("snapshot_format") if isinstance(raw, dict) else None
    if isinstance(found, int) and not isinstance(found, bool) and found > SNAPSHOT_FORMAT:
        raise SnapshotError(
            f"{path.name}: written by a newer careflow (snapshot format {found}; this careflow reads "
            f"format {SNAPSHOT_FORMAT}): run the same careflow release on every Airflow component and "
            "wherever workflows are published"
        )
    if found != SNAPSHOT_FORMAT:
        raise SnapshotError(f"{path.name}: not a careflow snapshot (format {SNAPSHOT_FORMAT} expected)")
    try:
        snap = Snapshot(
            workflow_id=str(raw["workflow_id"]),
            version=int(raw["version"]),
            content_hash=str(raw["content_hash"]),
            published_at=str(raw["published_at"]),
            start_date=str(raw.get("start_date") or raw["published_at"]),
            document=dict(raw["workflow"]),
            path=path,
        )
        datetime.fromisoformat(snap.start_date)
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"{path.name}: snapshot field missing or malformed ({exc})") from exc
    if path.stem != snap.workflow_id:
        raise SnapshotError(f"{path.name}: holds workflow {snap.workflow_id!r}; the file name must match")
    return snap


# In-process only: the DAG file never touches the network while it is parsed (docs/contracts.md §4), and a
# compile (tenths of a millisecond for a 10-node workflow) costs less than a Redis round trip.
_compiled: dict[str, CompiledWorkflow] = {}
_counts = {"hits": 0, "misses": 0}


def compile_cache_info() -> dict[str, int]:
    """This process's compiled-snapshot cache: ``{"hits", "misses", "size"}``."""
    return {**_counts, "size": len(_compiled)}


def compile_snapshot(snap: Snapshot) -> CompiledWorkflow:
    """Compile a snapshot, cached by content hash (a snapshot's content never changes under one hash)."""
    # The cache trusts the hash, so the hash must be the content's: a snapshot edited by hand is refused.
    if document_hash(snap.document) != snap.content_hash:
        raise SnapshotError(
            f"{snap.path.name}: the workflow does not match the snapshot's content hash "
            "(edited by hand?); publish it with `careflow workflows publish`"
        )
    key = f"{snap.content_hash}:{snap.version}"
    cached = _compiled.get(key)
    if cached is not None:
        _counts["hits"] += 1
        return cached
    _counts["misses"] += 1
    # A snapshot published before validation refused a value no database can store (a NUL in a
    # label) would build a DAG that Airflow cannot write, and with it every DAG of the file.
    for loc, reason in storable.problems(snap.document):
        raise SnapshotError(
            f"{snap.path.name}: '{field_path(loc) or 'workflow'}': {reason}; "
            "fix the workflow and publish it again"
        )
    try:
        workflow = Workflow.model_validate(snap.document)
        compiled = compile_workflow(workflow, version=snap.version, content_hash=snap.content_hash)
    except ValidationError as exc:
        raise SnapshotError(
            f"{snap.path.name}: the workflow in it does not compile ({_summary(exc)})"
        ) from exc
    except (ValueError, KeyError, StopIteration) as exc:
        raise SnapshotError(f"{snap.path.name}: the workflow in it does not compile ({exc!r})") from exc
    _compiled[key] = compiled
    return compiled


def document_hash(document: dict[str, Any]) -> str:
    """sha256 of a canonical workflow document, as :func:`careflow.compiler.hashing.content_hash` computes it."""
    data = json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def _summary(exc: ValidationError) -> str:
    # One line per snapshot in logs and in `careflow workflows list`.
    parts = [f"{'.'.join(map(str, e['loc'])) or 'workflow'}: {e['msg']}" for e in exc.errors()[:5]]
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def load_all(workflows_dir: Path) -> tuple[list[tuple[Snapshot, CompiledWorkflow]], list[SnapshotProblem]]:
    """Every loadable snapshot (compiled) and a problem for each file that is not."""
    good: list[tuple[Snapshot, CompiledWorkflow]] = []
    problems: list[SnapshotProblem] = []
    try:
        if not workflows_dir.is_dir():
            return good, problems
        with os.scandir(workflows_dir) as entries:  # pathlib's glob would find nothing, silently
            names = sorted(entry.name for entry in entries if entry.name.endswith(SUFFIX))
    except PermissionError:
        problems.append(
            SnapshotProblem(
                workflows_dir,
                f"{workflows_dir} ([careflow] workflows_dir): {this_user()} may not list it, so no "
                "workflow is loaded: let the user the DAG processor and the workers run as read and "
                "enter it and the directories above it",
            )
        )
        return good, problems
    for path in (workflows_dir / name for name in names):
        try:
            snap = read_snapshot(path)
            good.append((snap, compile_snapshot(snap)))
        except SnapshotError as exc:
            problems.append(SnapshotProblem(path, str(exc)))
        except Exception as exc:  # a bug must not hide the other workflows either
            problems.append(
                SnapshotProblem(path, f"{path.name}: unexpected error {type(exc).__name__}: {exc}")
            )
    return good, problems


def load_one(workflows_dir: Path, workflow_id: str) -> tuple[Snapshot, CompiledWorkflow]:
    """One workflow's snapshot, compiled (SnapshotError when missing or broken)."""
    path = snapshot_path(workflows_dir, workflow_id)
    if not path.exists():
        raise SnapshotError(f"workflow {workflow_id!r} has no published snapshot in {workflows_dir}")
    snap = read_snapshot(path)
    return snap, compile_snapshot(snap)

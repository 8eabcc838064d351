"""A run's users in Parquet chunks under object storage, so no task (and no XCom) ever holds more than one chunk.

The pull writes ``users-<n>.parquet`` files of about ``chunk_rows`` users each under the run's folder
(``DIDOMI_DYNAMICS_CHUNK_PATH``: any ``ObjectStoragePath`` URL, ``s3://conn_id@bucket/chunks``, ``gs://``,
``abfs://``; default ``file://$AIRFLOW_HOME/didomi_dynamics/chunks``, which only works where every worker shares that
disk) and returns one small :class:`ChunkRef` per file; the mapping and the push run as mapped tasks over them. A
user id found in two chunks (Didomi may hold two users with one ``organization_user_id``) is kept only in the chunk
holding its newest ``updated_at``: the older row is listed in its chunk's ``exclude``, so two parallel pushes never
write one contact. The run's key hashes (8 bytes a user) let the first chunk drop queued retries a fresh row replaces.
The folder is removed after a successful run and kept after a failed one, so a cleared task re-reads its chunk.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from airflow_provider_didomi_dynamics.mapping.flatten import UserFrameBuilder

log = logging.getLogger(__name__)

CHUNK_PATH_ENV = "DIDOMI_DYNAMICS_CHUNK_PATH"
CHUNK_ROWS_ENV = "DIDOMI_DYNAMICS_CHUNK_ROWS"
DEFAULT_CHUNK_ROWS = 50_000
KEY_COLUMN, UPDATED_COLUMN = "organization_user_id", "updated_at"
REF_KIND = "didomi_dynamics.chunk"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


@dataclass
class ChunkRef:
    """One chunk file as XCom carries it: a few hundred bytes, whatever the chunk holds."""

    folder: str  # the run's folder (an ObjectStoragePath URL)
    index: int
    count: int  # chunks in the run
    rows: int
    name: str  # file name inside ``folder``
    exclude: list[str] = field(default_factory=list)  # keys whose newer row another chunk holds

    def to_xcom(self) -> dict[str, Any]:
        return {"kind": REF_KIND, **asdict(self)}

    @classmethod
    def from_xcom(cls, value: Mapping[str, Any]) -> ChunkRef:
        data = {k: v for k, v in value.items() if k != "kind"}
        return cls(**data)

    def sibling(self, prefix: str, rows: int, suffix: str = "parquet") -> ChunkRef:
        """The ref of a file derived from this chunk (the mapped contacts, ...): same index, folder and exclusions."""
        name = f"{prefix}-{self.index:05d}.{suffix}"
        return ChunkRef(self.folder, self.index, self.count, rows, name, list(self.exclude))

    def path(self, name: str | None = None) -> Any:
        return storage_path(self.folder) / (name or self.name)


def is_chunk_ref(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get("kind") == REF_KIND


def storage_path(url: str) -> Any:
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(url)


def chunk_base() -> str:
    """Where every run's chunk folder goes (``DIDOMI_DYNAMICS_CHUNK_PATH``, else under ``AIRFLOW_HOME``)."""
    configured = os.environ.get(CHUNK_PATH_ENV, "").strip()
    if configured:
        return configured.rstrip("/")
    home = os.path.expanduser(os.environ.get("AIRFLOW_HOME") or "~/airflow")
    return f"file://{os.path.abspath(home)}/didomi_dynamics/chunks"


def run_folder(dag_id: str, run_id: str, task_id: str) -> str:
    return "/".join([chunk_base(), _UNSAFE.sub("_", dag_id), _UNSAFE.sub("_", run_id), _UNSAFE.sub("_", task_id)])


def chunk_rows_setting(value: Any = None) -> int:
    """Users per chunk: the operator's argument, else ``DIDOMI_DYNAMICS_CHUNK_ROWS``, else 50,000."""
    raw = value if value not in (None, "") else os.environ.get(CHUNK_ROWS_ENV, DEFAULT_CHUNK_ROWS)
    try:
        rows = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"chunk_rows must be a whole number of users, got {raw!r}") from None
    if rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {rows}")
    return rows


def write_frame(frame: pd.DataFrame, path: Any) -> None:
    """Parquet through a buffer: object stores want one put, and ``to_parquet`` seeks."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    with path.open("wb") as stream:
        stream.write(buffer.getvalue())


def read_frame(path: Any) -> pd.DataFrame:
    with path.open("rb") as stream:
        return pd.read_parquet(io.BytesIO(stream.read()))


def write_json(value: Any, path: Any) -> None:
    with path.open("w", encoding="utf-8") as stream:
        json.dump(value, stream, ensure_ascii=False, default=str)


def read_json(path: Any) -> Any:
    with path.open("r", encoding="utf-8") as stream:
        return json.load(stream)


def key_hashes(keys: Iterable[Any]) -> np.ndarray:
    """64-bit hashes of organization user ids, case-folded: Dataverse matches ``Ann@x.com`` and ``ann@x.com`` to one
    contact, so two chunks holding them would race for it."""
    values = np.asarray([k.casefold() if isinstance(k, str) else "" for k in keys], dtype=object)
    return pd.util.hash_array(values).astype(np.uint64) if len(values) else np.zeros(0, dtype=np.uint64)


class ChunkedUsers:
    """The pull's sink: Didomi users page by page into Parquet chunk files, each about ``chunk_rows`` users."""

    def __init__(self, folder: str, chunk_rows: int) -> None:
        self.folder = folder
        self.chunk_rows = chunk_rows
        self.builder = UserFrameBuilder()
        self.refs: list[ChunkRef] = []
        self._hashes: list[np.ndarray] = []  # per written chunk: sorted key hashes
        self._stamps: list[np.ndarray] = []  # ... and the newest updated_at (ns) of each, in the same order
        self._keys: list[np.ndarray] = []  # ... and the key text, to name an excluded row exactly
        self._holds: list[np.ndarray] = []  # ... and whether that chunk still writes the key
        self.duplicates_across_chunks = 0
        self.without_key = 0
        start = storage_path(folder)
        if start.exists():  # a cleared pull starts over: no chunk, report or key index of its last try survives
            start.rmdir(recursive=True)
        start.mkdir(parents=True, exist_ok=True)

    def add_users(self, users: Iterable[dict[str, Any]]) -> None:
        """Add a page; a chunk is written each time ``chunk_rows`` users are held (a page may end two chunks)."""
        batch = list(users)
        while batch:
            room = self.chunk_rows - len(self.builder)
            self.builder.add_users(batch[:room])
            batch = batch[room:]
            if len(self.builder) >= self.chunk_rows:
                self._flush()

    @property
    def rows_written(self) -> int:
        return sum(ref.rows for ref in self.refs)

    def finish(self) -> list[ChunkRef]:
        """Write the last chunk (an empty run still gets one, so the mapped tasks run once and report 0 rows)."""
        if len(self.builder) or not self.refs:
            self._flush()
        for ref in self.refs:
            ref.count = len(self.refs)
        everything = np.concatenate(self._hashes) if self._hashes else np.zeros(0, dtype=np.uint64)
        with (storage_path(self.folder) / "keys.npy").open("wb") as stream:
            buffer = io.BytesIO()
            np.save(buffer, np.unique(everything))
            stream.write(buffer.getvalue())
        if self.duplicates_across_chunks:
            log.info(
                "%d organization_user_id(s) found in two chunks: each is written from its newest row only",
                self.duplicates_across_chunks,
            )
        return self.refs

    def _flush(self) -> None:
        frame = self.builder.to_frame()
        self.builder = UserFrameBuilder()
        index = len(self.refs)
        ref = ChunkRef(self.folder, index, 0, len(frame), f"users-{index:05d}.parquet")
        write_frame(frame, ref.path())
        self.refs.append(ref)
        self._index(ref, frame)
        log.info("chunk %d written: %d user(s) (%s)", index, len(frame), ref.path())

    def _index(self, ref: ChunkRef, frame: pd.DataFrame) -> None:
        """Remember this chunk's keys; a key an earlier chunk holds too stays only where its row is newest."""
        if KEY_COLUMN not in frame.columns or not len(frame):
            self.without_key += len(frame)
            self._hashes.append(np.zeros(0, dtype=np.uint64))
            self._stamps.append(np.zeros(0, dtype=np.int64))
            self._keys.append(np.zeros(0, dtype=object))
            self._holds.append(np.zeros(0, dtype=bool))
            return
        keys = frame[KEY_COLUMN].astype(object).where(frame[KEY_COLUMN].notna(), None).to_numpy()
        present = np.asarray([isinstance(k, str) and bool(k.strip()) for k in keys], dtype=bool)
        # rows of one key inside this chunk: the push settles them (newest wins, the others reported superseded)
        keys = keys[present]
        self.without_key += int(len(present) - present.sum())
        stamps = (
            pd.to_datetime(frame[UPDATED_COLUMN], utc=True).astype("int64").to_numpy()[present]
            if UPDATED_COLUMN in frame.columns
            else np.full(len(keys), np.iinfo(np.int64).min)
        )
        hashes = key_hashes(keys)
        # newest row per key inside this chunk (the mapping keeps that one too)
        order = np.lexsort((stamps, hashes))
        hashes, stamps, keys = hashes[order], stamps[order], keys[order]
        last = np.ones(len(hashes), dtype=bool)
        last[:-1] = hashes[1:] != hashes[:-1]
        hashes, stamps, keys = hashes[last], stamps[last], keys[last]
        holds = np.ones(len(hashes), dtype=bool)  # this chunk writes the key (until a newer chunk takes it)
        for earlier, (old_hashes, old_stamps, old_keys) in enumerate(
            zip(self._hashes, self._stamps, self._keys, strict=True)
        ):
            _, mine, theirs = np.intersect1d(hashes, old_hashes, assume_unique=True, return_indices=True)
            old_holds = self._holds[earlier]
            for at, other in zip(mine.tolist(), theirs.tolist(), strict=True):
                if not old_holds[other] or not holds[at] or keys[at].casefold() != old_keys[other].casefold():
                    continue  # settled already, or a 64-bit hash collision of two different ids (both stay)
                self.duplicates_across_chunks += 1
                if stamps[at] >= old_stamps[other]:  # the later chunk wins a tie, as the later row does in a frame
                    self.refs[earlier].exclude.append(str(old_keys[other]))
                    old_holds[other] = False
                else:
                    ref.exclude.append(str(keys[at]))
                    holds[at] = False
        self._holds.append(holds)
        self._hashes.append(hashes)
        self._stamps.append(stamps)
        self._keys.append(keys)


def excluded_rows(frame: pd.DataFrame, chunk: ChunkRef) -> pd.Series:
    """Which rows of a chunk's frame another chunk supersedes (keys compared case-folded, as Dataverse does)."""
    if not chunk.exclude or KEY_COLUMN not in frame.columns:
        return pd.Series(False, index=frame.index)
    gone = {k.casefold() for k in chunk.exclude}
    return frame[KEY_COLUMN].map(lambda k: isinstance(k, str) and k.casefold() in gone).astype(bool)


def run_key_hashes(ref: ChunkRef) -> np.ndarray:
    """Every organization user id the run's pull wrote (sorted hashes), or none when the file is unreadable."""
    try:
        with (storage_path(ref.folder) / "keys.npy").open("rb") as stream:
            return np.load(io.BytesIO(stream.read()))
    except (OSError, ValueError) as err:
        log.warning("could not read the run's key index (%s); queued retries are all kept", err)
        return np.zeros(0, dtype=np.uint64)


def contains(sorted_hashes: np.ndarray, keys: Iterable[Any]) -> np.ndarray:
    """Which ``keys`` the sorted hash array holds."""
    wanted = key_hashes(keys)
    if not len(sorted_hashes) or not len(wanted):
        return np.zeros(len(wanted), dtype=bool)
    at = np.searchsorted(sorted_hashes, wanted).clip(0, len(sorted_hashes) - 1)
    return np.asarray(sorted_hashes[at] == wanted)


SUPERSEDED_BY_OTHER_CHUNK = "superseded: an earlier run could not write this row, a newer one of this run replaces it"
SUPERSEDED_IN_OTHER_CHUNK = "superseded: another chunk of this run writes a newer row for this organization_user_id"


def superseded_by_other_chunks(
    queued: list[dict[str, Any]], chunk: ChunkRef, frame: pd.DataFrame
) -> tuple[list[dict[str, Any]], list[str]]:
    """Queued rows to retry in this chunk, and the keys of those whose fresh row another chunk of the run writes."""
    here = {k.casefold() for k in frame[KEY_COLUMN].dropna().astype(str)} if KEY_COLUMN in frame.columns else set()
    keys = [str(row.get(KEY_COLUMN) or "") for row in queued]
    in_run = contains(run_key_hashes(chunk), keys)
    kept, superseded = [], []
    for row, key, elsewhere in zip(queued, keys, in_run.tolist(), strict=True):
        if elsewhere and key.casefold() not in here:
            superseded.append(key)
        else:
            kept.append(row)
    return kept, superseded


def remove_folder(url: str) -> None:
    """Delete a run's chunk folder (after the run succeeded); a failure is logged, the run stays successful."""
    try:
        path = storage_path(url)
        if path.exists():
            path.rmdir(recursive=True)
    except Exception as err:  # the sync is done; a leftover folder costs disk, not correctness
        log.warning("could not remove the chunk folder %s: %s", url, err)


__all__ = [
    "CHUNK_PATH_ENV",
    "CHUNK_ROWS_ENV",
    "SUPERSEDED_BY_OTHER_CHUNK",
    "SUPERSEDED_IN_OTHER_CHUNK",
    "ChunkRef",
    "ChunkedUsers",
    "chunk_rows_setting",
    "contains",
    "excluded_rows",
    "is_chunk_ref",
    "read_frame",
    "read_json",
    "remove_folder",
    "run_folder",
    "run_key_hashes",
    "superseded_by_other_chunks",
    "write_frame",
    "write_json",
]

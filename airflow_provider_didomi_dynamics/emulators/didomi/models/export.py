"""Didomi's daily batch export, as the emulator writes it: ``<base>/export-id=<id>/date=<YYYY-MM-DD>/users/``.

Didomi documents the layout (Hive-style partitions ``export-id`` and ``date``), the files (newline-delimited JSON,
gzip, ``.json.gz``, any number of them per partition, names subject to change) and a ``_SUCCESS`` marker once a
partition is complete. Each line is one user: its latest state, as the consents API returns it, plus its events.
The marker is written last, so a reader that finds it finds every file.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

DEFAULT_PART_USERS = 50_000


def partition(base: Path, export_id: str, date: str) -> Path:
    return Path(base) / f"export-id={export_id}" / f"date={date}"


def write_export(
    model: Any, base: Path, export_id: str, date: str, *, part_users: int = DEFAULT_PART_USERS, complete: bool = True
) -> dict[str, Any]:
    """Write the model's users (and their events) as one export partition; ``complete`` False leaves out
    ``_SUCCESS`` (an export Didomi is still writing). Returns where it went and how many users and files."""
    folder = partition(base, export_id, date)
    users_dir = folder / "users"
    users_dir.mkdir(parents=True, exist_ok=True)
    events_by_user: dict[str, list[dict[str, Any]]] = {}
    for event in model.events():
        events_by_user.setdefault(str((event.get("user") or {}).get("id") or ""), []).append(event)
    users = model.users()
    files = 0
    for start in range(0, max(len(users), 1), part_users):
        part = users[start : start + part_users]
        with gzip.open(users_dir / f"part-{files:05d}.json.gz", "wt", encoding="utf-8") as out:
            for user in part:
                out.write(json.dumps({**user, "events": events_by_user.get(str(user.get("id")), [])}) + "\n")
        files += 1
    if complete:
        (folder / "_SUCCESS").write_text("")
    return {"path": str(folder), "users": len(users), "files": files, "complete": complete}


__all__ = ["DEFAULT_PART_USERS", "partition", "write_export"]

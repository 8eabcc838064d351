"""Didomi's daily batch export as the emulator writes it and the sync reads it (``sync/didomi_export.py``)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from airflow_provider_didomi_dynamics.emulators.didomi.models import DidomiModel
from airflow_provider_didomi_dynamics.emulators.didomi.models.export import write_export
from airflow_provider_didomi_dynamics.sync.didomi_export import ExportError, iter_export_users, resolve_date


@pytest.fixture
def model() -> DidomiModel:
    didomi = DidomiModel()
    didomi.seed_demo(2_500)
    return didomi


def test_every_user_of_a_multi_part_export_comes_back_once_in_bounded_batches(
    model: DidomiModel, tmp_path: Path, airflow_db: Path
) -> None:
    written = write_export(model, tmp_path, "abc", "2026-12-02", part_users=1_000)
    assert written["files"] == 3 and (tmp_path / "export-id=abc" / "date=2026-12-02" / "_SUCCESS").exists()

    batches = list(iter_export_users(f"file://{tmp_path}/export-id=abc", batch_size=400))

    assert max(len(b) for b in batches) == 400
    read = [user for batch in batches for user in batch]
    assert sorted(u["id"] for u in read) == sorted(u["id"] for u in model.users())
    assert all("events" not in u for u in read), "the sync reads the latest state, not the event history"
    assert read[0] == model.users()[0], "a line is the user as the API returns it"


def test_the_newest_complete_date_is_read_and_an_unfinished_one_says_so(
    model: DidomiModel, tmp_path: Path, airflow_db: Path
) -> None:
    base = f"file://{tmp_path}/export-id=abc"
    write_export(model, tmp_path, "abc", "2026-12-01")
    write_export(model, tmp_path, "abc", "2026-12-02")
    write_export(model, tmp_path, "abc", "2026-12-03", complete=False)  # Didomi still writing today's

    assert resolve_date(base) == "2026-12-02"
    with pytest.raises(ExportError, match=r"date=2026-12-03 has no _SUCCESS marker") as refused:
        resolve_date(base, "2026-12-03")
    assert refused.value.retryable, "an export being written is ready later: retry"


def test_an_export_without_any_complete_date_and_a_wrong_path_are_clear_errors(
    tmp_path: Path, airflow_db: Path
) -> None:
    (tmp_path / "export-id=abc" / "date=2026-12-03" / "users").mkdir(parents=True)
    with pytest.raises(ExportError, match="no date=YYYY-MM-DD partition with a _SUCCESS marker yet"):
        resolve_date(f"file://{tmp_path}/export-id=abc")
    with pytest.raises(ExportError, match=r"no such folder; set the export path") as wrong:
        resolve_date(f"file://{tmp_path}/export-id=nope")
    assert not wrong.value.retryable


def test_a_line_that_is_not_a_user_stops_the_read_naming_file_and_line(
    model: DidomiModel, tmp_path: Path, airflow_db: Path
) -> None:
    write_export(model, tmp_path, "abc", "2026-12-02", part_users=1_000)
    broken = tmp_path / "export-id=abc" / "date=2026-12-02" / "users" / "part-00001.json.gz"
    with gzip.open(broken, "rt", encoding="utf-8") as lines:
        kept = lines.readlines()
    kept[6] = '{"id": "cut-sh\n'
    with gzip.open(broken, "wt", encoding="utf-8") as out:
        out.writelines(kept)

    with pytest.raises(ExportError, match=r"part-00001\.json\.gz, line 7: not JSON"):
        for _ in iter_export_users(f"file://{tmp_path}/export-id=abc"):
            pass

"""A forward run in chunks: the pull writes Parquet chunks, mapping and push are mapped over them, ``push_contacts``
adds the chunks' reports up. What a person sees must not depend on how many chunks a run had: the same contacts,
every row once in the report, failed rows retried once, a small XCom, and no chunk file left after a success.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from campaign_engine import engine
from dag_e2e_support import FORWARD, Sync, assert_accounted, mapped, push_report, rows_of

from airflow_provider_didomi_dynamics.local.testing import load_dag
from airflow_provider_didomi_dynamics.sync.chunks import SUPERSEDED_IN_OTHER_CHUNK
from airflow_provider_didomi_dynamics.sync.retry_queue import VARIABLE_PREFIX

USERS = 300
CHUNK_ROWS = 70  # 300 users: chunks of 70, 70, 70, 70 and 20


@pytest.fixture
def chunks_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Chunk files under a folder the test can look into; the chunk size small enough for five chunks."""
    folder = tmp_path / "chunks"
    monkeypatch.setenv("DIDOMI_DYNAMICS_CHUNK_PATH", f"file://{folder}")
    monkeypatch.setenv("DIDOMI_DYNAMICS_CHUNK_ROWS", str(CHUNK_ROWS))
    return folder


def chunk_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def retry_queue_rows() -> dict[str, list[dict[str, Any]]]:
    """Every retry queue Variable (Admin > Variables), decoded."""
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(Variable).where(Variable.key.like(f"{VARIABLE_PREFIX}.%"))).all()
        return {row.key: json.loads(row.val) for row in rows if row.val}


def user_reads(sync: Sync) -> int:
    """GET requests the Didomi emulator answered on its users route."""
    rows = sync.didomi.requests.as_rows()
    return sum(r["count"] for r in rows if r["method"] == "GET" and r["route"] == "/v1/consents/users")


def xcom_bytes(result: Any) -> int:
    """What the run keeps in XCom (every map index's value too), as JSON text."""
    values = [*result.xcoms.values(), *(v for m in result.mapped_xcoms.values() for v in m.values())]
    return sum(len(json.dumps(v, default=str)) for v in values)


def test_five_chunks_write_what_one_chunk_writes_and_report_every_row_once(
    make_sync: Callable[[], Sync], chunks_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunked = make_sync()
    chunked.seed(users=USERS)
    chunked.set_config(upsert_mode=True)
    users = chunked.users()

    result = chunked.forward(full_sync=True)

    assert result.state == "success", result.task_states
    assert len(result.mapped_states["push_chunks"]) == 5
    assert set(result.mapped_states["push_chunks"].values()) == {"success"}
    report = push_report(result, "push_contacts")
    assert report["chunks"] == 5 and report["summary"].endswith("in 5 chunks")
    assert report["mapping"]["users"] == USERS  # the chunks' mapping reports, added up
    assert report["mapping"]["contacts"] == len(users)
    assert_accounted(report, len(users))
    every_row = [*rows_of(report, "skipped"), *rows_of(report, "failed")]
    assert every_row == [], every_row
    assert report["counts"]["created"] + report["counts"]["updated"] + report["counts"]["unchanged"] == len(users)
    assert sorted(chunked.contacts()) == sorted(users)
    assert chunked.duplicate_emails() == []
    assert xcom_bytes(result) < 60_000, "XCom holds chunk refs and reports, never a frame"
    assert not any(isinstance(v, (list, dict)) and "frame" in str(type(v)) for v in result.xcoms.values())
    assert chunk_files(chunks_home) == [], "a successful run removes its chunk files"

    monkeypatch.setenv("DIDOMI_DYNAMICS_CHUNK_ROWS", "50000")
    whole = make_sync()  # the same seed in one chunk
    whole.seed(users=USERS)
    whole.set_config(upsert_mode=True)
    one = whole.forward(full_sync=True)
    assert one.state == "success" and push_report(one, "push_contacts")["chunks"] == 1
    assert push_report(one, "push_contacts")["counts"] == report["counts"]
    reference, actual = whole.contacts(), chunked.contacts()
    for key in reference:
        assert mapped(actual[key]) == mapped(reference[key]), key


def test_a_failed_chunk_keeps_its_files_queues_its_rows_once_and_a_clear_finishes_the_run(
    sync: Sync, chunks_home: Path, fast_http_retries: None
) -> None:
    sync.seed(users=USERS)
    sync.set_config(upsert_mode=True)
    users, before = sync.users(), sync.contacts()
    missing = set(users) - set(before)
    sync.dataverse.faults.arm("status", 500, status=503, path_contains="UpsertMultiple", method="POST")

    failed = sync.forward(full_sync=True)

    assert failed.state == "failed"
    assert "failed" in failed.mapped_states["push_chunks"].values()
    assert failed.task_states["push_contacts"] == "failed"
    report = push_report(failed, "push_contacts")
    assert {row["key"] for row in rows_of(report, "failed")} == missing
    assert_accounted(report, len(users))
    queues = retry_queue_rows()
    assert len(queues) == 1, queues
    [(queue, queued)] = queues.items()
    assert ".push_contacts." in queue, "the queue is named after the task a person knows"
    assert sorted(row["organization_user_id"] for row in queued) == sorted(missing), "each failed row queued once"
    assert any(name.startswith("users-") for name in chunk_files(chunks_home)), "a failed run keeps its chunks"
    assert sorted(sync.contacts()) == sorted(before)

    sync.dataverse.faults.clear()
    rerun = engine.clear_and_rerun(load_dag(FORWARD), failed.run_id)  # "Clear" on the failed tasks, downstream too

    assert rerun.state == "success", rerun.task_states
    report = push_report(rerun, "push_contacts")
    assert report["counts"]["failed"] == 0
    assert sorted(sync.contacts()) == sorted(users)
    assert sync.duplicate_emails() == []
    assert retry_queue_rows() == {} or all(rows == [] for rows in retry_queue_rows().values())
    assert chunk_files(chunks_home) == []


def test_one_person_in_two_chunks_is_written_once_from_the_newest_row_and_the_older_is_reported(
    sync: Sync, chunks_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIDOMI_DYNAMICS_CHUNK_ROWS", "10")
    sync.seed(users=0)  # the columns and alternate key the demo config maps, no one yet
    newer = engine.consent_user("Twin@Example.com", newsletter=False, updated_at="2026-09-05T00:00:00.000Z")
    newer["id"] = "didomi-twin-newer"
    filler = [engine.consent_user(f"filler{i:02d}@example.com") for i in range(20)]
    older = engine.consent_user("twin@example.com", newsletter=True, updated_at="2026-09-01T00:00:00.000Z")
    sync.didomi.add_users([newer, *filler, older])  # the newer row in the first chunk, the older in the third
    sync.dataverse.add_contacts([{"emailaddress1": "twin@example.com", "donotbulkemail": False}])
    sync.set_config(upsert_mode=True)

    result = sync.forward(full_sync=True)

    assert result.state == "success", result.task_states
    report = push_report(result, "push_contacts")
    assert report["chunks"] == 3
    assert report["total"] == 22 == sum(report["counts"].values())
    [skipped] = rows_of(report, "skipped")
    assert skipped["key"] == "twin@example.com" and skipped["reason"] == SUPERSEDED_IN_OTHER_CHUNK
    twins = [c for c in sync.contact_rows() if str(c["emailaddress1"]).casefold() == "twin@example.com"]
    assert len(twins) == 1
    assert twins[0]["donotbulkemail"] is True, "the newer row (newsletter withdrawn) wins, whatever the chunk order"


def test_an_incremental_run_that_finds_nothing_writes_one_empty_chunk_and_nothing_else(
    sync: Sync, chunks_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync.seed(users=USERS)
    monkeypatch.setenv("DIDOMI_DYNAMICS_KEEP_CHUNKS", "1")  # to look at what the pull wrote
    writes = sync.dataverse_writes()

    result = sync.forward(since="2030-01-01T00:00:00Z")  # a window no user changed in

    assert result.state == "success", result.task_states
    pull = result.value("pull_consents", "pull_report")
    assert pull["scanned"] == USERS and pull["kept"] == 0 and pull["chunks"] == 1
    assert [name for name in chunk_files(chunks_home) if name.startswith("users-")] == ["users-00000.parquet"]
    report = push_report(result, "push_contacts")
    assert report["total"] == 0 and report["chunks"] == 1
    assert sync.dataverse_writes() == writes


def test_a_full_sync_from_didomis_batch_export_writes_what_the_api_pull_writes_without_paging_the_api(
    make_sync: Callable[[], Sync], chunks_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_didomi_dynamics.emulators.didomi.models.export import write_export

    exported = make_sync()
    exported.seed(users=USERS)
    exported.set_config(upsert_mode=True)
    write_export(exported.didomi, tmp_path / "export", "abc", "2026-12-02", part_users=120)
    monkeypatch.setenv("DIDOMI_DYNAMICS_EXPORT_PATH", f"file://{tmp_path}/export/export-id=abc")
    before = user_reads(exported)

    result = exported.forward(full_sync=True)

    assert result.state == "success", result.task_states
    pull = result.value("pull_consents", "pull_report")
    assert pull["source"] == "didomi_export" and pull["export"]["date"] == "2026-12-02"
    assert pull["export"]["files"] == 3 and pull["scanned"] == USERS and pull["chunks"] == 5
    export_reads = user_reads(exported) - before
    monkeypatch.delenv("DIDOMI_DYNAMICS_EXPORT_PATH")
    paged = make_sync()  # the same seed, pulled through the API
    paged.seed(users=USERS)
    paged.set_config(upsert_mode=True)
    api_run = paged.forward(full_sync=True)
    assert api_run.state == "success"
    # preflight and the conflict rule read a few users either way; the export saves the pages of the pull
    assert user_reads(paged) - export_reads >= USERS // 100, (user_reads(paged), export_reads)
    assert push_report(result, "push_contacts")["counts"] == push_report(api_run, "push_contacts")["counts"]
    reference, actual = paged.contacts(), exported.contacts()
    assert sorted(actual) == sorted(reference)
    for key in reference:
        assert mapped(actual[key]) == mapped(reference[key]), key

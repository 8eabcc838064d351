"""The run report a person reads in the UI: a summary first, reasons grouped, bounded whatever the number of rows."""

from __future__ import annotations

import json

from airflow_provider_didomi_dynamics.core.report import LISTED_ROWS, REASON_GROUPS, Outcome, RunReport

XCOM_BOUND = 64 * 1024


def big_report(rows: int = 100_000) -> RunReport:
    """60% skipped for want of a contact, 30% failed with a distinct (long) API message each, 10% updated."""
    report = RunReport("push_contacts")
    for i in range(rows):
        key = f"user{i:07d}@example.com"
        if i % 10 < 6:
            report.add(key, Outcome.SKIPPED, f"no contact with emailaddress1={key}")
        elif i % 10 < 9:
            message = f"0x80040237 row {i}: " + "A record with matching key values already exists. " * 8
            report.add(key, Outcome.FAILED, message)
        else:
            report.add(key, Outcome.UPDATED, changes={"donotbulkemail": True, "new_consentsource": "web" * 20})
    report.note_retried([f"user{i:07d}@example.com" for i in range(5_000)])
    return report


def test_the_xcom_report_stays_under_64_kb_at_100k_rows() -> None:
    report = big_report()
    result = report.as_dict(rows_file="file:///airflow/didomi_dynamics/reports/d/r/push_contacts.try1.jsonl")
    size = len(json.dumps(result))
    assert size < XCOM_BOUND, size
    assert next(iter(result)) == "summary"
    assert result["summary"] == "push_contacts: 100000 row(s): 10000 updated, 60000 skipped, 30000 failed"
    assert result["counts"]["skipped"] == 60_000 and result["total"] == 100_000
    assert len(result["failed"]) == len(result["skipped"]) == LISTED_ROWS
    assert result["rows_file"].endswith("push_contacts.try1.jsonl")
    assert "every row is in rows_file" in result["rows_listed"]
    assert len(result["retried_keys"]) == LISTED_ROWS and result["retried_from_earlier_runs"] == 5_000


def test_reasons_that_name_their_row_are_grouped_with_a_few_keys_each() -> None:
    result = big_report(10_000).as_dict()
    [skipped] = result["skipped_by_reason"]
    assert skipped == {
        "reason": "no contact with emailaddress1=<key>",
        "rows": 6_000,
        "sample": [f"user{i:07d}@example.com" for i in (0, 1, 2, 3, 4)],
    }
    failed = result["failed_by_reason"]
    assert len(failed) == REASON_GROUPS + 1  # 3,000 distinct messages: the largest groups, then the rest counted
    assert failed[-1]["reason"] == f"{3_000 - REASON_GROUPS} other reason(s)"
    assert sum(group["rows"] for group in failed) == 3_000
    assert all(len(group["reason"]) <= 2000 for group in failed)


def test_small_reports_list_every_row_and_the_rows_file_holds_them_all() -> None:
    report = RunReport("push_consents")
    report.add("a@x.com", Outcome.SENT, changes={"consents_purposes_newsletter_enabled": True})
    report.add("b@x.com", Outcome.SKIPPED, "no Didomi user")
    result = report.as_dict()
    assert result["skipped"] == [{"key": "b@x.com", "outcome": "skipped", "reason": "no Didomi user"}]
    assert "rows_listed" not in result and "rows_file" not in result
    lines = [json.loads(line) for line in report.rows_lines()]
    assert [row["outcome"] for row in lines] == ["sent", "skipped"]


def test_long_reasons_shorten_the_lists_never_grow_the_report_past_the_bound() -> None:
    report = RunReport("push_consents")
    for i in range(100_000):
        report.add(f"u{i}@x.com", Outcome.FAILED, f"HTTP 400 for u{i}: " + "x" * 5_000)
        report.add(f"v{i}@x.com", Outcome.SKIPPED, f"conflict {i}: " + "y" * 5_000)
    result = report.as_dict()
    assert len(json.dumps(result)) < XCOM_BOUND
    assert result["counts"]["failed"] == 100_000 and 0 < len(result["failed"]) < LISTED_ROWS
    assert sum(group["rows"] for group in result["failed_by_reason"]) == 100_000

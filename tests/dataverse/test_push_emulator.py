"""DataversePushContactsOperator and its ContactPusher against the emulator: outcomes, options, faults, re-runs."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException
from dv_support import FREQUENCY_MAX_LENGTH, FakeTI, Org, contacts_frame

from airflow_provider_didomi_dynamics.emulators.dataverse import ServiceProtection
from airflow_provider_didomi_dynamics.hooks.dataverse import DataverseHook
from airflow_provider_didomi_dynamics.operators.dataverse import DataversePushContactsOperator
from airflow_provider_didomi_dynamics.sync.push_contacts import ContactPusher, PushOptions

T0 = "2024-05-01T00:00:00Z"


def row(key: str | None, **values: Any) -> dict[str, Any]:
    return {"organization_user_id": key, "updated_at": values.pop("updated_at", T0), **values}


def push(
    org: Org,
    rows: list[dict[str, Any]],
    *,
    config: Any = None,
    hook: DataverseHook | None = None,
    retry_rows: Any = None,
    **options: Any,
) -> tuple[dict[str, Any], ContactPusher]:
    pusher = ContactPusher(hook or org.hook(), config or org.config(), PushOptions(**options))
    report = pusher.run(contacts_frame(rows), retry_rows)
    return report.as_dict(sample=1000), pusher


def outcomes(report: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in report["counts"].items() if v}


def test_every_outcome_and_only_changed_columns(org: Org) -> None:
    ids = org.add(
        [
            {"emailaddress1": "change@x.com", "donotbulkemail": True, "followemail": True, "donotphone": False},
            {"emailaddress1": "same@x.com", "donotbulkemail": True, "followemail": False},
        ]
    )
    same_version = org.model.contacts_rows()[1]["versionnumber"]
    org.model.fail_validation_for("new_frequency", "poison")
    hook = org.hook()
    bodies: list[bytes] = []
    hook.get_conn().hooks["response"].append(
        lambda r, *a, **k: bodies.append(r.request.body or b"") if "CRM.UpdateMultiple" in r.request.url else None
    )
    report, pusher = push(
        org,
        [
            row("CHANGE@x.com", donotbulkemail=True, followemail=False, donotphone=None),  # case differs
            row("same@x.com", donotbulkemail=True, followemail=False),
            row("new@x.com", donotbulkemail=False, new_frequency="weekly"),
            row("bad@x.com", donotbulkemail=False, new_frequency="poison"),
            row(None, donotbulkemail=True),
        ],
        hook=hook,
    )
    assert outcomes(report) == {"created": 1, "updated": 1, "unchanged": 1, "skipped": 1, "failed": 1}
    assert report["total"] == 5
    [failed] = report["failed"]
    assert failed["key"] == "bad@x.com" and "failed validation" in failed["reason"]
    assert report["skipped"] == [{"key": "", "outcome": "skipped", "reason": "no organization_user_id"}]
    rows = {r["emailaddress1"]: r for r in org.model.contacts_rows()}
    assert rows["change@x.com"]["contactid"] == ids[0]
    assert rows["change@x.com"]["followemail"] is False and rows["change@x.com"]["donotphone"] is False
    assert rows["same@x.com"]["versionnumber"] == same_version  # never written
    assert rows["new@x.com"]["new_frequency"] == "weekly" and rows["new@x.com"]["donotbulkemail"] is False
    assert "bad@x.com" not in rows
    [body] = bodies
    [target] = json.loads(body)["Targets"]
    # only the changed column: donotbulkemail is unchanged, donotphone is null (skipped)
    assert target == {"@odata.type": "Microsoft.Dynamics.CRM.contact", "contactid": ids[0], "followemail": False}
    assert report["http_requests"] >= 4 and report["seconds"] > 0
    assert [r["organization_user_id"] for r in pusher.failed_inputs] == ["bad@x.com"]
    assert pusher.failed_inputs[0]["new_frequency"] == "poison"


def test_without_upsert_mode_missing_contacts_are_skipped_with_the_seed_reason(org: Org) -> None:
    report, _ = push(org, [row("ghost@x.com", followemail=True)], config=org.config(upsert_mode=False))
    assert report["skipped"] == [
        {"key": "ghost@x.com", "outcome": "skipped", "reason": "no contact with emailaddress1=ghost@x.com"}
    ]
    assert org.model.contact_count() == 0
    assert org.writes() == 0


def test_null_values_skip_and_clear(org: Org) -> None:
    org.add([{"emailaddress1": "n@x.com", "followemail": True, "donotphone": True}])
    report, _ = push(org, [row("n@x.com", followemail=None, donotphone=True)])
    assert outcomes(report) == {"unchanged": 1}
    clear = org.config(properties={"null_values": "clear"})
    report, _ = push(org, [row("n@x.com", donotbulkemail=False, followemail=None, donotphone=True)], config=clear)
    assert outcomes(report) == {"updated": 1}
    assert report["sample_changes"][0]["changes"] == {"followemail": None}
    assert org.model.contacts_rows()[0]["followemail"] is None


def test_custom_key_attribute(org: Org) -> None:
    org.add([{"externaluseridentifier": "user-1", "emailaddress1": "k@x.com"}])
    config = org.config(properties={"contact_key_attribute": "externaluseridentifier"})
    report, _ = push(org, [row("user-1", followemail=False), row("user-2", followemail=False)], config=config)
    assert outcomes(report) == {"updated": 1, "created": 1}
    assert {r["externaluseridentifier"] for r in org.model.contacts_rows()} == {"user-1", "user-2"}


def test_a_bad_row_inside_a_bulk_request_is_isolated_and_the_rest_land(org: Org) -> None:
    org.add([{"emailaddress1": f"u{i:03d}@x.com"} for i in range(300)])
    rows = [row(f"u{i:03d}@x.com", new_frequency="daily") for i in range(300)]
    rows[17]["new_frequency"] = "x" * (FREQUENCY_MAX_LENGTH + 1)  # too long: Dataverse validation
    rows[250]["new_frequency"] = "y" * (FREQUENCY_MAX_LENGTH + 5)
    report, _ = push(org, rows, batch_size=100)
    assert outcomes(report) == {"updated": 298, "failed": 2}
    assert {f["key"] for f in report["failed"]} == {"u017@x.com", "u250@x.com"}
    assert all("length" in f["reason"].lower() or "maxlength" in f["reason"].lower() for f in report["failed"])
    values = Counter(r["new_frequency"] for r in org.model.contacts_rows())
    assert values == {"daily": 298, None: 2}
    # two bad batches of 100 split in halves down to one row: about 2 x 2 x log2(100) extra requests, not 100s
    # (on top of 3 to 5 first writes: the last rows may be cut smaller so the three writers finish together)
    assert org.total(route_contains="UpdateMultiple") <= 5 + 2 * 2 * 7


def test_dry_run_writes_nothing_and_reports_the_plan(org: Org) -> None:
    org.add([{"emailaddress1": "d@x.com", "followemail": False}])
    report, pusher = push(org, [row("d@x.com", followemail=True), row("e@x.com", followemail=True)], dry_run=True)
    assert report["dry_run"] is True
    assert report["plan"] == {"update": 1, "create": 1, "unchanged": 0, "skipped": 0}
    assert {(s["key"], s["action"]) for s in report["sample"]} == {("d@x.com", "update"), ("e@x.com", "create")}
    assert org.writes() == 0
    assert org.model.contacts_rows()[0]["followemail"] is False
    assert pusher.failed_inputs == []


def test_batch_size_and_bypass_headers(org: Org) -> None:
    org.add([{"emailaddress1": f"b{i}@x.com"} for i in range(250)])
    hook = org.hook()
    headers: list[dict[str, str]] = []
    sizes: list[int] = []

    def seen(r: Any, *_a: Any, **_k: Any) -> None:
        if "CRM.UpdateMultiple" in r.request.url:
            headers.append(dict(r.request.headers))
            sizes.append(len(json.loads(r.request.body)["Targets"]))

    hook.get_conn().hooks["response"].append(seen)
    report, _ = push(
        org,
        [row(f"b{i}@x.com", followemail=False) for i in range(250)],
        hook=hook,
        batch_size=100,
        bypass_business_logic=True,
        bypass_flows=True,
    )
    assert outcomes(report) == {"updated": 250}
    # never more than batch_size rows a request; the last ones may be cut smaller so the writers finish together
    assert sum(sizes) == 250 and max(sizes) == 100 and 3 <= len(sizes) <= 5, sizes
    assert org.total(3, route_contains="UpdateMultiple") == len(sizes)
    for h in headers:
        assert h["MSCRM.BypassBusinessLogicExecution"] == "CustomSync,CustomAsync"
        assert h["MSCRM.SuppressCallbackRegistrationExpanderJob"] == "true"
    report, _ = push(org, [row("b0@x.com", followemail=True)], hook=hook)
    assert "MSCRM.BypassBusinessLogicExecution" not in headers[-1]


def test_max_parallelism_caps_requests_in_flight(org: Org) -> None:
    org.add([{"emailaddress1": f"p{i}@x.com"} for i in range(60)])
    hook = org.hook()
    in_flight = peak = 0
    lock = threading.Lock()
    original = hook.update_multiple

    def tracked(*args: Any, **kwargs: Any) -> None:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.05)
        try:
            original(*args, **kwargs)
        finally:
            with lock:
                in_flight -= 1

    hook.update_multiple = tracked  # type: ignore[method-assign]
    push(org, [row(f"p{i}@x.com", followemail=False) for i in range(60)], hook=hook, batch_size=5, max_parallelism=3)
    assert peak == 3
    peak = 0
    push(org, [row(f"p{i}@x.com", followemail=True) for i in range(60)], hook=hook, batch_size=5, max_parallelism=1)
    assert peak == 1


def test_a_429_takes_one_writer_out_until_many_clean_answers(org: Org) -> None:
    """Parallel chunk pushes share one budget none of them sees whole: a throttled push backs off by a writer instead
    of sending at its full x-ms-dop-hint into the next 429."""
    org.add([{"emailaddress1": f"w{i}@x.com", "followemail": False} for i in range(30)])
    org.model.faults.arm("status", 1, status=429, retry_after=1, path_contains="UpdateMultiple")
    hook = org.hook()
    in_flight = in_flight_after = peak_before = peak_after = 0
    lock = threading.Lock()
    original = hook.update_multiple

    def tracked(*args: Any, **kwargs: Any) -> None:
        # Writes started after the 429 count apart: one sent before it may still be on the wire on a loaded machine.
        nonlocal in_flight, in_flight_after, peak_before, peak_after
        with lock:
            after = bool(hook.stats.throttled_429)
            if after:
                in_flight_after += 1
                peak_after = max(peak_after, in_flight_after)
            else:
                in_flight += 1
                peak_before = max(peak_before, in_flight)
        time.sleep(0.05)
        try:
            original(*args, **kwargs)
        finally:
            with lock:
                if after:
                    in_flight_after -= 1
                else:
                    in_flight -= 1

    hook.update_multiple = tracked  # type: ignore[method-assign]
    report, _ = push(
        org, [row(f"w{i}@x.com", followemail=True) for i in range(30)], hook=hook, batch_size=5, max_parallelism=3
    )
    assert outcomes(report) == {"updated": 30}
    assert report["throttled_429"] == 1
    assert peak_before == 3, "before the 429 the push ramps up to its three writers"
    assert peak_after == 2, "after it, one writer stays out (6 answers are fewer than 4 x 2)"


def test_429_storm_mid_push_every_row_lands_exactly_once(org: Org) -> None:
    org.model.set_service_protection(ServiceProtection(window_s=1.0, max_requests=6, max_execution_ms=1e9))
    org.add([{"emailaddress1": f"s{i:03d}@x.com", "followemail": False} for i in range(200)])
    org.model.faults.arm("status", 3, status=429, retry_after=1, path_contains="Multiple")
    rows = [row(f"s{i:03d}@x.com", followemail=True) for i in range(200)]
    rows += [row(f"new{i:03d}@x.com", followemail=True) for i in range(200)]
    report, _ = push(org, rows, batch_size=25)
    assert outcomes(report) == {"updated": 200, "created": 200}
    assert report["throttled_429"] >= 3
    assert org.total(route_contains="Multiple", status=429) >= 3
    emails = Counter(r["emailaddress1"] for r in org.model.contacts_rows())
    assert len(emails) == 400 and set(emails.values()) == {1}
    assert all(r["followemail"] is True for r in org.model.contacts_rows())


def test_token_expiry_mid_run(org: Org) -> None:
    org.add([{"emailaddress1": f"t{i}@x.com"} for i in range(100)])
    hook = org.hook()
    original = hook.update_multiple
    calls = 0

    def expire_after_first(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        original(*args, **kwargs)
        calls += 1
        if calls == 1:
            org.model.expire_tokens()

    hook.update_multiple = expire_after_first  # type: ignore[method-assign]
    report, _ = push(org, [row(f"t{i}@x.com", donotphone=True) for i in range(100)], hook=hook, batch_size=10)
    assert outcomes(report) == {"updated": 100}
    # the next request after the expiry (a write, or the lookup of the next keys) met a 401 and renewed the token
    assert org.total(status=401) >= 1
    assert all(r["donotphone"] is True for r in org.model.contacts_rows())


TRICKY = ["o'brian@x.com", "tom&jerry@x.com", "hash#tag@x.com", "a/b@x.com", "plus+1@x.com", "zoë@exämple.com"]


@pytest.mark.parametrize(
    ("alternate_key", "bulk"),
    [(False, True), (True, True), (True, False)],
    ids=["create-multiple", "upsert-by-key", "upsert-by-key-in-batch"],
)
def test_tricky_keys_are_created_once_and_found_again(org: Org, alternate_key: bool, bulk: bool) -> None:
    if alternate_key:
        org.model.define_alternate_key("new_emailkey", ["emailaddress1"])
    org.model.set_bulk_messages_enabled(bulk)
    org.add([{"emailaddress1": TRICKY[0].upper()}])
    rows = [row(k, followemail=False) for k in TRICKY]
    report, _ = push(org, rows)
    assert outcomes(report) == {"updated": 1, "created": len(TRICKY) - 1}
    if alternate_key and bulk:  # safe keys: UpsertMultiple; / & # + cannot address a row: CreateMultiple
        assert org.total(route_contains="UpsertMultiple") == 1
        assert org.total(route_contains="CreateMultiple") == 1
    if not bulk:
        assert org.total(route_contains="Multiple") == 0
    emails = Counter(r["emailaddress1"].lower() for r in org.model.contacts_rows())
    assert emails == Counter(k.lower() for k in TRICKY)
    again, _ = push(org, rows)
    assert outcomes(again) == {"unchanged": len(TRICKY)}


@pytest.mark.parametrize("alternate_key", [False, True], ids=["create-multiple", "upsert-by-key"])
def test_rerun_after_a_crash_creates_no_duplicate(org: Org, alternate_key: bool) -> None:
    if alternate_key:
        org.model.define_alternate_key("new_emailkey", ["emailaddress1"])
    rows = [row(f"c{i:02d}@x.com", followemail=True) for i in range(40)]
    crashing = org.hook()
    method = "upsert_multiple" if alternate_key else "create_multiple"
    original = getattr(crashing, method)

    def commit_then_die(*args: Any, **kwargs: Any) -> Any:
        original(*args, **kwargs)
        raise SystemExit("worker killed after the write committed")

    setattr(crashing, method, commit_then_die)
    with pytest.raises(SystemExit):
        push(org, rows, hook=crashing, batch_size=10, max_parallelism=1)
    created_before = org.model.contact_count()
    assert 0 < created_before < 40
    report, _ = push(org, rows, batch_size=10)
    assert report["counts"]["unchanged"] == created_before
    assert report["counts"]["created"] == 40 - created_before
    emails = Counter(r["emailaddress1"] for r in org.model.contacts_rows())
    assert len(emails) == 40 and set(emails.values()) == {1}


def test_ambiguous_create_is_re_read_not_resent_and_reported_created(org: Org) -> None:
    """A create whose answer was lost (the server committed it) is looked up again: no duplicate contact, and the
    report says created (it is the record of what the sync wrote)."""
    org.model.faults.arm("lost_response", 1, path_contains="CreateMultiple")
    rows = [row(f"a{i}@x.com", followemail=True) for i in range(30)]
    report, _ = push(org, rows, batch_size=10, max_parallelism=1)
    assert org.model.faults.fired["lost_response"] == 1
    emails = Counter(r["emailaddress1"] for r in org.model.contacts_rows())
    assert len(emails) == 30 and set(emails.values()) == {1}
    assert outcomes(report) == {"created": 30}
    assert sum("answer was lost" in row.get("reason", "") for row in report["sample_changes"]) == 10


def test_connection_reset_on_create_is_safe(org: Org) -> None:
    org.model.faults.arm("reset", 1, path_contains="CreateMultiple")
    report, _ = push(org, [row(f"r{i}@x.com", followemail=True) for i in range(10)])
    assert outcomes(report) == {"created": 10}
    assert org.model.contact_count() == 10


def test_batch_fallback_push_with_a_bad_row(org: Org) -> None:
    org.model.set_bulk_messages_enabled(False)
    org.add([{"emailaddress1": f"f{i}@x.com"} for i in range(20)])
    rows = [row(f"f{i}@x.com", new_frequency="monthly") for i in range(20)]
    rows += [row(f"g{i}@x.com", new_frequency="monthly") for i in range(20)]
    rows[5]["new_frequency"] = "z" * 50
    rows[33]["new_frequency"] = "z" * 50
    report, _ = push(org, rows, batch_size=8)
    assert outcomes(report) == {"updated": 19, "created": 19, "failed": 2}
    assert {f["key"] for f in report["failed"]} == {"f5@x.com", "g13@x.com"}
    assert org.total(route_contains="Multiple") == 0
    assert org.total(route_contains="$batch") > 0
    assert org.model.contact_count() == 39


def test_unknown_mapped_attribute_fails_before_any_write(org: Org) -> None:
    config = org.config(mappings=[{"id": "new_missing", "value": "consents_channels_email_enabled"}])
    with pytest.raises(ValueError, match="no column new_missing"):
        ContactPusher(org.hook(), config).run(contacts_frame([row("x@x.com")]).assign(new_missing=True))
    assert org.writes() == 0


# ---- the operator ---------------------------------------------------------------------------------------------


def test_operator_pushes_failed_rows_and_fails_over_the_threshold_after_writing(org: Org) -> None:
    org.add([{"emailaddress1": f"o{i}@x.com"} for i in range(4)])
    rows = [row(f"o{i}@x.com", new_frequency="weekly") for i in range(4)]
    rows[2]["new_frequency"] = "w" * 40
    ti = FakeTI()
    operator = DataversePushContactsOperator(
        task_id="push", contacts=contacts_frame(rows), config=org.config(), failure_threshold_rows=0
    )
    with pytest.raises(AirflowException, match="failure threshold exceeded"):
        operator.execute({"ti": ti})
    assert Counter(r["new_frequency"] for r in org.model.contacts_rows()) == {"weekly": 3, None: 1}
    [failed] = ti.pushed["failed_rows"]
    assert failed["organization_user_id"] == "o2@x.com" and failed["new_frequency"] == "w" * 40
    assert "reason" in failed
    assert ti.pushed["report"]["counts"]["failed"] == 1
    # a percentage threshold that is not crossed lets the task succeed
    ok = DataversePushContactsOperator(
        task_id="push", contacts=contacts_frame(rows), config=org.config(), failure_threshold_percent=30
    )
    result = ok.execute({"ti": FakeTI()})
    assert result["counts"]["failed"] == 1 and result["counts"]["unchanged"] == 3
    crossed = DataversePushContactsOperator(
        task_id="push", contacts=contacts_frame(rows), config=org.config(), failure_threshold_percent="20"
    )
    with pytest.raises(AirflowException, match=r"25.0% failed > 20%"):
        crossed.execute({"ti": FakeTI()})


def test_operator_retries_the_failed_rows_it_is_given(org: Org) -> None:
    """``retry_rows`` (e.g. from a template); runs inside Airflow read their retry queue instead (tests/chaos)."""
    org.add([{"emailaddress1": "late@x.com"}, {"emailaddress1": "fresh@x.com"}])
    previous = [{"organization_user_id": "late@x.com", "updated_at": T0, "followemail": False, "reason": "boom"}]
    operator = DataversePushContactsOperator(
        task_id="push",
        contacts=contacts_frame([row("fresh@x.com", followemail=False)]),
        config=org.config(),
        retry_rows=previous,
    )
    ti = FakeTI()
    result = operator.execute({"ti": ti})
    assert result["counts"]["updated"] == 2
    assert ti.pushed["failed_rows"] == []
    assert all(r["followemail"] is False for r in org.model.contacts_rows())
    # retry rows passed explicitly (e.g. from a template) work the same, and a fresh row wins over an older retry
    older = [{"organization_user_id": "fresh@x.com", "updated_at": "2020-01-01T00:00:00Z", "followemail": True}]
    op2 = DataversePushContactsOperator(
        task_id="push",
        contacts=contacts_frame([row("fresh@x.com", followemail=False)]),
        config=org.config(),
        retry_rows=older,
    )
    result = op2.execute({"ti": FakeTI()})
    assert result["counts"]["unchanged"] == 1 and result["counts"]["skipped"] == 1


def test_operator_templates_and_dry_run_flag_from_jinja(org: Org) -> None:
    assert {"contacts", "config", "is_dry_run", "retry_rows", "batch_size"} <= set(
        DataversePushContactsOperator.template_fields
    )
    operator = DataversePushContactsOperator(
        task_id="push",
        contacts=contacts_frame([row("j@x.com", followemail=True)]),
        config=org.config(),
        dry_run="True",
    )
    ti = FakeTI()
    result = operator.execute({"ti": ti})
    assert result["dry_run"] is True and org.writes() == 0
    assert callable(operator.dry_run)  # BaseOperator.dry_run() (airflow tasks test --dry-run) is not shadowed
    assert "failed_rows" not in ti.pushed

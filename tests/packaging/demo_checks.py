"""What `make demo` must print, checked where the demo runs as a newcomer gets it: from the installed wheel, outside
the checkout (tests/packaging/test_wheel.py), on 600 users."""

from __future__ import annotations

DEMO_USERS = 600


def assert_demo_output(stdout: str) -> None:
    """The demo's run table: every row accounted for, a second cycle writing nothing, the live path, CPC."""
    assert "demo finished" in stdout, stdout[-3000:]
    table = stdout[stdout.index("Runs:") :].splitlines()
    rows = {line.split("  ")[1].strip(): line.split() for line in table[3:14]}
    # 600 users, every 100th without organization_user_id: 594 rows, 60% already contacts.
    first = next(v for k, v in rows.items() if k.startswith("1."))
    second = next(v for k, v in rows.items() if k.startswith("2."))
    assert first[-10] == "594" and first[-3] == "6"  # rows in, users left out without a key
    assert first[-9:-3] == ["0", "360", "0", "0", "234", "0"]  # created, updated, sent, unchanged, skipped, failed
    assert second[-9:-3] == ["234", "0", "0", "360", "0", "0"]
    again = [v for k, v in rows.items() if "again" in k]
    assert len(again) == 4
    assert all(v[-9:-6] == ["0", "0", "0"] for v in again), "the second cycle writes nothing (no echo)"
    live = next(v for k, v in rows.items() if k.startswith("L."))
    assert live[-10] == "3" and live[-7] == "3", "the live run did not send exactly the 3 edits the trigger saw"
    assert "Run L: DataverseChangesTrigger fired" in stdout
    # Contact Point Consent: 12 new sign-ups skipped without upsert_mode, then their contacts and rows created
    sixth = next(v for k, v in rows.items() if k.startswith("6."))
    seventh = next(v for k, v in rows.items() if k.startswith("7."))
    eighth = next(v for k, v in rows.items() if k.startswith("8."))
    assert int(sixth[-9]) > 0 and sixth[-4] == "0"  # created, failed
    assert int(seventh[-9]) > 0 and seventh[-4] == "0"
    assert "run 7 created 12 contact(s) first" in stdout
    assert eighth[-10] == "20" and eighth[-7] == "20", "the 20 preference-centre changes were not all sent"

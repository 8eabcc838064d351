"""Benchmark: flatten + forward-map synthetic Didomi users, the engine against a plain per-row dict loop.

    python benchmarks/mapping.py [--users 100000] [--repeat 3] [--page 100]

Both sides do the same work (every grammar column of every user, then the config's forward mappings with their
transforms, users without a key left out, duplicates resolved by newest ``updated_at``) and their outputs are checked
equal before timing. Users arrive in pages of ``--page`` like the Didomi API's. Each side runs ``--repeat`` times and
the median is reported. Peak memory is the process's maximum RSS (``resource.getrusage``), which includes the synthetic
users held in memory. The last line is JSON: ``{"users_per_s", "baseline_users_per_s", "ratio", "peak_rss_mb"}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_provider_didomi_dynamics.core.config import IntegrationConfig
from airflow_provider_didomi_dynamics.mapping.flatten import (
    BOOLEAN_DTYPE,
    STRING_DTYPE,
    TIMESTAMP_DTYPE,
    UserFrameBuilder,
)
from airflow_provider_didomi_dynamics.mapping.forward import forward_map, target_dtype
from airflow_provider_didomi_dynamics.mapping.synthetic import synthetic_users

CONFIG = {
    "type_id": "microsoft-dynamics",
    "authentication": {
        "client_id": "bench",
        "client_secret": "bench",
        "tenant_id": "bench",
        "instance": "https://bench.crm4.dynamics.com",
    },
    "properties": {},
    "mappings": [
        {"id": "donotbulkemail", "value": "consents_purposes_newsletter_enabled", "transform": "invert"},
        {"id": "new_email_marketing", "value": "consents_purposes_email_marketing_enabled"},
        {"id": "new_newsletter_li", "value": "consents_purposes_news-letter_enabled_li"},
        {"id": "new_profiling", "value": "consents_purposes_profiling2_enabled"},
        {"id": "new_partners", "value": "consents_purposes_partners_enabled"},
        {
            "id": "new_frequency",
            "value": "consents_purposes_newsletter_values_frequency",
            "transform": {"daily": 100000000, "weekly": 100000001, "monthly": 100000002},
            "direction": "to_dynamics",
        },
        {"id": "new_weekly_news", "value": "consents_purposes_news-letter_values_frequency_weekly_enabled"},
        {"id": "new_topics", "value": "consents_purposes_partners_values_topics"},
        {"id": "donotemail", "value": "consents_channels_email_enabled", "transform": "invert"},
        {"id": "new_sms", "value": "consents_channels_sms_enabled", "transform": {"true": "yes", "false": "no"}},
        {"id": "donotphone", "value": "consents_channels_phone_enabled", "transform": "invert"},
    ],
}


def engine(pages: list[list[dict[str, Any]]], config: IntegrationConfig) -> pd.DataFrame:
    builder = UserFrameBuilder()
    for page in pages:
        builder.add_users(page)
    return forward_map(builder.to_frame(), config).frame


# -- the baseline: what one writes without thinking about columns ---------------------------------------------------


def baseline_flatten(user: dict[str, Any]) -> dict[str, Any]:
    """One user -> one dict of every grammar column (value flags only for the selected values)."""
    row: dict[str, Any] = {
        "organization_user_id": user.get("organization_user_id"),
        "user_id": user.get("id"),
        "created_at": user.get("created_at"),
        "updated_at": user.get("updated_at"),
        "country": user.get("country"),
    }
    for key, value in (user.get("metadata") or {}).items():
        row[f"metadata_{key}"] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    consents = user.get("consents") or {}
    for purpose in consents.get("purposes") or []:
        pid = purpose["id"]
        row[f"consents_purposes_{pid}_enabled"] = purpose.get("enabled")
        row[f"consents_purposes_{pid}_enabled_li"] = purpose.get("enabled_li")
        for preference, chosen in (purpose.get("values") or {}).items():
            text = chosen.get("value") if isinstance(chosen, dict) else chosen
            row[f"consents_purposes_{pid}_values_{preference}"] = text
            for value in (text or "").split(","):
                if value:
                    row[f"consents_purposes_{pid}_values_{preference}_{value}_enabled"] = True
    for channel in consents.get("channels") or []:
        row[f"consents_channels_{channel['id']}_enabled"] = channel.get("enabled")
    vendors = consents.get("vendors") or {}
    for vid in vendors.get("enabled") or []:
        row[f"consents_vendors_{vid}_enabled"] = True
    for vid in vendors.get("disabled") or []:
        row[f"consents_vendors_{vid}_enabled"] = False
    return row


def baseline(pages: list[list[dict[str, Any]]], config: IntegrationConfig) -> pd.DataFrame:
    rows = [baseline_flatten(user) for page in pages for user in page]
    getters: list[tuple[str, Callable[[dict[str, Any]], Any]]] = []
    for mapping in config.forward_mappings:
        getters.append((mapping.attribute, _baseline_getter(mapping)))
    newest: dict[str, tuple[pd.Timestamp, int, dict[str, Any]]] = {}
    for position, row in enumerate(rows):
        key = row.get("organization_user_id")
        if not isinstance(key, str) or not key.strip():
            continue
        stamp = pd.Timestamp(row["updated_at"]) if row.get("updated_at") else pd.Timestamp.min.tz_localize("UTC")
        if key in newest and newest[key][0] > stamp:
            continue
        record: dict[str, Any] = {"organization_user_id": key, "updated_at": stamp}
        for attribute, getter in getters:
            record[attribute] = getter(row)
        newest[key] = (stamp, position, record)
    records = [record for _, _, record in sorted(newest.values(), key=lambda kept: kept[1])]
    frame = pd.DataFrame.from_records(records, columns=["organization_user_id", "updated_at", *(a for a, _ in getters)])
    dtypes: dict[str, Any] = {"organization_user_id": STRING_DTYPE, "updated_at": TIMESTAMP_DTYPE}
    for mapping in config.forward_mappings:
        if mapping.transform.value_map:
            dtypes[mapping.attribute] = target_dtype(v for _, v in mapping.transform.value_map)
        elif mapping.field.kind.value.endswith("enabled") or mapping.field.kind.value.endswith("enabled_li"):
            dtypes[mapping.attribute] = BOOLEAN_DTYPE
        else:
            dtypes[mapping.attribute] = STRING_DTYPE
    return frame.astype(dtypes)


def _baseline_getter(mapping: Any) -> Callable[[dict[str, Any]], Any]:
    column = mapping.value
    lookup = dict(mapping.transform.value_map)
    invert = mapping.transform.invert
    flag_of = None
    if column.endswith("_enabled") and "_values_" in column:
        values_column, value = column[: -len("_enabled")].rsplit("_", 1)
        flag_of = (values_column, value)

    def get(row: dict[str, Any]) -> Any:
        if flag_of is not None:
            text = row.get(flag_of[0])
            cell: Any = None if text is None else flag_of[1] in text.split(",")
        else:
            cell = row.get(column)
        if cell is None:
            return None
        if invert:
            return not cell
        if lookup:
            key = ("true" if cell else "false") if isinstance(cell, bool) else cell
            return lookup.get(key)
        return cell

    return get


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _median_rate(run: Callable[[], Any], users: int, repeat: int) -> tuple[float, Any]:
    timings = []
    result = None
    for _ in range(max(repeat, 1)):
        start = time.perf_counter()
        result = run()
        timings.append(time.perf_counter() - start)
    return users / statistics.median(timings), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--page", type=int, default=100)
    args = parser.parse_args(argv)

    config = IntegrationConfig.from_dict(CONFIG)
    started = time.perf_counter()
    users = list(synthetic_users(args.users, purposes=5, preferences=2, channels=3))
    # a few duplicate organization_user_ids, as a re-consent would produce
    for n in range(0, len(users), 997):
        users[n]["organization_user_id"] = users[max(n - 1, 0)]["organization_user_id"]
    pages = [users[i : i + args.page] for i in range(0, len(users), args.page)]
    print(
        f"generated {len(users):,} synthetic users in {time.perf_counter() - started:.1f}s "
        "(5 purposes x 2 preferences, 3 channels)"
    )

    loaded_mb = _peak_mb()
    users_per_s, got = _median_rate(lambda: engine(pages, config), len(users), args.repeat)
    engine_peak_mb = _peak_mb()
    baseline_per_s, expected = _median_rate(lambda: baseline(pages, config), len(users), args.repeat)
    peak_rss_mb = _peak_mb()
    pd.testing.assert_frame_equal(got, expected)  # the same work, the same answer
    ratio = users_per_s / baseline_per_s
    print(f"outputs equal: {len(got):,} contacts x {len(got.columns)} columns")
    print(f"engine   (flatten + forward_map): {users_per_s:>12,.0f} users/s")
    print(f"baseline (per-row dict loop):     {baseline_per_s:>12,.0f} users/s")
    print(f"ratio: {ratio:.1f}x   target >= 100,000 users/s: {'met' if users_per_s >= 100_000 else 'NOT met'}")
    print(
        f"peak RSS: {loaded_mb:.0f} MB with the synthetic users loaded, {engine_peak_mb:.0f} MB after the engine, "
        f"{peak_rss_mb:.0f} MB after the baseline"
    )
    print(
        json.dumps(
            {
                "users_per_s": round(users_per_s),
                "baseline_users_per_s": round(baseline_per_s),
                "ratio": round(ratio, 2),
                "peak_rss_mb": round(peak_rss_mb, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Screenshots of a sync as a person meets it in the real Airflow UI (not a test: a tool, run by hand).

With `make airflow` running (its banner prints the URL and the admin password):

    python tests/ui/take_run_screenshots.py --url http://localhost:8080 --password PASSWORD

It opens the trigger form of ``dynamics_to_didomi``, unpauses and triggers ``didomi_to_dynamics`` (``full_sync``)
through the REST API, waits for the run, and saves the run's grid, the push task's log and its report (XCom) into
``docs/``.
Needs Chromium (``apt-get install chromium``) and the ``playwright`` Python package (its bundled browsers are not
used: ``--chromium`` points at the system one).
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import requests

DOCS = Path(__file__).resolve().parents[2] / "docs"
FORWARD, REVERSE = "didomi_to_dynamics", "dynamics_to_didomi"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8080")
    parser.add_argument("--password", required=True)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    token = requests.post(f"{args.url}/auth/token", json={"username": "admin", "password": args.password}, timeout=30)
    token.raise_for_status()
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1400, "height": 1500})
        context.add_cookies([{"name": "_token", "value": token.json()["access_token"], "url": args.url}])
        page = context.new_page()

        page.goto(f"{args.url}/dags/{REVERSE}")
        page.get_by_role("button", name="Trigger").first.click()
        page.wait_for_timeout(2500)
        page.screenshot(path=str(args.out / "ui-trigger-form.png"))

        api.patch(f"{args.url}/api/v2/dags/{FORWARD}", json={"is_paused": False}, timeout=30).raise_for_status()
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        run = api.post(
            f"{args.url}/api/v2/dags/{FORWARD}/dagRuns",
            json={"logical_date": now, "conf": {"full_sync": True}},
            timeout=30,
        )
        run.raise_for_status()
        run_id = run.json()["dag_run_id"]
        for _ in range(150):
            state = api.get(f"{args.url}/api/v2/dags/{FORWARD}/dagRuns/{run_id}", timeout=30).json()["state"]
            if state in ("success", "failed"):
                break
            time.sleep(2)
        print(f"{FORWARD} {run_id}: {state}")

        page.set_viewport_size({"width": 1400, "height": 900})
        page.goto(f"{args.url}/dags/{FORWARD}/runs/{run_id}")
        page.wait_for_timeout(4000)
        page.screenshot(path=str(args.out / "ui-run-grid.png"))
        page.goto(f"{args.url}/dags/{FORWARD}/runs/{run_id}/tasks/push_contacts")
        page.wait_for_timeout(5000)
        page.screenshot(path=str(args.out / "ui-push-log.png"))
        page.goto(f"{args.url}/dags/{FORWARD}/runs/{run_id}/tasks/push_contacts/xcom")
        page.wait_for_timeout(4000)
        page.get_by_role("button", name="Expand all extra JSON").click()  # the report opened, as a person reads it
        page.wait_for_timeout(1500)
        page.set_viewport_size({"width": 1400, "height": 1000})
        page.screenshot(path=str(args.out / "ui-report.png"))
        browser.close()
    return 0 if state == "success" else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The Prefect UI screenshots of the docs (docs/img/prefect-*.png), taken in headless Chromium by clicking.

It follows docs/how-to/prefect-ui.md: the deployments page; a custom run with the model switched to cnn and
the optimizer to sgd; a run on a CSV file picked in the form; an hourly schedule added with "+ Schedule";
the finished run's page and artifacts; a run whose data file is missing; a sweep's results.

With a server and `python -m deployments.serve` running (steps 1 and 2 of the how-to), from the repository
root, with the dev install (it has `playwright`) and Debian's chromium:

    .venv/bin/python docs/screenshots.py          # the UI at http://127.0.0.1:4200

Environment: PREFECT_UI (default http://127.0.0.1:4200), CHROMIUM (default /usr/bin/chromium), OUT
(default docs/img). It makes runs and a schedule on that server (the schedule is deleted at the end).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser import (  # noqa: E402  (the repository root on the path first)
    add_interval_schedule, chromium_context, field, open_run_form, submit_run_form, switch_tab,
)

UI = os.environ.get("PREFECT_UI", "http://127.0.0.1:4200").rstrip("/")
OUT = Path(os.environ.get("OUT") or ROOT / "docs" / "img")
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def api(route: str, body: Any = None, method: str | None = None, tries: int = 10) -> Any:
    """Prefect's API at `route`; a 503 from a busy server (SQLite, while runs write) is asked again."""
    request = urllib.request.Request(
        f"{UI}/api{route}", data=None if body is None else json.dumps(body).encode(), method=method,
        headers={"content-type": "application/json"},
    )
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(request) as response:
                text = response.read()
            return json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == tries - 1:
                raise
            time.sleep(2)


def deployment(name: str) -> dict[str, Any]:
    (found,) = api("/deployments/filter", {"deployments": {"name": {"any_": [name]}}})
    return found


def wait(run_id: str, seconds: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run = api(f"/flow_runs/{run_id}")
        if run["state_type"] in FINAL:
            print(f"{run['name']}: {run['state_type']} {run['state'].get('message') or ''}")
            return run
        time.sleep(2)
    raise TimeoutError(f"flow run {run_id} did not finish in {seconds} s")


def shot(page: Any, name: str, **options: Any) -> None:
    page.wait_for_timeout(800)
    page.screenshot(path=OUT / name, **options)
    print(f"wrote {OUT / name}")


def artifact_page(page: Any, run: dict[str, Any], key: str, name: str, **options: Any) -> None:
    (artifact,) = [a for a in api("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}) if a["key"] == key]
    page.goto(f"{UI}/v2/artifacts/artifact/{artifact['id']}")
    page.get_by_text(key).first.wait_for()
    shot(page, name, **options)


def iris_csv(folder: Path) -> Path:
    """A table as a user brings one: scikit-learn's iris with its species as words."""
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    frame["species"] = [("setosa", "versicolor", "virginica")[int(code)] for code in frame.pop("target")]
    path = folder / "iris.csv"
    frame.to_csv(path, index=False)
    return path


def main() -> None:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    table = iris_csv(Path(tempfile.mkdtemp(prefix="pw-docs-")))
    train = deployment("digits-mlp")
    with sync_playwright() as playwright, chromium_context(playwright) as context:
        page = context.new_page()
        page.goto(f"{UI}/v2/deployments")
        page.get_by_text("digits-sweep").first.wait_for()
        shot(page, "prefect-deployments.png")

        # A custom run: the model switched to cnn, the optimizer to sgd.
        open_run_form(page, UI, train["id"])
        field(page, "Run Name").fill("digits-cnn-sgd")
        switch_tab(page, "cnn")
        switch_tab(page, "sgd")
        field(page, "Epochs (Optional)").fill("15")
        page.get_by_text("Stage 3: the network").first.evaluate("e => e.scrollIntoView({block: 'start'})")
        shot(page, "prefect-run-form.png")
        cnn = submit_run_form(page)

        # A run on a CSV file: the data source's csv tab, its path and target column.
        open_run_form(page, UI, train["id"])
        field(page, "Run Name").fill("iris-from-csv")
        switch_tab(page, "csv")
        field(page, "Path").fill(str(table))
        field(page, "Target").fill("species")
        page.get_by_text("Where the data comes from").first.evaluate("e => e.scrollIntoView({block: 'start'})")
        shot(page, "prefect-run-form-csv.png")
        csv_run = submit_run_form(page)

        # An hourly schedule, Parameter Overrides untouched: the dialog as filled in, then the deployment.
        page.goto(f"{UI}/v2/deployments/deployment/{train['id']}")
        schedule, _ = add_interval_schedule(page, UI, train["id"], hours=1,
                                            before_save=lambda p: shot(p, "prefect-schedule-dialog.png"))
        try:
            finished, _ = wait(cnn["id"]), wait(csv_run["id"])
            page.goto(f"{UI}/v2/runs/flow-run/{finished['id']}?tab=Artifacts")
            page.get_by_text("digits-cnn-sgd-plots").first.wait_for()
            page.wait_for_timeout(6000)  # the task graph draws after the page settles
            shot(page, "prefect-run.png")
            artifact_page(page, finished, "digits-cnn-sgd-plots", "prefect-plots-artifact.png", full_page=True)
            artifact_page(page, finished, "digits-cnn-sgd-report", "prefect-report-artifact.png")

            # A data file that is not there: the run fails before any task, with one line.
            config = json.loads(json.dumps(train["parameters"]["config"]))
            config["data"]["source"] = {"kind": "csv", "path": str(table.with_name("missing.csv")), "target": "species"}
            missing = wait(api(f"/deployments/{train['id']}/create_flow_run",
                               {"name": "missing-file", "parameters": {"config": config}})["id"])
            page.goto(f"{UI}/v2/runs/flow-run/{missing['id']}?tab=Logs")
            page.get_by_text("data file not found").first.wait_for()
            shot(page, "prefect-missing-file.png")

            # A device this machine lacks: it fails before any task, with one line.
            config = json.loads(json.dumps(train["parameters"]["config"]))
            config["device"] = {"name": "cuda:7"}
            gpu = wait(api(f"/deployments/{train['id']}/create_flow_run",
                           {"name": "asks-for-cuda-7", "parameters": {"config": config}})["id"])
            page.goto(f"{UI}/v2/runs/flow-run/{gpu['id']}?tab=Logs")
            page.get_by_text("not available on this machine").first.wait_for()
            shot(page, "prefect-failed-run.png")

            # A sweep started by hand: its leaderboard, best trial and plots.
            sweep = deployment("digits-sweep")
            config = json.loads(json.dumps(sweep["parameters"]["config"]))
            config.update(n_trials=8, trials_per_round=4)
            config["base"]["train"]["epochs"] = 20
            run = wait(api(f"/deployments/{sweep['id']}/create_flow_run",
                           {"name": "sweep-8trials", "parameters": {"config": config}})["id"])
            artifact_page(page, run, f"sweep-{config['name']}-best", "prefect-sweep-best.png")
            artifact_page(page, run, f"sweep-{config['name']}-plots", "prefect-sweep-plots.png", full_page=True)
            artifact_page(page, run, f"sweep-{config['name']}", "prefect-sweep-leaderboard.png")

            # The schedule's first run, on the deployment's page.
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                runs = [r for r in api("/flow_runs/filter", {"deployments": {"id": {"any_": [train["id"]]}}})
                        if (r.get("created_by") or {}).get("id") == schedule["id"] and r["state_type"] in FINAL]
                if runs:
                    break
                time.sleep(2)
            page.goto(f"{UI}/v2/deployments/deployment/{train['id']}")
            page.get_by_text("Every 1 hour").first.wait_for()
            shot(page, "prefect-schedule.png")
        finally:
            api(f"/deployments/{train['id']}/schedules/{schedule['id']}", method="DELETE")


if __name__ == "__main__":
    main()

"""The Prefect UI by clicking, in headless Chromium: switch tabs in the run form, add a schedule, every run completes.

Debian's `chromium` (`.ci/run` installs it) driven by the `playwright` package against the session's
server and served deployments (tests/conftest.py `served`). Without Chromium the test is skipped on a
workstation and fails in CI (the CI variable set). UI_SCREENSHOTS=folder keeps the screenshots.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.browser import (
    CHROMIUM, add_interval_schedule, chromium_context, field, open_run_form, submit_run_form, switch_tab,
)

pytestmark = pytest.mark.slow
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture
def chromium() -> str:
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"no Chromium at {CHROMIUM}: the browser test needs Debian's chromium (.ci/run installs it)")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium); CI installs it and runs this test")


def _wait_for(client, find, timeout: float):
    """The flow run `find(client)` returns, once it is final; None when none is found in time."""
    deadline, run = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        run = find(client)
        if run is not None and run.state_type.value in FINAL:
            return run
        time.sleep(1)
    return run


@pytest.mark.timeout(480)  # more than the suite's 300 s: the session's server and deployments may start in its setup
def test_switching_tabs_and_adding_a_schedule_by_clicking_every_run_completes(served, chromium, tmp_path):
    from playwright.sync_api import sync_playwright
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    shots = Path(os.environ.get("UI_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    table = tmp_path / "measurements.csv"
    table.write_text("size,weight,colour,label\n" + "\n".join(
        f"{i % 9},{(i * 7) % 11},{'red' if i % 3 else 'blue'},{'ab'[(i % 9) > 4]}" for i in range(90)) + "\n")
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("train/digits-mlp")
    with sync_playwright() as playwright, chromium_context(playwright) as context:
        page = context.new_page()
        # An hourly schedule from the "+ Schedule" dialog, its first run at the next whole minute (the runs
        # below are started while it comes).
        schedule, _ = add_interval_schedule(page, served.ui, str(deployment.id), hours=1)
        page.screenshot(path=shots / "schedule-added.png")
        try:
            # The model and the optimizer, switched by their tabs.
            open_run_form(page, served.ui, str(deployment.id))
            field(page, "Run Name").fill("browser-cnn-sgd")
            switch_tab(page, "cnn")
            switch_tab(page, "sgd")
            field(page, "Epochs (Optional)").fill("2")
            page.get_by_text("Stage 3: the network").first.scroll_into_view_if_needed()
            page.screenshot(path=shots / "form-cnn.png")
            image_run = submit_run_form(page)
            # The data source switched to a CSV file.
            open_run_form(page, served.ui, str(deployment.id))
            field(page, "Run Name").fill("browser-csv")
            switch_tab(page, "csv")
            field(page, "Path").fill(str(table))
            field(page, "Target").fill("label")
            field(page, "Epochs (Optional)").fill("2")
            page.get_by_text("Where the data comes from").first.scroll_into_view_if_needed()
            page.screenshot(path=shots / "form-csv.png")
            table_run = submit_run_form(page)
            with get_client(sync_client=True) as client:
                runs = [_wait_for(client, lambda c, i=run["id"]: c.read_flow_run(i), 240) for run in (image_run, table_run)]

                def scheduled(c):
                    found = [r for r in c.read_flow_runs(deployment_filter=DeploymentFilter(
                        id=DeploymentFilterId(any_=[deployment.id]))) if r.created_by and str(r.created_by.id) == schedule["id"]]
                    return min(found, key=lambda r: r.expected_start_time) if found else None

                runs.append(_wait_for(client, scheduled, 180))
        finally:
            with get_client(sync_client=True) as client:
                client.delete_deployment_schedule(deployment.id, schedule["id"])
        page.goto(f"{served.ui}/v2/runs/flow-run/{runs[0].id}")
        page.get_by_text("Completed").first.wait_for(timeout=30_000)
        page.screenshot(path=shots / "run-completed.png")
    assert runs[2] is not None, "the schedule made no run"
    for run in runs:
        assert run.state_type.value == "COMPLETED", (run.name, run.state.message)
    assert [run.name for run in runs] == ["browser-cnn-sgd", "browser-csv", "digits-mlp"]

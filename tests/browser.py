"""Driving Prefect's UI (the /v2/ one that the docs describe) in headless Chromium, as a user clicks it.

    from tests.browser import chromium_context
    with sync_playwright() as p, chromium_context(p) as context:
        page = context.new_page()
        open_run_form(page, ui, deployment_id)
        switch_tab(page, "cnn")

Used by tests/test_browser.py and docs/screenshots.py. Chromium is Debian's (`apt-get install chromium`),
driven by the `playwright` package without a browser download; the flags keep it off the network.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@contextlib.contextmanager
def chromium_context(playwright: Any, width: int = 1400, height: int = 900) -> Iterator[Any]:
    """A browser context of Debian's Chromium with a fresh, throw-away profile."""
    profile = tempfile.mkdtemp(prefix="pw-chromium-")
    context = playwright.chromium.launch_persistent_context(
        profile, executable_path=CHROMIUM, args=FLAGS, headless=True, viewport={"width": width, "height": height},
    )
    try:
        yield context
    finally:
        context.close()
        shutil.rmtree(profile, ignore_errors=True)


def field(page: Any, label: str) -> Any:
    """The input (or text box) that follows a field's label in a form, e.g. `Epochs (Optional)`."""
    return page.locator(
        f"xpath=//*[normalize-space(text())='{label}']/following::*[self::input or self::textarea][1]"
    ).first


def open_run_form(page: Any, ui: str, deployment_id: str) -> None:
    """The deployment's custom run form (Run > Custom run), with its fields drawn."""
    page.goto(f"{ui}/v2/deployments/deployment/{deployment_id}/run")
    field(page, "Epochs (Optional)").wait_for(timeout=60_000)


def switch_tab(page: Any, name: str) -> None:
    """Click the tab `name` (a union's member: `cnn`, `sgd`, `csv`) and check that it stays selected."""
    tab = page.get_by_role("tab", name=name, exact=True).first
    tab.click()
    page.wait_for_timeout(300)
    if tab.get_attribute("aria-selected") != "true":
        raise AssertionError(f"the {name} tab did not stay selected")


def _post(page: Any, button: Any, posts_to: str) -> Any:
    """Click `button`; the server's answer to the POST it makes to a URL ending in `posts_to`."""
    with page.expect_response(lambda r: r.url.endswith(posts_to) and r.request.method == "POST") as answer:
        button.click()
    return answer.value


def _created(response: Any, what: str) -> Any:
    if response.status != 201:
        raise AssertionError(f"the {what} was refused: HTTP {response.status} {response.text()}")
    return response.json()


def submit_run_form(page: Any) -> dict[str, Any]:
    """Click Submit (again, as a user would, when a busy server answered 503: SQLite's lock); the flow run the UI
    created. The form stays as it was after a refusal."""
    for _ in range(3):
        response = _post(page, page.get_by_role("button", name="Submit"), "/create_flow_run")
        if response.status != 503:
            break
        page.wait_for_timeout(2000)
    return _created(response, "run")


def next_minute(margin_seconds: float = 10) -> datetime:
    """The first whole minute (UTC) at least `margin_seconds` away: an anchor the schedule's first run keeps (an
    anchor already past when the schedule is saved puts the first run an interval later)."""
    soon = datetime.now(timezone.utc) + timedelta(seconds=margin_seconds)
    return soon.replace(second=0, microsecond=0) + timedelta(minutes=1)


def add_interval_schedule(
    page: Any, ui: str, deployment_id: str, hours: int, before_save: Callable[[Any], None] | None = None,
) -> tuple[dict[str, Any], datetime]:
    """The deployment page's "+ Schedule" dialog: every `hours` from the next whole minute (UTC, the dialog's
    time input has no seconds), Parameter Overrides untouched, Save (`before_save(page)` first, to photograph
    it); the schedule the server made, and its first run's time. The dialog closes whatever the answer, so a
    503 from a busy server is met by filling it in again, as a user would."""
    for _ in range(3):
        page.goto(f"{ui}/v2/deployments/deployment/{deployment_id}")
        page.get_by_role("button", name="Schedule").first.click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_label("Value").fill(str(hours))
        dialog.get_by_role("combobox").filter(has_text="Minutes").click()
        page.get_by_role("option", name="Hours").click()
        dialog.locator("button", has_text=" at ").first.click()  # the anchor date's calendar and time
        anchor = next_minute(margin_seconds=10 if before_save is None else 20)
        page.locator("#anchor-time").fill(anchor.strftime("%H:%M"))
        page.keyboard.press("Escape")  # closes the calendar, not the dialog
        if before_save is not None:
            before_save(page)
        response = _post(page, dialog.get_by_role("button", name="Save"), "/schedules")
        if response.status != 503:
            break
        page.wait_for_timeout(2000)
    (schedule,) = _created(response, "schedule")
    return schedule, anchor

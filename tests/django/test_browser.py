"""End to end in a real headless Chromium: log in, filter failed jobs, retry one, watch the worker
run it.

Uses Debian's chromium + chromedriver (installed by .ci/run). Without them the
test is skipped locally, but fails under CI (CI=true): CI must run it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection

from tests.django.support import background_worker, ledger, wait_for_status
from tests.django.testapp.tasks import record
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("live_db")]

CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)


def _binaries() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture
def browser() -> Iterator[Any]:
    found = _binaries()
    if found is None:
        message = (
            "chromium and chromedriver are needed: apt-get install -y chromium chromium-driver"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but no browser: {message}")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = found
    profile = tempfile.mkdtemp(prefix="pcq-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _failed_job() -> int:
    job_id = record.defer(value="retried from the browser")
    error = json.dumps({"type": "RuntimeError", "message": "first run failed", "traceback": ""})
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE pcq_jobs SET status = 'failed', attempts = 1, finished_at = now(), error "
            "= %s WHERE id = %s",
            [error, job_id],
        )
    return job_id


def test_retry_a_failed_job_from_the_admin_and_see_the_worker_run_it(
    browser: Any, live_server: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    User.objects.create_superuser("boss", "boss@example.invalid", "s3cret-pass")
    failed = _failed_job()
    other = record.defer(value="still waiting")

    changelist = f"{live_server.url}/admin/procrastinate_django/procrastinatejob/"
    browser.get(
        f"{live_server.url}/admin/login/?next=/admin/procrastinate_django/procrastinatejob/"
    )
    browser.find_element(By.NAME, "username").send_keys("boss")
    browser.find_element(By.NAME, "password").send_keys("s3cret-pass")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit], button[type=submit]").click()
    wait_until(lambda: browser.current_url.startswith(changelist), what="the job list after login")

    browser.find_element(
        By.CSS_SELECTOR, "#changelist-filter a[href*='status__exact=failed']"
    ).click()
    wait_until(
        lambda: "status__exact=failed" in browser.current_url, what="the failed filter applied"
    )
    listed = {
        box.get_attribute("value") for box in browser.find_elements(By.NAME, "_selected_action")
    }
    assert listed == {str(failed)}

    with background_worker(concurrency=1):
        browser.find_element(
            By.CSS_SELECTOR, f"input[name=_selected_action][value='{failed}']"
        ).click()
        Select(browser.find_element(By.NAME, "action")).select_by_value("retry_jobs")
        browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
        message = browser.find_element(By.CSS_SELECTOR, "ul.messagelist li").text
        assert message == "Retried 1 job."
        wait_for_status(failed, "succeeded")
        wait_for_status(other, "succeeded")

    assert sorted(run.value for run in ledger("record")) == [
        "retried from the browser",
        "still waiting",
    ]
    browser.get(f"{changelist}{failed}/change/")
    history = browser.find_element(By.CSS_SELECTOR, "table.pcq-history").text
    for event in ("deferred", "failed", "retried", "started", "succeeded"):
        assert event in history, (event, history)


def test_the_job_list_fits_a_1280_px_window(browser: Any, live_server: Any) -> None:
    """Every column of the job list is visible at 1280 px without scrolling sideways."""
    from selenium.webdriver.common.by import By

    User.objects.create_superuser("boss", "boss@example.invalid", "s3cret-pass")
    for value in ("a", "b"):
        record.configure(lock=f"lock-for-{value}", queue="a-rather-long-queue-name").defer(
            value=value
        )
    _failed_job()
    browser.set_window_size(1280, 900)
    changelist = f"{live_server.url}/admin/procrastinate_django/procrastinatejob/"
    browser.get(
        f"{live_server.url}/admin/login/?next=/admin/procrastinate_django/procrastinatejob/"
    )
    browser.find_element(By.NAME, "username").send_keys("boss")
    browser.find_element(By.NAME, "password").send_keys("s3cret-pass")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit], button[type=submit]").click()
    wait_until(lambda: browser.current_url.startswith(changelist), what="the job list after login")
    browser.find_element(By.ID, "result_list")
    overflow = browser.execute_script(
        "const r = document.querySelector('#changelist .results');"
        "return [r.scrollWidth, r.clientWidth, document.documentElement.scrollWidth, "
        "window.innerWidth];"
    )
    results_scroll, results_width, page_scroll, page_width = overflow
    if os.environ.get("PCQ_SCREENSHOT"):
        browser.save_screenshot(os.environ["PCQ_SCREENSHOT"])
    assert results_scroll <= results_width, overflow
    assert page_scroll <= page_width, overflow


def test_the_dashboard_charts_what_just_ran_and_resumes_a_paused_queue(
    browser: Any, live_server: Any
) -> None:
    from selenium.webdriver.common.by import By

    from procrastinate_django import app

    User.objects.create_superuser("boss", "boss@example.invalid", "s3cret-pass")
    done = [record.configure(queue="charted").defer(value=str(i)) for i in range(3)]
    held = record.configure(queue="held").defer(value="held")
    app.job_manager.pause_queue("held")
    with background_worker(concurrency=2):
        for job_id in done:
            wait_for_status(job_id, "succeeded")
    browser.set_window_size(1280, 900)
    browser.get(f"{live_server.url}/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys("boss")
    browser.find_element(By.NAME, "password").send_keys("s3cret-pass")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit], button[type=submit]").click()
    # From the admin index to the dashboard.
    browser.find_element(By.CSS_SELECTOR, "a[href$='/procrastinatedashboard/']").click()
    wait_until(lambda: browser.current_url.endswith("/dashboard/"), what="the dashboard")
    chart = browser.find_element(By.CSS_SELECTOR, "svg.pcq-chart[data-outcome='succeeded']")
    assert chart.get_attribute("data-total") == "3"
    assert chart.size["width"] > 200 and chart.size["height"] > 50  # drawn, not collapsed
    bars = [
        r for r in chart.find_elements(By.TAG_NAME, "rect") if float(r.get_attribute("height")) > 0
    ]
    assert len(bars) >= 2  # the frame and at least one bar for the last minute
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-queue='charted']")
    assert "3" in row.text
    if os.environ.get("PCQ_SCREENSHOT"):
        browser.save_screenshot(os.environ["PCQ_SCREENSHOT"].replace(".png", "-dashboard.png"))
    # Resume the paused queue from the page; its job then runs.
    browser.find_element(By.CSS_SELECTOR, "tr[data-paused='queue:held'] button").click()
    message = browser.find_element(By.CSS_SELECTOR, "ul.messagelist li").text
    assert message == "Resumed queue held: 1 waiting job(s) released."
    assert not browser.find_elements(By.CSS_SELECTOR, "tr[data-paused='queue:held']")
    with background_worker(concurrency=1):
        wait_for_status(held, "succeeded")

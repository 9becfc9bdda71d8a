"""End to end in a real headless Chromium: log in, filter failed jobs, retry one, watch the worker run it.

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
            "UPDATE pcq_jobs SET status = 'failed', attempts = 1, finished_at = now(), error = %s WHERE id = %s",
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
        record.configure(lock=f"lock-for-{value}", queue="a-rather-long-queue-name").defer(value=value)
    _failed_job()
    browser.set_window_size(1280, 900)
    changelist = f"{live_server.url}/admin/procrastinate_django/procrastinatejob/"
    browser.get(f"{live_server.url}/admin/login/?next=/admin/procrastinate_django/procrastinatejob/")
    browser.find_element(By.NAME, "username").send_keys("boss")
    browser.find_element(By.NAME, "password").send_keys("s3cret-pass")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit], button[type=submit]").click()
    wait_until(lambda: browser.current_url.startswith(changelist), what="the job list after login")
    browser.find_element(By.ID, "result_list")
    overflow = browser.execute_script(
        "const r = document.querySelector('#changelist .results');"
        "return [r.scrollWidth, r.clientWidth, document.documentElement.scrollWidth, window.innerWidth];"
    )
    results_scroll, results_width, page_scroll, page_width = overflow
    if os.environ.get("PCQ_SCREENSHOT"):
        browser.save_screenshot(os.environ["PCQ_SCREENSHOT"])
    assert results_scroll <= results_width, overflow
    assert page_scroll <= page_width, overflow

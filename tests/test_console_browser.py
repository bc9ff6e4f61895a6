"""The console in a real browser, as an operator uses it: headless Chromium (Debian's package)
driven by Selenium against ``hookline console`` running as its own process. It logs in, finds
a dead letter by filter, replays it and sees it processed; a hostile body runs nothing; a
wrong token is refused. Skipped with the reason where Chromium is not installed (a failure
under CI=true)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.config import Settings, load_settings
from tests import browser, services
from tests.processes import env_for, free_port, hookline, http_ok, processes, wait_until
from tests.test_console import (
    CONSOLE_SECTION,
    HOSTILE_IMG,
    HOSTILE_SCRIPT,
    TOKEN,
    body,
    config_text,
    deliver_with_headers,
    make_dead,
)
from tests.test_worker import deliver, run_worker
from workers import runtime

pytestmark = pytest.mark.slow


@pytest.fixture
def setup(
    tmp_path: Path, redis_url: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """`hookline console` on a free port over this test's Redis and SQLite database."""
    reason = browser.missing()
    if reason:
        services.missing(reason)
    monkeypatch.setenv("HOOKLINE_TEST_STATE", str(tmp_path))
    config = tmp_path / "hookline.toml"
    config.write_text(config_text(redis_url, sqlite_url, CONSOLE_SECTION))
    settings = load_settings(config, environ={"HOOKLINE_CONSOLE_TOKEN": TOKEN})
    runtime.configure(settings)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "console.log"
    with processes() as procs:
        procs.start(
            hookline("console", "--config", str(config), "--port", str(port)),
            env_for(HOOKLINE_CONSOLE_TOKEN=TOKEN, HOOKLINE_TEST_STATE=str(tmp_path)),
            log,
        )
        wait_until(lambda: http_ok(f"{base}/login"), 30, "the console starting")
        with browser.chromium(tmp_path) as driver:
            yield {"base": base, "settings": settings, "state": tmp_path, "driver": driver}
    # the console's own log never holds the token
    assert TOKEN not in log.read_text()


def log_in(driver: Any, token: str) -> None:
    """Type ``token`` in the login form and wait for the answer (a wrong token's comes after
    the console's delay)."""
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    click(driver.find_element(By.ID, "login"))


def click(element: Any) -> None:
    """Click what leads to another page, and wait until the browser has left this one (while
    the old page is being replaced, Chromium may answer with an error rather than "stale":
    asked again)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    element.click()
    WebDriverWait(element.parent, 15, ignored_exceptions=(WebDriverException,)).until(
        expected_conditions.staleness_of(element)
    )


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def test_an_operator_replays_a_dead_letter_found_by_filter_and_sees_it_processed(
    setup: dict[str, Any], redis_client: redis.Redis
) -> None:
    from selenium.webdriver.common.by import By

    driver, base, state = setup["driver"], setup["base"], setup["state"]
    settings: Settings = setup["settings"]
    # Given a dead letter of "flaky" and one of "poison"
    [dl_id] = make_dead(redis_client, settings, state, "b-1")
    (state / "poison").write_text("")
    deliver(redis_client, settings, "poison", body=body({"id": "p-1", "type": "t"}))
    run_worker(redis_client, settings)
    (state / "poison").unlink()
    # When the operator opens the console and logs in
    driver.get(base + "/")
    assert driver.current_url.startswith(base + "/login")
    log_in(driver, TOKEN)
    # Then the overview shows the dead letters, and refreshes itself as events arrive
    assert text_of(driver, "dead-letters") == "2"
    assert text_of(driver, "queued") == "0"
    deliver(redis_client, settings, "moncash", n=1)
    wait_until(lambda: text_of(driver, "queued") == "1", 12, "the overview refreshing")
    # When the operator filters the dead letters by source
    click(driver.find_element(By.LINK_TEXT, "Dead letters"))
    source = driver.find_element(By.CSS_SELECTOR, "#filters input[name=source]")
    source.send_keys("flaky")
    click(driver.find_element(By.ID, "filter"))
    # Then only that one is listed
    rows = driver.find_elements(By.CSS_SELECTOR, "#dead-letters tbody tr")
    assert len(rows) == 1 and "b-1" in rows[0].text
    # When the operator selects it, asks to replay it and confirms
    driver.find_element(By.CSS_SELECTOR, f"input.pick[value='{dl_id}']").click()
    click(driver.find_element(By.ID, "replay-selected"))
    assert "Replay 1 dead letter?" in driver.find_element(By.TAG_NAME, "h1").text
    click(driver.find_element(By.ID, "confirm"))
    # Then the job's page shows its progress until its dead letter is queued again, and says
    # the workers have yet to run it
    wait_until(lambda: text_of(driver, "state") == "queued again", 10, "the replay job finishing")
    assert text_of(driver, "counts") == "1 of 1 handled: 1 queued again"
    assert "0 processed, 0 dead again, 1 still waiting" in text_of(driver, "outcome")
    # When the handler is fixed and a worker drains the queue
    (state / "fail_b-1").unlink()
    run_worker(redis_client, settings)
    # Then the job's page, refreshing itself, says the event was processed
    wait_until(lambda: text_of(driver, "state") == "processed", 15, "the job page refreshing")
    assert "1 processed, 0 dead again, 0 still waiting" in text_of(driver, "outcome")
    # And the event's page shows it processed, after its replay asked by the console
    driver.get(f"{base}/events/flaky/b-1")
    assert text_of(driver, "status") == "processed"
    steps = [step.text for step in driver.find_elements(By.CSS_SELECTOR, "#timeline strong")]
    assert steps[-2:] == [
        f"replay of the dead letter {dl_id} queued, asked by console",
        f"processed (attempt {len(steps) - 3})",
    ]
    # and the dead letter is no longer among those to deal with
    driver.get(f"{base}/dead-letters?source=flaky")
    assert text_of(driver, "none") == "No dead letter matches."


def test_a_hostile_body_and_headers_are_shown_as_text_and_run_nothing(
    setup: dict[str, Any], redis_client: redis.Redis
) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    driver, base = setup["driver"], setup["base"]
    settings: Settings = setup["settings"]
    # Given an event whose type, body and headers hold markup that would run if rendered
    hostile = {
        "id": "x-1",
        "type": HOSTILE_SCRIPT,
        "note": HOSTILE_IMG,
        "alert": "<svg onload=alert(1)>",
    }
    deliver_with_headers(
        redis_client,
        settings,
        "late",
        json.dumps(hostile).encode(),
        {"X-Note": HOSTILE_IMG, "X-Script": HOSTILE_SCRIPT},
    )
    run_worker(redis_client, settings)
    driver.get(base + "/login")
    log_in(driver, TOKEN)
    for path in ("/events", "/events/late/x-1", f"/events?type={HOSTILE_SCRIPT}"):
        # When the operator opens the lists and the event
        driver.get(base + path)
        # Then nothing ran: no alert, no global set by the markup
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.text  # noqa: B018 - raises when there is none
        assert driver.execute_script("return typeof window.__xss") == "undefined"
        # And no element came from the markup: no image, no svg, no script but the console's
        assert driver.find_elements(By.CSS_SELECTOR, "main img, main svg, main script") == []
        scripts = driver.find_elements(By.TAG_NAME, "script")
        assert [s.get_attribute("src") for s in scripts] == [base + "/static/console.js"]
    # And the event's page shows the markup literally, as text
    driver.get(f"{base}/events/late/x-1")
    assert text_of(driver, "event-type") == HOSTILE_SCRIPT
    shown = json.loads(text_of(driver, "body"))
    assert shown == hostile
    cells = {
        row.find_element(By.TAG_NAME, "th").text: row.find_element(By.TAG_NAME, "td").text
        for row in driver.find_elements(By.CSS_SELECTOR, "#headers tr")
    }
    assert cells["X-Note"] == HOSTILE_IMG and cells["X-Script"] == HOSTILE_SCRIPT


def test_a_wrong_token_is_refused(setup: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    driver, base = setup["driver"], setup["base"]
    # When someone types a wrong token
    driver.get(base + "/events")
    log_in(driver, "not-the-console-token")
    # Then the login form comes back saying so, with no session and nothing of the console
    assert text_of(driver, "login-message") == "wrong token"
    assert driver.find_element(By.ID, "token").get_attribute("value") == ""
    assert [c["name"] for c in driver.get_cookies() if "session" in c["name"]] == []
    assert driver.find_elements(By.CSS_SELECTOR, "header nav") == []
    driver.get(base + "/dead-letters")
    assert driver.current_url.startswith(base + "/login")
    log_in(driver, "still-not-the-console-token")
    assert text_of(driver, "login-message") == "wrong token"
    # And the right token then lets the operator in, where they were going
    log_in(driver, TOKEN)
    assert driver.current_url == base + "/dead-letters"
    session = [c for c in driver.get_cookies() if c["name"] == "hookline_console_session"]
    assert session and session[0]["httpOnly"] and session[0]["sameSite"] == "Strict"
    assert TOKEN not in driver.page_source


def test_the_overview_charts_render_under_the_csp_and_switch_to_the_last_day(
    setup: dict[str, Any], redis_client: redis.Redis
) -> None:
    from selenium.webdriver.common.by import By

    driver, base = setup["driver"], setup["base"]
    settings: Settings = setup["settings"]
    # Given events applied by a worker (the ingress's counts come with its traffic)
    for n in range(3):
        deliver(redis_client, settings, "moncash", n=n)
    run_worker(redis_client, settings)
    # a listener for CSP violations in every page (DevTools' scripts are not the page's)
    driver.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {
            "source": "window.__violations = [];"
            " document.addEventListener('securitypolicyviolation',"
            " e => window.__violations.push(e.violatedDirective));"
        },
    )
    # When the operator logs in and looks at the overview
    driver.get(base + "/login")
    log_in(driver, TOKEN)
    chart = driver.find_element(By.ID, "chart-workers")
    # Then the chart is drawn at its size, its lines dashed apart as the SVG says
    assert chart.size["width"] > 300 and chart.size["height"] > 80
    dashes = driver.execute_script(
        "return [...document.querySelectorAll('#chart-workers g.series polyline')]"
        ".map(p => getComputedStyle(p).strokeDasharray)"
    )
    assert dashes and dashes[0] == "none" and "6" in dashes[-1]
    legend = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#chart-workers .legend")]
    assert legend == ["applied", "dead-lettered"]
    caption = driver.find_element(By.CSS_SELECTOR, "#charts-workers figcaption").text
    assert caption == "Events applied and dead-lettered per minute"
    # and nothing on the page broke the Content-Security-Policy
    assert driver.execute_script("return window.__violations") == []
    # When they switch to the last day
    click(driver.find_element(By.LINK_TEXT, "Last day, per 5 minutes"))
    caption = driver.find_element(By.CSS_SELECTOR, "#charts-workers figcaption").text
    assert caption == "Events applied and dead-lettered per 5 minutes"
    assert driver.execute_script("return window.__violations") == []

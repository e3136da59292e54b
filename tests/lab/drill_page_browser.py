"""Open pgha's drill page in a real browser, as an operator does: for the lab's end-to-end test.

Not a test module: the lab test calls ``drill_page_in_browser(...)``. It drives
Debian's chromium through chromium-driver (``apt-get install chromium
chromium-driver``) with Selenium (requirements.txt), headless, logs into
Airflow's UI with the given user (the login form of the simple or the FAB auth
manager: fields ``username`` / ``password``), opens the page, saves a
screenshot and returns the text of the page's drill table.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

PAGE_PATH = "/pgha/"
UI_ROUTE = "/plugin/pgha-drills"  # the page inside Airflow's UI (the plugin's external view)
SESSION_COOKIE = "_token"  # Airflow's JWT cookie, set by the login


@dataclass(frozen=True)
class DrillPageView:
    """What the browser showed: the drill table's text ('' when no drill is recorded yet) and the page's text."""

    table: str
    text: str
    screenshot: Path


def browser(width: int = 1400, height: int = 1100) -> WebDriver:
    """Headless Debian chromium through chromium-driver."""
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)


def log_in(driver: WebDriver, base_url: str, user: str, password: str, timeout: float = 60) -> None:
    """Airflow's own login: its UI sends an anonymous browser to the auth manager's login form."""
    driver.get(base_url + "/")
    wait = WebDriverWait(driver, timeout)
    name = wait.until(ec.visibility_of_element_located((By.NAME, "username")))
    name.clear()
    name.send_keys(user)
    secret = driver.find_element(By.NAME, "password")
    secret.clear()
    secret.send_keys(password, Keys.ENTER)
    try:
        wait.until(lambda d: d.get_cookie(SESSION_COOKIE) is not None)
    except TimeoutException as exc:
        raise AssertionError(f"logging into {base_url} as {user!r} did not give a session "
                             f"(still at {driver.current_url})") from exc


def drill_page_in_browser(base_url: str, user: str, password: str, screenshot: str | Path, *,
                          inside_airflow_ui: bool = False, timeout: float = 60) -> DrillPageView:
    """
    Log into Airflow at ``base_url`` (e.g. ``http://10.0.3.10:8080``), open the drill page, save a PNG
    screenshot at ``screenshot`` and return what it showed.

    :param inside_airflow_ui: open it as the Browse menu does (``/plugin/pgha-drills``, the page in an
        iframe of Airflow's UI; the screenshot then shows both) instead of ``/pgha/`` on its own.
    """
    base_url = base_url.rstrip("/")
    screenshot = Path(screenshot)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    driver = browser()
    try:
        log_in(driver, base_url, user, password, timeout)
        wait = WebDriverWait(driver, timeout)
        if inside_airflow_ui:
            driver.get(base_url + UI_ROUTE)
            frame = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "iframe")))
            driver.switch_to.frame(frame)
        else:
            driver.get(base_url + PAGE_PATH)
        wait.until(ec.presence_of_element_located((By.ID, "leader")))  # the page rendered (not a 401/403)
        table = driver.find_elements(By.ID, "drill-summary")
        view_table, text = (table[0].text if table else ""), driver.find_element(By.TAG_NAME, "body").text
        driver.switch_to.default_content()
        driver.save_screenshot(str(screenshot))
        return DrillPageView(table=view_table, text=text, screenshot=screenshot)
    finally:
        driver.quit()

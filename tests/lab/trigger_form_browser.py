"""Open pg_ha_migration's trigger form in a real browser, as an operator does: for the lab's test.

Not a test module: tests/lab/test_trigger_form.py calls ``trigger_form_in_browser(...)``. It
reuses drill_page_browser's headless Chromium and Airflow login, opens the DAG's page, presses
its Trigger button (the form opens in a dialog; nothing is triggered: the dialog's own Trigger
button is never pressed), opens every collapsed section of the form, saves a screenshot and
returns the dialog's text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from drill_page_browser import browser, log_in
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

TRIGGER_BUTTON = "//button[normalize-space(.)='Trigger' or @aria-label='Trigger Dag' or @aria-label='Trigger DAG']"
DIALOG = "[role='dialog']"
# a form section (Param "section") or the "Advanced Options" part, collapsed until clicked
COLLAPSED = ".//button[@aria-expanded='false']"


@dataclass(frozen=True)
class TriggerFormView:
    text: str  # the dialog's text, every section open
    multi_selects: int  # comboboxes that take several values (the phases)
    screenshot: Path


def trigger_form_in_browser(base_url: str, user: str, password: str, dag_id: str, screenshot: str | Path, *,
                            timeout: float = 60) -> TriggerFormView:
    """Log into Airflow at ``base_url``, open ``dag_id``'s trigger form, screenshot it at ``screenshot``."""
    base_url = base_url.rstrip("/")
    screenshot = Path(screenshot)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    driver = browser(height=1600)
    try:
        log_in(driver, base_url, user, password, timeout)
        wait = WebDriverWait(driver, timeout)
        driver.get(f"{base_url}/dags/{dag_id}")
        wait.until(ec.element_to_be_clickable((By.XPATH, TRIGGER_BUTTON))).click()
        dialog = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, DIALOG)))
        wait.until(lambda d: "Phases to run" in dialog.text or dialog.find_elements(By.XPATH, COLLAPSED))
        for _ in range(10):  # sections can nest: open until none is collapsed
            collapsed = [b for b in dialog.find_elements(By.XPATH, COLLAPSED) if b.is_displayed()]
            if not collapsed:
                break
            for button in collapsed:
                driver.execute_script("arguments[0].click();", button)
        multi = dialog.find_elements(By.CSS_SELECTOR, "[aria-multiselectable='true'], [class*='multi-value'], "
                                                      "[class*='multiValue'], [data-part='item-group']")
        text = dialog.text
        driver.save_screenshot(str(screenshot))
        return TriggerFormView(text=text, multi_selects=len(multi), screenshot=screenshot)
    finally:
        driver.quit()

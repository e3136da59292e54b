"""Open pg_ha_migration's trigger form in a real browser, as an operator does: for the lab's test.

Not a test module: tests/lab/test_trigger_form.py calls ``trigger_form_in_browser(...)``. It
reuses drill_page_browser's headless Chromium and Airflow login, opens the DAG's page, presses
its Trigger button (the form opens in a dialog; nothing is triggered: the dialog's own Trigger
button is never pressed), opens every collapsed section of the form, saves a screenshot and
returns the dialog's text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from drill_page_browser import browser, log_in
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

# Airflow 3.3's DAG header button (data-testid from its UI bundle), else the button by its label
TRIGGER_BUTTON = ("//button[@data-testid='trigger-dag-button' or normalize-space(.)='Trigger' "
                  "or @aria-label='Trigger Dag' or @aria-label='Trigger DAG']")
# the modal itself: the page also holds hidden popovers with role=dialog
DIALOG = "[role='dialog'][aria-modal='true']"
# a form section (Param "section") or the "Advanced Options" part: an accordion item, collapsed until clicked
# a value chosen in a multi-select (react-select): a tag with a "Remove <value>" button
SELECTED_TAG = "[aria-label^='Remove ']"
SECTIONS = ".//button[@data-scope='accordion' and @data-part='item-trigger']"


@dataclass(frozen=True)
class TriggerFormView:
    text: str  # the dialog's text, every section open
    selected_tags: int  # values shown as removable tags in a multi-select (the phases), most seen at once
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
        try:
            dialog = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, DIALOG)))
        except TimeoutException:  # keep what the browser showed for whoever matches the selectors next
            driver.save_screenshot(str(screenshot.with_suffix(".no-dialog.png")))
            screenshot.with_suffix(".no-dialog.html").write_text(driver.page_source)
            raise
        wait.until(lambda d: dialog.find_elements(By.XPATH, SECTIONS))
        # Open each section in turn and keep its text: an accordion may close one section when
        # another opens. The screenshot shows the section that holds the phases.
        texts, tags, shot_taken = [dialog.text], 0, False
        for index in range(len(dialog.find_elements(By.XPATH, SECTIONS))):
            button = dialog.find_elements(By.XPATH, SECTIONS)[index]
            if button.get_attribute("aria-expanded") != "true":
                driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
                button.click()
                time.sleep(0.5)  # the accordion's opening animation
            texts.append(dialog.text)
            tags = max(tags, len(dialog.find_elements(By.CSS_SELECTOR, SELECTED_TAG)))
            if "Phases to run" in dialog.text and not shot_taken:
                driver.save_screenshot(str(screenshot))
                shot_taken = True
        if not shot_taken:
            driver.save_screenshot(str(screenshot))
        text = "\n".join(texts)
        return TriggerFormView(text=text, selected_tags=tags, screenshot=screenshot)
    finally:
        driver.quit()

"""The migration's trigger form in the lab's Airflow UI, seen in a real (headless) Chromium.

The form opens in a modal dialog whose sections are an accordion (one open at a time): the
browser opens each in turn and reads its text.
"""

from __future__ import annotations

import pytest
from lab_fixtures import Lab

pytestmark = pytest.mark.lab

DAG = "pg_ha_migration"


def test_the_trigger_form_guides_an_operator(lab: Lab) -> None:
    """Phases as a multi-select with the runbook's titles, the dry_run and approve_cutover Params shown
    with their titles and help; the screenshot goes into the closing note of issue 13."""
    from lab_fixtures import REPO_ROOT, topology
    from trigger_form_browser import trigger_form_in_browser

    shot = REPO_ROOT / "lab" / ".state" / "screenshots" / "trigger-form.png"
    view = trigger_form_in_browser(topology.api_url(), "admin", lab.secrets["admin_password"], DAG, shot)
    for title in ("Phases to run", "Dry run: plan only, change nothing", "Ask a person to approve the cutover",
                  "Data migration method"):
        assert title in view.text, (title, view.text[:3000])
    # the multi-select shows the selected phases by their runbook titles, not as a JSON array
    assert "1. Prepare hosts: names, package sources, firewall" in view.text, view.text[:3000]
    assert '["1_prepare_hosts"' not in view.text
    assert view.selected_tags == 9, view.text[:3000]  # the nine phases, each a tag
    assert view.screenshot.stat().st_size > 10_000

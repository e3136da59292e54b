"""The migration's trigger form in the lab's Airflow UI, seen in a real (headless) Chromium.

Written, not yet run on the lab (TODO: the lead's next lab run): selectors for Airflow 3's
trigger dialog may need adjusting to the lab's Airflow release.
"""

from __future__ import annotations

import os

import pytest
from lab_fixtures import Lab

pytestmark = pytest.mark.lab

DAG = "pg_ha_migration"


# TODO: the first lab run clicked Trigger but found no dialog ([role='dialog'] never became visible):
# the selectors of trigger_form_browser.py must be matched against Airflow 3.3's UI on a live lab.
@pytest.mark.skipif(not os.environ.get("PGHA_LAB_UNPROVEN"),
                    reason="trigger dialog selectors not yet matched against the live Airflow UI (TODO in the file)")
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
    assert view.multi_selects >= 1, view.text[:3000]
    assert view.screenshot.stat().st_size > 10_000

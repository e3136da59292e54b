"""Airflow names that moved between the supported releases (README "Supported Airflow releases").

pgha imports these from here, never from where one release happens to keep them, so every module
imports on Airflow 3.0 through 3.3. Airflow 3.2 moved the task exceptions into the Task SDK
(airflow.sdk.exceptions; airflow.exceptions keeps the same classes as deprecated aliases); on 3.0
and 3.1 the Task SDK raises and catches airflow.exceptions' classes. Airflow 3.1 added BaseHook to
airflow.sdk.
"""

from __future__ import annotations

try:
    from airflow.sdk.exceptions import (
        AirflowException,
        AirflowFailException,
        AirflowNotFoundException,
        AirflowSensorTimeout,
        AirflowSkipException,
        TaskDeferred,
    )
except ImportError:  # Airflow 3.0, 3.1
    from airflow.exceptions import (  # type: ignore[no-redef]
        AirflowException,
        AirflowFailException,
        AirflowNotFoundException,
        AirflowSensorTimeout,
        AirflowSkipException,
        TaskDeferred,
    )

try:
    from airflow.sdk import BaseHook
except ImportError:  # Airflow 3.0
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef]

__all__ = [
    "AirflowException",
    "AirflowFailException",
    "AirflowNotFoundException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "BaseHook",
    "TaskDeferred",
]

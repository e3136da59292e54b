"""Airflow names that moved between the supported releases (README "Supported Airflow releases").

pgha imports these from here, never from where one release happens to keep them, so every module
imports on Airflow 3.0 through 3.3. Airflow 3.2 moved the task exceptions into the Task SDK
(airflow.sdk.exceptions; airflow.exceptions keeps the same classes as deprecated aliases); on 3.0
and 3.1 the Task SDK raises and catches airflow.exceptions' classes. Airflow 3.1 added BaseHook
and the masker's redact (airflow.sdk.log) to the Task SDK, 3.2 its configuration (airflow.sdk.configuration).
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


def redact(value: object) -> object:
    """``value`` with every registered secret masked: the Task SDK's masker (airflow.sdk.log on 3.1+,
    its secrets_masker module on 3.0); ``value`` itself where Airflow has no masker to ask."""
    try:
        from airflow.sdk.log import redact as sdk_redact
    except ImportError:
        try:  # Airflow 3.0
            from airflow.sdk.execution_time.secrets_masker import redact as sdk_redact  # type: ignore[no-redef]
        except ImportError:
            return value
    return sdk_redact(value)


def airflow_conf():
    """Airflow's configuration: the Task SDK's (3.2+), else airflow.configuration's (3.0, 3.1)."""
    try:
        from airflow.sdk.configuration import conf
    except ImportError:  # Airflow 3.0, 3.1
        from airflow.configuration import conf  # type: ignore[no-redef]
    return conf


__all__ = [
    "AirflowException",
    "AirflowFailException",
    "AirflowNotFoundException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "BaseHook",
    "TaskDeferred",
    "airflow_conf",
    "redact",
]

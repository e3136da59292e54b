#!/bin/bash
# What `lab/lab provision` compares with vm4's `provisioned` snapshot to tell whether
# vm4 is still as provisioned: config files (the migration repoints airflow.cfg), the
# worker unit running. Whether the worker answers through vm1's broker is checked
# separately (it depends on vm1, not on vm4's disk).
set -u
sha256sum /home/airflow/airflow/airflow.cfg /etc/pgha/airflow.env 2>&1
systemctl is-enabled airflow-celery-worker 2>&1
systemctl is-active airflow-celery-worker 2>&1

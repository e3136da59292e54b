"""pgha: Airflow DAGs, operators and hooks that make Airflow's metadata database highly available.

Installed as the ``pgha`` distribution (``pip install pgha``); this folder is the
``pgha`` package. Subpackages: ``hooks`` (connections to hosts and services),
``operators``, ``sensors`` and ``triggers``; the modules beside them are the
model (inventory, OS-family data, rendering), which imports no hook.
"""

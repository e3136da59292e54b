"""pgha's page in the Airflow UI: the cluster as it is now and the history of its failover drills.

``pgha.ui.drill_page`` is the FastAPI app the plugin mounts; ``cluster_state``,
``drill_history`` and ``rto_chart`` gather and draw what it shows.
"""

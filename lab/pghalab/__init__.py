"""The pgha lab as a package: `lab/lab` is its command line (pghalab.cli).

Modules by concern, each importing only the ones before it:

    topology    the hosts table: names, addresses, roles, ports (tests, bench and demo import it)
    settings    paths on the outer machine and on the hosts, fixed names, timeouts
    common      logging, subprocesses, timing, files, mounts
    record      STATE/run.json (what this lab started), its lock, the lab's secrets
    procs       background processes by pid + start time
    ssh         the lab's keys, known_hosts, SSH to the hosts, tar bundles
    cache       base image, wheelhouse, the pgha wheel of this checkout
    network     bridge, nftables, apt proxy, wheel server, the drill's fault injector
    containers  nspawn hosts: overlay disks, boot, stop, crash, isolate/heal
    snapshots   overlay layers as named snapshots, restore
    airflow_api a small client of Airflow's REST API (also used by tests and lab/demo)
    lab_airflow health, DAG parsing, history, the Celery worker, the UI
    deploy      dags/ and the pgha wheel to the Airflow hosts (pip install)
    provision   vm1 and vm4 built once, kept as `provisioned` snapshots
    cli         the commands

Python 3 standard library only.
"""

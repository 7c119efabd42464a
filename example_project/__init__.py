"""An example code location for datapipe_dagster: the 002 seed notebook's click pipeline, grown up.

``events(user_id, event_id, event)`` arrive through an HTTP endpoint (``example_project.api``), a
simulator (``example_project.simulate``) or a Dagster ingestion asset; transforms derive per-user
``click_count`` and ``ip`` (the seed), per-(ip, user) ``user_ips`` and a per-ip ``ip_stats`` summary
(a second partitioning), and a per-user ``user_report`` that joins the ingested ``user_profiles``.

Modules: ``catalog`` (tables and where the data lives), ``pipeline`` (the transforms), ``defs/`` (the
defs folder: the pipeline as a ``DatapipeComponent`` in ``clicks/defs.yaml``), ``definitions`` (the Dagster
code location ``workspace.yaml`` loads, built from ``defs/``), ``api``, ``simulate``, ``demo``.
"""

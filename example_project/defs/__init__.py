"""The example's defs folder (``dg list defs`` from the repository root): Dagster loads every component here.

``clicks/defs.yaml`` declares the datapipe pipeline with ``datapipe_dagster.DatapipeComponent``;
``clicks/user_profiles.py`` beside it holds the user-written ingestion asset the component includes.
"""

"""The engine: steps and runners (BatchTransform & co), stale keys, partitions, run_steps. Never imports dagster."""

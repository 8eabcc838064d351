"""Pure building blocks: the config, the column grammar, coercion, windows and the run report (no Airflow, no I/O)."""

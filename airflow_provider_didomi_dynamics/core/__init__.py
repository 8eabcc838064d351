"""Pure building blocks: the config, the column grammar, coercion, windows, the run report and the collector's
freeze for pushes (no Airflow, no I/O)."""

"""Triggers that run in Airflow's triggerer: event-driven scheduling of the sync DAGs."""

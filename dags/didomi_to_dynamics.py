"""The didomi_to_dynamics DAG, as the provider defines it (airflow_provider_didomi_dynamics.dags)."""

from airflow_provider_didomi_dynamics.dags.didomi_to_dynamics import build_dag

dag = build_dag()

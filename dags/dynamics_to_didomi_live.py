"""The dynamics_to_didomi_live DAG, as the provider defines it (airflow_provider_didomi_dynamics.dags)."""

from airflow_provider_didomi_dynamics.dags.dynamics_to_didomi_live import build_dag

dag = build_dag()

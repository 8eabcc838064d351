"""The dynamics_webhook_setup DAG, as the provider defines it (airflow_provider_didomi_dynamics.dags)."""

from airflow_provider_didomi_dynamics.dags.dynamics_webhook_setup import build_dag

dag = build_dag()

"""The dynamics_to_didomi DAG, as the provider defines it (airflow_provider_didomi_dynamics.dags)."""

from airflow_provider_didomi_dynamics.dags.dynamics_to_didomi import build_dag

dag = build_dag()

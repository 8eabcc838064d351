"""Apache Airflow provider that keeps consent in sync between Didomi PMP and Microsoft Dynamics 365."""

__version__ = "0.1.0"

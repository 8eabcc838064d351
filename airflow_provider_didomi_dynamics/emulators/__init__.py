"""Local, faithful emulators of the Dataverse Web API (with its Entra ID token endpoint) and of the Didomi API.

They speak real HTTPS on loopback so tests, the demo, benchmarks and users' own DAGs run offline.
"""

"""Hooks of the Didomi / Dynamics 365 provider."""

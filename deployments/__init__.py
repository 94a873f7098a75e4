"""Prefect deployments of the flows: schedules and parameters, no training logic."""

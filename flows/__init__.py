"""Prefect flows: the pipeline as one task per DVC stage, gated deployment, schedules and triggers."""

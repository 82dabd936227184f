"""Pipeline stages: each module has a pure-ish `run` and a thin CLI (`python -m stages.<name>`)."""

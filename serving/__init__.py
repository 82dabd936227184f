"""Serving: the model registry (BentoML model store) and the BentoML prediction service."""

"""Evaluation: metrics, scoring, the quality gate, ONNX export, model cards and lineage."""

"""Evaluation: metrics, scoring, the ONNX classifier, the quality gate, ONNX export, model cards and lineage."""

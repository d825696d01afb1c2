"""Trained detectors on disk: model files (weights and metadata in one safetensors file)."""

"""Moorage: a local OCI registry that speaks Amazon ECR, with a pull-through cache."""

__version__ = "0.1.0"

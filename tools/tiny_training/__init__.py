"""Pieces of tools/train_tiny_models.py (the embedded models' training), one concern per module."""

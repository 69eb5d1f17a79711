"""Pipelines compose stages (the demo). They are the only modules that import stages."""

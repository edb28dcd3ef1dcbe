"""Wiring of the stages: the CLI, the composed configuration, Ray job submission."""

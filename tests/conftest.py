"""Shared pytest configuration for the whole test suite."""

pytest_plugins = ["eventcomposition.testing.pytest_plugin"]

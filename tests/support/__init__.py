"""Helpers shared by the test directories (no test module imports another test module or a conftest)."""

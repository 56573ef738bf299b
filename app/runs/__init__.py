"""Runs: creation, admission and the in-process manager."""

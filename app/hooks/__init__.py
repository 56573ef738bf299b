"""Hooks (§6): outside services that gate tool calls, or receive a run's events."""

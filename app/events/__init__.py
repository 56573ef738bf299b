"""Run events: persisted with a per-run seq, then published to live subscribers."""

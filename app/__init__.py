"""loomd: a self-hosted runtime for LLM agent loops."""

__version__ = "0.1.0"

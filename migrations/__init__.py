"""Alembic migration scripts, shipped with the package so `loomd migrate` finds them."""

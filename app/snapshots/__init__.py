"""Snapshots (§11): a portable JSON envelope of the service's state, made, verified and
restored in a stream, a page of rows or a chunk of bytes at a time."""

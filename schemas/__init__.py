"""Types shared by every room of riverstream: events, API bodies, settings and errors.

Nothing in this package performs I/O.
"""

"""The engine process: the scheduling loop that drives the workers (loop.py), started by the
frontend (process.py)."""

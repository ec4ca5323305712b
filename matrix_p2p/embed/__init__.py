"""The Python API's parts: argument checks, in-memory sources, results for ``serve``."""

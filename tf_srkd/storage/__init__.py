"""The run directory on disk: atomic writes, checked reads, its layout, its lock.

No TensorFlow here; the bottom of the package with `errors` and `registry`.
"""

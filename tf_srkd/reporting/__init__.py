"""The paper's numbers as data, and its tables regenerated from tracked runs.

Imports `tracking` (to read runs back) and `storage`; never `run` or `cli`.
"""

"""One run of the pipeline: its config, identity, stages, resume and console lines.

Takes a `Config` and a tracker (the tracker interface of `tracking.base`) and never imports MLflow or
`export`; the command line chooses both. Imports `core`, `data`, `models`, `storage`
and `tracking.base`.
"""

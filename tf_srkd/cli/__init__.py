"""Every command-line entry point: flags in, one frozen `Config` out, then the library.

`main` (`tf-srkd`), `report` (`tf-srkd-report`), `subset` (`tf-srkd-subset`), with
`environment` (what each does before TensorFlow loads), `flagfiles` and `strategy`.
The only room that reads flags, chooses the tracker and imports `export`; nothing
imports it (`tf_srkd.main` only forwards `python -m tf_srkd.main`).
"""

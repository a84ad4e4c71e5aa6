"""Datasets by name, read into arrays with sample ids, batched, streamed and subset.

`specs` (what a dataset is), `datasets` / `tfds_specs` / `image_folders` (resolving
a `--dataset=` name), `sources` (a split as tf.data), `arrays` (in memory, with
ids), `epoch_batches`, `streaming` (larger than memory), `subsets`
(significance-ranked) and `sample_ids` (ids on a Keras user's own data). Imports only `storage` and the package's `errors` and `registry`.
"""

"""The method itself: Algorithm 1's gate, Algorithm 3's losses and the Keras train steps.

Pure math (`regulation`, `losses`, `chance`), the modes as data (`modes`), the gated
steps (`steps`, `training`, `distillation`), exact cross-replica arithmetic
(`distributed`), the margin cache, the peer gate policies (`gates`) and the callbacks
of a stage. Imports only `storage` and the package's `errors` and `registry`.
"""

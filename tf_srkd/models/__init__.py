"""Where networks come from and what they take.

`zoo` (the registry's architectures), `sources` (name, application, factory or
file), `loading` (a `.keras` file, checked), `app_preprocessing` (an application's
preprocessing as a layer), `input_contract` (pixel range) and `precise_bn`.
Imports `core`, `data` and `storage`; never `run`, `tracking` or `cli`.
"""

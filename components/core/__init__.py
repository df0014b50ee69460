"""The pure core: configuration, text and tokenizers, packing, metrics, plots and the replay samplers.

Imports nothing else of the project (the layer contract in pyproject.toml checks it); no engine I/O.
"""

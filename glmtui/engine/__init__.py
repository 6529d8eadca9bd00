"""The inference engine: loading, prompt formats and the worker thread.

Nothing in here imports Textual; torch/transformers are imported lazily.
"""

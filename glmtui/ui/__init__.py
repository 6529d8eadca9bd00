"""The Textual user interface (no torch or transformers imports in this package)."""

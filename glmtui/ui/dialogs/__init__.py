"""Dialogs with a job of their own: loading a model (load.py), a conversation's settings (settings.py).

The small ones (confirm, rename, quantization) stay in ui/modals.py, which re-exports these.
"""

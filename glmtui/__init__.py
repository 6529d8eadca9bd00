"""glmtui: run GLM-family models (ChatGLM3, GLM-4) locally from a terminal UI.

Importing this package must stay cheap: torch and transformers are imported
only inside the inference worker thread (see glmtui.engine.worker).
"""

__version__ = "0.1.0"

"""Tools and the code interpreter for ChatGLM3's tool / interpreter turns (no UI, no torch)."""

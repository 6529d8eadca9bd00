"""A reply's recorded figures in the Markdown export: tokens, tok/s, TTFT and what wrote it (model, mode,
device), as the app's reply footer shows them; the real SQLite store."""

from __future__ import annotations

from pathlib import Path

from glmtui.store import HistoryStore


def test_markdown_export_names_the_model_mode_and_device_of_each_reply(tmp_path: Path) -> None:
    store = HistoryStore.open(tmp_path / "history.sqlite3")
    cid = store.create_conversation("figures", model="chatglm3-6b")
    store.add_message(cid, "user", "hi")
    store.add_message(cid, "assistant", "hello", stats={
        "prompt_tokens": 9, "completion_tokens": 2, "ttft": 0.25, "tokens_per_s": 40.0, "total_s": 0.3,
        "finish_reason": "stop", "model": "chatglm3-6b", "mode": "int4", "device": "cuda:1"})
    store.add_message(cid, "assistant", "older reply", stats={"completion_tokens": 3})  # recorded before model/mode
    md = store.export_markdown(cid)
    store.close()
    assert "*2 tokens; 40.0 tokens/s; first token after 0.25 s; chatglm3-6b · int4 · cuda:1*" in md
    assert "*3 tokens*" in md

"""``--model``: whether the model asked for is on disk, or can be downloaded from a hub that answered.

Only with ``--model``: a model that is neither here nor reachable is something asked for that cannot
work (a fail verdict, exit status 1); one a reachable hub has is an ok with the command that fetches it.
"""

from __future__ import annotations

from typing import Optional

from ..config import Paths
from .verdicts import Check, Request

TITLE = "model"


def _reachable(hub_checks: list[Check]) -> dict[str, bool]:
    """Whether downloads from each source would reach their hub: Hugging Face through the configured mirror
    when there is one (the public hub is then not used), ModelScope at its endpoint."""
    by_key = {c.key: c for c in hub_checks}
    hf = by_key.get("hub_mirror") or by_key.get("hub_hf")
    ms = by_key.get("hub_modelscope")
    return {"hf": hf is not None and hf.verdict == "ok", "modelscope": ms is not None and ms.verdict == "ok"}


def check_model(request: Request, paths: Paths, hub_checks: list[Check]) -> Optional[Check]:
    """None without ``--model``; else where the model is, or why it cannot be had."""
    from .. import catalog

    if not request.model:
        return None
    try:
        entry = catalog.resolve(request.model)
    except catalog.UnknownModelError as exc:
        return Check("model", TITLE, "fail", str(exc), "glmtui models lists the catalogue; or give a folder")
    status = catalog.local_status(entry, paths.models_dir)
    if entry.local_path is not None:  # the user's own folder: nothing to download
        if status.complete:
            return Check("model", TITLE, "ok", f"{entry.local_path} has a config, a tokenizer and its weights")
        missing = ", ".join(status.missing[:3]) or "config.json, tokenizer or weights"
        return Check("model", TITLE, "fail", f"{entry.local_path} is incomplete (missing {missing})",
                     "copy the whole model folder, or download it: glmtui pull ORG/NAME")
    if status.complete:
        return Check("model", TITLE, "ok", f"{entry.name} is downloaded ({status.path})")
    spec = entry.key if entry.in_catalog else (entry.hf_repo or entry.modelscope_repo)
    reachable = _reachable(hub_checks)
    sources = [s for s, repo in (("hf", entry.hf_repo), ("modelscope", entry.modelscope_repo)) if repo]
    names = {"hf": "Hugging Face", "modelscope": "ModelScope"}
    partial = " (partly downloaded: resumes)" if status.present else ""
    for source in sources:
        if reachable[source]:
            return Check("model", TITLE, "ok", f"{entry.name} is not downloaded yet{partial}; {names[source]} "
                         "answers", f"glmtui pull {spec} --source {source}")
    tried = " or ".join(names[s] for s in sources) or "no hub"
    return Check("model", TITLE, "fail", f"{entry.name} is not downloaded{partial} and {tried} cannot be reached",
                 "check the network or set a mirror (HF_ENDPOINT, [hub] in config.toml, e in Models), or copy the "
                 "model folder to this machine and give its path")

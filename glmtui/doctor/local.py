"""The checks of this machine's files: transformers has each catalogue model's classes, free disk in the model
folder, a writable history folder."""

from __future__ import annotations

import shutil
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..config import Paths
from .facts import transformers_facts
from .verdicts import Check, Request

if TYPE_CHECKING:
    from ..catalog import CatalogEntry

TRANSFORMERS_TESTED = ">=5.24,<6"  # as pyproject.toml
#: transformers' model package each architecture loads into (ChatGLM3 is converted to GlmForCausalLM).
ARCH_PACKAGE = {
    "GlmForCausalLM": "glm",
    "ChatGLMModel": "glm",
    "ChatGLMForConditionalGeneration": "glm",
    "Glm4ForCausalLM": "glm4",
    "Glm4MoeForCausalLM": "glm4_moe",
    "Glm4MoeLiteForCausalLM": "glm4_moe_lite",
    "GlmMoeDsaForCausalLM": "glm_moe_dsa",
}


def _model_architectures(request: Request) -> tuple[list[tuple[str, str]], Optional[str]]:
    """[(model name, architecture)] for the catalogue, and the asked model's name when it is one of them."""
    from .. import catalog

    rows = [(e.name, getattr(e, "architecture", None) or "GlmForCausalLM") for e in catalog.entries()]
    asked = None
    if request.model:
        try:
            entry = catalog.resolve(request.model)
        except Exception:  # noqa: BLE001 - an unknown name is the load's message, not ours
            return rows, None
        if entry.local_path is not None:
            config = catalog._read_json(entry.local_path / "config.json") or {}
            archs = config.get("architectures") or []
            arch = archs[0] if archs and isinstance(archs[0], str) else None
            if arch:
                rows.append((entry.name, arch))
                asked = entry.name
        elif entry.in_catalog:
            asked = entry.name
    return rows, asked


def check_transformers(request: Request, facts: Optional[tuple[Optional[str], Optional[Path]]] = None) -> Check:
    title = "transformers"
    version, folder = facts if facts is not None else transformers_facts()
    if version is None:
        return Check("transformers", title, "fail", "transformers is not installed",
                     f"pip install 'transformers{TRANSFORMERS_TESTED}'")
    rows, asked = _model_architectures(request)
    missing = [(name, arch) for name, arch in rows
               if arch in ARCH_PACKAGE and (folder is None or not (folder / "models" / ARCH_PACKAGE[arch]).is_dir())]
    unknown = [(name, arch) for name, arch in rows if arch not in ARCH_PACKAGE and name == asked]
    try:
        from packaging.specifiers import SpecifierSet

        tested = SpecifierSet(TRANSFORMERS_TESTED).contains(version, prereleases=True)
    except Exception:  # noqa: BLE001 - packaging missing or an odd version string
        tested = True
    if missing:
        names = ", ".join(f"{n} ({a})" for n, a in missing)
        verdict = "fail" if asked and any(n == asked for n, _ in missing) else "warn"
        return Check("transformers", title, verdict, f"transformers {version} lacks the classes for: {names}",
                     f"pip install -U 'transformers{TRANSFORMERS_TESTED}'")
    if unknown:
        return Check("transformers", title, "warn",
                     f"transformers {version}; {unknown[0][0]} is a {unknown[0][1]}, which glmtui does not know",
                     "use a GLM model (GlmForCausalLM, Glm4ForCausalLM) or a catalogue model")
    if not tested:
        return Check("transformers", title, "warn",
                     f"transformers {version}: glmtui is tested with {TRANSFORMERS_TESTED}; every catalogue model's "
                     "class is present", f"pip install 'transformers{TRANSFORMERS_TESTED}'")
    return Check("transformers", title, "ok", f"transformers {version}: every catalogue model's class is present")


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _size(entry: CatalogEntry) -> int:
    return entry.download_bytes or 0


def check_disk(paths: Paths, request: Request, disk_usage=shutil.disk_usage) -> Check:
    from .. import catalog

    title = "disk (models)"
    folder = paths.models_dir
    try:
        free = disk_usage(_existing(folder)).free
    except OSError as exc:
        return Check("disk", title, "warn", f"cannot read the free space of {folder}: {exc}",
                     "check the folder (GLMTUI_HOME moves it)")
    pending = []
    for entry in catalog.entries():
        if entry.download_bytes and not catalog.local_status(entry, folder).complete:
            pending.append(entry)
    asked = None
    if request.model:
        try:
            asked = catalog.resolve(request.model)
        except Exception:  # noqa: BLE001 - an unknown name: no model to check
            asked = None
    where = f"{_gb(free)} free in {folder}"
    if asked is not None and asked in pending and _size(asked) > free:
        return Check("disk", title, "fail", f"{where}: {asked.name} needs {_gb(_size(asked))}",
                     "free space, or move the models: set GLMTUI_HOME to a larger disk")
    if not pending:
        return Check("disk", title, "ok", f"{where}; every catalogue model is downloaded")
    too_big = sorted((e for e in pending if _size(e) > free), key=_size)
    if len(too_big) == len(pending):
        return Check("disk", title, "warn",
                     f"{where}: too little for any catalogue model (the smallest, {too_big[0].name}, needs "
                     f"{_gb(_size(too_big[0]))})", "free space, or set GLMTUI_HOME to a larger disk")
    if too_big:  # the big MoE models need hundreds of GB: fine not to have room for them
        names = ", ".join(e.name for e in too_big[:4]) + (", …" if len(too_big) > 4 else "")
        return Check("disk", title, "ok", f"{where}: room for {len(pending) - len(too_big)} of the "
                                          f"{len(pending)} catalogue models not downloaded (not {names})")
    return Check("disk", title, "ok", f"{where}: room for every catalogue model")


def check_history(paths: Paths) -> Check:
    title = "history folder"
    db = paths.history_db
    folder = db.parent
    fix_mode = f"chmod u+w {db}"
    if db.exists():
        try:
            mode = stat.S_IMODE(db.stat().st_mode)
        except OSError as exc:
            return Check("history", title, "fail", f"cannot read {db}: {exc}", f"check {folder}")
        if not mode & stat.S_IWUSR:  # the store keeps such a file read-only, even for root
            return Check("history", title, "fail",
                         f"{db} is read-only (mode {mode:04o}): chats are not saved", fix_mode)
    target = folder if folder.exists() else _existing(folder)
    if not target.is_dir():
        return Check("history", title, "fail", f"{target} is not a folder: chats are not saved",
                     f"move {target} away (glmtui creates {folder})")
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".glmtui-doctor-"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return Check("history", title, "fail", f"cannot write in {target} ({reason}): chats are not saved",
                     f"chown/chmod u+w {target}, or set GLMTUI_HOME to a folder you own")
    note = "" if folder.exists() else f" (created on first start under {target})"
    return Check("history", title, "ok", f"{folder} is writable{note}")

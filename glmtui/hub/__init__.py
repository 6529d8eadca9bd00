"""Model downloads (being split into rooms; for now everything lives in downloader.py)."""

from .downloader import *  # noqa: F401,F403 - the old module's names, unchanged for callers
from .downloader import DownloadProgress, pull_cli  # noqa: F401 - named explicitly: used by cli.py and tests

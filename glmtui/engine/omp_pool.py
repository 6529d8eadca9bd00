"""Release the calling thread's OpenMP thread pool (torch's intra-op threads on the CPU).

Each thread that runs a parallel torch op keeps a pool of OpenMP workers of its own. GNU OpenMP
(the libgomp torch ships on Linux) counts every pool's threads; once they outnumber the CPUs it
stops letting idle workers spin, so every parallel op of every pool wakes a sleeping worker. In
``glmtui serve`` the engine's thread (loads, the probe, replies run alone) keeps such a pool while
the batch's thread (transformers' manager) runs its own: the batch's worker then sleeps and wakes
about a hundred times a step (measured through its voluntary context switches) instead of spinning.
``release_pool()`` frees the caller's pool through OpenMP 5.0's ``omp_pause_resource_all`` (the
next parallel op on that thread makes a new one); the batch calls it on the thread that hands it a
request (batching.py; ``GLMTUI_BATCH_ONE_POOL=0`` keeps both pools). Spinning is libgomp's default and
what plain ``generate`` gets; it pays on cores the server has to itself and costs on cores other
processes keep busy (then set ``OMP_WAIT_POLICY=PASSIVE``).
"""

from __future__ import annotations

import ctypes
import os
from typing import Optional

OMP_PAUSE_SOFT = 1
_RUNTIMES = ("libgomp", "libomp", "libiomp5")
_library: Optional[ctypes.CDLL] = None
_looked = False


def torch_openmp() -> Optional[ctypes.CDLL]:
    """The OpenMP runtime torch loaded from its own lib folder (another package may load its own
    libgomp first, whose pools are not torch's), or None (no /proc, or none loaded)."""
    global _library, _looked
    if _looked:
        return _library
    import torch

    folder = os.path.join(os.path.dirname(torch.__file__), "lib") + os.sep
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if folder in line}
    except OSError:
        paths = set()
    found = sorted(p for p in paths if os.path.basename(p).startswith(_RUNTIMES))
    _looked = True
    if found:
        library = ctypes.CDLL(found[0])
        if hasattr(library, "omp_pause_resource_all"):
            _library = library
    return _library


def release_pool() -> bool:
    """Free the calling thread's OpenMP pool; False when there is no runtime to ask or it refused
    (inside a parallel region)."""
    library = torch_openmp()
    return library is not None and library.omp_pause_resource_all(OMP_PAUSE_SOFT) == 0

"""The package's Numba cache is dropped when any kernel file changes (numba checks only its own)."""
import shutil
from pathlib import Path

import aded_edge
from aded_edge import KERNEL_FILES, drop_stale_kernels


def test_cached_kernels_go_when_any_kernel_file_changes(tmp_path):
    for name in KERNEL_FILES:
        shutil.copy(Path(aded_edge.__file__).parent / name, tmp_path / name)
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    cached = cache / "draft._mcts-63.py311.nbi"
    cached.write_text("machine code of a stale build")
    other = cache / "draft.cpython-311.pyc"
    other.write_text("bytecode")
    assert drop_stale_kernels(tmp_path)                  # no stamp yet: nothing cached can be trusted
    assert not cached.exists() and other.exists()        # only Numba's files go
    cached.write_text("machine code of this build")
    assert not drop_stale_kernels(tmp_path)              # nothing changed: the cache stays
    assert cached.exists()
    (tmp_path / "trigram.py").write_text((tmp_path / "trigram.py").read_text() + "\n# a change\n")
    assert drop_stale_kernels(tmp_path)                  # trigram.py changed: draft.py's cache goes too
    assert not cached.exists()

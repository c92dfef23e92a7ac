"""Shared fixtures: the real default GGUF model (fetched once into the cache) and two decoders
on it -- plain llama-cpp-python and AdedLlama -- built with identical settings."""
import os

import pytest

from aded_edge import models

N_CTX = 4096
THREADS = min(os.cpu_count() or 1, 4)


@pytest.fixture(scope="session")
def model_path():
    return str(models.resolve(models.DEFAULT_MODEL))


@pytest.fixture(scope="session")
def plain(model_path):
    import llama_cpp
    return llama_cpp.Llama(model_path, n_ctx=N_CTX, n_threads=THREADS, n_threads_batch=THREADS, verbose=False)


@pytest.fixture(scope="session")
def aded(model_path):
    from aded_edge.llama import AdedLlama
    return AdedLlama(model_path, n_ctx=N_CTX, n_threads=THREADS, n_threads_batch=THREADS, verbose=False)


@pytest.fixture(scope="session")
def aded_tree(model_path):
    """AdedLlama that always verifies its whole MCTS tree (8 nodes): drafting is exercised on every
    step whatever this machine's batch costs make the automatic budget choose."""
    from aded_edge.config import DraftConfig
    from aded_edge.llama import AdedLlama
    return AdedLlama(model_path, n_ctx=N_CTX, n_threads=THREADS, n_threads_batch=THREADS, verbose=False,
                     draft=DraftConfig(budget="fixed", max_nodes=8))


@pytest.fixture(params=["auto budget", "fixed 8-node trees"])
def speculative(request, aded, aded_tree):
    return aded if request.param == "auto budget" else aded_tree

"""Shared fixtures: the real default GGUF model (fetched once into the cache) and two decoders
on it -- plain llama-cpp-python and AdedLlama -- built with identical settings."""
import os

import pytest

from aded_edge import models

N_CTX = 4096
THREADS = min(os.cpu_count() or 1, 4)
# ADED_EDGE_TEST_NGL=-1 runs every model test with all layers on the GPU (a GPU build of
# llama.cpp); plain and speculative decoding always share the same settings
LLAMA = dict(n_ctx=N_CTX, n_threads=THREADS, n_threads_batch=THREADS, verbose=False,
             n_gpu_layers=int(os.environ.get("ADED_EDGE_TEST_NGL", "0")))
# the CPU build's kernels are batch-invariant (native/flags.sh), a GPU's are not: there a
# position's logits depend on how many tokens share its batch (see test_lossless.py)
BATCH_INVARIANT = LLAMA["n_gpu_layers"] == 0


@pytest.fixture(scope="session")
def model_path():
    return str(models.resolve(models.DEFAULT_MODEL))


@pytest.fixture(scope="session")
def plain(model_path):
    import llama_cpp
    return llama_cpp.Llama(model_path, **LLAMA)


@pytest.fixture(scope="session")
def scorer(model_path):
    """Plain llama-cpp-python keeping the logits of every position of a batch: the model's
    scores of a whole generated text in one evaluation."""
    import llama_cpp
    return llama_cpp.Llama(model_path, **{**LLAMA, "n_ctx": 512}, logits_all=True)


@pytest.fixture(scope="session")
def aded(model_path):
    """AdedLlama as a user gets it (automatic budget), minus the warm start from earlier runs:
    tests neither read nor write the user's adaptive matrix."""
    from aded_edge.llama import AdedLlama
    return AdedLlama(model_path, **LLAMA, persist=False)


@pytest.fixture(scope="session")
def corpus_matrix(model_path):
    """A tri-gram matrix whose static part is counted from 300k tokens of the Python standard
    library with the model's own tokenizer (what `aded-edge matrix build` makes, smaller)."""
    from aded_edge import corpus
    from aded_edge.llama import Tokenizer
    tok = Tokenizer(model_path)
    matrix, _, _ = corpus.build(tok, ["python-stdlib"], max_tokens=300_000)
    return matrix


@pytest.fixture(scope="session")
def aded_tree(model_path, corpus_matrix):
    """AdedLlama that always verifies its whole MCTS tree (8 nodes), drafted from a corpus matrix
    merged with the context: drafting is exercised on every step whatever this machine's batch
    costs make the automatic budget choose."""
    from aded_edge.config import DraftConfig
    from aded_edge.llama import AdedLlama
    return AdedLlama(model_path, **LLAMA,
                     draft=DraftConfig(budget="fixed", max_nodes=8), matrix=corpus_matrix)


@pytest.fixture(params=["auto budget", "fixed 8-node trees"])
def speculative(request, aded, aded_tree):
    return aded if request.param == "auto budget" else aded_tree

"""The per-model matrix store on a real model: the corpus matrix is picked up, the adaptive
matrix persists between runs (warm start), and a damaged file never stops generation."""
import pytest

from aded_edge import store
from aded_edge.trigram import MatrixFileError, TrigramMatrix

from conftest import LLAMA

PROMPT = "<|im_start|>user\nList the days of the week.<|im_end|>\n<|im_start|>assistant\n"


def _llm(model_path, **kw):
    from aded_edge.llama import AdedLlama
    return AdedLlama(model_path, **LLAMA, calibrate=False, **kw)


def _generate(llm, n=32):
    out = []
    for tok in llm.generate(llm.tokenize(PROMPT.encode(), add_bos=False, special=True), temp=0.0):
        out.append(tok)
        if len(out) == n:
            break
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADED_EDGE_CACHE", str(tmp_path))
    return tmp_path


def test_adaptive_matrix_persists_between_runs(model_path, cache):
    first = _llm(model_path)
    want = _generate(first)
    paths = store.paths(first.vocab_fingerprint())
    assert not paths.adaptive.exists()
    rows = first.matrix.adaptive_rows
    first.close()                                   # saved atomically on close
    assert paths.adaptive.exists() and not list(paths.folder.glob("*.tmp"))
    second = _llm(model_path)
    assert second.matrix.adaptive_rows == rows and any("warm start" in n for n in second.matrix_notes)
    assert _generate(second) == want                # the warm start changes drafts, never output
    second.close()
    cold = _llm(model_path, persist=False)
    assert cold.matrix.adaptive_rows == 0
    cold.close()


def test_a_script_that_never_closes_its_model_still_saves_it_and_exits_quietly(model_path, cache):
    """The README's Python example as a script, without close(): at exit the adaptive matrix is
    saved (an atexit hook closes what is still open) and nothing is printed (from __del__ during
    interpreter shutdown the save failed with a traceback and the matrix was lost)."""
    import subprocess
    import sys
    script = ("from aded_edge import AdedLlama\n"
              f"llm = AdedLlama({model_path!r}, n_ctx=256, n_threads=2, verbose=False, calibrate=False)\n"
              "print(llm.create_completion('def add(a, b):', max_tokens=8, temperature=0)['choices'][0]['text'])\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert list(cache.glob("matrices/*/adaptive.npz"))


def test_corpus_matrix_of_the_model_is_used_and_foreign_ones_refused(model_path, cache, corpus_matrix):
    llm = _llm(model_path, persist=False)
    paths = store.paths(llm.vocab_fingerprint())
    corpus_matrix.save(paths.corpus, part="static", sources={"python-stdlib": 300000})
    with_corpus = _llm(model_path, persist=False)
    assert with_corpus.matrix.static_rows == corpus_matrix.static_rows > 0
    assert _llm(model_path, persist=False, corpus=False).matrix.static_rows == 0
    TrigramMatrix(llm.n_vocab() + 1, fingerprint="other").save(paths.corpus, part="static")
    with pytest.raises(MatrixFileError, match="another model"):
        _llm(model_path, persist=False)


def test_damaged_warm_start_file_is_reported_and_ignored(model_path, cache):
    llm = _llm(model_path)
    want = _generate(llm)
    paths = store.paths(llm.vocab_fingerprint())
    paths.adaptive.parent.mkdir(parents=True, exist_ok=True)
    paths.adaptive.write_bytes(b"PK\x03\x04 truncated")
    again = _llm(model_path)
    assert any("ignored" in n and "matrix reset" in n for n in again.matrix_notes)
    assert again.matrix.adaptive_rows == 0
    assert _generate(again) == want
    again.close()                                   # replaced by a good file
    assert TrigramMatrix.load(paths.adaptive).adaptive_rows > 0


def test_a_disturbed_cost_calibration_is_used_but_never_cached(model_path, cache, monkeypatch):
    llm = _llm(model_path, persist=False)
    calls = []

    def fake(spread):
        def measure(sizes=None, repeats=None, prefix=None):
            calls.append(spread)
            return [1, 2, 4], [0.010, 0.015, 0.025], spread, 0.001
        return measure
    monkeypatch.setattr(llm, "measure_costs", fake(0.6))      # repeats 60% apart: another process ran
    assert llm._cost_curve()(2) == pytest.approx(0.015)
    assert calls == [0.6, 0.6] and not list(cache.glob("costs/*.json"))   # measured twice, kept for now only
    monkeypatch.setattr(llm, "measure_costs", fake(0.05))
    llm._cost_curve()
    assert len(list(cache.glob("costs/*.json"))) == 1         # a clean calibration is cached ...
    monkeypatch.setattr(llm, "measure_costs", fake(0.9))
    reused = llm._cost_curve()
    assert reused(2) == pytest.approx(0.015) and reused.switch == 0.001 and calls[-1] == 0.05   # ... and reused


def test_cost_calibration_measures_every_size_in_rounds(model_path, cache):
    llm = _llm(model_path, persist=False)
    decoded, decode = [], llm._decode
    llm._decode = lambda batch, meanwhile=None: (decoded.append(batch.n_tokens), decode(batch, meanwhile))
    sizes, seconds, spread, switch = llm.measure_costs(sizes=[1, 2, 4, 1000], repeats=2)
    # warm-up, then per round: every size above 1 once, then a small tree and a run of one-token
    # decodes (the median of the run after its first is size 1's time, the first minus it the switch)
    from aded_edge.llama import COST_RUN
    assert decoded == [1] + ([2, 4, 4] + [1] * COST_RUN) * 2
    assert sizes == [1, 2, 4]                       # sizes above the largest tree + 1 are left out
    assert len(seconds) == 3 and all(s > 0 for s in seconds) and spread >= 0 and switch >= 0
    assert llm.kv_positions() == 0                  # the calibration leaves an empty cache behind


def test_kv_cost_comes_from_the_ratio_of_a_tree_to_a_plain_step_far_into_the_cache(model_path, cache, monkeypatch):
    """c(n, L) = c(n) + per_cell * n * (L - prefix): a tree and a plain step are timed far into the
    cache, then near its start, and compared as ratios, so a machine running slower as a whole
    while it measured one of them gives the same per_cell."""
    from aded_edge.llama import COST_FAR, COST_PREFIX
    llm = _llm(model_path, persist=False)
    span, per_cell = COST_FAR - COST_PREFIX, 1e-6
    asked = []

    def timings(slower=1.0, spread=0.0, one_by_one=False):
        def measure(sizes, repeats, prefix):
            asked.append((list(sizes), prefix))
            k, cells = sizes[-1], prefix - COST_PREFIX
            tree = k * (0.010 + cells * per_cell) if one_by_one else 0.040 + k * cells * per_cell
            f = slower if prefix == COST_FAR else 1.0
            return [1, k], [f * (0.010 + cells * per_cell), f * tree], spread, 0.0
        return measure
    for slower in (1.0, 1.5):   # the machine 1.5x slower while it timed the far decodes: the same answer
        monkeypatch.setattr(llm, "measure_costs", timings(slower))
        assert llm.measure_kv_cost([1, 2, 8, 64]) == pytest.approx(per_cell, rel=1e-6)
    # the largest size up to COST_KV_ROWS, far into the cache, then at the curve's prefix
    assert asked == [([8], COST_FAR), ([8], COST_PREFIX)] * 2
    monkeypatch.setattr(llm, "measure_costs", timings(spread=0.6))   # other load: no KV term from it
    assert llm.measure_kv_cost([1, 8]) is None
    # a tree that costs its rows one by one has no usable ratio: no KV term rather than a wild one
    monkeypatch.setattr(llm, "measure_costs", timings(one_by_one=True))
    assert llm.measure_kv_cost([1, 8]) is None
    assert llm.measure_kv_cost([1, 2]) == 0.0                        # trees too small to tell


def test_kv_cost_is_measured_on_real_decodes(model_path, cache):
    llm = _llm(model_path, persist=False)
    decoded, decode = [], llm._decode
    llm._decode = lambda batch, meanwhile=None: (decoded.append(int(batch.pos[0])), decode(batch, meanwhile))
    per_cell = llm.measure_kv_cost([1, 8], repeats=1)
    from aded_edge.llama import COST_FAR, COST_PREFIX
    assert COST_FAR in decoded and COST_PREFIX in decoded       # timed after COST_FAR cells, then near the start
    assert per_cell is None or 0.0 <= per_cell < 0.020 / COST_FAR   # disturbed, or a row under a 20 ms step
    assert llm.kv_positions() == 0                               # and the cache is left empty


def test_timed_decodes_wait_for_the_backend(model_path, cache, monkeypatch):
    """A GPU backend returns from llama_decode before its kernels ran; the cost calibration (and
    each step's verify time) must include the wait, or a GPU's curve would be launch time only.
    Here the backend's wait is simulated as 30 ms in llama_synchronize."""
    import time

    from aded_edge import llama as module
    llm = _llm(model_path, persist=False)
    real = module.llama_cpp.llama_synchronize

    def slow_backend(ctx):
        time.sleep(0.030)
        return real(ctx)
    monkeypatch.setattr(module.llama_cpp, "llama_synchronize", slow_backend)
    _, seconds, _, _ = llm.measure_costs(sizes=[1, 2], repeats=1)
    assert min(seconds) >= 0.030



def test_vocabulary_is_read_once_per_model_file(model_path, cache, tmp_path, monkeypatch):
    """The vocabulary's fingerprint, end tokens and indentation tokens (one ctypes call per entry
    each) come from the cache on later loads of the same model file, and are read again when the
    file is another one or has been modified."""
    import os
    import shutil

    import llama_cpp
    first = _llm(model_path)
    facts = (first.vocab_fingerprint(), first.end_tokens(), first.indent_tokens())
    first.close()
    assert len(list((cache / "vocab").glob("*.json"))) == 1 and facts[1] and facts[2]
    copied = tmp_path / "copy.gguf"
    shutil.copyfile(model_path, copied)
    _llm(str(copied)).close()                      # another file: read and cached on its own

    def unread(*args):
        raise AssertionError("vocabulary read again")
    for name in ("llama_vocab_get_text", "llama_vocab_is_control", "llama_token_to_piece"):
        monkeypatch.setattr(llama_cpp, name, unread)
    second = _llm(model_path)
    assert (second.vocab_fingerprint(), second.end_tokens(), second.indent_tokens()) == facts
    second.close()
    st = os.stat(copied)
    os.utime(copied, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # the same path, modified
    with pytest.raises(AssertionError, match="vocabulary read again"):
        _llm(str(copied))

"""Corpus matrices: sources, the build, the model's tokenizer, and the per-model store."""
import numpy as np
import pytest

from aded_edge import corpus, store
from aded_edge.corpus import CorpusError
from aded_edge.trigram import TrigramMatrix


class ByteTokenizer:
    """Stand-in for the model's tokenizer: one token per byte."""
    n_vocab = 256

    def tokenize(self, text: bytes) -> np.ndarray:
        return np.frombuffer(text, np.uint8).astype(np.int32)

    def fingerprint(self) -> str:
        return "bytes"


def test_documents_of_a_folder_skip_binaries_and_missing_paths_fail(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("def f():\n    return 1\n")
    (tmp_path / "blob.dat").write_bytes(b"\0\1\2binary")
    assert sorted(corpus.documents(str(tmp_path))) == [b"def f():\n    return 1\n", b"hello world"]
    assert list(corpus.documents(str(tmp_path / "a.txt"))) == [b"hello world"]
    with pytest.raises(CorpusError, match="not found"):
        list(corpus.documents(str(tmp_path / "missing")))


def test_an_unreadable_corpus_file_is_an_error_and_one_inside_a_folder_is_skipped(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "locked.txt").write_text("secret")
    real = corpus.Path.read_bytes

    def read_bytes(self):   # (chmod cannot lock a file from root, who runs CI here)
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied")
        return real(self)
    monkeypatch.setattr(corpus.Path, "read_bytes", read_bytes)
    with pytest.raises(CorpusError, match="cannot read corpus file .*locked.txt: Permission denied"):
        list(corpus.documents(str(tmp_path / "locked.txt")))
    assert list(corpus.documents(str(tmp_path))) == [b"hello world"]


def test_python_stdlib_corpus_is_this_interpreters_source():
    first = next(corpus.documents("python-stdlib"))
    assert isinstance(first, bytes) and len(first) > 0


def test_build_counts_the_corpus_and_caps_tokens(tmp_path):
    (tmp_path / "c.txt").write_text("abcabcabd" * 50)
    m, report, streams = corpus.build(ByteTokenizer(), [str(tmp_path)], top_k=4, min_count=1)
    assert report["tokens"] == 450 and report["sources"] == {str(tmp_path): 450}
    toks, probs = m.successors(ord("a"), ord("b"))
    assert toks.tolist() == [ord("c"), ord("d")]          # "ab" -> c 100 times, d 50 times
    assert np.allclose(probs, [2 / 3, 1 / 3], atol=0.01)
    _, capped, _ = corpus.build(ByteTokenizer(), [str(tmp_path)], max_tokens=100)
    assert capped["tokens"] == 100
    corpus.save_streams(tmp_path / "t.npy", streams + [np.array([1, 2, 3])])
    back = corpus.load_streams(tmp_path / "t.npy")
    assert [b.tolist() for b in back] == [s.tolist() for s in streams] + [[1, 2, 3]]


def test_empty_corpus_and_no_corpus_are_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(CorpusError, match="holds no text"):
        corpus.build(ByteTokenizer(), [str(tmp_path)])
    with pytest.raises(CorpusError, match="no corpus"):
        corpus.build(ByteTokenizer(), [])


def test_sharegpt_held_out_split_is_stable_and_about_a_tenth():
    ids = [f"conv{i}_0" for i in range(5000)]
    held = [i for i in ids if corpus.sharegpt_held_out(i)]
    assert 0.07 < len(held) / len(ids) < 0.13
    assert held == [i for i in ids if corpus.sharegpt_held_out(i)]


def test_tokenizer_matches_the_model_and_builds_a_loadable_matrix(model_path, tmp_path, monkeypatch):
    import llama_cpp
    from aded_edge.llama import Tokenizer
    tok = Tokenizer(model_path)
    ref = llama_cpp.Llama(model_path, vocab_only=True, verbose=False)
    text = "def add(a, b):\n    return a + b  # <|im_end|> stays text\n"
    assert tok.tokenize(text.encode()).tolist() == ref.tokenize(text.encode(), add_bos=False, special=False)
    assert tok.tokenize(b"x" * 200_000).size > 0          # longer than the first buffer
    (tmp_path / "src.py").write_text(text * 20)
    m, report, _ = corpus.build(tok, [str(tmp_path)])
    monkeypatch.setenv("ADED_EDGE_CACHE", str(tmp_path / "cache"))
    path = store.paths(tok.fingerprint()).corpus
    m.save(path, part="static", **report)
    back = TrigramMatrix.load(path, n_vocab=tok.n_vocab, fingerprint=tok.fingerprint())
    assert back.static_rows == m.static_rows > 0 and back.adaptive_rows == 0
    assert TrigramMatrix.read_meta(path)["tokens"] == report["tokens"]

"""CLI: the happy path streams text with a stats line; every user error is one line + non-zero exit."""
import subprocess
import sys

import pytest

from aded_edge.gguf import GGUFError, read_gguf


def cli(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "aded_edge.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=600)


def assert_one_line_error(r, fragment):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("aded-edge: error:") and fragment in lines[0], lines[0]
    assert "Traceback" not in r.stderr


def test_run_streams_text_and_prints_stats(model_path):
    r = cli("run", model_path, "-p", "def add(a, b):", "-n", "24", "-t", "2")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip()) > 0
    assert "def add" not in r.stdout.splitlines()[0]  # the prompt is not echoed
    assert "tok/s" in r.stderr and "steps" in r.stderr


def test_run_reads_prompt_from_stdin_and_file(model_path, tmp_path):
    r = cli("run", model_path, "-n", "8", "--plain", stdin="The capital of France is")
    assert r.returncode == 0 and "plain decoding" in r.stderr
    f = tmp_path / "p.txt"
    f.write_text("The capital of France is")
    r2 = cli("run", "-m", model_path, "-f", str(f), "-n", "8", "--plain")
    assert r2.returncode == 0 and r2.stdout == r.stdout


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, model_path):
    d = tmp_path_factory.mktemp("bad")
    (d / "text.gguf").write_text("this is not a model\n")
    with open(model_path, "rb") as f:
        (d / "truncated.gguf").write_bytes(f.read(3_000_000))
    with open(model_path, "rb") as f:
        (d / "header-only.gguf").write_bytes(f.read(200))
    (d / "long.txt").write_text("word " * 3000)
    return d


def test_errors_are_one_line(bad_files, model_path):
    assert_one_line_error(cli("run", str(bad_files / "missing.gguf"), "-p", "x"), "not found")
    assert_one_line_error(cli("run", str(bad_files / "text.gguf"), "-p", "x"), "not a GGUF")
    assert_one_line_error(cli("run", str(bad_files / "truncated.gguf"), "-p", "x"), "truncated")
    assert_one_line_error(cli("run", str(bad_files / "header-only.gguf"), "-p", "x"), "truncated")
    assert_one_line_error(cli("run", model_path, "-f", str(bad_files / "long.txt"), "-c", "256"),
                          "exceed context window")
    assert_one_line_error(cli("run", model_path, "-p", "x", "-n", "-5"), "--max-tokens")
    assert_one_line_error(cli("run", model_path, "-p", "x", "--temp", "-0.5"), "--temp")
    assert_one_line_error(cli("run", model_path, "-p", "x", "--top-p", "1.5"), "--top-p")
    assert_one_line_error(cli("run", "no-such-model", "-p", "x"), "unknown model")
    assert_one_line_error(cli("run", model_path, "-f", str(bad_files / "nope.txt")), "cannot read prompt file")
    assert_one_line_error(cli("run", model_path, "--matrix", str(bad_files / "text.gguf"), "-p", "x"),
                          "corrupt or truncated")
    assert_one_line_error(cli("models", "pull", "no-such-model"), "unknown model")
    assert_one_line_error(cli("run", "--no-such-option"), "no-such-option")


def test_gguf_reader_validates(bad_files, model_path):
    info = read_gguf(model_path)
    assert info.architecture == "llama" and info.quantization == "Q4_1" and info.vocab_size == 49152
    for name in ("text.gguf", "truncated.gguf", "header-only.gguf", "missing.gguf"):
        with pytest.raises(GGUFError):
            read_gguf(bad_files / name)


def test_info_and_models_list(model_path):
    r = cli("info", model_path)
    assert r.returncode == 0 and "Q4_1" in r.stdout and "49152" in r.stdout
    r = cli("models", "list")
    assert r.returncode == 0 and "smollm2-135m-instruct" in r.stdout and "Apache-2.0" in r.stdout

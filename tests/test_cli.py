"""CLI: the happy path streams text with a stats line; every user error is one line + non-zero exit;
the interactive chat keeps its history and survives Ctrl-C."""
import copy
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from aded_edge import __version__
from aded_edge.config import DraftConfig
from aded_edge.cli import CHAT_HELP, chat_loop, main
from aded_edge.gguf import GGUFError, read_gguf


def cli(*args, stdin="", env=None):
    """The CLI in a subprocess; `run` never touches the user's adaptive matrix (--no-warm-start)."""
    if args and args[0] == "run":
        args = (*args, "--no-warm-start")
    return subprocess.run([sys.executable, "-m", "aded_edge.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=600, env=None if env is None else {**os.environ, **env})


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
    with open(model_path, "rb") as f:
        (d / "vocab-cut.gguf").write_bytes(f.read(100_000))   # inside the vocabulary's strings
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
    for name in ("text.gguf", "truncated.gguf", "header-only.gguf", "vocab-cut.gguf", "missing.gguf"):
        with pytest.raises(GGUFError):
            read_gguf(bad_files / name)
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf(bad_files / "vocab-cut.gguf")


def test_info_and_models_list(model_path):
    r = cli("info", model_path)
    assert r.returncode == 0 and "Q4_1" in r.stdout and "49152" in r.stdout
    r = cli("models", "list")
    assert r.returncode == 0 and "smollm2-135m-instruct" in r.stdout and "Apache-2.0" in r.stdout


# ---------------------------------------------------------------------------- options and help
def test_version(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"aded-edge {__version__} (llama-cpp-python ") and out.count("\n") == 1


def test_help_explains_commands_and_llama_cpp_options(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples:" in out and 'aded-edge run -p "def fibonacci(n):" -n 128' in out
    for command in ("run", "models", "info", "bench", "simulate"):
        assert f"  {command} " in out
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    for names in ("-m, --model", "-p, --prompt", "-f, --file", "-n, --max-tokens, --n-predict",
                  "-c, --n-ctx, --ctx-size", "-t, --threads", "--temp", "-s, --seed", "--top-k", "--top-p", "--min-p",
                  "-ngl, --n-gpu-layers", "-v, --verbose", "-sys, --system-prompt", "--chat", "--plain",
                  "--copy-depth", "--copy-ngram"):
        assert names in out, names
    assert "Ctrl-C stops an answer" in " ".join(out.split())


@pytest.mark.parametrize("args, fragment", [
    (["--temp", "-0.5"], "--temp must be a number >= 0"),
    (["--temp", "nan"], "--temp must be a number >= 0"),
    (["--top-p", "1.5"], "--top-p must be in [0, 1]"),
    (["--min-p", "-0.1"], "--min-p must be in [0, 1]"),
    (["--top-k", "-1"], "--top-k must be >= 0"),
    (["--seed", "abc"], "'abc' is not a valid integer"),
    (["--seed", str(2 ** 32)], "--seed must be an integer in 0..4294967295"),
    (["--n-predict", "-7"], "--max-tokens must be >= 0"),
    (["--ctx-size", "8"], "--n-ctx must be >= 16"),
    (["-t", "0"], "--threads must be >= 1"),
    (["-ngl", "-2"], "--n-gpu-layers must be >= 0"),
    (["--temp"], "'--temp' requires an argument"),
    (["--copy-ngram", "4"], "'--copy-ngram': 4 is not in the range 1<=x<=3"),
    (["--verify-batch", "2"], "verify_batch must be -1, 0 or 3..256"),
])
def test_invalid_options_are_one_line(capsys, args, fragment):
    assert main(["run", "-p", "x", *args]) != 0  # checked before any model is loaded
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("aded-edge: error: ") and fragment in err, err


def test_draft_options_reach_the_draft_config(monkeypatch, capsys):
    import aded_edge.cli as cli_module
    seen = {}

    class Loaded(Exception):
        pass

    def fake_load_model(model, **kwargs):
        seen.update(kwargs)
        raise Loaded                 # stop before any model is loaded
    monkeypatch.setattr(cli_module, "load_model", fake_load_model)
    with pytest.raises(Loaded):
        main(["run", "-p", "x", "--copy-ngram", "1", "--copy-depth", "8", "--max-nodes", "5", "--budget", "fixed",
              "--verify-batch", "16"])
    draft = seen["draft"]
    assert (draft.copy_ngram, draft.copy_depth, draft.max_nodes, draft.budget, draft.verify_batch) == (1, 8, 5, "fixed", 16)


def test_bench_gpu_layers_reach_every_system(monkeypatch):
    import aded_edge.bench as bench_module
    seen = {}

    def fake_run_bench(*args, **kwargs):
        seen.update(kwargs)
        return dict(report="ok")
    monkeypatch.setattr(bench_module, "run_bench", fake_run_bench)
    assert main(["bench", "-w", "code", "--prompts", "1", "--systems", "plain", "-ngl", "-1"]) == 0
    assert seen["n_gpu_layers"] == -1
    assert seen["draft"] == DraftConfig()                       # the aded systems' defaults
    seen.clear()
    assert main(["bench", "-ngl", "-2"]) != 0 and not seen     # refused before anything runs
    assert main(["bench", "--systems", "plain,aded-fixed", "--max-nodes", "200", "--max-depth", "8",
                 "--simulations", "600"]) == 0
    assert (seen["draft"].max_nodes, seen["draft"].max_depth, seen["draft"].n_simulations) == (200, 8, 600)
    seen.clear()
    assert main(["bench", "--max-nodes", "256"]) != 0 and not seen
    assert main(["bench", "--verify-batch", "2"]) != 0 and not seen
    assert main(["bench", "-ngl", "-1", "--verify-batch", "16"]) == 0 and seen["draft"].verify_batch == 16
    assert seen["repeat"] == 1
    assert main(["bench", "-r", "3"]) == 0 and seen["repeat"] == 3
    seen.clear()
    assert main(["bench", "--repeat", "0"]) != 0 and not seen


def test_bench_not_on_a_terminal_prints_a_line_per_prompt(monkeypatch, capsys):
    import aded_edge.bench as bench_module
    rows = [dict(workload="code", id="HumanEval/7", system="plain", decode_tok_s=12.04, speedup=1.0),
            dict(workload="code", id="HumanEval/7", system="aded", decode_tok_s=30.1, speedup=2.5)]

    def fake_run_bench(*args, log=None, **kwargs):
        log(bench_module.prompt_line(2, 16, rows))   # as run_bench calls it after each prompt
        return dict(report="report")
    monkeypatch.setattr(bench_module, "run_bench", fake_run_bench)
    assert main(["bench", "--systems", "plain,aded"]) == 0   # (pytest's stderr is not a terminal)
    out, err = capsys.readouterr()
    assert out.strip() == "report"
    assert err.strip() == "bench: [3/16] code/HumanEval/7: plain 12.0 tok/s, aded 30.1 tok/s 2.50x"


def test_cuda_build_reruns_the_command_with_libstdcxx_preloaded(monkeypatch):
    """With a CUDA build of llama.cpp on Linux the command line is run again, same Python and
    arguments, with the system libstdc++ preloaded (what fixed the segfaults measured on an H100);
    never twice, never with one already preloaded, never for a CPU build or a call from Python."""
    from aded_edge import cli as cli_module
    runs = []

    def execve(path, args, env):
        runs.append((path, args, env))
        raise SystemExit(0)
    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "aded_edge.cli", "run", "-p", "hi"])
    monkeypatch.setattr(cli_module, "_cuda_build", lambda: True)
    monkeypatch.delenv(cli_module.PRELOAD_GUARD, raising=False)
    monkeypatch.setenv("LD_PRELOAD", "libother.so")
    with pytest.raises(SystemExit):
        cli_module._preload_libstdcxx()
    path, args, env = runs.pop()
    assert path == sys.executable and args == [sys.executable, "-m", "aded_edge.cli", "run", "-p", "hi"]
    assert env["LD_PRELOAD"] == "libstdc++.so.6 libother.so" and env[cli_module.PRELOAD_GUARD] == "1"

    monkeypatch.setenv(cli_module.PRELOAD_GUARD, "1")          # already the rerun
    cli_module._preload_libstdcxx()
    monkeypatch.delenv(cli_module.PRELOAD_GUARD)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libstdc++.so.6")  # the user preloads it already
    cli_module._preload_libstdcxx()
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setattr(cli_module, "_cuda_build", lambda: False)   # CPU build
    cli_module._preload_libstdcxx()
    monkeypatch.setattr(cli_module, "_cuda_build", lambda: True)
    monkeypatch.setattr(sys, "platform", "darwin")
    cli_module._preload_libstdcxx()
    monkeypatch.setattr(sys, "platform", "linux")
    assert main(["--version"]) == 0                             # a call from Python is not rerun
    assert runs == []


def test_cuda_build_is_found_by_its_library(monkeypatch, tmp_path):
    import importlib.util
    from aded_edge import cli as cli_module
    cpu, cuda = tmp_path / "cpu" / "lib", tmp_path / "cuda"
    cpu.mkdir(parents=True)
    cuda.mkdir()
    (cpu / "libggml-cpu.so").touch()
    (cuda / "libggml-cuda.so").touch()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: SimpleNamespace(origin=str(cpu.parent / "__init__.py")))
    monkeypatch.delenv("LLAMA_CPP_LIB_PATH", raising=False)
    assert not cli_module._cuda_build()
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(cuda))   # llama_cpp's own override of its library folder
    assert cli_module._cuda_build()
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(cpu))
    (cpu / "libggml-cuda.so.0").touch()
    assert cli_module._cuda_build()


def test_console_script_invalid_temp():
    script = Path(sys.executable).with_name("aded-edge")
    if not script.exists():
        pytest.skip("console script not installed next to this Python")
    r = subprocess.run([str(script), "run", "-p", "x", "--temp", "-1"], capture_output=True, text=True, timeout=300)
    assert_one_line_error(r, "--temp")


def test_chat_reads_stdin_when_it_is_not_a_terminal(model_path):
    r = cli("run", model_path, "--chat", "-n", "8", "-t", "2", stdin="What is the capital of France?")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "> " not in r.stdout
    assert "chat:" not in r.stderr and "tok/s" in r.stderr


# ---------------------------------------------------------------------------- interactive chat
def scripted(*lines):
    """read_line for chat_loop: hands out lines (or raises the exceptions given); EOF at the end."""
    items, markers = list(lines), []

    def read_line(marker):
        markers.append(marker)
        item = items.pop(0) if items else EOFError()
        if isinstance(item, BaseException):
            raise item
        return item
    return read_line, markers


class Recorder:
    """A Llama with every chat request recorded (a deep copy of the messages it was given)."""

    def __init__(self, llm):
        self.llm, self.requests = llm, []

    def create_chat_completion(self, messages, **kwargs):
        self.requests.append(copy.deepcopy(messages))
        return self.llm.create_chat_completion(messages=messages, **kwargs)

    def __getattr__(self, name):
        return getattr(self.llm, name)


def run_chat(llm, *lines, system=None, interrupt_on_piece=None, **sampling):
    out, err, pieces = [], [], []

    def write(text):  # interrupt_on_piece=k: Ctrl-C once, as the k-th answer piece (0-based) arrives
        if text.strip():
            pieces.append(text)
            if len(pieces) - 1 == interrupt_on_piece:
                raise KeyboardInterrupt
        out.append(text)
    read_line, markers = scripted(*lines)
    history = chat_loop(llm, dict(sampling), system=system, read_line=read_line, write=write, err=err.append)
    return SimpleNamespace(history=history, out="".join(out), err=err, markers=markers)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def test_chat_keeps_the_history_across_turns(aded):
    llm = Recorder(aded)
    r = run_chat(llm, "My name is Ann.", "What is my name?", temperature=0.0, max_tokens=12)
    first, second = llm.requests
    assert first == [user("My name is Ann.")]
    answer = second[1]["content"]
    assert answer.strip() and second == [user("My name is Ann."), assistant(answer), user("What is my name?")]
    assert r.history[:3] == second and r.history[3]["role"] == "assistant" and len(r.history) == 4
    assert r.out == f"{answer}\n{r.history[3]['content']}\n\n"  # the answers, as streamed
    assert r.markers == ["> ", "> ", "> "]  # two messages, then EOF
    assert r.err[0] == f"chat: {CHAT_HELP}"
    assert len(r.err) == 3 and all("tok/s" in line for line in r.err[1:])  # one stats line per answer


def test_chat_ctrl_c_inside_decoding_drops_the_turn_and_recovers(aded, monkeypatch):
    """Ctrl-C lands inside the speculative loop (between copying the tree's branches and the
    llama_decode that verifies them): the chat returns to the prompt, the turn is dropped, and
    the next answer is exactly the one a fresh conversation gets."""
    calls = []
    real = aded._decode

    def decode(batch, meanwhile=None):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(batch, meanwhile)
    monkeypatch.setattr(aded, "_decode", decode)
    llm = Recorder(aded)
    question = "What is the capital of France?"
    r = run_chat(llm, "Count from 1 to 50, separated by commas.", question, temperature=0.0, max_tokens=12)
    assert len(calls) > 3 and r.markers == ["> ", "> ", "> "]
    assert "[interrupted: this turn is left out of the conversation]" in r.err
    assert llm.requests[1] == [user(question)]  # the interrupted turn is not sent again
    assert r.history[:1] == [user(question)] and len(r.history) == 2
    monkeypatch.undo()
    fresh = aded.create_chat_completion(messages=[user(question)], temperature=0.0, max_tokens=12)
    assert r.history[1] == assistant(fresh["choices"][0]["message"]["content"])
    assert aded.kv_branches_clean(aded.context_params.n_seq_max)  # no draft branch leaked


class FakeLlm:
    """Streams 'one two three' for every request; records requests, resets and closed streams."""

    def __init__(self, fail_on=None):
        self.requests, self.resets, self.closed, self.fail_on = [], 0, [], fail_on
        self.last_stats = SimpleNamespace(summary=lambda: "fake stats")

    def create_chat_completion(self, messages, stream=False, **kwargs):
        assert stream and kwargs["temperature"] == 0.0
        self.requests.append(copy.deepcopy(messages))
        n = len(self.requests)
        if n == self.fail_on:
            raise ValueError("Requested tokens (5000) exceed context window of 4096")

        def chunks():
            try:
                yield {"choices": [{"delta": {"role": "assistant"}}]}
                for word in ("one", " two", " three"):
                    yield {"choices": [{"delta": {"content": word}}]}
                yield {"choices": [{"delta": {}, "finish_reason": "stop"}]}
            finally:
                self.closed.append(n)
        return chunks()

    def reset(self):
        self.resets += 1


def test_chat_commands_multiline_and_ctrl_c_while_streaming():
    llm = FakeLlm()
    r = run_chat(llm, "hello", "tell me more", "", "/help", "/nope", "line one\\", "line two", "/reset", "again",
                 KeyboardInterrupt(), system="Be brief.", interrupt_on_piece=4, temperature=0.0)
    sys_msg = {"role": "system", "content": "Be brief."}
    full = assistant("one two three")
    assert llm.requests == [
        [sys_msg, user("hello")],
        [sys_msg, user("hello"), full, user("tell me more")],                  # interrupted after "one"
        [sys_msg, user("hello"), full, user("line one\nline two")],            # that turn is gone
        [sys_msg, user("again")],                                              # after /reset
    ]
    assert r.history == [sys_msg, user("again"), full]
    assert llm.resets == 1 and 2 in llm.closed  # the interrupted stream was closed
    assert r.out == "one two three\none\none two three\none two three\n\n"
    assert r.markers == ["> "] * 6 + ["... "] + ["> "] * 3  # "line two" continues "line one\\"
    assert "[interrupted: this turn is left out of the conversation]" in r.err
    assert CHAT_HELP in r.err[1:] and "unknown command /nope; /help lists the commands" in r.err
    assert "[conversation forgotten]" in r.err
    assert r.err.count("fake stats") == 4  # three answers and the interrupted one


def test_chat_context_overflow_is_one_line_and_keeps_the_conversation():
    llm = FakeLlm(fail_on=2)
    r = run_chat(llm, "hello", "a very long message", "/exit", "never read", temperature=0.0)
    assert r.history == [user("hello"), assistant("one two three")]
    assert ("aded-edge: error: Requested tokens (5000) exceed context window of 4096; "
            "/reset starts a new conversation") in r.err
    assert llm.resets == 1 and r.markers == ["> ", "> ", "> "]


def test_interactive_chat_on_a_terminal(model_path):
    """The real program on a pseudo-terminal: answer, Ctrl-C (the terminal's own ^C) in the
    middle of a long answer, back at the prompt, Ctrl-C at the prompt exits with status 0."""
    pty = pytest.importorskip("pty")
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command line on the terminal
        import signal
        # a shell running this suite in the background starts it with SIGINT ignored, which Python
        # (and so the program) would inherit; a user's terminal never does
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execv(sys.executable, [sys.executable, "-m", "aded_edge.cli", "run", model_path, "--chat", "-n", "-1",
                                  "-t", "2"])
    seen = bytearray()
    pos = 0

    def expect(pattern: bytes, timeout=300):
        nonlocal pos
        end = time.time() + timeout
        while True:
            at = seen.find(pattern, pos)
            if at >= 0:
                pos = at + len(pattern)
                return
            if time.time() > end:
                raise AssertionError(f"no {pattern!r} in {bytes(seen)!r}")
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    data = b""
                if not data:
                    raise AssertionError(f"program ended before {pattern!r}: {bytes(seen)!r}")
                seen.extend(data)

    try:
        expect(b"chat: Ctrl-C stops an answer")
        expect(b"> ")
        os.write(fd, b"Count from 1 to 100, separated by commas.\r")
        expect(b"commas.\r\n")  # the terminal's echo of the line
        expect(b",")            # the answer is streaming
        os.write(fd, b"\x03")
        expect(b"[interrupted: this turn is left out of the conversation]")
        expect(b"tok/s")
        expect(b"> ")
        # the prompt is printed before the read starts; a Ctrl-C in between is only seen at the next
        # key (CPython checks signals when its wait for input is interrupted). A person never hits
        # that window; under load this test did, 3 times in 14 runs (once in CI): wait like a person
        time.sleep(0.5)
        os.write(fd, b"\x03")
        end = time.time() + 60
        while time.time() < end:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    seen.extend(os.read(fd, 4096))
                except OSError:
                    pass
        else:
            raise AssertionError(f"still running after Ctrl-C at the prompt: {bytes(seen)!r}")
        assert os.waitstatus_to_exitcode(status) == 0, bytes(seen)
        assert b"Traceback" not in seen and b"aded-edge: interrupted" not in seen
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_matrix_build_info_reset_and_their_errors(model_path, tmp_path):
    env = {"ADED_EDGE_CACHE": str(tmp_path / "cache")}
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("def add(a, b):\n    return a + b\n" * 50)
    r = cli("matrix", "info", "-m", model_path, env=env)
    assert r.returncode == 0 and "corpus matrix   none" in r.stdout and "adaptive matrix none" in r.stdout
    r = cli("matrix", "build", "-m", model_path, "--corpus", str(src), env=env)
    assert r.returncode == 0, r.stderr
    assert "tokens" in r.stdout and "MB" in r.stdout and "M tokens/s" in r.stdout
    r = cli("matrix", "info", "-m", model_path, env=env)
    assert "corpus.npz" in r.stdout and str(src) in r.stdout
    r = cli("info", model_path, env=env)
    assert "corpus.npz" in r.stdout
    # the next run drafts from it and saves its adaptive matrix when warm start is on (the default)
    r = subprocess.run([sys.executable, "-m", "aded_edge.cli", "run", model_path, "-p", "def add(a, b):", "-n", "8",
                        "-t", "2"], capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert r.returncode == 0, r.stderr
    adaptive = next((tmp_path / "cache" / "matrices").glob("*/adaptive.npz"))
    # a damaged adaptive matrix: said in one line, generation goes on
    adaptive.write_bytes(b"garbage")
    assert "unusable" in cli("matrix", "info", "-m", model_path, env=env).stdout
    r = subprocess.run([sys.executable, "-m", "aded_edge.cli", "run", model_path, "-p", "def add(a, b):", "-n", "8",
                        "-t", "2"], capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert r.returncode == 0 and "adaptive matrix ignored" in r.stderr and "matrix reset" in r.stderr
    assert "unusable" not in cli("matrix", "info", "-m", model_path, env=env).stdout  # replaced by a good one
    r = cli("matrix", "reset", "-m", model_path, env=env)
    assert r.returncode == 0 and not adaptive.exists()
    r = cli("matrix", "reset", "-m", model_path, "--all", env=env)
    assert not list((tmp_path / "cache" / "matrices").glob("*/corpus.npz"))
    # user errors: one line each
    assert_one_line_error(cli("matrix", "build", "-m", model_path, "--corpus", str(tmp_path / "nope"), env=env),
                          "corpus path not found")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("matrix", "build", "-m", model_path, "--corpus", str(tmp_path / "empty"), env=env),
                          "holds no text")
    foreign = tmp_path / "foreign.npz"
    from aded_edge.trigram import TrigramMatrix
    TrigramMatrix(1000, fingerprint="abc").save(foreign)
    assert_one_line_error(cli("run", model_path, "-p", "x", "-n", "2", "--matrix", str(foreign), env=env),
                          "another model")
    (tmp_path / "corrupt.npz").write_bytes(foreign.read_bytes()[:100])
    assert_one_line_error(cli("run", model_path, "-p", "x", "-n", "2", "--matrix", str(tmp_path / "corrupt.npz"),
                              env=env), "corrupt or truncated")

"""aded_edge.peers: parsing real output of llama.cpp's own tools (captured from the binaries
`make peers` builds, run on SmolLM2-135M-Instruct Q4_1, 2 threads, on a busy 2-core machine, so
the speeds are low) and the error paths. The run test needs the binaries and the model and
skips without them; everything else always runs."""
import math
import os
import stat
from pathlib import Path

import pytest

from aded_edge import peers
from aded_edge.peers import PeerError, parse_output, run_peer

PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
          "<|im_start|>user\nWrite a Python function `merge_sorted(a, b)` that merges two sorted lists into one "
          "sorted list, with a docstring and two doctest examples.<|im_end|>\n<|im_start|>assistant\n")

# llama-completion -n 128 -no-cnv --no-display-prompt -sp ...: stderr, last lines
COMPLETION_ERR = """\
0.26.918.100 I common_perf_print:    sampling time =      33.43 ms
0.26.918.102 I common_perf_print:    samplers time =       5.90 ms /   192 tokens
0.26.918.104 I common_perf_print:        load time =    1096.68 ms
0.26.918.107 I common_perf_print: prompt eval time =    2267.87 ms /    64 tokens (   35.44 ms per token,    28.22 tokens per second)
0.26.918.109 I common_perf_print:        eval time =   22863.09 ms /   127 runs   (  180.02 ms per token,     5.55 tokens per second)
0.26.918.110 I common_perf_print:       total time =   25345.79 ms /   191 tokens
0.26.918.111 I common_perf_print: unaccounted time =     181.41 ms /   0.7 %      (total - sampling - prompt eval - eval) / (total)
0.26.918.112 I common_perf_print:    graphs reused =        126
"""

# llama-completion ending on an end-of-generation token (-n 32): stdout and stderr
COMPLETION_EOS_OUT = "Hello, welcome to the world of science fiction.<|im_end|> [end of text]\n\n\n"
COMPLETION_EOS_ERR = """\
0.07.036.941 I common_perf_print:    sampling time =       6.09 ms
0.07.036.944 I common_perf_print:    samplers time =       0.52 ms /    27 tokens
0.07.036.946 I common_perf_print:        load time =     296.67 ms
0.07.036.948 I common_perf_print: prompt eval time =    1220.24 ms /    16 tokens (   76.26 ms per token,    13.11 tokens per second)
0.07.036.951 I common_perf_print:        eval time =    5240.13 ms /    10 runs   (  524.01 ms per token,     1.91 tokens per second)
0.07.036.951 I common_perf_print:       total time =    6467.93 ms /    26 tokens
"""

# llama-lookup -n 127 (draft size: the tool's default, 3): stderr from its summary on
LOOKUP_ERR = """\
0.27.593.945 I encoded   64 tokens in    5.134 seconds, speed:   37.985 t/s
0.27.593.982 I decoded  131 tokens in   18.904 seconds, speed:    6.930 t/s
0.27.594.005 I 
0.27.594.027 I n_draft      = 3
0.27.594.048 I n_predict    = 131
0.27.594.070 I n_drafted    = 58
0.27.594.093 I t_draft_flat = 0.07 ms
0.27.594.117 I t_draft      = 1.86 ms, 32.05 us per token, 31199.57 tokens per second
0.27.594.139 I n_accept     = 25
0.27.594.161 I accept       = 43.103%
0.27.594.183 I 

target:

0.27.594.207 I common_perf_print:    sampling time =      79.80 ms
0.27.594.229 I common_perf_print:    samplers time =      33.53 ms /   131 tokens
0.27.594.253 I common_perf_print:        load time =    3268.56 ms
0.27.594.276 I common_perf_print: prompt eval time =   11333.07 ms /   142 tokens (   79.81 ms per token,    12.53 tokens per second)
0.27.594.300 I common_perf_print:        eval time =   11566.73 ms /    85 runs   (  136.08 ms per token,     7.35 tokens per second)
0.27.594.322 I common_perf_print:       total time =   24040.44 ms /   227 tokens
"""

# llama-speculative -md <same model> -n 15 --spec-draft-n-max 16: stdout and stderr
SPECULATIVE_OUT = "\n\n" + PROMPT + '```python\ndef merge_sorted(a, b):\n    """\n    Merges two\n\n\n\n'
SPECULATIVE_ERR = """\
0.07.905.484 I encoded   64 tokens in    2.459 seconds, speed:   26.023 t/s
0.07.905.485 I decoded   18 tokens in    2.744 seconds, speed:    6.561 t/s
0.07.905.485 I 
0.07.905.485 I n_draft   = 16
0.07.905.486 I n_predict = 18
0.07.905.486 I n_drafted = 16
0.07.905.486 I n_accept  = 16
0.07.905.487 I accept    = 100.000%
0.07.905.487 I 
0.07.905.487 I draft:

0.07.905.493 I 
0.07.905.493 I target:

0.07.905.495 I common_perf_print:    sampling time =       2.19 ms
0.07.905.497 I common_perf_print:        load time =     755.19 ms
0.07.905.498 I common_perf_print: prompt eval time =    2459.42 ms /    81 tokens (   30.36 ms per token,    32.93 tokens per second)
0.07.905.499 I common_perf_print:        eval time =       0.00 ms /     1 runs   (    0.00 ms per token,      inf tokens per second)
"""

# llama-speculative-simple --spec-type ngram-simple -n 15: no draft matched ("-nan%")
SPEC_SIMPLE_ERR = """\
0.05.398.525 I encoded   64 tokens in    1.351 seconds, speed:   47.371 t/s
0.05.398.550 I decoded   16 tokens in    3.156 seconds, speed:    5.070 t/s
0.05.398.568 I 
0.05.398.585 I n_draft   = 3
0.05.398.601 I n_predict = 16
0.05.398.618 I n_drafted = 0
0.05.398.635 I n_accept  = 0
0.05.398.652 I accept    = -nan%
"""


def test_parse_completion():
    r = parse_output("llama-completion", COMPLETION_ERR, stdout="```python\ndef f():\n\n", prompt=PROMPT)
    assert r["tokens"] == 128                      # 127 one-token decodes after the first token
    assert r["decode_s"] == pytest.approx((22863.09 + 33.43) / 1e3)
    assert r["decode_tok_s"] == pytest.approx(127 / r["decode_s"])
    assert r["tool_tok_s"] == pytest.approx(127 / 22.86309)
    assert r["prompt_tokens"] == 64 and r["prompt_s"] == pytest.approx(2.26787)
    assert r["n_drafted"] == 0 and math.isnan(r["accept_rate"]) and r["tokens_per_step"] == 1.0
    assert r["text"] == "```python\ndef f():"     # the blank line after the output is dropped
    assert r["perf"]["common_perf_print"]["eval_runs"] == 127


def test_parse_completion_end_of_text():
    r = parse_output("llama-completion", COMPLETION_EOS_ERR, stdout=COMPLETION_EOS_OUT)
    assert r["tokens"] == 11                       # ten decodes plus the final <|im_end|>
    assert r["text"] == "Hello, welcome to the world of science fiction.<|im_end|>"


def test_parse_lookup():
    r = parse_output("llama-lookup", LOOKUP_ERR)
    assert (r["tokens"], r["n_draft"], r["n_drafted"], r["n_accept"]) == (131, 3, 58, 25)
    assert r["accept_rate"] == pytest.approx(25 / 58)
    assert r["decode_s"] == pytest.approx(18.904) and r["tool_tok_s"] == pytest.approx(6.930)
    assert r["decode_tok_s"] == pytest.approx(130 / 18.904)
    assert r["tokens_per_step"] == pytest.approx(131 / (131 - 25))
    assert r["prompt_tokens"] == 64 and r["prompt_s"] == pytest.approx(5.134)
    assert r["text"] is None                       # no stdout given


def test_parse_speculative_and_text():
    r = parse_output("llama-speculative", SPECULATIVE_ERR, stdout=SPECULATIVE_OUT, prompt=PROMPT)
    assert (r["tokens"], r["n_draft"], r["n_drafted"], r["n_accept"]) == (18, 16, 16, 16)
    assert r["accept_rate"] == 1.0 and r["tokens_per_step"] == 9.0
    assert r["decode_tok_s"] == pytest.approx(17 / 2.744)
    assert r["text"] == '```python\ndef merge_sorted(a, b):\n    """\n    Merges two'
    # the prompt echo cannot be found: no text rather than a wrong one
    assert parse_output("llama-speculative", SPECULATIVE_ERR, stdout=SPECULATIVE_OUT, prompt="nope")["text"] is None


def test_parse_no_drafts_nan_accept():
    r = parse_output("llama-speculative-simple", SPEC_SIMPLE_ERR)
    assert r["tokens"] == 16 and r["n_drafted"] == 0 and r["n_accept"] == 0
    assert math.isnan(r["accept_rate"]) and r["tokens_per_step"] == 1.0


def test_parse_without_prefixes():
    """--no-log-prefix --no-log-timestamps output (or another llama.cpp's) parses the same."""
    bare = "\n".join(l[len("0.27.594.005 I "):] if l[:1].isdigit() else l for l in LOOKUP_ERR.splitlines())
    assert parse_output("llama-lookup", bare)["n_accept"] == 25
    bare = "\n".join(l[len("0.26.918.100 I "):] for l in COMPLETION_ERR.splitlines())
    assert parse_output("llama-completion", bare)["tokens"] == 128


@pytest.mark.parametrize("tool,text", [("llama-completion", LOOKUP_ERR.split("target:")[0]),
                                       ("llama-lookup", COMPLETION_ERR), ("llama-speculative", ""),
                                       ("llama-nonexistent", LOOKUP_ERR)])
def test_parse_unreadable_raises(tool, text):
    with pytest.raises(PeerError):
        parse_output(tool, text)


def _fake_tool(folder: Path, name: str, script: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text("#!/bin/sh\n" + script)
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return p


@pytest.fixture
def model_file(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_bytes(b"GGUF")
    return p


def test_find_binaries(tmp_path, monkeypatch):
    _fake_tool(tmp_path / "bin", "llama-lookup", "exit 0\n")
    (tmp_path / "bin" / "llama-completion").write_text("not executable")
    assert peers.find_binaries(tmp_path) == {"llama-lookup": tmp_path / "bin" / "llama-lookup"}   # parent of bin/
    assert set(peers.find_binaries(tmp_path / "bin")) == {"llama-lookup"}                          # bin/ itself
    monkeypatch.setenv(peers.BIN_ENV, str(tmp_path))
    assert set(peers.find_binaries()) == {"llama-lookup"}
    assert peers.find_binaries(tmp_path / "missing") == {}


def test_missing_binary_raises(tmp_path, model_file):
    with pytest.raises(PeerError, match="llama-lookup not found.*make peers"):
        run_peer("llama-lookup", model_file, PROMPT, 8, 1, root=tmp_path)
    with pytest.raises(PeerError, match="unknown peer tool"):
        run_peer("llama-main", model_file, PROMPT, 8, 1, root=tmp_path)


def test_failing_binary_raises(tmp_path, model_file):
    _fake_tool(tmp_path, "llama-lookup", "echo 'error: failed to load model' >&2\nexit 3\n")
    with pytest.raises(PeerError, match="exited with status 3: error: failed to load model"):
        run_peer("llama-lookup", model_file, PROMPT, 8, 1, root=tmp_path)


def test_unparsable_output_raises(tmp_path, model_file):
    _fake_tool(tmp_path, "llama-lookup", "echo hello\necho 'something else' >&2\n")
    with pytest.raises(PeerError, match="no 'decoded N tokens"):
        run_peer("llama-lookup", model_file, PROMPT, 8, 1, root=tmp_path)


def test_missing_model_and_draft_raise(tmp_path, model_file):
    _fake_tool(tmp_path, "llama-speculative", "exit 0\n")
    with pytest.raises(PeerError, match="model file not found"):
        run_peer("llama-speculative", tmp_path / "none.gguf", PROMPT, 8, 1, root=tmp_path)
    with pytest.raises(PeerError, match="needs a draft model"):
        run_peer("llama-speculative", model_file, PROMPT, 8, 1, root=tmp_path)


def test_fake_run_passes_prompt_and_flags(tmp_path, model_file):
    """The prompt reaches the tool byte for byte (-f drops one trailing newline: one is added)."""
    log = tmp_path / "argv"
    _fake_tool(tmp_path, "llama-lookup", f"""\
printf '%s\\n' "$@" > {log}
while [ $# -gt 0 ]; do [ "$1" = -f ] && cp "$2" {tmp_path}/prompt; shift; done
printf '\\n\\nPROMPT-ECHO generated\\n\\n\\n\\n'
echo 'decoded   10 tokens in    0.500 seconds, speed:   20.000 t/s' >&2
echo 'n_drafted = 6' >&2
echo 'n_accept  = 3' >&2
""")
    r = run_peer("llama-lookup", model_file, "PROMPT-ECHO", 10, 2, n_ctx=512, root=tmp_path, n_draft=5)
    argv = log.read_text().split("\n")
    assert (tmp_path / "prompt").read_bytes() == b"PROMPT-ECHO\n"
    for flag, value in [("-n", "9"), ("-t", "2"), ("-c", "512"), ("--temp", "0"), ("--spec-draft-n-max", "5"),
                        ("-fa", "off")]:
        assert argv[argv.index(flag) + 1] == value
    assert "--no-escape" in argv
    assert r["text"] == " generated" and r["tokens"] == 10 and r["accept_rate"] == 0.5
    assert r["decode_tok_s"] == pytest.approx(18.0) and r["wall_s"] > 0 and "llama-lookup" in r["cmd"]


def _default_model() -> Path:
    cache = Path(os.environ.get("ADED_EDGE_CACHE", Path.home() / ".cache" / "aded-edge"))
    return cache / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.skipif(not {"llama-completion", "llama-lookup", "llama-speculative"} <= set(peers.find_binaries())
                    or not _default_model().is_file(), reason="peer binaries (make peers) or default model missing")
def test_real_tools_agree():
    """The built tools run greedily on a chat-formatted prompt; lookup and self-drafted
    speculation reproduce plain llama-completion's text (batch-invariant CPU build, -fa off)."""
    m = _default_model()
    plain = run_peer("llama-completion", m, PROMPT, 16, 2, n_ctx=1024)
    look = run_peer("llama-lookup", m, PROMPT, 16, 2, n_ctx=1024)
    spec = run_peer("llama-speculative", m, PROMPT, 16, 2, n_ctx=1024, draft_model=m)
    assert plain["tokens"] == 16 and look["tokens"] >= 16 and spec["tokens"] >= 16
    assert plain["text"] and plain["text"].startswith("```")   # special tokens parsed: an assistant turn
    assert look["text"].startswith(plain["text"]) and spec["text"].startswith(plain["text"])
    assert spec["accept_rate"] == 1.0                           # a model drafting for itself
    for r in (plain, look, spec):
        assert r["decode_tok_s"] > 0


def test_does_not_import_llama_cpp():
    import subprocess
    import sys
    code = "import sys, aded_edge.peers; assert 'llama_cpp' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_build_command_flags():
    b = peers.build_command
    plain = b("llama-completion", "bin", "m.gguf", "p.txt", 128, 2, 4096)
    assert plain[plain.index("-n") + 1] == "128"
    assert {"-no-cnv", "--no-display-prompt", "-sp", "--no-escape"} <= set(plain)
    spec = b("llama-speculative", "bin", "m.gguf", "p.txt", 128, 2, 4096, draft_model="d.gguf")
    assert spec[spec.index("-md") + 1] == "d.gguf" and spec[spec.index("--spec-draft-n-max") + 1] == "16"
    look = b("llama-lookup", "bin", "m.gguf", "p.txt", 128, 2, 4096)
    assert "--spec-draft-n-max" not in look and look[look.index("-n") + 1] == "127"   # tool default draft (3)
    simple = b("llama-speculative-simple", "bin", "m.gguf", "p.txt", 16, 2, 4096, draft_model="d.gguf")
    assert simple[simple.index("--spec-type") + 1] == "draft-simple"
    with pytest.raises(PeerError, match="draft model or a spec_type"):
        b("llama-speculative-simple", "bin", "m.gguf", "p.txt", 16, 2, 4096)
    with pytest.raises(PeerError, match="takes no draft model"):
        b("llama-lookup", "bin", "m.gguf", "p.txt", 16, 2, 4096, draft_model="d.gguf")

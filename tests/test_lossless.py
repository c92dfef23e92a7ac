"""AdedLlama against plain llama-cpp-python decoding of the same real GGUF model.

Tolerance, stated: llama.cpp may compute the logits of a position with different kernels for a
batch of 1 and a batch of k > 1 (and rejected drafts leave holes that change summation order),
so the same position's logits can differ by up to ~1.0. Greedy output therefore equals plain
greedy output except where the model's top two logits are nearly tied. Two checks:
- every token AdedLlama emits is the model's greedy choice given the tokens before it, within
  NEAR_TIE logits (all positions scored in one evaluation): a wrongly accepted draft anywhere in
  the text fails this, also after an output has flipped at a near tie;
- a prompt whose output differs from plain decoding passes only if, at the first differing token,
  plain decoding's own logits rank the two candidates within NEAR_TIE, and on batch-invariant
  kernels (the CPU build of native/build.sh) at most MAX_TIE_FLIPS prompts may differ at all.
  On a GPU (ADED_EDGE_TEST_NGL) CUDA's kernels are not batch-invariant. Measured on an H200 with
  the CUDA build and this model: one position's logits differ by up to 2.7 (median 1.4) between a
  batch of 1 and batches of 2 to 64 tokens, and 22 of these 23 prompts flip within 128 tokens.
  There NEAR_TIE is 3.0 logits, the flips are not counted, and the tests that demand exact
  equality through the completion API are skipped, with that reason.
"""
import ctypes
import math

import llama_cpp
import numpy as np
import pytest
from conftest import BATCH_INVARIANT

N_TOKENS = 128
NEAR_TIE = 1.0 if BATCH_INVARIANT else 3.0   # logits; above the spread measured between batch sizes
MAX_TIE_FLIPS = 2 if BATCH_INVARIANT else None   # of the 23 prompts below (measured: 0 on the CPU build)
exact = pytest.mark.skipif(not BATCH_INVARIANT, reason="exact equality with plain decoding needs batch-invariant "
                           "kernels; a GPU's are not (per-token near-tie checks cover it there)")

CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
PROMPTS = [
    CHAT.format("Write a Python function that returns the n-th Fibonacci number."),
    CHAT.format("Explain what a hash table is to a beginner."),
    CHAT.format("Give three tips for staying healthy."),
    CHAT.format("Rewrite this sentence in passive voice: The cat chased the mouse across the garden."),
    CHAT.format("Write a haiku about the sea."),
    CHAT.format("What is the capital of France and why is it famous?"),
    CHAT.format("Convert this to a list comprehension:\nresult = []\nfor x in range(10):\n    if x % 2 == 0:\n        result.append(x * x)"),
    CHAT.format("Add type hints to this function:\ndef area(width, height):\n    return width * height"),
    CHAT.format("Rename the variable `n` to `count` everywhere, keep the rest unchanged:\ndef total(n):\n"
                "    s = 0\n    for i in range(n):\n        s += i * n\n    return s + n"),
    CHAT.format("Summarise the plot of Romeo and Juliet in two sentences."),
    CHAT.format("Write a SQL query that counts orders per customer."),
    CHAT.format("List the planets of the solar system in order."),
    CHAT.format("How do I reverse a string in JavaScript?"),
    "def quicksort(arr):\n",
    "import numpy as np\n\n\ndef normalize(x):\n    \"\"\"Scale x to zero mean and unit variance.\"\"\"\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog. The quick",
    "1, 2, 3, 4, 5, 6, 7, 8,",
    "Once upon a time, in a small village by the mountains,",
    "Dear hiring manager,\n\nI am writing to apply for",
    "Q: What is 17 times 23?\nA:",
    "<html>\n<head>\n<title>My page</title>\n</head>\n<body>\n",
    "Monday, Tuesday, Wednesday,",
]


def tokens_of(llm, text):
    return llm.tokenize(text.encode(), add_bos=False, special=True)


def first_n(gen, n):
    out = []
    for tok in gen:
        out.append(tok)
        if len(out) == n:
            break
    return out


def plain_logits(plain, context):
    """Plain decoding's logits for the token after `context` (one batch over the context)."""
    plain.reset()
    plain.eval(context)
    import llama_cpp
    ptr = llama_cpp.llama_get_logits_ith(plain._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(plain.n_vocab(),)).copy()


def own_prefix_gaps(scorer, prompt, tokens):
    """For each token, how far its logit lies below the best one given the prompt and the tokens
    before it (0 where it is the model's greedy choice), all positions from one evaluation."""
    scorer.reset()
    scorer.eval(prompt + tokens)
    rows = scorer.scores[len(prompt) - 1:len(prompt) - 1 + len(tokens)]
    return rows.max(axis=1) - rows[np.arange(len(tokens)), tokens]


def assert_greedy_throughout(scorer, prompt, tokens, what=""):
    gaps = own_prefix_gaps(scorer, prompt, tokens)
    worst = int(np.argmax(gaps))
    assert gaps[worst] < NEAR_TIE, f"{what}: token {worst} lies {gaps[worst]:.3f} logits below the model's choice"


def test_greedy_matches_plain_decoding(plain, speculative, scorer):
    aded = speculative
    flips = []
    for text in PROMPTS:
        prompt = tokens_of(plain, text)
        want = first_n(plain.generate(prompt, temp=0.0), N_TOKENS)
        got = first_n(aded.generate(prompt, temp=0.0), N_TOKENS)
        assert aded.last_stats.plain_reason == "" and aded.last_stats.steps > 0
        assert len(got) == len(want)
        assert_greedy_throughout(scorer, prompt, got, repr(text[:40]))
        if got == want:
            continue
        d = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        logits = plain_logits(plain, prompt + want[:d])
        gap = float(logits[want[d]] - logits[got[d]])
        assert abs(gap) < NEAR_TIE, f"prompt {text[:40]!r}: token {d} differs with a logit gap of {gap:.3f}"
        flips.append((text[:30], d, round(gap, 3)))
    if MAX_TIE_FLIPS is not None:
        assert len(flips) <= MAX_TIE_FLIPS, f"too many near-tie flips: {flips}"


def test_auto_budget_drafts_on_repetitive_text_when_batches_are_cheap(plain, model_path):
    """With a GPU-like (flat) cost curve the automatic budget must draft on repetitive text and
    decode it in far fewer steps than tokens, still equal to plain decoding. The curve is given,
    not measured, so the outcome does not depend on this machine's timings."""
    from aded_edge.budget import CostModel
    from aded_edge.llama import AdedLlama
    from conftest import LLAMA
    llm = AdedLlama(model_path, **LLAMA, calibrate=False, persist=False)
    llm.cost = CostModel([1, 65], [0.010, 0.012])
    prompt = tokens_of(plain, "a b c d e f g h a b c d e f g h a b c d e f g h a b c d")
    got = first_n(llm.generate(prompt, temp=0.0), 64)
    assert got == first_n(plain.generate(prompt, temp=0.0), 64)
    s = llm.last_stats
    assert s.accepted > 0 and s.steps < s.generated / 2


def test_learning_during_the_next_decode_keeps_output_and_lessons(plain, model_path, scorer):
    """With layers on a GPU a step's learning (the matrix, the calibration's labels) runs while
    the next tree is verified (llama_decode returns before the GPU is done). Forced on here: the
    output stays the model's own, learning did run inside decodes, and after the consumer stops
    early every tri-gram of the text is in the matrix, the last step's too (its learning had no
    next decode to wait for and runs when the generation closes)."""
    from aded_edge.budget import CostModel
    from aded_edge.llama import AdedLlama
    from conftest import LLAMA
    llm = AdedLlama(model_path, **LLAMA, calibrate=False, persist=False, corpus=False)
    llm.cost = CostModel([1, 65], [0.010, 0.012])   # flat: a tree on every step
    llm._overlap = True
    overlapped, decode = [], llm._decode
    llm._decode = lambda batch, meanwhile=None: (overlapped.append(meanwhile is not None), decode(batch, meanwhile))[1]
    for text in (PROMPTS[16], PROMPTS[18]):
        prompt = tokens_of(plain, text)
        got = []
        for tok in llm.generate(prompt, temp=0.0):
            got.append(tok)
            if len(got) == 40:
                break
        assert_greedy_throughout(scorer, prompt, got, repr(text[:40]))
        if BATCH_INVARIANT:
            assert got == first_n(plain.generate(prompt, temp=0.0), 40)
        seq = prompt + got
        missing = [tuple(seq[i - 2:i + 1]) for i in range(2, len(seq))
                   if seq[i] not in llm.matrix.successors(seq[i - 2], seq[i - 1])[0].tolist()]
        assert not missing, f"tri-grams the matrix did not learn: {missing}"
    assert sum(overlapped) > 10


def test_plain_steps_learn_in_batches_and_nothing_is_lost(plain, model_path, scorer):
    """On a CPU a step that verified no draft leaves its lessons (the matrix, the calibration's
    labels) for a few more tokens: one update per LEARN_EVERY tokens, not one per step. The output
    stays the model's own and, once the consumer stops (at a token count that is no multiple of
    LEARN_EVERY), every tri-gram of the text is in the matrix."""
    from aded_edge.budget import CostModel
    from aded_edge.llama import LEARN_EVERY, AdedLlama
    from conftest import LLAMA
    llm = AdedLlama(model_path, **LLAMA, calibrate=False, persist=False, corpus=False)
    llm.cost = CostModel([1, 65], [0.010, 0.65])   # a batch token costs a whole step: no draft pays
    updates, update = [], llm.matrix.update
    llm.matrix.update = lambda tokens, start=0: (updates.append(len(tokens) - start), update(tokens, start))[1]
    prompt = tokens_of(plain, PROMPTS[0])
    got = first_n(llm.generate(prompt, temp=0.0), 38)
    assert_greedy_throughout(scorer, prompt, got, repr(PROMPTS[0][:40]))
    assert llm.last_stats.drafted == 0 and llm.last_stats.steps == 37
    assert len(updates) == 1 + 37 // LEARN_EVERY + 1       # the prompt, every 4 tokens, the rest at the close
    assert sum(updates) == len(prompt) + 38
    seq = prompt + got
    missing = [tuple(seq[i - 2:i + 1]) for i in range(2, len(seq))
               if seq[i] not in llm.matrix.successors(seq[i - 2], seq[i - 1])[0].tolist()]
    assert not missing, f"tri-grams the matrix did not learn: {missing}"


def test_fixed_shape_verification_matches_plain(plain, model_path, scorer):
    """verify_batch=8 (what a CUDA GPU gets automatically): every step is one decode of exactly
    8 rows with 8 outputs and every sequence id, the idle rows in spare sequences that no branch
    attends to; the output stays the model's own and no padding row is left in the KV cache."""
    from aded_edge.config import DraftConfig
    from aded_edge.llama import AdedLlama
    from conftest import LLAMA
    llm = AdedLlama(model_path, **LLAMA, calibrate=False, persist=False,
                    draft=DraftConfig(verify_batch=8, budget="fixed"))
    import llama_cpp
    mem, spare = llama_cpp.llama_get_memory(llm._ctx.ctx), llm._tree_batch.spare
    rows, shapes, decode = [], set(), llm._decode

    def recorded(batch, meanwhile=None):   # the batch size; does the spare id hold the prefix, no padding?
        rows.append((batch.n_tokens, llama_cpp.llama_memory_seq_pos_max(mem, spare)
                     == llama_cpp.llama_memory_seq_pos_max(mem, 0)))
        tb, n = llm._tree_batch, batch.n_tokens   # what llama.cpp's graph reuse compares: outputs, ids
        shapes.add((int(tb.logits[:n].sum()), len({int(x) for r in range(n) for x in tb.seq[r, :tb.n_seq[r]]})))
        return decode(batch, meanwhile)
    llm._decode = recorded
    accepted = 0
    for text in PROMPTS[:6]:
        prompt = tokens_of(plain, text)
        got = first_n(llm.generate(prompt, temp=0.0), 48)
        assert_greedy_throughout(scorer, prompt, got, repr(text[:40]))
        if BATCH_INVARIANT:
            assert got == first_n(plain.generate(prompt, temp=0.0), 48)
        assert llm.kv_branches_clean(llm._tree_batch.spare + 1)
        assert llm.n_tokens == llm.kv_positions()
        accepted += llm.last_stats.accepted
    assert set(rows) == {(8, True)} and accepted > 0
    assert shapes == {(8, spare + 1)} and llm._max_nodes == 6   # 8 outputs, all 7 ids: one graph


def test_fixed_shape_verification_is_off_on_a_cpu_build(model_path):
    """-ngl on a build without GPU offload: no padded batches, and the learning is not put off
    until the next decode (which would run synchronously on the CPU anyway)."""
    import llama_cpp
    from aded_edge.llama import AdedLlama, system_info
    if "CUDA" in system_info() or llama_cpp.llama_supports_gpu_offload():
        pytest.skip("a GPU build")
    from conftest import LLAMA
    llm = AdedLlama(model_path, **{**LLAMA, "n_gpu_layers": -1}, calibrate=False, persist=False)
    assert llm._pad == 0 and llm._max_nodes == llm.draft_config.max_nodes
    assert not llm._overlap


@exact
def test_completion_api_text_matches_plain(plain, aded):
    kw = dict(max_tokens=48, temperature=0.0, stop=["\n\n\n"])
    prompt = CHAT.format("Name three primary colors.")
    assert aded.create_completion(prompt, **kw)["choices"][0]["text"] == plain.create_completion(prompt, **kw)["choices"][0]["text"]
    chunks = list(aded.create_completion(prompt, stream=True, **kw))
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain.create_completion(prompt, **kw)["choices"][0]["text"]
    msgs = [{"role": "user", "content": "Say hello."}]
    a = aded.create_chat_completion(messages=msgs, max_tokens=32, temperature=0.0)
    p = plain.create_chat_completion(messages=msgs, max_tokens=32, temperature=0.0)
    assert a["choices"][0]["message"] == p["choices"][0]["message"]
    assert aded.last_stats.plain_reason == ""


@exact
def test_stop_conditions_inside_accepted_paths(plain, aded_tree):
    aded = aded_tree  # trees on every step
    # a highly repetitive prompt makes long accepted paths likely
    prompt = "x = 1\ny = 2\nx = 1\ny = 2\nx = 1\ny = 2\nx = 1\ny = 2\n"
    for kw in (dict(max_tokens=7), dict(max_tokens=13), dict(max_tokens=40, stop=["y = 2\nx"]),
               dict(max_tokens=40, stop=["= 1\ny ="])):
        want = plain.create_completion(prompt, temperature=0.0, **kw)
        got = aded.create_completion(prompt, temperature=0.0, **kw)
        assert got["choices"][0]["text"] == want["choices"][0]["text"], kw
        assert got["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"], kw
        assert got["usage"]["completion_tokens"] == want["usage"]["completion_tokens"], kw
    assert aded.last_stats.accepted > 0  # the stop really fell after accepted drafts


def test_copies_carrying_edits_stay_lossless(plain, aded_tree, scorer, monkeypatch):
    """Copy chains that carry an edit (remembered from the answer, see draft.ContextLookup) are
    only drafts: a wrong edit in every chain must leave the output plain decoding's, with the
    right part before it still accepted."""
    from aded_edge.draft import ContextLookup
    walk, edited = ContextLookup._walk, []
    def walk_with_a_wrong_edit(self, at, n):
        plan = walk(self, at, n)
        if len(plan) >= 2:                   # the second token replaced, as an edit would be
            tok, src, _ = plan[1]
            self._subs[tok] = ((tok,), (tok ^ 1,))
            plan[1] = (tok ^ 1, src, (self._subs, tok))
            edited.append(tok)
        return plan
    monkeypatch.setattr(ContextLookup, "_walk", walk_with_a_wrong_edit)
    prompt = tokens_of(plain, "x = 1\ny = 2\nz = 3\nx = 1\ny = 2\nz = 3\nx = 1\ny = 2\nz = 3\nx = 1\n")
    got = first_n(aded_tree.generate(prompt, temp=0.0), 40)
    assert_greedy_throughout(scorer, prompt, got, "with wrong edits")   # no wrong edit was accepted
    if BATCH_INVARIANT:
        assert got == first_n(plain.generate(prompt, temp=0.0), 40)
    assert edited and aded_tree.last_stats.accepted > 0


def test_copies_of_the_input_stop_at_its_end(plain, aded_tree, scorer, monkeypatch):
    """A chat answer that repeats the user's sentence meets the template's end-of-turn marker in
    its input: the copy chain stops there (the answer ends or leaves its input), and the output is
    still the model's own."""
    from aded_edge.draft import ContextLookup
    ends = aded_tree.end_tokens()
    markers = tokens_of(plain, "<|im_start|><|im_end|>")
    assert aded_tree.token_eos() in ends and set(markers) <= ends
    assert not ends & set(tokens_of(plain, "The quick brown fox jumps over the lazy dog."))
    chain, chains = ContextLookup.chain, []
    def recorded(self, n):
        got = chain(self, n)
        chains.append(got[0])
        return got
    monkeypatch.setattr(ContextLookup, "chain", recorded)
    msgs = [{"role": "user", "content": "Repeat this sentence exactly: The quick brown fox jumps over the lazy dog."}]
    prompt = aded_tree.chat_tokens(msgs)
    got = first_n(aded_tree.generate(prompt, temp=0.0), 32)
    assert_greedy_throughout(scorer, prompt, got, "copying the input")
    if BATCH_INVARIANT:
        assert got == first_n(plain.generate(prompt, temp=0.0), 32)
    assert any(c and c[-1] in ends for c in chains), "no copy reached the input's end: the stop was not exercised"
    assert not [c for c in chains if any(t in ends for t in c[:-1])]   # nothing drafted after an end


def test_reindented_copies_stay_lossless(plain, aded_tree, scorer, monkeypatch):
    """Code wrapped into a class repeats its input one indentation level deeper: the copy is found
    up to the vocabulary's indentation tokens (SmolLM2 merges a line break with the indentation
    after it: "\\n   " becomes "\\n       ") and drafts the new indentation; the output is still
    the model's own."""
    from aded_edge.draft import ContextLookup, indent_class
    indents = aded_tree.indent_tokens()
    buf = ctypes.create_string_buffer(256)   # (Llama.detokenize drops tokens longer than 32 bytes)
    def piece(t):
        n = llama_cpp.llama_token_to_piece(aded_tree._model.vocab, t, buf, len(buf), 0, False)
        return buf.raw[:n]
    assert indents and all(indent_class(piece(t)) == c < 0 for t, c in indents.items())
    assert indents[tokens_of(plain, "x\n    y")[1]] == indents[tokens_of(plain, "x\n        y")[1]] == -2
    assert tokens_of(plain, " x")[0] not in indents and tokens_of(plain, "\n")[-1] not in indents
    learn, found = ContextLookup._learn_indents, []   # called for each copy found up to indentation only
    def recorded(self, at):
        found.append(at)
        return learn(self, at)
    monkeypatch.setattr(ContextLookup, "_learn_indents", recorded)
    code = "def area(w, h):\n    s = w * h\n    t = s + 1\n    u = t * 2\n    return u\n\n"
    prompt = tokens_of(plain, code + "class Shape:\n    def area(self, w, h):\n        s = w * h")
    got = first_n(aded_tree.generate(prompt, temp=0.0), 24)
    assert_greedy_throughout(scorer, prompt, got, "re-indented copies")
    if BATCH_INVARIANT:
        assert got == first_n(plain.generate(prompt, temp=0.0), 24)
    assert any(found), "no copy was found up to indentation: the re-indented match was not exercised"


def test_rejected_nodes_teach_the_models_own_next_token(plain, aded_tree, scorer, monkeypatch):
    """After each verification the matrix also learns, for every draft node the model rejected,
    the token the model would write after that node (DraftConfig.adapt_rejected): each such token
    must be the model's greedy choice after the text that ends at the node (plain scoring)."""
    import aded_edge.llama as L
    real, out, learnt = L.rejected_choices, [], []
    # learnt at once, not during the next decode (a GPU's order), so `out` ends with the pending token
    monkeypatch.setattr(aded_tree, "_overlap", False)

    def recorded(tree, accepted, row, pending):
        assert pending == out[-1]   # the depth-1 nodes follow the last emitted token
        a, b, c = real(tree, accepted, row, pending)
        for j, choice in zip([j for j in range(len(tree)) if j not in accepted], c.tolist()):
            path, n = [], j
            while n >= 0:
                path.insert(0, int(tree.tokens[n]))
                n = int(tree.parents[n])
            learnt.append((out + path, choice))   # out: every token emitted so far, the pending one last
        return a, b, c
    monkeypatch.setattr(L, "rejected_choices", recorded)
    prompt = tokens_of(plain, PROMPTS[1])
    for tok in aded_tree.generate(prompt, temp=0.0):
        out.append(tok)
        if len(out) == 48:
            break
    assert len(learnt) >= 20
    for text, choice in learnt[::len(learnt) // 16]:
        gap = own_prefix_gaps(scorer, prompt, text + [choice])[-1]
        assert gap < NEAR_TIE, f"learnt {choice} after a rejected node, {gap:.3f} logits below the model's choice"


@exact
def test_end_of_generation_inside_an_accepted_path(plain, aded_tree):
    aded = aded_tree  # trees on every step
    """The chat answer ends with <|im_end|>; the second time the same answer is fully predicted by
    the adapted matrix, so the end token arrives inside an accepted path and must stop there."""
    msgs = [{"role": "user", "content": "Reply with exactly the word: yes"}]
    want = plain.create_chat_completion(messages=msgs, max_tokens=64, temperature=0.0)
    for _ in range(2):
        got = aded.create_chat_completion(messages=msgs, max_tokens=64, temperature=0.0)
        assert got["choices"][0]["message"]["content"] == want["choices"][0]["message"]["content"]
        assert got["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"] == "stop"
    s = aded.last_stats
    assert s.accepted > 0, "second run accepted nothing: EOS inside a path was not exercised"


def test_kv_bookkeeping_of_a_step_does_not_span_the_context(plain, aded_tree, monkeypatch):
    """Tree attention needs every branch's sequence id to hold the prefix. The ids keep it
    between steps, so a step copies and removes only cells from the last committed position on:
    each id receives the prompt once, never again, and nothing is removed below the prompt's
    end after the prefill (a removal or copy touches a map entry per cell it moves: doing so over
    the whole context on every step cost 0.9 ms at 1000 cells)."""
    import llama_cpp
    import aded_edge.llama as L
    calls, prefilled = [], []
    for name in ("llama_memory_seq_cp", "llama_memory_seq_rm", "llama_memory_seq_keep"):
        real = getattr(llama_cpp, name)
        monkeypatch.setattr(L.llama_cpp, name, lambda *a, _real=real, _name=name: (
            calls.append((_name, a[1:])) if prefilled else None, _real(*a))[1])
    prompt = tokens_of(plain, PROMPTS[8])
    aded_tree.reset()   # nothing reused from an earlier test: every id starts empty
    for tok in aded_tree.generate(prompt, temp=0.0):
        prefilled.append(tok)
        if len(prefilled) == 64:
            break
    steps = aded_tree.last_stats.steps
    assert steps > 4 and aded_tree.last_stats.accepted > 0
    assert not [c for c in calls if c[0] == "llama_memory_seq_keep"]
    assert all(p0 >= len(prompt) for name, (seq, p0, p1) in [c for c in calls if c[0] == "llama_memory_seq_rm"])
    copies = [(src, dst, p0) for name, (src, dst, p0, p1) in [c for c in calls if c[0] == "llama_memory_seq_cp"]]
    below = [dst for src, dst, p0 in copies if p0 < len(prompt)]
    assert len(below) == len(set(below)) and len(below) >= 1   # the branches were used, each filled once
    assert aded_tree.kv_branches_clean(aded_tree.draft_config.max_nodes + 1)


def test_kv_cache_holds_exactly_prompt_and_emitted_tokens_after_long_run(plain, aded_tree):
    aded = aded_tree  # trees on every step
    prompt = tokens_of(plain, CHAT.format("Write a long story about a robot who learns to paint. "
                                          "Make it at least two thousand words long."))
    out = first_n(aded.generate(prompt, temp=0.0), 2100)
    # greedy chat output can end early with <|im_end|>; keep decoding past it like plain generate does
    assert len(out) == 2100
    s = aded.last_stats
    n_kv = aded.kv_positions()
    # the KV cache holds the prompt and every emitted token except the last (pending) one,
    # or a few more when the consumer stopped inside an accepted path
    assert aded.n_tokens == n_kv
    deepest = max(aded.draft_config.max_depth, aded.draft_config.copy_depth)
    assert len(prompt) + len(out) - 1 <= n_kv <= len(prompt) + len(out) - 1 + deepest
    assert list(aded.input_ids[:len(prompt)]) == prompt
    assert list(aded.input_ids[len(prompt):len(prompt) + len(out) - 1]) == out[:-1]
    assert aded.kv_branches_clean(aded.draft_config.max_nodes + 1)
    assert s.steps > 0


def _chi_square_p(table):
    """p-value of Pearson's chi-square homogeneity test of a 2 x m table (survival function of the
    chi-square distribution by the regularised upper incomplete gamma, series/continued fraction)."""
    table = np.asarray(table, float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    dof = table.shape[1] - 1
    a, x = dof / 2.0, stat / 2.0
    if x < a + 1:  # series for the lower gamma
        term = total = 1.0 / a
        for n in range(1, 500):
            term *= x / (a + n)
            total += term
        return 1.0 - total * math.exp(-x + a * math.log(x) - math.lgamma(a))
    b, c, d = x + 1 - a, 1e300, 1.0 / (x + 1 - a)  # continued fraction for the upper gamma
    h = d
    for i in range(1, 500):
        an = -i * (i - a)
        b += 2
        d = 1.0 / (an * d + b)
        c = b + an / c
        h *= d * c
    return h * math.exp(-x + a * math.log(x) - math.lgamma(a))


def test_chi_square_helper_against_known_values():
    # [[60,40],[40,60]]: statistic 8, 1 dof -> p = 0.0046777; 2 dof has sf exp(-x/2) exactly
    assert abs(_chi_square_p([[60, 40], [40, 60]]) - 0.004677734981047266) < 1e-9
    assert abs(_chi_square_p([[10, 20, 30], [12, 18, 30]]) - math.exp(-(2 / 11 + 2 / 19) / 2)) < 1e-9
    assert abs(_chi_square_p([[500, 100], [100, 500]]) - 0.0) < 1e-12


def test_sampling_is_lossless_in_distribution(plain, aded_tree):
    aded = aded_tree  # trees on every step
    """Per-position token distributions of speculative sampling and plain sampling are the same:
    chi-square homogeneity test at significance 0.001 on each of the first 3 positions,
    300 seeds per system (categories seen fewer than 10 times in total are pooled)."""
    prompt = tokens_of(plain, "The weather today is")
    kw = dict(temp=1.0, top_k=40, top_p=0.95, min_p=0.05)
    n_pos, n_seeds = 3, 300
    samples = {"plain": [], "aded": []}
    for seed in range(n_seeds):
        for name, llm in (("plain", plain), ("aded", aded)):
            llm.set_seed(seed)
            samples[name].append(first_n(llm.generate(prompt, **kw), n_pos))
    assert aded.last_stats.plain_reason == ""
    for pos in range(n_pos):
        cats = {}
        for row, name in enumerate(("plain", "aded")):
            for s in samples[name]:
                cats.setdefault(s[pos], [0, 0])[row] += 1
        big = [c for c in cats.values() if sum(c) >= 10]
        rest = [sum(c[r] for c in cats.values() if sum(c) < 10) for r in (0, 1)]
        table = np.array(big + ([rest] if sum(rest) else [])).T
        if table.shape[1] < 2:
            continue  # one token takes all the mass: nothing to compare
        p = _chi_square_p(table)
        assert p > 0.001, f"position {pos}: distributions differ (chi-square p = {p:.2e})"

"""The only module that imports llama_cpp.

`AdedLlama` is a `llama_cpp.Llama` whose `generate` decodes with draft trees: every other entry
point (`create_completion`, `create_chat_completion`, streaming, stop strings, chat templates)
is llama-cpp-python's own and simply consumes these tokens. Options a tree cannot honour
losslessly fall back to llama-cpp-python's plain `generate`.

One step of the loop in `_speculate`: draft -> verify -> accept -> update.
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import ctypes
import hashlib
import json
import os
import time
import weakref
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import _internals

from . import models, store
from .accept import Sampling, make_chooser, rejected_choices, walk_tree
from .budget import NO_DRAFT, CostModel, ReachCalibrator, draft_step, warm_up
from .config import DraftConfig
from .draft import ContextLookup, DraftTree, indent_class, tree_layout
from .gguf import read_gguf
from .stats import DecodeStats
from .trigram import MatrixFileError, TrigramMatrix

# batch sizes whose decode cost is measured at load (cut at the largest tree + 1); 17 and 33 catch
# the step after a multiple of 16 (the 2-core EPYC, Qwen Q4_K_M, in one-token decodes: 16 rows 7.7,
# 17 rows 9.0, 32 rows 12.7, 33 rows 14.0), which interpolation from 20 and 40 would hide
COST_SIZES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 17, 20, 24, 32, 33, 40, 48, 64, 96, 128, 192, 256)
COST_REPEATS = 3          # median of this many timings per size
COST_RUN = 6              # one-token decodes timed after a tree per round: a run of plain steps
COST_PREFIX = 64          # KV entries present while measuring the curve ...
COST_FAR = 1088           # ... and while measuring how a tree's cost grows with them (measure_kv_cost;
                          # a span of 1024 cells: 576 left SmolLM2's 1-3% effect inside the noise)
COST_KV_ROWS = 32         # rows of the tree timed for that (the largest size up to this)
COST_KV_SPAN = 128        # fewer cells between the two than this: no KV term (a small context)
LEARN_EVERY = 4           # plain steps (no draft verified) learn once this many tokens wait: each call
                          # after a decode costs tens of microseconds (cold caches), little work each
COST_MAX_SPREAD = 0.25    # a calibration whose repeats differ more than this (median relative spread)
                          # was disturbed by other load: it is used for this session but not cached


class TreeBatch:
    """A llama_batch whose arrays are numpy buffers, so a whole tree is written vectorised."""

    def __init__(self, capacity: int, n_seq: int, pad: int = 0):
        self.pad = pad                # every batch has this many rows when > 0 (see fill)
        self.spare = n_seq - 1        # the sequence id of the padding rows
        capacity = max(capacity, pad)
        self.token = np.zeros(capacity, np.int32)
        self.pos = np.zeros(capacity, np.int32)
        self.n_seq = np.zeros(capacity, np.int32)
        self.seq = np.zeros((capacity, n_seq), np.int32)
        self.logits = np.ones(capacity, np.int8)
        i32p = ctypes.POINTER(ctypes.c_int32)
        self._rows = (i32p * capacity)(*[ctypes.cast(self.seq[r].ctypes.data, i32p) for r in range(capacity)])
        self.batch = llama_cpp.llama_batch(
            n_tokens=0, token=self.token.ctypes.data_as(i32p), embd=None,
            pos=self.pos.ctypes.data_as(i32p), n_seq_id=self.n_seq.ctypes.data_as(i32p),
            seq_id=ctypes.cast(self._rows, ctypes.POINTER(i32p)),
            logits=self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)))

    def fill(self, pending: list, tree: DraftTree, n_past: int, pad: bool = False) -> int:
        """Pending tokens from n_past on (only the last needs logits), node j at the last pending
        position + depth[j]; with pad, idle rows up to self.pad tokens in the spare sequence, from
        n_past on, where no branch attends to them, and every row with logits. llama.cpp reuses its
        graph only while the batch keeps its shape, and the shape includes the number of outputs
        and of distinct sequence ids: the idle rows therefore also carry every id no branch uses,
        so each padded batch holds all n_seq ids. Every id the batch uses must hold exactly the
        prefix (AdedLlama._verify). Returns the number of sequence ids of the tree."""
        r, n = len(pending), len(tree)
        if n == 0 and r == 1 and not pad:   # a plain step (drafts did not pay): one row, sequence 0
            self.token[0], self.pos[0], self.seq[0, 0], self.n_seq[0], self.logits[0] = pending[0], n_past, 0, 1, 1
            self.batch.n_tokens = 1
            return 1
        self.token[:r] = pending
        self.pos[:r] = np.arange(n_past, n_past + r)
        self.token[r:r + n] = tree.tokens
        self.pos[r:r + n] = n_past + r - 1 + tree.depth
        self.logits[:r - 1] = 0
        self.logits[r - 1:r + n] = 1
        self.batch.n_tokens = r + n
        n_leaves = tree_layout(tree, self.seq[r - 1:], self.n_seq[r - 1:])
        self.seq[:r - 1] = self.seq[r - 1]  # pending tokens belong to every branch
        self.n_seq[:r - 1] = self.n_seq[r - 1]
        if pad and r + n < self.pad:
            if n_leaves > self.spare:
                raise ValueError("the padding sequence id is taken by a tree leaf")
            rows = slice(r + n, self.pad)
            self.token[rows] = pending[-1]
            self.pos[rows] = np.arange(n_past, n_past + self.pad - r - n)
            self.n_seq[rows] = self.spare + 1 - n_leaves
            self.seq[rows, 0] = self.spare               # first: the id whose cells the rows see
            self.seq[rows, 1:self.spare + 1 - n_leaves] = np.arange(n_leaves, self.spare, dtype=np.int32)
            self.logits[:self.pad] = 1
            self.batch.n_tokens = self.pad
        return n_leaves


class AdedLlama(llama_cpp.Llama):
    """`llama_cpp.Llama` with lossless ADED drafting. Extra keyword arguments:
    draft (DraftConfig); matrix (TrigramMatrix or a matrix file path; default: a fresh matrix plus
    the model's corpus matrix when `corpus` and the adaptive weights of earlier runs when
    `persist`, saved again by close()); calibrate (measure the batch cost curve at load; cached
    on disk); drafter (an object with draft(history, max_nodes, max_depth) -> DraftTree and
    update(tokens), used instead of the MCTS search, e.g. the ADED reference drafter in the
    benchmark). `model_path` may also be a catalog name."""

    def __init__(self, model_path, *, draft: DraftConfig | None = None, matrix=None, corpus: bool = True,
                 persist: bool = True, calibrate: bool = True, speculative: bool = True, drafter=None, **kwargs):
        path = str(models.resolve(model_path))
        read_gguf(path)  # a clear error for a foreign or truncated file, before llama.cpp sees it
        super().__init__(path, **kwargs)
        self._row_type = ctypes.c_float * self._n_vocab  # one row of logits (see _logits_row)
        self._rows_types = {}                             # n rows of logits (see _argmax_rows)
        self.draft_config = draft or DraftConfig()
        self.drafter = drafter
        self.last_stats = DecodeStats()
        cached_vocab = self._read_vocab_cache()
        self.matrix = self._attach_matrix(matrix, corpus, persist)
        self._calibrators = {True: ReachCalibrator(), False: ReachCalibrator()}  # greedy, sampled
        self._model_reason = self._unsupported_model(kwargs) if speculative else "speculation switched off"
        self.cost = CostModel([1], [1.0])
        self._pad = 0
        # layers on a GPU: llama_decode returns before the GPU is done, and a step's learning
        # runs in that time instead of between the decodes (see _decode)
        self._overlap = kwargs.get("n_gpu_layers", 0) != 0 and llama_cpp.llama_supports_gpu_offload()
        if not self._model_reason:
            self._pad = self._verify_batch(kwargs)
            # padded: trees leave at least one idle row, which carries the ids no branch uses
            self._max_nodes = min(self.draft_config.max_nodes, self.n_batch - 1, self.context_params.n_ubatch - 1,
                                  llama_cpp.llama_max_parallel_sequences() - 1, (self._pad or 1 << 30) - 2)
            self._open_tree_context(max(self._max_nodes + 1, 2))   # the last sequence id pads batches
            if calibrate:
                self.cost = self._cost_curve()
            self._warm_up()
            if not cached_vocab:
                self._write_vocab_cache()
        self._closed = False   # set up: close() saves the matrix (see there)
        _OPEN.add(self)

    # ------------------------------------------------------------------ set-up
    def _warm_up(self) -> None:
        """Compile (or load from Numba's cache) every kernel of a step now, on a scratch matrix:
        not during the first answer, where a Ctrl-C could land inside Numba's loader."""
        full = warm_up(self.matrix.n_vocab, self.matrix.top_k, self.draft_config,   # (end and indentation
                       self.end_tokens(), self.indent_tokens())                # tokens read once, at load)
        tree_layout(full, np.zeros((len(full) + 1, len(full) + 1), np.int32), np.zeros(len(full) + 1, np.int32))

    def _verify_batch(self, kwargs) -> int:
        """Rows of every verification batch (0: as many as the tree needs). Automatic: 8 with
        layers on a CUDA GPU, where llama.cpp replays its captured graph only while the batch
        keeps its shape (a new shape costs an eager run, then a capture; measured on an H200,
        see docs/performance-log.md, GPU), else off: on a CPU every row costs."""
        n = self.draft_config.verify_batch
        if n >= 0:
            return n
        offloaded = kwargs.get("n_gpu_layers", 0) != 0
        return 8 if offloaded and "CUDA" in system_info() else 0

    def _unsupported_model(self, kwargs) -> str:
        if self._is_recurrent or self._is_hybrid:
            return "recurrent/hybrid model (its cache cannot drop rejected drafts)"
        for key, why in (("embedding", "embedding mode"), ("draft_model", "draft_model given"),
                         ("lora_path", "LoRA adapter"), ("logits_all", "logits_all (logprobs)")):
            if kwargs.get(key):
                return why
        return ""

    def _open_tree_context(self, n_seq: int) -> None:
        """Replace Llama's context by one with a unified KV cache and n_seq sequences on the same
        weights (Llama builds its own with one sequence and passes no such option through)."""
        params = llama_cpp.llama_context_params.from_buffer_copy(self.context_params)
        params.n_seq_max = n_seq
        params.kv_unified = True
        ctx = _internals.LlamaContext(model=self._model, params=params, verbose=self.verbose)
        self._ctx.close()
        self._ctx = self._stack.enter_context(contextlib.closing(ctx))
        self.context_params = params
        self.n_tokens = 0
        self._tree_batch = TreeBatch(self._max_nodes + 1, n_seq, self._pad)

    def chat_tokens(self, messages) -> list:
        """Prompt tokens of a chat, formatted by the model's own chat template (as
        create_chat_completion does), ready for generate()."""
        from llama_cpp import llama_chat_format
        template = self.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError("this model has no chat template")
        vocab = self._model
        formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=vocab.token_get_text(self.token_eos()),
            bos_token=vocab.token_get_text(self.token_bos()) if self.token_bos() >= 0 else "")
        text = formatter(messages=messages).prompt
        return self.tokenize(text.encode(), add_bos=self._model.add_bos_token(), special=True)

    def token_is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._model.vocab, token))

    def end_tokens(self) -> frozenset:
        """End-of-generation and control tokens (a chat template's markers): a copy of the input
        stops after one, since an answer that writes one ends or leaves the text it copies."""
        if getattr(self, "_ends", None) is None:
            vocab = self._model.vocab
            self._ends = frozenset(t for t in range(self._n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)
                                   or llama_cpp.llama_vocab_is_control(vocab, t))
        return self._ends

    def indent_tokens(self) -> dict:
        """Indentation tokens -> their class (draft.indent_class): a copy of a re-indented line
        matches its source up to them (draft.ContextLookup)."""
        if getattr(self, "_indents", None) is None:
            vocab, buf, indents = self._model.vocab, ctypes.create_string_buffer(256), {}
            for t in range(self._n_vocab):
                n = llama_cpp.llama_token_to_piece(vocab, t, buf, len(buf), 0, False)
                c = indent_class(buf.raw[:n]) if 0 < n <= len(buf) else 0
                if c:
                    indents[t] = c
            self._indents = indents
        return self._indents

    def vocab_fingerprint(self) -> str:
        """Hash of every token's text: a matrix is only valid for a vocabulary with this hash."""
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = vocab_fingerprint(self._model.vocab)
        return self._fingerprint

    def _attach_matrix(self, matrix, corpus: bool, persist: bool) -> TrigramMatrix:
        """The given matrix (object or file), else a fresh one with this model's corpus matrix
        (aded-edge matrix build) and, when persist is on, the adaptive weights of earlier runs."""
        cfg = self.draft_config
        self._persist = persist and matrix is None
        self.matrix_notes = []  # one line per matrix file used or skipped, for people
        if isinstance(matrix, (str, os.PathLike)):
            self.matrix_notes.append(f"matrix: {matrix}")
            return TrigramMatrix.load(matrix, self.n_vocab(), self.vocab_fingerprint())
        if matrix is not None:
            if matrix.n_vocab != self.n_vocab() or (matrix.fingerprint and matrix.fingerprint != self.vocab_fingerprint()):
                raise MatrixFileError("the tri-gram matrix was built for another model's vocabulary")
            return matrix
        m = TrigramMatrix(self.n_vocab(), self.vocab_fingerprint(), top_k=cfg.top_k,
                          increment=cfg.adapt_increment, cap=cfg.adapt_cap)
        paths = store.paths(self.vocab_fingerprint())
        if corpus and paths.corpus.exists():
            static = TrigramMatrix.load(paths.corpus, self.n_vocab(), self.vocab_fingerprint())
            m.set_static(*static.static_arrays())
            self.matrix_notes.append(f"corpus matrix: {paths.corpus} ({static.static_rows} contexts)")
        if self._persist and paths.adaptive.exists():
            try:  # a damaged warm-start file must not stop generation: say so and start cold
                m.set_adaptive(TrigramMatrix.load(paths.adaptive, self.n_vocab(), self.vocab_fingerprint()))
                self.matrix_notes.append(f"adaptive matrix: {paths.adaptive} ({m.adaptive_rows} contexts, warm start)")
            except MatrixFileError as e:
                self.matrix_notes.append(f"adaptive matrix ignored: {e} (aded-edge matrix reset clears it)")
        return m

    def snapshot(self):
        """A copy of what decoding has learnt so far (the matrix's adaptive table, the reach
        calibration, the cost model's online corrections, and which tokens the KV cache held, all of
        them learnt, and a drafter's own state where it has one), for restore(): the benchmark's
        repeats of one prompt each start from it."""
        m = self.matrix
        drafter = self.drafter.snapshot() if hasattr(self.drafter, "snapshot") else None
        return copy.deepcopy(((m.keys, m.rowof, m.succ, m.w, m.n_rows), self._calibrators, self.cost,
                              self.input_ids[:self.n_tokens], drafter))

    def restore(self, snapshot) -> None:
        """Go back to the state snapshot() saw; the snapshot stays usable for another restore. Of
        the KV cache only the prefix it shared with the snapshot's counts as known: a prompt learns
        the matrix only past the prefix it reuses (_speculate), so the rest must be evaluated and
        learnt again."""
        table, self._calibrators, self.cost, held, drafter = copy.deepcopy(snapshot)
        m = self.matrix
        m.keys, m.rowof, m.succ, m.w, m.n_rows = table
        if drafter is not None:
            self.drafter.restore(drafter)
        self.n_tokens = common_prefix(self.input_ids[:self.n_tokens], held)

    def save_matrix(self) -> None:
        """Persist the adaptive weights for the next run of this model (atomic; no-op when
        persistence is off)."""
        if self._persist and not self._model_reason:
            self.matrix.save(store.paths(self.vocab_fingerprint()).adaptive, part="adaptive")

    def close(self) -> None:
        """Save the adaptive matrix (once) and free the model. Instances still open when the
        interpreter exits are closed by an atexit hook, while the modules saving needs still
        work (from __del__ at shutdown the save would fail with a traceback)."""
        if not getattr(self, "_closed", True):   # (an instance whose set-up failed has nothing to save)
            self._closed = True
            _OPEN.discard(self)
            with contextlib.suppress(OSError):  # an unwritable cache only loses the warm start
                self.save_matrix()
        super().close()

    def _vocab_cache_path(self) -> tuple[Path, dict]:
        st = os.stat(self.model_path)
        key = dict(model=os.path.abspath(self.model_path), size=st.st_size, mtime_ns=st.st_mtime_ns, version=1)
        return cache_file("vocab", key), key

    def _read_vocab_cache(self) -> bool:
        """Take the vocabulary's fingerprint, end tokens and indentation tokens from the on-disk
        cache when this model file (path, size, modification time) was read before: reading them
        costs a ctypes call per vocabulary entry each (0.32 s for Qwen's 152k entries, 2-core EPYC)."""
        path, key = self._vocab_cache_path()
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(path.read_text())
            if data["key"] == key:
                fingerprint, ends = str(data["fingerprint"]), frozenset(map(int, data["ends"]))
                self._indents = {int(t): int(c) for t, c in data["indents"]}
                self._fingerprint, self._ends = fingerprint, ends
                return True
        return False

    def _write_vocab_cache(self) -> None:
        path, key = self._vocab_cache_path()
        write_cache(path, dict(key=key, fingerprint=self.vocab_fingerprint(), ends=sorted(self.end_tokens()),
                               indents=sorted(self.indent_tokens().items())))

    def _cost_key(self) -> dict:
        st = os.stat(self.model_path)
        p = self.context_params
        return dict(model=os.path.abspath(self.model_path), size=st.st_size, mtime=int(st.st_mtime),
                    system=llama_cpp.llama_print_system_info().decode(errors="replace"),
                    threads=p.n_threads, threads_batch=p.n_threads_batch, n_ctx=p.n_ctx, n_ubatch=p.n_ubatch,
                    flash_attn=int(p.flash_attn_type), gpu_layers=self.model_params.n_gpu_layers,
                    max_size=self._max_nodes + 1, verify_batch=self._pad, version=7)

    def _cost_curve(self) -> CostModel:
        """The measured cost curve, from the on-disk cache when this exact setup was measured."""
        key = self._cost_key()
        path = cache_file("costs", key)
        with contextlib.suppress(OSError, ValueError, KeyError):
            data = json.loads(path.read_text())
            return CostModel(data["sizes"], data["seconds"], data["switch"], data["per_cell"], data["prefix"])
        for _attempt in range(2):
            sizes, seconds, spread, switch = self.measure_costs()
            if spread <= COST_MAX_SPREAD:
                break
        else:  # the machine was busy: trust this curve for now (it is corrected online; no KV term
            return CostModel(sizes, seconds, switch)   # from a busy machine either), not later
        prefix = self._cost_prefix()
        per_cell = self.measure_kv_cost(sizes)
        if per_cell is None:   # disturbed: no KV term for this session, and nothing cached
            return CostModel(sizes, seconds, switch)
        write_cache(path, dict(key=key, sizes=sizes, seconds=seconds, spread=spread, switch=switch,
                               per_cell=per_cell, prefix=prefix))
        return CostModel(sizes, seconds, switch, per_cell, prefix)

    def _cost_prefix(self, far: bool = False) -> int:
        """KV cells present while the cost curve is measured (far: while the KV term is)."""
        return min(COST_FAR if far else COST_PREFIX, self._n_ctx - self._max_nodes - 2)

    def measure_kv_cost(self, sizes, repeats: int = COST_REPEATS):
        """Seconds each batch row costs per KV cell beyond the curve's prefix: a tree of
        COST_KV_ROWS rows (or the largest size below) and one-token decodes, timed after COST_FAR
        cells and right after that again after the curve's prefix, so c(n, L) = c(n) + per_cell *
        n * (L - prefix). Only the ratio of tree to plain step at each length is used, so a
        machine that is slower or faster as a whole does not bend the result. 0 where the context
        is too small to hold the span or the largest tree has under 4 rows; None where other load
        disturbed the timings (their spread) or the result is beyond reason (a row reading
        COST_FAR cells dearer than a whole one-token decode)."""
        near, far = self._cost_prefix(), self._cost_prefix(far=True)
        k = max((n for n in sizes if n <= COST_KV_ROWS), default=1)
        if far - near < COST_KV_SPAN or k < 4:
            return 0.0
        _, far_seconds, far_spread, _ = self.measure_costs([k], repeats, prefix=far)
        _, seconds, spread, _ = self.measure_costs([k], repeats, prefix=near)
        (one, tree), ratio = (seconds[0], seconds[-1]), far_seconds[-1] / far_seconds[0]
        if max(spread, far_spread) > COST_MAX_SPREAD or k - ratio < 0.5:
            return None   # (k - ratio < 0.5: the far tree cost as much as its rows one by one)
        per_cell = max((ratio * one - tree) / ((far - near) * (k - ratio)), 0.0)
        return per_cell if per_cell * far <= one else None

    def measure_costs(self, sizes=None, repeats: int = COST_REPEATS, prefix: int | None = None):
        """(sizes, seconds of one llama_decode of n tokens with logits for each size, median
        relative spread of the repeats: how much other load disturbed the measurement, switch:
        how much more a one-token decode costs right after a decode of another size than inside
        a run of them). Size 1 is timed inside a run (the median of the one-token decodes after
        the first), as plain steps follow each other and as the online correction sees them; the
        other sizes each after a decode of another size, as trees change size from step to step.
        prefix: KV cells present (default: the curve's, _cost_prefix)."""
        top = self._max_nodes + 1
        sizes = [1] + [n for n in (sizes or COST_SIZES) if 1 < n <= top]   # the curve starts at one token
        prefix = self._cost_prefix() if prefix is None else prefix
        mem = llama_cpp.llama_get_memory(self._ctx.ctx)
        vocab = self.n_vocab()
        filler = [(7 + 31 * i) % vocab for i in range(prefix + top + 1)]
        llama_cpp.llama_memory_clear(mem, True)
        self.n_tokens = 0
        self.eval(filler[:prefix])
        def timed(n: int) -> float:
            chain = DraftTree(np.array(filler[prefix + 1:prefix + n], np.int32), np.arange(-1, n - 2, dtype=np.int32),
                              np.arange(1, n, dtype=np.int32), np.ones(n - 1, np.float32), np.ones(n - 1, np.int32))
            self._tree_batch.fill([filler[prefix]], chain, prefix, pad=self._pad > 0)   # steps' own shape
            t = time.perf_counter()
            self._decode(self._tree_batch.batch)
            dt = time.perf_counter() - t
            llama_cpp.llama_memory_seq_rm(mem, -1, prefix, -1)   # the padding rows too
            return dt

        timed(sizes[0])  # warm-up
        # rounds over all sizes, not repeats of one size in a row: a load that comes and goes
        # during the calibration then shows as spread instead of bending the curve's shape. Each
        # round ends with a small tree and a run of plain steps: the run's first decode pays the
        # graph switch, the rest settle over several decodes (SmolLM2 on the Xeon: 8.5, 8.3, 8.2,
        # 7.7 ms...; on CUDA the second is the graph capture), so c(1) is their median.
        times, switches = [], []
        for _ in range(repeats):
            trees = [timed(n) for n in sizes[1:]]
            timed(sizes[min(3, len(sizes) - 1)])
            run = [timed(1) for _ in range(COST_RUN)]
            steady = float(np.median(run[1:]))
            times.append([steady] + trees)
            switches.append(run[0] - steady)
        times = np.array(times)
        out = np.median(times, axis=0)
        spread = float(np.median((times.max(axis=0) - times.min(axis=0)) / out))
        llama_cpp.llama_memory_clear(mem, True)
        self.n_tokens = 0
        self._requires_eval = True
        return sizes, [float(x) for x in out], spread, max(float(np.median(switches)), 0.0)

    def _decode(self, batch, meanwhile=None) -> None:
        """One llama_decode, returning when the backend has finished it: a GPU backend returns
        from llama_decode before its kernels have run, so without the wait the timed verify
        cost would be the launch only and the work would land in whatever reads logits next.
        meanwhile() runs in that gap (on a CPU backend the decode is done by then)."""
        rc = llama_cpp.llama_decode(self._ctx.ctx, batch)
        if meanwhile is not None:
            meanwhile()
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}" + (" (no room in the KV cache)" if rc == 1 else ""))
        llama_cpp.llama_synchronize(self._ctx.ctx)

    # ------------------------------------------------------------------ generation
    def generate(self, tokens, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 typical_p: float = 1.0, temp: float = 0.80, repeat_penalty: float = 1.0, reset: bool = True,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, tfs_z: float = 1.0,
                 mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
                 penalize_nl: bool = True, logits_processor=None, stopping_criteria=None, grammar=None):
        """Same contract as llama_cpp.Llama.generate: yields the tokens plain decoding would,
        one at a time. Statistics of the run end up in self.last_stats."""
        reason = self._model_reason or next((why for bad, why in (
            (grammar is not None, "grammar"),
            (logits_processor is not None, "logits processor or logit_bias"),
            (mirostat_mode != 0, "mirostat"),
            (typical_p < 1.0, "typical_p"),
            ((repeat_penalty, frequency_penalty, presence_penalty) != (1.0, 0.0, 0.0), "repetition penalties"),
            (not reset, "reset=False"),
        ) if bad), "")
        stats = DecodeStats(prompt_tokens=len(tokens), plain_reason=reason)
        self.last_stats = stats
        if reason:
            kwargs = dict(top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p, temp=temp,
                          repeat_penalty=repeat_penalty, reset=reset, frequency_penalty=frequency_penalty,
                          presence_penalty=presence_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
                          mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, penalize_nl=penalize_nl,
                          logits_processor=logits_processor, stopping_criteria=stopping_criteria, grammar=grammar)
            yield from self._plain(tokens, stats, kwargs)
        else:
            yield from self._speculate(list(tokens), Sampling(temp, top_k, top_p, min_p, self._seed), stats,
                                       stopping_criteria)

    def _plain(self, tokens, stats: DecodeStats, kwargs):
        t = time.perf_counter()
        for tok in super().generate(tokens, **kwargs):
            dt = time.perf_counter() - t
            if stats.generated == 0:
                stats.prefill_s += dt
            else:
                stats.verify_s += dt
                stats.record_step(0, 0)
            stats.generated += 1
            yield tok
            t = time.perf_counter()

    def _speculate(self, prompt: list, sampling: Sampling, stats: DecodeStats, stopping_criteria=None):
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) >= self._n_ctx:
            raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window of {self._n_ctx}")
        cfg, cost, matrix = self.draft_config, self.cost, self.matrix
        calibrator = self._calibrators[sampling.greedy]
        calibrator.new_text()
        choose = make_chooser(sampling)
        t = time.perf_counter()
        # prefill exactly as plain decoding does (the whole prompt in one pass), so the KV cache and
        # the first token are bit-identical to it; the first token needs no draft
        stats.reused_tokens = self._prefill(prompt)
        first = choose(self._logits_row(-1))
        matrix.update(prompt + [first], start=stats.reused_tokens)
        if self.drafter is not None:
            self.drafter.update(prompt)
        stats.prefill_s = time.perf_counter() - t
        if stopping_criteria is not None and stopping_criteria(np.asarray(prompt, dtype=np.intc), self._logits_row(-1)):
            return
        history = list(prompt) + [first]  # every token emitted so far
        lookup = ContextLookup(history, cfg.copy_ngram, self.end_tokens(), self.indent_tokens())   # the copy chain's index of it
        n_past = len(prompt)              # tokens in the KV cache (seq 0) = history[:n_past]
        stats.generated += 1
        yield first
        learn = None   # the last step's learning, where it runs while the GPU verifies the next tree
        learnt = len(history)   # history[:learnt] is in the matrix and offered to the calibration
        try:
            while True:
                pending = history[n_past:]    # emitted, not yet in the KV cache: usually one token
                room = self._n_ctx - n_past - len(pending)
                if room < 0:
                    return
                t0 = time.perf_counter()
                # draft: MCTS tree, calibrated reach probabilities, the prefix of it that pays (maybe none)
                max_nodes = min(room, self._max_nodes - len(pending) + 1)
                cost.at(n_past)
                full, tree, expected = draft_step(matrix, history, cfg, calibrator, cost, max_nodes, room, self.drafter, lookup)
                k = len(tree)
                predicted = cost(len(pending) + k)
                t1 = time.perf_counter()
                # verify: the pending tokens and the whole tree in one llama_decode
                last, learn = learn, None
                n_seqs = self._verify(tree, pending, n_past, meanwhile=last)
                t2 = time.perf_counter()
                # accept: the model's own choices along the tree; the KV cache keeps the pending tokens
                # and the accepted nodes that lie in order right after them (the tree's first chain)
                base = len(pending) - 1
                top = self._argmax_rows(base, k + 1)   # greedy choices, and what rejected nodes teach
                accepted, emitted = walk_tree(tree, (lambda r: int(top[r])) if sampling.greedy
                                              else lambda r: choose(self._logits_row(base + r)))
                kept = next((j for j, node in enumerate(accepted) if node != j), len(accepted))
                self._commit(len(pending), accepted[:kept], n_seqs, n_past)
                written = pending + tree.tokens[:kept].tolist() if kept else pending
                for j, tok in enumerate(written):   # usually one token: cheaper than a numpy slice
                    self.input_ids[n_past + j] = tok
                n_past += len(pending) + kept
                self.n_tokens = n_past
                # update: the copy index and the trust now (the next draft needs them); the matrix
                # and the calibration's labels now on a CPU, during the next decode on a GPU, and
                # after plain steps once LEARN_EVERY tokens wait
                start = len(history)
                history.extend(emitted)
                lookup.extend(emitted)
                if self.drafter is not None:
                    self.drafter.update(emitted)
                calibrator.settle(expected, len(accepted))
                calibrator.track(full, start)
                if len(tree) or len(history) - learnt >= LEARN_EVERY:   # a plain step's lessons can wait
                    learn = self._learning(calibrator, history, learnt, tree, accepted, top, history[start - 1])
                    learnt = len(history)
                    if not self._overlap:   # a CPU decodes synchronously: nothing to overlap
                        learn()
                        learn = None
                t3 = time.perf_counter()
                cost.observe(len(pending) + k, t2 - t1, (t1 - t0) + (t3 - t2), drafted=k > 0)
                stats.record_step(k, len(accepted))
                stats.draft_s += t1 - t0
                stats.verify_s += t2 - t1
                stats.record_verify(len(pending) + k, t2 - t1, predicted)
                stats.accept_s += t3 - t2
                for j, tok in enumerate(emitted):
                    # plain generate asks the criteria before yielding a token, showing the tokens before it
                    if stopping_criteria is not None and stopping_criteria(
                            np.asarray(history[:start + j], dtype=np.intc),
                            self._logits_row(base + (0 if j == 0 else accepted[j - 1] + 1))):
                        return
                    stats.generated += 1
                    yield tok
        finally:
            if learn is not None:   # the generation ended before the next decode
                learn()
            if learnt < len(history):   # plain steps whose lessons were still waiting
                self._learning(calibrator, history, learnt, NO_DRAFT, [], None, -1)()

    def _learning(self, calibrator: ReachCalibrator, history: list, start: int, tree: DraftTree, accepted: list,
                  top: np.ndarray | None, pending: int):
        """What the steps since history[:start] teach, as a function to run now or while the next
        tree is verified (the next step extends history only after its decode): to the matrix the
        tokens emitted since (history[start:]) and, for every node of the last step's tree (drafted
        after `pending`) that was rejected, the model's own next token; to the calibration the
        labels of the trees the text has now overtaken (tracked when they were drafted)."""
        end = len(history)
        def learn():
            self.matrix.update(history[start - 2:end], start=2)
            if self.draft_config.adapt_rejected and self.drafter is None and len(accepted) < len(tree):
                self.matrix.update_grams(*rejected_choices(tree, accepted, top, pending))
            calibrator.learn(history)
        return learn

    def _prefill(self, prompt: list) -> int:
        """Evaluate the prompt so the KV cache holds exactly it and the last logits row is its
        last token's, reusing the longest common prefix with what the cache holds now (at least
        one token is evaluated). Returns the number of reused tokens."""
        reuse = common_prefix(self.input_ids[:min(len(prompt) - 1, self.n_tokens)], prompt)
        mem = llama_cpp.llama_get_memory(self._ctx.ctx)
        if not llama_cpp.llama_memory_seq_rm(mem, -1, reuse, -1):
            llama_cpp.llama_memory_clear(mem, True)
            reuse = 0
        self.n_tokens = reuse
        self.eval(prompt[reuse:])
        self._requires_eval = True  # after the first step the context's logits are not the last token's
        return reuse

    def logit_gap(self, tokens, a: int, b: int) -> float:
        """The model's logit of token a minus its logit of token b right after `tokens`, all
        evaluated as one prompt: how near a tie the model was where two decodings of it part."""
        self._prefill([int(t) for t in tokens])
        row = self._logits_row(-1)
        return float(row[a] - row[b])

    def _verify(self, tree: DraftTree, pending: list, n_past: int, meanwhile=None) -> int:
        """One llama_decode of the pending tokens and the tree, running meanwhile() (if given)
        while the backend works; returns the number of sequence ids the batch used (a padded
        batch: all of them). Between steps every id holds a prefix of sequence 0 (_commit); each
        id the batch uses is first brought up to the whole prefix by copying the cells committed
        since it last took part: a copy's cost follows the cells it adds, so a branch costs a few
        cells a step, not the whole context."""
        pad = self._pad > 0 and self._n_ctx - n_past >= self._pad   # padding rows need free cells
        n_leaves = self._tree_batch.fill(pending, tree, n_past, pad)
        n_seqs = self._tree_batch.spare + 1 if pad else n_leaves
        mem = llama_cpp.llama_get_memory(self._ctx.ctx) if n_seqs > 1 else None
        for s in range(1, n_seqs):
            held = llama_cpp.llama_memory_seq_pos_max(mem, s) + 1
            if held < n_past:
                llama_cpp.llama_memory_seq_cp(mem, 0, s, held, -1)
        try:
            self._decode(self._tree_batch.batch, meanwhile)
        except RuntimeError:
            for s in range(1, n_seqs):
                llama_cpp.llama_memory_seq_rm(mem, s, n_past, -1)
            raise
        return n_seqs

    def _argmax_rows(self, row: int, n: int) -> np.ndarray:
        """The argmax of the logits of batch rows row..row + n - 1, which must all have logits, in
        one pass: llama.cpp keeps the outputs of a batch in its order, one after the other."""
        ptr = llama_cpp.llama_get_logits_ith(self._ctx.ctx, row)
        rows = self._rows_types.get(n) or self._rows_types.setdefault(n, ctypes.c_float * (n * self._n_vocab))
        logits = np.frombuffer(rows.from_address(ctypes.addressof(ptr.contents)), np.float32)
        return logits.reshape(n, self._n_vocab).argmax(axis=1)

    def _logits_row(self, row: int) -> np.ndarray:
        """The logits of batch row `row` (negative: from the end), a view valid until the next
        decode (through one ctypes row type: np.ctypeslib.as_array builds a new type per call)."""
        ptr = llama_cpp.llama_get_logits_ith(self._ctx.ctx, row)
        return np.frombuffer(self._row_type.from_address(ctypes.addressof(ptr.contents)), np.float32)

    def _commit(self, n_pending: int, kept: list, n_seqs: int, n_past: int) -> None:
        """Leave exactly the pending tokens and the kept chain nodes after the prefix, as sequence 0;
        every other id of the batch (n_seqs of them) keeps the prefix only. Each removal and copy
        starts at n_past: its cost follows the cells of this step, not the context."""
        if self._tree_batch.batch.n_tokens == n_pending:   # the batch held the pending tokens alone
            return
        mem = llama_cpp.llama_get_memory(self._ctx.ctx)
        s = int(self._tree_batch.seq[n_pending + kept[-1], 0]) if kept else 0
        for t in range(n_seqs):
            if t != s:
                llama_cpp.llama_memory_seq_rm(mem, t, n_past, -1)
        llama_cpp.llama_memory_seq_rm(mem, s, n_past + n_pending + len(kept), -1)
        if s != 0:
            llama_cpp.llama_memory_seq_cp(mem, s, 0, n_past, -1)

    def kv_positions(self) -> int:
        """Number of positions sequence 0 holds in the KV cache (for integrity checks)."""
        mem = llama_cpp.llama_get_memory(self._ctx.ctx)
        return int(llama_cpp.llama_memory_seq_pos_max(mem, 0)) + 1

    def kv_branches_clean(self, upto: int) -> bool:
        """True when every sequence id in 1..upto-1 holds nothing or a prefix of sequence 0 (no
        leaked branch: _commit leaves the ids so between steps)."""
        mem = llama_cpp.llama_get_memory(self._ctx.ctx)
        end = llama_cpp.llama_memory_seq_pos_max(mem, 0)
        return all(llama_cpp.llama_memory_seq_pos_min(mem, s) in (-1, 0) and llama_cpp.llama_memory_seq_pos_max(mem, s) <= end
                   for s in range(1, upto))


_OPEN = weakref.WeakSet()   # AdedLlama instances not closed yet


@atexit.register
def _close_open() -> None:
    for llm in list(_OPEN):
        llm.close()


def cache_file(kind: str, key: dict) -> Path:
    """The per-user cache file of one setup (`key`, JSON-able) among those of a kind."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return models.cache_dir() / kind / f"{digest}.json"


def write_cache(path: Path, data: dict) -> None:
    """Write a cache file atomically; an unwritable cache only costs redoing the work next time."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)


def common_prefix(a, b) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    same = np.asarray(a[:n]) == np.asarray(b[:n])
    return int(n if same.all() else np.argmin(same))


def vocab_fingerprint(vocab) -> str:
    """Hash of a vocabulary's size and every token's text."""
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    h = hashlib.sha256(str(n).encode())
    for i in range(n):
        h.update(llama_cpp.llama_vocab_get_text(vocab, i) or b"")
        h.update(b"\0")
    return h.hexdigest()[:32]


class Tokenizer:
    """A model's tokenizer alone (vocab-only load, no weights): for building matrices."""

    def __init__(self, model_path):
        path = str(models.resolve(model_path))
        read_gguf(path)
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        try:
            self._model = _internals.LlamaModel(path_model=path, params=params, verbose=False)
        except ValueError:
            raise ValueError(f"llama.cpp could not load the vocabulary of {path}") from None
        self.path = path
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._model.vocab))
        self._buf = np.empty(1 << 16, np.int32)

    def tokenize(self, text: bytes) -> np.ndarray:
        """Token ids of text (no BOS, special tokens as plain text), as int32."""
        while True:
            n = llama_cpp.llama_tokenize(self._model.vocab, text, len(text),
                                         self._buf.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token)),
                                         self._buf.shape[0], False, False)
            if n >= 0:
                return self._buf[:n].copy()
            self._buf = np.empty(max(-n, 2 * self._buf.shape[0]), np.int32)

    def fingerprint(self) -> str:
        return vocab_fingerprint(self._model.vocab)

    def close(self) -> None:
        self._model.close()


def system_info() -> str:
    """llama.cpp's description of the backend and CPU features it was built with."""
    return llama_cpp.llama_print_system_info().decode(errors="replace")


def prompt_lookup_llama(model_path, num_pred_tokens: int = 2, **kwargs) -> llama_cpp.Llama:
    """llama-cpp-python's own prompt-lookup speculative decoding, as a peer to benchmark against
    (it needs logits for every token: logits_all=True)."""
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
    return llama_cpp.Llama(str(model_path), draft_model=LlamaPromptLookupDecoding(num_pred_tokens=num_pred_tokens),
                           logits_all=True, **kwargs)

"""Every drafting knob in one frozen dataclass; the CLI and the API map onto its fields."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class DraftConfig:
    # --- MCTS (defaults are the ADED reference values) ---
    c1: float = 32.0            # pUCT exploration constant (weight of the prior term)
    c2: float = 8.0             # pUCT visit-count scale inside the log term
    n_simulations: int = 150    # MCTS simulations per draft (the auto budget's cap: budget.ReachCalibrator.search_sims)
    max_depth: int = 4          # deepest draft node (tokens after the pending one)
    top_k: int = 12             # successors kept per (t-2, t-1) pair, in the matrix and in the tree
    max_nodes: int = 64         # node budget of one draft tree (batch = nodes + 1)
    copy_depth: int = 32        # longest copy chain from the context (draft.ContextLookup); 0: none
    copy_ngram: int = 2         # shortest match (3, 2 or 1 tokens) resuming a copy after an edit (3: never)
    # --- adaptation of the tri-gram matrix while decoding ---
    adapt_increment: float = 0.5  # weight added to a tri-gram each time the context or output shows it
    adapt_cap: float = 4.0        # ceiling of an adapted weight (keeps old habits from freezing the tree)
    adapt_rejected: bool = True   # also adapt with the model's own next token after every verified node it
                                  # rejected (its logits come with the verification; accept.rejected_choices)
    # --- budget: how much of the tree is verified each step ---
    budget: str = "auto"        # "auto": choose size from measured cost and predicted acceptance; "fixed": always max_nodes
    min_accept_prob: float = 0.0  # nodes predicted below this acceptance are never drafted (auto budget)
    min_gain: float = 0.05      # a tree is verified only if it promises this much more speed than a plain
                                # step (auto budget): absorbs the optimism of picking the best-looking tree
    # --- verification batch shape ---
    verify_batch: int = -1      # n >= 3: every step is one llama_decode of exactly n tokens (idle rows padded
                                # in spare sequences), trees up to n - 2 nodes, so a GPU replays one captured
                                # graph instead of re-capturing for each new batch size; 0: off (batch = tree);
                                # -1: automatic, 8 with layers on a CUDA GPU, else off

    def __post_init__(self) -> None:
        checks = [
            (self.c1 > 0, "c1 must be > 0"),
            (self.c2 > 0, "c2 must be > 0"),
            (self.n_simulations >= 1, "n_simulations must be >= 1"),
            (1 <= self.max_depth <= 32, "max_depth must be in 1..32"),
            (1 <= self.top_k <= 64, "top_k must be in 1..64"),
            (0 <= self.copy_depth <= 64, "copy_depth must be in 0..64"),
            (1 <= self.copy_ngram <= 3, "copy_ngram must be in 1..3"),
            (0 <= self.max_nodes <= 255, "max_nodes must be in 0..255 (llama.cpp allows 256 sequences)"),
            (self.adapt_increment >= 0, "adapt_increment must be >= 0"),
            (self.adapt_cap >= self.adapt_increment, "adapt_cap must be >= adapt_increment"),
            (self.budget in ("auto", "fixed"), "budget must be 'auto' or 'fixed'"),
            (0.0 <= self.min_accept_prob < 1.0, "min_accept_prob must be in [0, 1)"),
            (0.0 <= self.min_gain <= 1.0, "min_gain must be in [0, 1]"),
            (self.verify_batch in (-1, 0) or 3 <= self.verify_batch <= 256, "verify_batch must be -1, 0 or 3..256"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def replace(self, **changes) -> "DraftConfig":
        return dataclasses.replace(self, **changes)

    def with_settings(self, settings) -> "DraftConfig":
        """This config with NAME=VALUE settings applied (each value parsed as the field's type);
        ValueError naming the problem for an unknown field or a bad value (ranges: __post_init__)."""
        fields = {f.name: type(getattr(self, f.name)) for f in dataclasses.fields(self)}
        changes = {}
        for item in settings:
            name, sep, value = str(item).partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in fields:
                raise ValueError(f"a setting is NAME=VALUE with NAME one of {', '.join(fields)}; got {item!r}")
            kind = fields[name]
            try:
                if kind is bool:
                    if value.strip().lower() not in ("true", "false", "1", "0"):
                        raise ValueError
                    changes[name] = value.strip().lower() in ("true", "1")
                else:
                    changes[name] = kind(value.strip())
            except ValueError:
                raise ValueError(f"setting {name}: {value!r} is not a valid {kind.__name__}") from None
        return self.replace(**changes)

    def changes(self) -> str:
        """The fields that differ from the defaults, as "name=value, ..." (empty: none)."""
        default = DraftConfig()
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                         if getattr(self, f.name) != getattr(default, f.name))

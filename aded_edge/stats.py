"""Per-generation statistics: what was drafted, verified, accepted, and where the time went."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class DecodeStats:
    prompt_tokens: int = 0       # tokens of the prompt
    reused_tokens: int = 0       # prompt tokens whose KV entries were kept from the previous call
    generated: int = 0           # tokens handed to the caller
    steps: int = 0               # llama_decode calls after the prompt (verification steps)
    drafted: int = 0             # draft nodes verified, summed over steps
    accepted: int = 0            # draft nodes accepted, summed over steps
    prefill_s: float = 0.0       # prompt evaluation
    draft_s: float = 0.0         # MCTS + budget choice
    verify_s: float = 0.0        # llama_decode of the trees
    accept_s: float = 0.0        # walking the tree, KV bookkeeping, matrix update
    accept_hist: dict = field(default_factory=dict)  # accepted draft tokens per step -> count of steps
    verify_sizes: dict = field(default_factory=dict)  # rows of a verification decode -> [steps, seconds,
                                                      # seconds the cost model predicted for them]
    plain_reason: str = ""       # why plain decoding was used instead of trees ("" when trees ran)

    @property
    def decode_s(self) -> float:
        return self.draft_s + self.verify_s + self.accept_s

    @property
    def tokens_per_step(self) -> float:
        return self.generated / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.generated / self.decode_s if self.decode_s > 0 else 0.0

    def record_step(self, drafted: int, accepted: int) -> None:
        self.steps += 1
        self.drafted += drafted
        self.accepted += accepted
        self.accept_hist[accepted] = self.accept_hist.get(accepted, 0) + 1

    def record_verify(self, rows: int, seconds: float, predicted: float = 0.0) -> None:
        """One verification decode of `rows` batch rows (the pending tokens and the tree) took
        seconds; the budget's cost model had predicted `predicted`."""
        c = self.verify_sizes.setdefault(rows, [0, 0.0, 0.0])
        c[0] += 1
        c[1] += seconds
        c[2] += predicted

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(decode_s=self.decode_s, tokens_per_step=self.tokens_per_step, tokens_per_s=self.tokens_per_s,
                 draft_ms_per_step=1e3 * self.draft_s / max(self.steps, 1),
                 verify_ms_per_step=1e3 * self.verify_s / max(self.steps, 1))
        return d

    def summary(self) -> str:
        if self.plain_reason:
            return (f"[plain decoding: {self.plain_reason}] {self.generated} tokens, "
                    f"{self.tokens_per_s:.1f} tok/s")
        per = max(self.steps, 1)
        return (f"{self.generated} tokens in {self.steps} steps ({self.tokens_per_step:.2f} tok/step, "
                f"{self.accepted}/{self.drafted} drafts accepted), {self.tokens_per_s:.1f} tok/s | "
                f"draft {1e3 * self.draft_s / per:.2f} ms/step, verify {1e3 * self.verify_s / per:.2f} ms/step, "
                f"prompt {self.prompt_tokens} tok in {1e3 * self.prefill_s:.0f} ms")

"""Stop training when the validation metric has not improved for ``patience`` epochs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EarlyStopping:
    patience: int | None  # None: never stop early
    higher_is_better: bool
    best: float | None = None
    stale_epochs: int = 0

    def update(self, value: float) -> bool:
        """Record one epoch's metric; True when training should stop now.

        Every rank sees the same all-reduced metric, so every rank decides the same.
        """
        improved = self.best is None or (value > self.best if self.higher_is_better else value < self.best)
        if improved:
            self.best, self.stale_epochs = value, 0
        else:
            self.stale_epochs += 1
        return self.patience is not None and self.stale_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "stale_epochs": self.stale_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.stale_epochs = state["best"], state["stale_epochs"]

"""TrainState: where a training run stands (epoch, step, best so far), kept apart from config.

The config says what to train; the state says how far it got. The state is a value: the
engine passes it in and gets a new one back, and it round-trips through plain Python
types so a checkpoint holding it loads with ``torch.load(weights_only=True)``.

>>> s = TrainState(lr=1e-3)
>>> s = s.record(epoch=1, metric=20.0, global_step=10)
>>> s.best_epoch, s.best_metric, TrainState.from_dict(s.to_dict()) == s
(1, 20.0, True)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainState:
    epoch: int = 0  # epochs completed
    global_step: int = 0  # optimizer steps taken
    best_metric: float = math.inf  # lower is better (error rate or loss)
    best_epoch: int = 0  # 0 = none yet
    history: tuple[tuple[int, float], ...] = ()  # (epoch, dev metric) per validated epoch
    lr: float = 0.0  # learning rate after the last scheduler update
    # The epoch in progress (epoch + 1), for checkpoints written inside it: batches of it
    # already trained (on this rank), and its running sums over all ranks (see
    # earshot.train.meters.EpochSums: the loss and its parts, rows skipped, what was
    # trained, its seconds). Both are empty at an epoch boundary.
    epoch_batches: int = 0
    epoch_sums: tuple[float, ...] = ()
    skipped_steps: int = 0  # updates skipped for a non-finite loss or gradient, whole run

    def record(self, epoch: int, metric: float | None, global_step: int) -> TrainState:
        """The state after finishing ``epoch`` with dev ``metric`` (lower is better);
        ``metric`` None for an epoch without a dev pass (it joins no ranking)."""
        if metric is None:
            return dataclasses.replace(self, epoch=epoch, epoch_batches=0, epoch_sums=(),
                                       global_step=global_step)
        # A diverged epoch (nan/inf) must rank last, and nan would break sorting.
        metric = float(metric) if math.isfinite(metric) else math.inf
        # On a tie the later epoch wins: error rates plateau on small sets while training
        # still improves the model.
        improved = metric <= self.best_metric and math.isfinite(metric) or self.best_epoch == 0
        return dataclasses.replace(
            self,
            epoch=epoch,
            epoch_batches=0,
            epoch_sums=(),
            global_step=global_step,
            history=self.history + ((epoch, float(metric)),),
            best_metric=float(metric) if improved else self.best_metric,
            best_epoch=epoch if improved else self.best_epoch,
        )

    def best_epochs(self, k: int) -> list[int]:
        """The ``k`` epochs with the lowest metric, best first (later epoch wins a tie)."""
        ranked = sorted(self.history, key=lambda item: (item[1], -item[0]))
        return [epoch for epoch, _ in ranked[: max(k, 0)]]

    def to_dict(self) -> dict:
        """Plain dict of ints, floats and lists (safe for ``weights_only`` loading)."""
        data = dataclasses.asdict(self)
        data["history"] = [[int(e), float(m)] for e, m in self.history]
        data["epoch_sums"] = [float(v) for v in self.epoch_sums]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainState:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["history"] = tuple((int(e), float(m)) for e, m in data.get("history", ()))
        values["epoch_sums"] = tuple(float(v) for v in data.get("epoch_sums", ()))
        return cls(**values)

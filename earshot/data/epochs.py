"""Which batches a rank trains on in an epoch, and in what order, written down once.

``EpochBatches`` deals the batches of a corpus-wide sampler to the ranks of a job and
can start an epoch part-way through; with a plan directory it draws each epoch once and
keeps it as an ``EpochPlan``, so a resumed epoch seeks to its batch instead of drawing
the ones before it again.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from lhotse import CutSet
from torch.utils.data import Sampler

from earshot.integrity import atomic_write, atomic_write_text

class EpochPlan:
    """One rank's batches of one epoch, written down once: every batch's cuts (metadata
    as the sampler gave them, speed factors and shard included) as one gzip member of a
    file, with the members' offsets beside it. Reading from batch ``n`` seeks straight to
    it, so a resumed epoch starts where it stopped without drawing the batches before.
    The offsets are written last (each file whole or not at all): a plan without them is
    incomplete and written again."""

    def __init__(self, directory: Path, epoch: int, rank: int) -> None:
        stem = f"epoch-{epoch:04d}-rank-{rank}"
        self.batches_path = Path(directory) / f"{stem}.batches.gz"
        self.index_path = Path(directory) / f"{stem}.index.json"
        self._offsets: list[int] | None = None

    def exists(self) -> bool:
        return self.index_path.is_file() and self.batches_path.is_file()

    def write(self, batches) -> None:
        offsets = [0]

        def members(handle) -> None:
            for cuts in batches:
                handle.write(gzip.compress(json.dumps([c.to_dict() for c in cuts]).encode(), 1))
                offsets.append(handle.tell())

        atomic_write(self.batches_path, members)
        atomic_write_text(self.index_path, json.dumps({"offsets": offsets}))
        self._offsets = offsets

    @property
    def offsets(self) -> list[int]:
        if self._offsets is None:
            self._offsets = json.loads(self.index_path.read_text())["offsets"]
        return self._offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def read(self, start: int = 0):
        """The batches (CutSets) from batch ``start`` on."""
        offsets = self.offsets
        with open(self.batches_path, "rb") as handle:
            handle.seek(offsets[min(start, len(self))])
            for i in range(start, len(self)):
                member = handle.read(offsets[i + 1] - offsets[i])
                yield CutSet.from_dicts(json.loads(gzip.decompress(member)))

    def remove_others(self) -> None:
        """Delete this rank's plans of other epochs (a run keeps the current one only)."""
        rank = self.batches_path.name.split("-rank-")[1].split(".")[0]
        for path in self.batches_path.parent.glob(f"epoch-*-rank-{rank}.*"):
            if path not in (self.batches_path, self.index_path):
                path.unlink(missing_ok=True)


PLANS_DIR = "plans"  # inside a run's directory


def clear_plans(directory: Path, rank: int) -> None:
    """Remove ``rank``'s epoch plans from ``directory`` (a new run draws its own)."""
    for path in Path(directory).glob(f"epoch-*-rank-{rank}.*"):
        path.unlink(missing_ok=True)


class EpochBatches(Sampler):
    """This rank's batches (CutSets) of one epoch, drawn from a corpus-wide ``inner`` sampler.

    Global batch ``i`` goes to rank ``i % world_size``. With ``even=True`` (training) a
    last round of fewer than ``world_size`` batches is dropped, so every rank yields the
    same number and no rank waits at the epoch end for a gradient that never comes; the
    dropped cuts differ from epoch to epoch with the shuffle. ``set_epoch(e, skip=n)``
    makes the next iteration start at this rank's ``n``-th batch of epoch ``e``.

    With ``plan_dir`` (training) the epoch's batches are drawn once, when it is counted
    or first read, and written down (``EpochPlan``); the epoch is then read from the
    plan, and a resumed one seeks to its batch ``n`` without drawing the ones before.
    """

    def __init__(self, inner, world_size: int = 1, rank: int = 0, even: bool = True,
                 followers: tuple = (), plan_dir: Path | None = None):
        self.inner = inner
        self.world_size, self.rank, self.even = world_size, rank, even
        self.followers = tuple(followers)  # objects with an ``epoch`` that follows ours
        self.plan_dir = plan_dir
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        for follower in self.followers:  # speed factors, shard order: drawn per epoch
            follower.epoch = epoch
        self.inner.set_epoch(epoch)

    def _mine(self):
        round_ = []
        for cuts in self.inner:
            round_.append(cuts)
            if len(round_) == self.world_size:
                yield round_[self.rank]
                round_ = []
        if round_ and not self.even and self.rank < len(round_):
            yield round_[self.rank]

    def plan(self, epoch: int) -> EpochPlan:
        """The plan of ``epoch`` for this rank, drawn and written if there is none yet."""
        plan = EpochPlan(self.plan_dir, epoch, self.rank)
        if not plan.exists():
            skip = self.skip
            self.set_epoch(epoch)
            plan.write(self._mine())
            plan.remove_others()
            self.set_epoch(epoch, skip)
        return plan

    def __iter__(self):
        skip, self.skip = self.skip, 0
        if self.plan_dir is not None:
            yield from self.plan(self.epoch).read(skip)
            return
        for i, cuts in enumerate(self._mine()):
            if i >= skip:
                yield cuts

    def num_batches(self, epoch: int) -> int:
        """How many batches this rank gets in ``epoch`` (a pass over the cut metadata, or
        the plan's length; no audio is read). Leaves the sampler at the start of ``epoch``."""
        if self.plan_dir is not None:
            count = len(self.plan(epoch))
            self.set_epoch(epoch)
            return count
        self.set_epoch(epoch)
        count = sum(1 for _ in self._mine())
        self.set_epoch(epoch)
        return count

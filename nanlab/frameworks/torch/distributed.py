"""The watch under torch.distributed at a bad step: one combined status, and one report that every rank raises.

A healthy step needs nothing from here: the gradients DDP reduced are the same on every rank, and ``watch.loss_fn``
folds a rank's non-finite loss or out-of-range labels into them (``nanlab.frameworks.torch.watch``), so every rank
sees the same bad step at once and calls ``combine`` and ``merge_reports`` together: no rank waits in a collective
that another rank has left (the hang, or gloo's "Connection closed by peer"). ``combine`` puts each rank's status
vector into its own row of a ``world_size`` x n table and one ``all_reduce`` (sum) gives every rank every row. Every
rank then replays its own micro-batches (locally, without collectives) and the reports are gathered, so that each
rank raises the same report: that of the first rank where the non-finite value appeared, with ``ranks`` naming all
of them. Public ``torch.distributed`` APIs only.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from nanlab.report import NonFiniteReport


def combine(vector: torch.Tensor, group) -> tuple[torch.Tensor, int]:
    """Every rank's ``vector``, one row per rank (one all_reduce), and this rank's index in ``group``."""
    rank = dist.get_rank(group)
    table = vector.new_zeros(dist.get_world_size(group), vector.numel())
    table[rank] = vector
    dist.all_reduce(table, group=group)
    return table, rank


def merge_reports(report: NonFiniteReport, suspects: list[int], group) -> NonFiniteReport:
    """The report of the first rank where the step went bad, with ``rank`` and ``ranks`` set, on every rank.

    A rank counts when its own replay located the fault (a data problem or an op); when no replay did, the ranks
    whose own loss or labels went bad (``suspects``, from the combined check).
    """
    world = dist.get_world_size(group)
    gathered: list[dict | None] = [None] * world
    dist.all_gather_object(gathered, report.to_dict(), group=group)
    located = [rank for rank, found in enumerate(gathered) if found["phase"] == "data" or found["module"]]
    ranks = located or suspects
    chosen = ranks[0] if ranks else dist.get_rank(group)
    merged = NonFiniteReport.from_dict(gathered[chosen])
    merged.rank, merged.ranks = chosen, ranks
    where = f"rank {chosen}" if len(ranks) <= 1 else f"ranks {', '.join(map(str, ranks))} (details of rank {chosen})"
    merged.note = " ".join(filter(None, [merged.note, f"Under torch.distributed ({world} ranks): it appeared on "
                                         f"{where}; every rank stopped at this step."]))
    return merged

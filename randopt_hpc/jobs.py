"""What the ranks share out: the jobs of a phase, and which of them a rank takes. Pure functions, no MPI.

runtime.schedule decides only who computes a job, never what it is: `strided` gives rank r the jobs r,
r + size, ... of the phase's list (`population.owned`); `dynamic` hands the next job to whichever rank asks
first, from a counter shared by the ranks (randopt_hpc.comm: an MPI fetch-and-add), so that a rank held up
by a slow candidate takes fewer and no rank idles while jobs remain.

After the ranking every member answers the whole test split. One member's answers are one job on a
laptop, but at the paper's scale there are ~100 members for hundreds of ranks, so each member's test split
is cut into parts (`test_parts`) that different ranks answer, each perturbing to the member's seed. A part
starts and ends on a multiple of generation.batch_size, so the batches, and with them the answers, are
those of one rank answering the whole member.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

# Before the population, on rank 0: the base model on the train split, so that a broken prompt shows at once.
# Its test answers come after the ranking, in parts like a member's: at the paper's scale (2000 test problems)
# they are several candidates' work, which ranks 0 and 1 would do while every other rank waits at the first
# allgather (tools.analyze scale showed the population's efficiency falling to a fifth on 200 ranks).
BASE_JOBS = [("base", "train")]
PARTS_PER_RANK = 2   # test parts per rank, on average, when there are fewer members than ranks


def answer_jobs(members: Sequence[int], samples: int = 0) -> list[tuple[str, object]]:
    """What answers the test split after the ranking, in a fixed order: the base model (greedy), its samples,
    then each member (one in several groups answers once)."""
    return [("base", "test"), *(("sample", s) for s in range(samples)),
            *(("member", m) for m in dict.fromkeys(members))]


def test_parts(jobs: Sequence[tuple[str, object]], n_test: int, batch_size: int, size: int) -> list[tuple]:
    """(kind, key, start, stop): each job's test positions start..stop-1, in parts of whole batches, so that
    `size` ranks have about PARTS_PER_RANK parts each (a job is never cut while there are as many jobs as
    that). The parts depend on the rank count; the answers do not (see the module's docstring)."""
    batches = max(1, math.ceil(n_test / batch_size))
    per_job = min(batches, max(1, math.ceil(PARTS_PER_RANK * size / max(1, len(jobs)))))
    step = math.ceil(batches / per_job) * batch_size
    return [(kind, key, lo, min(lo + step, n_test)) for kind, key in jobs for lo in range(0, max(n_test, 1), step)]


def share(items: Sequence, todo, rank: int, size: int, dealer: Dealer | None = None) -> Iterable:
    """This rank's share of a phase's items that `todo` says still need computing: the strided slice (filtered
    after slicing, so a resumed phase keeps its owners), or what the dealer hands out (runtime.schedule)."""
    if dealer is None:
        return [x for x in list(items)[rank::size] if todo(x)]
    return dealer.deal([x for x in items if todo(x)])


class Dealer:
    """The jobs a counter shared by the ranks hands this rank, phase after phase (runtime.schedule: dynamic).

    One counter serves the whole run, created before the first phase, so that no phase starts with a
    collective (the other ranks start on candidates while rank 0 answers the base model).
    Every rank deals every phase the same list, and draws until it gets a value past the list's end, so a
    phase of L jobs uses exactly L + size values and the next phase's values start there on every rank.
    Phases must be separated by a collective (a rung's allgather), so that no rank draws the next phase's
    values while another still draws this one's."""

    def __init__(self, counter, size: int):
        self.counter, self.size, self.start = counter, size, 0

    def deal(self, items: Sequence) -> Iterator:
        items, start = list(items), self.start
        self.start += len(items) + self.size
        return self._taken(items, start)

    def _taken(self, items: list, start: int) -> Iterator:
        while (t := self.counter.take() - start) < len(items):
            yield items[t]

    def close(self) -> None:
        """Collective: every rank, once its last phase is dealt."""
        self.counter.close()

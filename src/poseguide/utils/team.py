"""Work shared by the processes of one launch: who this process is, and what sharing needs.

Long one-off jobs whose result every process needs (the dataset scan, the latent cache) are split
so that each process does its share, instead of one process doing it all while the others wait
at a barrier (a 20-minute cache build is longer than a collective's time-out). A job is given a
:class:`Team`: ``rank`` and ``world`` pick its share, ``gather`` tells every process what every
process found (small Python objects: row verdicts, file names, checksums). :meth:`Team.run` is
the one way shared work meets: run this process's part, gather, and raise everywhere when any
part failed, so that no process is left waiting at a collective for one that has stopped; it is
also the barrier (after it, the files every process wrote exist). Files written by other processes
must be visible to this one: several nodes need a shared filesystem for the cache folder, as they
do for the run folder.

:data:`SOLO` (one process, no process group) is the default everywhere, so the CLI's
single-process commands and the tests need nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from poseguide.errors import UserError, classify, one_line

T = TypeVar("T")


def _alone(obj: Any) -> list[Any]:
    return [obj]


class SharedWorkError(UserError, RuntimeError):
    """Another process stopped its share of the work with an error a person can fix; that
    process shows the error itself, this one names the process and repeats the message."""


@dataclass(frozen=True)
class Team:
    """This process's place among ``world`` processes and the collectives they share."""

    rank: int = 0
    world: int = 1
    gather: Callable[[Any], list[Any]] = _alone  # obj -> every process's obj, in rank order

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's items: ``rank, rank + world, ...`` (shares differ by at most one)."""
        return list(items[self.rank :: self.world])

    def run(self, work: Callable[[], T]) -> list[T]:
        """Run this process's ``work`` and return every process's result, in rank order.

        When any process's work raised, every process raises, so none is left waiting at the
        next collective: the process that failed raises its own exception (its traceback), the
        others a :class:`SharedWorkError` with the first failed process's message when a person
        can fix it, else a ``RuntimeError`` pointing at that process's traceback.
        """
        try:
            result, failure = work(), None
        except Exception as err:  # reported to the other processes, then raised here
            result, failure = None, err
        why = None if failure is None else (classify(failure) == "user", one_line(failure))
        outcomes = self.gather((result, why))
        if failure is not None:
            raise failure
        failed = [(rank, why) for rank, (_, why) in enumerate(outcomes) if why is not None]
        if failed:
            rank, (user, message) = failed[0]
            where = f"process {rank} of {self.world}"
            if user:
                raise SharedWorkError(f"{where}: {message}")
            raise RuntimeError(f"{where} failed ({message}); its traceback is in its output")
        return [res for res, _ in outcomes]


SOLO = Team()


def team_of(state: Any) -> Team:
    """The team of an accelerate ``Accelerator`` or ``PartialState`` (:data:`SOLO` for one
    process). ``gather`` is accelerate's ``gather_object`` (pickled objects over the process
    group: gloo on CPUs, NCCL on GPUs)."""
    if state.num_processes == 1:
        return SOLO
    from accelerate.utils import gather_object

    def gather(obj: Any) -> list[Any]:
        return gather_object([obj])  # one entry per process, in rank order

    return Team(state.process_index, state.num_processes, gather)

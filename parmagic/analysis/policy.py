"""What may run where, as one table: the checks report facts about the body (what it reads,
changes, awaits, draws, holds), each backend declares what it does (backends/base.py), and
:data:`RULES` turns the two into a :class:`~parmagic.analysis.verdict.Verdict`: run; run in
the kernel, because ...; or refuse, because ... . Nothing else decides.

A rule names the kind of fact, the backends on which such a fact cannot end as the plain loop
does, and what is said there. Under ``auto`` (which chooses, and is no backend) a rule either
refuses too (what no backend runs as the plain loop), or gives auto's reason to keep the loop
in the kernel, or leaves it to auto's own choice (``None``: auto weighs it when it looks at
processes). The first rule that applies decides; rules are in the order a user should hear them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .. import errors
from ..backends import Backend, load_backend
from .hidden_effects import (
    ARGUMENT_CHANGED,
    CHANGED_READ,
    COROUTINE,
    LOOP_NAME,
    RANDOM,
    SHARED_FILE,
    SHARED_GENERATOR,
    TASK,
    UNORDERED,
    HiddenEffect,
)
from .verdict import RUN, Verdict

ITEM_ADVANCES = "item-advances"  # the body advances iterators the loop hands its items
THREAD_BOUND = "thread-bound"  # an object only the kernel's thread may use (sqlite3)

REFUSED = "refused"  # under auto as everywhere: no backend runs it as the plain loop


def _anywhere(backend: type[Backend]) -> bool:
    return True


def _in_workers(backend: type[Backend]) -> bool:
    return backend.copies_kernel_objects


def _not_plain(backend: type[Backend]) -> bool:
    return not backend.is_the_plain_loop


def _in_kernel_threads(backend: type[Backend]) -> bool:
    """Items run in threads of the kernel's process other than its own."""
    return not (backend.is_the_plain_loop or backend.copies_kernel_objects)


def _unseedable(backend: type[Backend]) -> bool:
    return not backend.seedable


@dataclass(frozen=True)
class Rule:
    fact: str  # the kind of fact (hidden_effects.py's kinds, and this module's)
    breaks: Callable[[type[Backend]], bool]  # the backends it cannot end as the plain loop on
    refusal: str  # a template of the fact's fields: place, line, what, name, function, backend
    under_auto: str | None = REFUSED  # or auto's reason to stay in the kernel (a template)
    # the options that accept the fact: "unordered", "seed" (given) or "no seed"
    excused_by: str | None = None

    def excused(self, unordered: bool, seed: int | None) -> bool:
        if self.excused_by == "unordered":
            return unordered
        if self.excused_by == "seed":  # --seed gives items streams of their own
            return seed is not None
        return self.excused_by == "no seed" and seed is None  # nothing to give streams to


# auto's reasons to keep the loop in the kernel (templates of a fact's fields)
NOT_AWAITED = "{place}{what}: it stays in the kernel"
COPIES_WOULD_NOT = "{place}{what}: copies in workers would not"
ONE_STREAM = "{place}{what}: serial keeps its stream"
ONE_FILE = "{place}every item writes to the file {what} opens: in item order"
IN_ORDER_ONLY = "{place}{what}, which only a serial run keeps in item order"
SAME_NUMBERS = "{place}{what}: a serial run keeps the plain loop's numbers"

RULES: tuple[Rule, ...] = (
    #    fact              breaks on           refused with                        under auto        excused by
    Rule(LOOP_NAME,        _anywhere,          errors.LOOP_NAME_AS_GLOBAL),
    Rule(CHANGED_READ,     _anywhere,          errors.CHANGED_READ_IN_FUNCTION),
    Rule(TASK,             _anywhere,          errors.TASK_IN_ITEM),
    Rule(COROUTINE,        _in_workers,        errors.COROUTINE_NOT_AWAITED,       NOT_AWAITED),
    Rule(ITEM_ADVANCES,    _in_workers,        errors.ITEM_OBJECT_CHANGED,         None),
    Rule(THREAD_BOUND,     _in_kernel_threads, errors.THREAD_BOUND,                errors.THREAD_BOUND_SHORT),
    Rule(ARGUMENT_CHANGED, _in_workers,        errors.ARGUMENT_CHANGED_IN_WORKER,  COPIES_WOULD_NOT, "unordered"),
    Rule(SHARED_GENERATOR, _not_plain,         errors.SHARED_GENERATOR,            ONE_STREAM),
    Rule(SHARED_FILE,      _not_plain,         errors.SHARED_FILE,                 ONE_FILE,      "unordered"),
    Rule(UNORDERED,        _not_plain,         errors.UNREPLAYABLE,                IN_ORDER_ONLY, "unordered"),
    Rule(RANDOM,           _not_plain,         errors.GLOBAL_RANDOM,               SAME_NUMBERS,  "seed"),
    Rule(RANDOM,           _unseedable,        errors.SEED_NEEDS_PROCESSES,        None,          "no seed"),
)  # fmt: skip


def verdict_for(
    facts: Sequence[HiddenEffect], backend: str, unordered: bool, seed: int | None
) -> Verdict:
    """What :data:`RULES` say of ``facts`` on ``backend`` (a backend's name, or ``auto``)."""
    kind = None if backend == "auto" else load_backend(backend)
    for rule in RULES:
        if rule.excused(unordered, seed) or (kind is not None and not rule.breaks(kind)):
            continue
        for fact in facts:
            if fact.kind != rule.fact:
                continue
            fields = {**fact.fields(), "backend": backend}
            if kind is not None or rule.under_auto == REFUSED:
                return Verdict(rule.refusal.format(**fields))
            if rule.under_auto is not None:
                return Verdict(in_the_kernel=rule.under_auto.format(**fields))
    return RUN

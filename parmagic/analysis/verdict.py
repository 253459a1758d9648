"""What the checks decide for a loop on one backend, in one shape: run it there; run it in the
kernel instead, and why (``auto``, which may choose the kernel); or refuse it, and why, before
anything runs. Every check answers with a :class:`Verdict`, and the first that does not say
"run" decides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ParmagicUsageError


@dataclass(frozen=True)
class Verdict:
    refused: str | None = None  # the sentence that refuses the loop (nothing has run)
    in_the_kernel: str | None = None  # auto: why the loop stays in the kernel

    def __bool__(self) -> bool:
        """Whether it says anything but "run"."""
        return bool(self.refused or self.in_the_kernel)

    def then(self, later: Callable[[], Verdict]) -> Verdict:
        """This verdict, or if it says "run", what the later check says."""
        return self if self else later()

    def raise_refusal(self) -> Verdict:
        """Raise the refusal (ParmagicUsageError); else this verdict."""
        if self.refused:
            raise ParmagicUsageError(self.refused)
        return self


RUN = Verdict()

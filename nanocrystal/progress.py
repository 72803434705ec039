"""Progress a person can read: a tqdm bar on a terminal; in a redirected log a plain line now and then, never `\r`."""
from __future__ import annotations

import multiprocessing
import sys
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def interactive() -> bool:
    """A person watches this process: stdout and stderr (where tqdm draws) are terminals, and it is not a worker
    process (the bars of parallel workers would overwrite each other on one line)."""
    return sys.stdout.isatty() and sys.stderr.isatty() and multiprocessing.parent_process() is None


class Progress:
    """`total` steps of `desc`, with a status (e.g. member, epoch, loss) after each update. With a bar (default: on a
    terminal) a tqdm bar that stays when done; without one, `log(line)` every `every` steps and at the last step, or
    nothing if there is no `log`."""

    def __init__(self, total: int, desc: str, log: Callable[[str], None] | None = None, every: int = 1,
                 unit: str = "it", bar: bool | None = None):
        self.total, self.desc, self.log, self.every, self.unit = total, desc, log, max(1, every), unit
        self.done = 0
        show = interactive() if bar is None else bar
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=True, mininterval=0.5, file=sys.stderr) if show \
            else None

    def update(self, steps: int = 1, **status) -> None:
        """`steps` more done; `status` is shown as `name value` pairs (floats with 4 significant digits)."""
        before, self.done = self.done, self.done + steps
        text = ", ".join(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
                         for name, value in status.items())
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(steps)
        elif self.log is not None and (self.done // self.every > before // self.every or self.done >= self.total):
            self.log(f"{self.desc}: {self.done}/{self.total} {self.unit}" + (f", {text}" if text else ""))
        if self.done >= self.total:
            self.close()

    def iterate(self, items: Iterable[T]) -> Iterator[T]:
        """The items, one step after each."""
        for item in items:
            yield item
            self.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

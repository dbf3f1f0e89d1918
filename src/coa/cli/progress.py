"""A live line per call on stderr while a strategy runs."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from coa.session import Progress
from coa.task import Call


class CallPrinter:
    """Observer that shows a spinner for the running call and a line for each finished one."""

    def __init__(self, console: Console, verbose: bool = False) -> None:
        self.console = console
        self.verbose = verbose
        self.status = console.status("starting", spinner="dots")
        self.calls: list[Call] = []  # every finished call, in order

    def __enter__(self) -> CallPrinter:
        self.status.start()
        return self

    def __exit__(self, *exc) -> None:
        self.status.stop()

    def __call__(self, event: Progress) -> None:
        label = f"{event.role} {event.index + 1}/{event.total}"
        call = event.call
        if call is None:
            self.status.update(f"{label} running")
            return
        self.calls.append(call)
        output = " ".join(call.output.split())
        cached = f" ({call.cached_tokens:,} cached)" if call.cached_tokens else ""
        line = f"[bold]{label:<12}[/] {call.prompt_tokens:>6,}{cached} → {call.completion_tokens:<5,} tokens {call.seconds:6.1f}s"
        if self.verbose:  # the output in full, then the CU passed on where the strategy made one of it
            self.console.print(line)
            self.console.print(escape(call.output.strip()), style="dim")
            if call.cu is not None and call.cu.strip() != call.output.strip():
                self.console.print(f"[bold]CU[/] {escape(call.cu.strip()) or '(empty)'}")
        else:
            self.console.print(f"{line}  [dim]{escape(output)}[/]", no_wrap=True, overflow="ellipsis", crop=True)

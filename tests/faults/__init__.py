"""Fault injection: kill the CLI at exact system calls and check what a user would notice.

``strace``: the recipe (the strace command line, its pitfalls), a faulted run, its log.
``runner``: the real CLI against one state directory, plainly or under strace.
``observe``: what is really there (processes, disk images, taps, console logs).
``invariants``: what a user must never notice after a fault, checked over a state directory.
``scenarios``: the operations, their setup and follow-ups, kill points, one scenario.
"""

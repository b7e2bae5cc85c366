"""The demo's task: a decorated function, served by `python manage.py tarefa_worker`."""

import tarefa


def _fib_pair(n: int) -> tuple[int, int]:
    """(F(n), F(n+1)) by fast doubling."""
    if n == 0:
        return 0, 1
    a, b = _fib_pair(n // 2)
    c = a * (2 * b - a)
    d = a * a + b * b
    return (d, c + d) if n % 2 else (c, d)


@tarefa.task(max_attempts=3, timeout=120)
def fib_digits(n: int) -> str:
    """F(n), exactly, as a decimal string; reports progress while it works."""
    context = tarefa.current_context()
    context.progress(0.1, f"computing F({n})")
    digits = str(_fib_pair(n)[0])
    context.progress(0.9, f"{len(digits)} digits")
    return digits

"""
Command-line flags, one rule for every entry point: a count is a whole number in its range, any other number is
finite and in its range, both checked where argparse parses the flag; a bad flag is one `error:` line naming it
(argparse's own message is a usage block) and exit status 1, before any work.

    parser = flags.parser(__doc__, prog="python -m evals")
    parser.add_argument("--limit", type=flags.count(at_least=1))
    parser.add_argument("--temperature", type=flags.number(at_least=0))
    parser.add_argument("--top-p", type=flags.number(above=0, at_most=1))
"""
import argparse
import math
import sys


def parser(description: str, prog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser whose errors are one line: `error: argument --lr: must be above 0, got nan`."""
    result = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    result.error = lambda message: sys.exit(f"error: {message}")
    return result


def count(at_least: int = 1, at_most: int | None = None):
    """A whole number in [at_least, at_most]: the flags that count things (steps, items, tokens, seeds)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < at_least or (at_most is not None and value > at_most):
            bound = f"at least {at_least}" if at_most is None else f"from {at_least} to {at_most}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value
    return parse


def number(above: float | None = None, at_least: float | None = None, below: float | None = None,
           at_most: float | None = None):
    """A finite number within the given bounds (NaN and infinity are never in range)."""
    bounds = [(above, "above", lambda v, b: v > b), (at_least, "at least", lambda v, b: v >= b),
              (below, "below", lambda v, b: v < b), (at_most, "at most", lambda v, b: v <= b)]
    wanted = " and ".join(f"{name} {bound:g}" for bound, name, _ in bounds if bound is not None)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or not all(holds(value, bound) for bound, _, holds in bounds if bound is not None):
            raise argparse.ArgumentTypeError(f"must be finite{' and ' + wanted if wanted else ''}, got {text}")
        return value
    return parse

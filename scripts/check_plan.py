"""CI guard: fail when a ``scripts/plan.py`` run no longer plans well enough.

    python scripts/plan.py env=reach goal=image | tee plan.out
    python scripts/check_plan.py plan.out                      # or: ... | python scripts/check_plan.py -

Reads the run's JSON line (the last line of the file or of stdin) and exits 1 with one line per failed
check when the agent's success rate is below ``--min-success`` (0.9) or the random baseline is not
clearly below it (the random baseline's 95% interval must lie below the agent's). Prints one JSON line
with the verdict either way.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from jepa_agent.utils import emit_json_line


def problems(result: dict[str, Any], min_success: float) -> list[str]:
    """What is wrong with a ``plan.py`` JSON line, one sentence each (empty when the run passes)."""
    rate, ci = result.get("success_rate"), result.get("success_ci95")
    if rate is None or ci is None:
        return ["the run has no success rate (a goal image file has no true goal: run goal=image)"]
    found = []
    if rate < min_success:
        found.append(f"success_rate={rate:.3f} is below {min_success} ({result.get('episodes')} episodes)")
    random_rate, random_ci = result.get("random_success_rate"), result.get("random_success_ci95")
    if random_rate is None or random_ci is None:
        found.append("the run has no random baseline to compare with (run it with baselines=true)")
    elif not random_ci[1] < ci[0]:
        found.append(
            f"the random baseline is not clearly below the agent: random {random_rate:.3f} "
            f"(95% CI up to {random_ci[1]:.3f}) against the agent's {rate:.3f} (95% CI from {ci[0]:.3f})"
        )
    return found


def last_json_line(text: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("no output to check: expected plan.py's JSON line")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as e:
        raise ValueError(f"the last line is not plan.py's JSON line ({e}): {lines[-1][:200]!r}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", help="a file holding plan.py's stdout, or - for stdin")
    p.add_argument("--min-success", type=float, default=0.9, help="lowest success rate (any step) accepted")
    args = p.parse_args(argv)
    try:
        text = sys.stdin.read() if args.output == "-" else open(args.output).read()  # noqa: SIM115
        result = last_json_line(text)
    except (OSError, ValueError) as e:
        print(f"check_plan.py: error: {e}", file=sys.stderr)
        return 2
    found = problems(result, args.min_success)
    for line in found:
        print(f"check_plan.py: FAILED: {line}", file=sys.stderr)
    emit_json_line({"passed": not found, "problems": found, "success_rate": result.get("success_rate"),
                    "random_success_rate": result.get("random_success_rate")})  # fmt: skip
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

"""What the notebooks share for teaching. In an exercise a learner writes an answer in place of
`...` and the check cell below asserts it: `answered` keeps an unanswered exercise from failing the
notebook; `passed` prints the line that tests/test_exercises.py looks for after running the
solutions. `shown_config` is the one place where the smoke profile's label threshold is lowered."""

from __future__ import annotations

from typing import Any

#: what `passed` prints; tests/test_exercises.py looks for it in every check cell's output
PASS_MARK = "✓ exercise"


def answered(*answers: Any) -> bool:
    """True when every answer is filled in; while one is still `...`, say so and return False."""
    if any(answer is Ellipsis for answer in answers):
        print("Not answered yet: replace the `...` in the cell above, run it, then run this check.")
        return False
    return True


def passed(exercise: str, why: str = "") -> None:
    """Print that an exercise's check held (and, optionally, what the answer shows)."""
    print(f"{PASS_MARK} {exercise}: correct." + (f" {why}" if why else ""))


def shown_config(cfg: Any, profile: str) -> Any:
    """The config whose label maps a notebook draws: on smoke the score threshold drops to 0, since
    random weights score every class far below the preset's threshold and every label map would be
    background; on paper the preset's own."""
    if profile != "smoke":
        return cfg
    print(
        f"smoke: score_threshold {cfg.score_threshold} -> 0.0 for the label maps, so that random "
        "weights still label something (the paper profile keeps the preset's value)"
    )
    return cfg.replace(score_threshold=0.0)

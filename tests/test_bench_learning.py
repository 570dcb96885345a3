"""The learning benchmark's bookkeeping: which model was served when."""

from bench.learning import first_seen


def test_first_seen_knows_versions_the_evaluator_skipped() -> None:
    # A busy (or niced) evaluator skips versions; `--at 30` must still find the model
    # served at minute 30 from the trainer's progress lines, not only from rated rows.
    curve = [{"minutes": 1.0, "version": 0}, {"minutes": 6.4, "version": 1}, {"minutes": 6.6, "version": 1},
             {"minutes": 27.2, "version": 5}, {"minutes": 32.4, "version": 6}]
    assert first_seen(curve) == {1: 6.4, 5: 27.2, 6: 32.4}

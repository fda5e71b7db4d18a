"""benchmarks/results_table.py marks old-rule MFU rows and shows both peaks for new ones."""

from benchmarks import results_table


def test_old_rule_rows_are_marked_and_new_rows_show_both_peaks():
    old = dict(label="9.4m", step_ms=62.9, tokens_per_second=2.084e6, mfu=0.434, peak_memory_gib=32.7)
    new = dict(old, label="9.4m/new", mfu=0.34, mfu_measured_peak=0.34 * 989 / 790)
    lines = results_table.render([old, new]).splitlines()
    assert "| 43.4%† |" in lines[2] and "(42%†)" in lines[2]
    assert "| 34.0% / 42.6% |" in lines[3]

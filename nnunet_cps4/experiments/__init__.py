"""The experiment harness: benchmark protocol and report, test-set evaluation, pseudo-label analysis, cost, and
the table of method variants that the benchmark trains."""

from tests.fuzz.fuzzlib import COUNTS, summary_lines


def pytest_terminal_summary(terminalreporter):
    if COUNTS:
        terminalreporter.section("fuzz cases per reader")
        for line in summary_lines():
            terminalreporter.write_line(line)

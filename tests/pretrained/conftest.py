"""Register the ``slow`` marker used by the end-to-end preparation test (real wheels, about 1-2 minutes)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes over a minute on the 2-core CI machine")

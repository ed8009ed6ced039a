"""Registers the ``wheel`` marker: ``pytest -m 'not wheel'`` skips the wheel build."""


def pytest_configure(config) -> None:
    config.addinivalue_line(
        'markers', 'wheel: builds and installs kd_det\'s wheel in a throwaway venv (slow)')

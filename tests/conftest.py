"""Fixtures shared by the test files."""

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine every parallel
    call can wait milliseconds for the second core."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def render_dom(tmp_path):
    """A function: the DOM headless Chromium renders from an HTML file (after its load scripts ran).

    Skips the test when no Chromium is installed (Debian: apt-get install chromium; .ci/run
    installs it). ``flags`` are added to the command line, e.g. ``--window-size=1200,900``.
    """
    import shutil
    import subprocess

    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                    None)
    if chromium is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")

    def render(page, *flags: str) -> str:
        return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                               "--no-first-run", "--disable-background-networking", "--disable-component-update",
                               "--disable-sync", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                               "--virtual-time-budget=5000", *flags, "--dump-dom", page.as_uri()],
                              capture_output=True, text=True, timeout=120).stdout
    return render

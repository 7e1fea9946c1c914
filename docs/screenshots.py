"""The README's screenshots: the quickstart with its own parameters, run in a real JupyterLab by Debian's
chromium through Playwright (the same driver and checks as tests/test_browser.py), saved to
docs/tune-widget.png (the live %tune widget while it trains: it gives way to a picture when the run ends) and docs/comparison.png (the
before/after %evaluate report). About five minutes on two CPU cores.

    .venv/bin/python docs/screenshots.py
"""

import shutil
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "tests"))

import test_browser  # noqa: E402


def main() -> int:
    test_browser.WIDGET_VISIBLE = test_browser.ALL_DONE = 1200  # the whole quickstart, not the test's tiny one
    with tempfile.TemporaryDirectory() as tmp:
        test_browser.run_in_jupyterlab(Path(tmp), values={})
    for name in ("tune-widget.png", "comparison.png"):
        shutil.copy(test_browser.BUILD / name, DOCS / name)
        print(f"wrote docs/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

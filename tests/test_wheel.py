"""The package as users get it: a wheel, installed into a fresh virtual environment."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_has_one_import_name_and_loads_the_extension_in_a_fresh_venv(tmp_path):
    built = _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(ROOT)],
                 timeout=600)
    assert "absent from the `packages` configuration" not in built.stdout + built.stderr  # no page of warnings
    # the distribution's name is ours (`nbkit` on the index is another project); the import name is nbkit
    wheel = next((tmp_path / "dist").glob("nbkit_lm-*.whl"))
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "\nName: nbkit-lm\n" in metadata
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"nbkit"}
    assert "nbkit/magics/magics.py" in names
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "nbkit" / "samples").glob("*/*") if p.suffix in (".jsonl", ".md")}
    assert shipped and shipped <= set(names), sorted(shipped - set(names))  # every data set and its README
    assert not any(n.startswith(("magics/", "tests/")) for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    # the same pins as CI, plus the CPU torch build: an unpinned torch would be a 5 GB CUDA download
    constraints = tmp_path / "constraints.txt"
    constraints.write_text((ROOT / "constraints.txt").read_text() + "\ntorch==2.13.0\n")
    _run([str(py), "-m", "pip", "install", "-q", "-c", str(constraints), str(wheel)], timeout=900)
    code = (
        "import sys; from IPython.core.interactiveshell import InteractiveShell; ip = InteractiveShell.instance(); "
        "ip.run_line_magic('load_ext', 'nbkit'); import nbkit; "
        "assert 'torch' not in sys.modules; "
        "ip.run_cell_magic('prompt', 'p --choices a,b', 'Say {{ text }}'); "
        "ip.run_line_magic('nbkit', 'methods'); print(nbkit.__file__)"
    )
    out = _run([str(py), "-c", code], cwd=tmp_path).stdout
    assert "prompt 'p' defined" in out and "qlora" in out
    assert str(venv) in out.strip().splitlines()[-1]  # the installed copy, not the checkout

"""Notebook latency: ``%load_ext nbkit`` and ``%%prompt --run`` in a real Jupyter kernel.

A fresh IPython kernel (ipykernel, driven through jupyter_client as JupyterLab drives it) runs
the cells a user runs; each cell is timed from the execute request to its reply, output
displayed, as the user waits for it:

1. ``%load_ext nbkit`` (and whether that imported torch: it must not);
2. the first ``%%prompt intent --run`` (imports torch and transformers, loads the model,
   generates 3 rows);
3. the same cell again: the model is loaded now, so this is generation plus nbkit's own work;
4. the same generation called directly on the loaded model (``nbkit.inference.generate`` on the
   same token ids), timed inside the kernel: what cell 3 costs beyond it is nbkit's overhead.

Two kernels: a cold model cache (a fresh temporary ``NBKIT_CACHE``, so the first load converts
the GGUF file) and a warm one (the user's cache). Several rounds of the warm kernel; medians.

    .venv/bin/python bench/latency.py            # cold once, warm 3 times (~2 min)
    .venv/bin/python bench/latency.py --write    # ... and update bench/README.md
    .venv/bin/python bench/latency.py --quick    # warm once: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LINE = "intent --run --data sample:intent --limit 3 --max-new-tokens 16"
BODY = "Which team should handle this customer message: refund, delivery, account or other?\nMessage: {{ text }}\nTeam:"
PROMPT_CELL = f"%%prompt {LINE}\n{BODY}"
DIRECT_CELL = """
import time as _t, json as _j
import nbkit
from nbkit.encoding import encode_contexts
from nbkit.inference import generate as _generate
_m = nbkit.load_model("smollm2-135m")
_rows = list(nbkit.load_data("sample:intent", split="test"))[:3]
_ctx = encode_contexts(nbkit.Prompt(%r, name="intent"), _rows, _m.tokenizer)
_s = _t.perf_counter()
_generate(_m.model, _m.tokenizer, _ctx, max_new_tokens=16)
print("DIRECT", _j.dumps(_t.perf_counter() - _s))
""" % BODY
TARGETS = {"load_ext": 0.5, "overhead": 0.2}


def kernel_times(cache: str | None) -> dict:
    """Start a kernel (with ``NBKIT_CACHE=cache`` if given), run the cells, return their times."""
    from jupyter_client.manager import start_new_kernel

    env = {**os.environ, **common.ENV}
    if cache:
        env["NBKIT_CACHE"] = cache
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(common.ROOT))
    try:
        def run(code: str) -> tuple[float, str]:
            started = time.perf_counter()
            msg_id = kc.execute(code)
            out = []
            while True:
                msg = kc.get_iopub_msg(timeout=600)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    out.append(content["text"])
                elif kind == "error":
                    raise RuntimeError(f"cell failed: {content['ename']}: {content['evalue']}\n{code}")
                elif kind == "status" and content["execution_state"] == "idle":
                    return time.perf_counter() - started, "".join(out)

        run("pass")  # the kernel is up and answering
        empty, _ = run("pass")
        load_ext, _ = run("%load_ext nbkit")
        _, torch_loaded = run("import sys; print('torch' in sys.modules)")
        first, _ = run(PROMPT_CELL)
        second, _ = run(PROMPT_CELL)
        _, printed = run(DIRECT_CELL)
        direct = json.loads(printed.split("DIRECT", 1)[1])
        return {"empty_cell": empty, "load_ext": load_ext, "torch_on_load_ext": torch_loaded.strip() == "True",
                "first_prompt": first, "second_prompt": second, "generation": direct,
                "overhead": second - direct}
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def kernel_run(cache: str | None) -> dict:
    """:func:`kernel_times`, with the share of the cores other processes took meanwhile."""
    before, started = common._cpu_seconds(), time.monotonic()
    times = kernel_times(cache)
    times["others_cpu"] = common._others_share(before, common._cpu_seconds(), time.monotonic() - started)
    return times


def render(cold: dict | None, warm: dict, rounds: int, quick: bool) -> str:
    def verdict(key, value):
        return f"< {TARGETS[key]:g} s: {'met' if value < TARGETS[key] else 'MISSED'}"

    lines = ["| cell | cold model cache | warm model cache | target |", "|---|---:|---:|---|"]
    c = cold or {}

    def cell(name, key, target=None):
        left = f"{c[key]:.2f} s" if key in c else "–"
        lines.append(f"| {name} | {left} | {warm[key]:.2f} s | {target or '–'} |")

    cell("`%load_ext nbkit`", "load_ext", verdict("load_ext", warm["load_ext"]))
    cell("first `%%prompt --run` (3 rows)", "first_prompt")
    cell("second `%%prompt --run`, same cell", "second_prompt")
    cell("… of which generation (same call on the loaded model)", "generation")
    cell("… nbkit's own time beyond generation", "overhead", verdict("overhead", warm["overhead"]))
    torch = "yes (a bug)" if warm["torch_on_load_ext"] else "no"

    def disturbed(cold):
        return f", {cold['others_cpu']:.0%} during the cold one" if cold else ""

    return "\n".join(lines) + (
        common.caption(quick, f"A fresh ipykernel per column, driven through jupyter_client; a cell's time runs from the "
        f"execute request to the kernel going idle (an empty cell: {warm['empty_cell'] * 1000:.0f} ms). Cell: "
        f"`%%prompt {LINE}`. Does `%load_ext nbkit` import torch: {torch}. Warm: median of {rounds} kernel(s) "
        f"(other processes took {warm['others_cpu']:.0%} of the cores meanwhile{disturbed(cold)}); "
        f"cold: one kernel with a fresh `NBKIT_CACHE` (the GGUF is converted on the first load)."))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="warm kernels; the table shows medians")
    parser.add_argument("--quick", action="store_true", help="one warm kernel: does it run?")
    parser.add_argument("--write", action="store_true", help="update bench/README.md")
    args = parser.parse_args()
    cold = None
    if not args.quick:
        with tempfile.TemporaryDirectory() as cache:
            cold = kernel_run(cache)
        print(f"cold: {json.dumps(cold)}", file=sys.stderr, flush=True)
    rounds = 1 if args.quick else args.rounds
    warms = []
    for _ in range(rounds):
        warms.append(kernel_run(None))
        print(f"warm: {json.dumps(warms[-1])}", file=sys.stderr, flush=True)
    calm, _ = common.quiet(warms)
    warm = {k: (common.median([w[k] for w in calm]) if not isinstance(calm[0][k], bool) else calm[0][k])
            for k in calm[0]}
    text = render(cold, warm, rounds, args.quick)
    common.publish(text, args.quick, args.write, "latency-table", "latency", {"cold": cold, "warm": warms})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The magics through a real IPython shell, and through a real Jupyter kernel."""

import subprocess
import sys

import pytest
from IPython.core.error import UsageError

from nbkit.errors import ConfigError, TemplateError, UnknownNameError
from nbkit.session import current

PROMPTS = current().prompts  # the session's registry (one dict for the whole test session)


INTENT = "Which team should handle this message?\nMessage: {{ text }}\nTeam:"


def test_load_ext_does_not_import_torch():
    code = ("import sys, time; from IPython.testing.globalipapp import start_ipython; ip = start_ipython(); "
            "t = time.monotonic(); ip.run_line_magic('load_ext', 'nbkit'); dt = time.monotonic() - t; "
            "print('torch' in sys.modules, 'transformers' in sys.modules, dt)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["False", "False"]


def test_prompt_keeps_jinja_braces_and_registers(ip):
    ip.run_cell_magic("prompt", 'intent --target "{{ label }}" --choices refund,delivery,account,other -o p', INTENT)
    prompt = PROMPTS["intent"]
    assert prompt.target == "{{ label }}" and prompt.template == INTENT.strip()
    assert prompt.choices == ["refund", "delivery", "account", "other"]
    assert ip.user_ns["p"] is prompt


def test_dollar_variables_expand_but_braces_do_not(ip):
    ip.user_ns["labels"] = "yes,no"
    ip.run_cell_magic("prompt", 'yn --choices $labels --target "{{ answer }}"', "Q: {{ q }}")
    assert PROMPTS["yn"].choices == ["yes", "no"] and PROMPTS["yn"].target == "{{ answer }}"


def test_bad_flags_raise_usage_error(ip):
    with pytest.raises(UsageError):
        ip.run_line_magic("tune", "--prompt x --data sample:intent --epochs many")
    with pytest.raises(UsageError):
        ip.run_line_magic("evaluate", "--frobnicate")
    with pytest.raises(UsageError):
        ip.run_line_magic("tune", "--data sample:intent")  # --prompt is required


def test_user_mistakes_are_short_errors(ip):
    ip.run_cell_magic("prompt", "typo --choices a,b", "Message: {{ txt }}")
    with pytest.raises(UnknownNameError, match="intent, preference, qa, quiz, search, sentiment"):
        ip.run_line_magic("evaluate", "--prompt typo --data sample:nope")
    with pytest.raises(TemplateError, match="txt"):
        ip.run_line_magic("evaluate", "--prompt typo --data sample:intent")
    with pytest.raises(ConfigError, match="`lr`"):
        ip.run_line_magic("tune", "--prompt typo --data sample:intent --lr 0")
    with pytest.raises(UnknownNameError, match="available: typo"):
        ip.run_line_magic("tune", "--prompt nope --data sample:intent")
    assert TemplateError("x")._render_traceback_() == ["TemplateError: x"]


def test_help_and_listing(ip, capsys):
    ip.run_cell_magic("prompt", "intent --choices a,b", INTENT)
    capsys.readouterr()
    ip.run_line_magic("nbkit", "")
    out = capsys.readouterr().out
    assert "prompts:" in out and "intent" in out and "runs:" in out and "models loaded:" in out
    ip.run_line_magic("nbkit", "help")
    assert "%tune" in capsys.readouterr().out
    ip.run_line_magic("nbkit", "methods")
    assert "qlora" in capsys.readouterr().out


def test_nbkit_power_says_how_many_test_rows_tell_two_accuracies_apart(ip, capsys):
    from IPython.core.error import UsageError

    ip.run_line_magic("nbkit", "power 0.800 0.9")
    out = capsys.readouterr().out
    assert out.startswith("199 test rows per system") and "[0.70, 0.87]" in out  # Wilson, 64 of 80
    assert "tell 0.800 from 0.9 apart" in out  # the accuracies as typed
    for bad in ("power 0.8", "power 0.8 0.8", "power 0.8 high", "power 0.8 1.5"):
        with pytest.raises(UsageError, match="usage: %nbkit power"):
            ip.run_line_magic("nbkit", bad)
    with pytest.raises(UsageError, match="login openai"):
        ip.run_line_magic("nbkit", "login claude")


def test_tune_help_lists_options(ip):
    doc = ip.find_line_magic("tune").__doc__
    for option in ("--method", "--epochs", "--lr", "--r", "--resume", "--precision", "-o"):
        assert option in doc
    # `%tune?` opens with what it does and an example, then the usage block (not a bare `::` and 20 lines)
    assert doc.startswith("Fine-tune a model") and doc.index("Example::") < doc.index("Usage::") < doc.index("--lr")
    for name, kind in (("prompt", "cell"), ("evaluate", "line"), ("nbkit", "line")):
        assert not ip.magics_manager.magics[kind][name].__doc__.startswith("::")


def test_chat_cell_and_run_table(ip):
    result = ip.run_cell_magic("prompt", "hello --run --max-new-tokens 12", "What is the capital of France?")
    assert "Paris" in repr(result)
    ip.run_cell_magic("prompt", 'intent --target "{{ label }}" --choices refund,delivery,account,other', INTENT)
    table = ip.run_cell_magic("prompt", "intent --run --data sample:intent --limit 2 -o g", INTENT)
    assert list(table.frame.columns) == ["input", "output", "expected"] and len(table.frame) == 2
    assert ip.user_ns["g"] is table and "<table>" in table._repr_html_()


def test_evaluate_returns_a_report_frame(ip):
    ip.run_cell_magic("prompt", 'intent --target "{{ label }}" --choices refund,delivery,account,other', INTENT)
    report = ip.run_line_magic("evaluate", "--prompt intent --data sample:intent --limit 8 -o r")
    assert ip.user_ns["r"] is report
    assert list(report.frame.index) == ["intent"]
    assert {"accuracy", "f1", "n"} <= set(report.frame.columns) and report.frame.loc["intent", "n"] == 8
    assert "nbkit-chart" in report._repr_html_()


def test_real_kernel_loads_extension_without_torch():
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        def run(code):
            outputs = []
            reply = kc.execute_interactive(code, timeout=120, output_hook=lambda m: outputs.append(m))
            text = "".join(m["content"].get("text", "") or str(m["content"].get("data", {}).get("text/plain", ""))
                           for m in outputs if m["msg_type"] in ("stream", "execute_result"))
            return reply["content"], text

        status, _ = run("%load_ext nbkit")
        assert status["status"] == "ok"
        _, text = run("import sys; print('torch' in sys.modules)")
        assert text.strip() == "False"
        status, text = run('%%prompt k --target "{{ label }}"\nSay {{ text }}')
        assert status["status"] == "ok" and "defined" in text
        status, _ = run("%evaluate --prompt nope --data sample:intent")
        assert status["status"] == "error" and status["ename"] == "UnknownNameError"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_tune_method_flags_reach_the_method_and_wrong_ones_are_named(ip, monkeypatch):
    from nbkit import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    ip.run_cell_magic("prompt", 'pt --target "{{ label }}" --choices refund,delivery,account,other', INTENT)
    with pytest.raises(ConfigError, match="`r` is not an option of method 'prompt-tuning'.*virtual_tokens"):
        ip.run_line_magic("tune", "--prompt pt --data sample:intent --method prompt-tuning --r 8")
    with pytest.raises(ConfigError, match="encoder"):
        ip.run_line_magic("tune", "--prompt pt --data sample:intent --method p-tuning --encoder gru")
    with pytest.raises(ConfigError, match="patience"):
        ip.run_line_magic("tune", "--prompt pt --data sample:intent --patience 2")
    with pytest.raises(ConfigError, match="'valid' is not a split"):
        ip.run_line_magic("tune", "--prompt pt --data sample:intent --dev valid")


def test_nbkit_methods_lists_every_method_with_its_options(ip, capsys):
    ip.run_line_magic("nbkit", "methods")
    out = capsys.readouterr().out
    for name in ("lora", "qlora", "dora", "ia3", "prompt-tuning", "p-tuning", "prefix-tuning", "full"):
        assert f"\n{name} " in "\n" + out
    assert "--virtual-tokens" in out and "--r (8)" in out


def test_repeated_prompt_and_data_make_a_multi_task_tune(ip, monkeypatch):
    from nbkit import models, training

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    ip.run_cell_magic("prompt", 'ma --target "{{ label }}" --choices refund,delivery,account,other', INTENT)
    ip.run_cell_magic("prompt", 'mb --target "{{ label }}" --choices positive,negative', "Review: {{ text }}")
    with pytest.raises(ConfigError, match="one weight per task \\(2\\)"):
        ip.run_line_magic("tune", "--prompt ma --data sample:intent --prompt mb --data sample:sentiment --weights 1,2,3")
    with pytest.raises(UsageError, match="--weights"):
        ip.run_line_magic("tune", "--prompt ma --data sample:intent --prompt mb --data sample:sentiment --weights 1,x")
    calls = []
    monkeypatch.setattr(training, "tune", lambda prompt, data, **kw: calls.append((prompt, data, kw["weights"])))
    ip.run_line_magic("tune", "--prompt ma --data sample:intent --prompt mb --data sample:sentiment --weights 1,2")
    ip.run_line_magic("tune", "--prompt ma --data sample:intent")
    assert calls == [(["ma", "mb"], ["sample:intent", "sample:sentiment"], [1.0, 2.0]),
                     ("ma", "sample:intent", None)]

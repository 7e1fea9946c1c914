"""The %tune widget and the progress choice, without a browser."""

import base64

import pytest

from nbkit import events


def _begin(**kw):
    base = dict(run_name="r", run_path="/tmp/r", model="m", method="lora", total_steps=4, epochs=1.0,
                examples=32, trainable_parameters=10, total_parameters=100)
    return events.Begin(**{**base, **kw})


def _step(i, loss):
    return events.Step(step=i, total_steps=4, epoch=i / 4, loss=loss, learning_rate=1e-4,
                       tokens_per_second=123.0, elapsed=float(i), eta=float(4 - i))


@pytest.mark.parametrize("status, style", [("completed", "success"), ("failed", "danger"), ("interrupted", "warning")])
def test_widget_follows_the_run_and_shows_how_it_ended(status, style):
    from nbkit.magics.widgets import TuneWidget

    shown = []
    w = TuneWidget(display=lambda obj, **kw: shown.append(obj))
    w.on_begin(_begin(truncated=2))
    assert shown == [w.box] and "nbkit-tune-widget" in w.box._dom_classes
    assert w.bar.max == 4 and "2 truncated" in w.status.value
    for i, loss in enumerate([3.0, 2.0, 1.0, 0.5], start=1):
        w.on_step(_step(i, loss))
    assert w.bar.value == 4
    assert all(s in w.status.value for s in ("step 4/4", "epoch 1.00", "loss 0.5000", "123 tok/s", "ETA"))
    assert "<polyline" in w.curve.value and "4 steps" in w.curve.value
    w.on_end(events.End(status=status, elapsed=4.0, steps=4, metrics={"train_loss": 0.5},
                        error="boom" if status == "failed" else None))
    assert w.bar.bar_style == style and status in w.status.value
    if status == "failed":
        assert "boom" in w.status.value
    # the static picture a saved notebook keeps where the widget does not render (GitHub, after a restart)
    assert len(shown) == 2 and shown[1]["text/plain"] == f"r: {status}, 4 steps, loss 0.5000, 4s" + (
        "; error: boom" if status == "failed" else "")
    assert base64.b64decode(shown[1]["image/png"]).startswith(b"\x89PNG")


class _Handle:
    """What IPython's ``display(obj, display_id=True)`` returns: a handle whose ``update`` replaces the output."""

    def __init__(self, shown):
        self.shown = shown

    def update(self, obj, **kw):
        self.shown[-1] = obj


def test_the_widget_gives_way_to_one_picture_and_a_line_of_text_when_the_run_ends():
    """A saved notebook keeps the run's static form in the widget's place: one loss curve (not a dead widget
    beside a second curve) and a line a reader of an untrusted notebook, GitHub or nbval sees as text."""
    from nbkit.magics.widgets import TuneWidget

    shown = []

    def display(obj, display_id=False, **kw):
        shown.append(obj)
        return _Handle(shown) if display_id else None

    w = TuneWidget(display=display)
    w.on_begin(_begin())
    assert shown == [w.box]
    for i, loss in enumerate([3.0, 2.0, 1.0, 0.34], start=1):
        w.on_step(_step(i, loss))
    w.on_end(events.End(status="completed", elapsed=25.5, steps=4, metrics={"train_loss": 0.34}))
    assert len(shown) == 1 and shown[0]["text/plain"] == "r: completed, 4 steps, loss 0.3400, 26s"
    assert base64.b64decode(shown[0]["image/png"]).startswith(b"\x89PNG")

    short = TuneWidget(display=display)  # one step, nothing to draw: the line alone
    short.on_begin(_begin(run_name="one"))
    short.on_step(_step(1, 2.0))
    short.on_end(events.End(status="interrupted", elapsed=1.0, steps=1, metrics={}))
    assert shown[-1] == {"text/plain": "one: interrupted, 1 step, loss 2.0000, 1s"}


def test_a_loop_that_counts_no_tokens_shows_no_tokens_per_second():
    from nbkit.magics.widgets import TuneWidget

    w = TuneWidget()
    w.on_begin(_begin())
    w.on_step(events.Step(step=1, total_steps=4, epoch=0.25, loss=1.0, learning_rate=1e-4, tokens_per_second=0.0,
                          elapsed=1.0, eta=3.0))
    assert "tok/s" not in w.status.value and "step 1/4" in w.status.value  # encoder loops: no "0 tok/s"


def test_the_static_curve_shows_the_dev_metric_too():
    from nbkit.magics.widgets import TuneWidget, loss_curve_png

    shown = []
    w = TuneWidget(display=lambda obj, **kw: shown.append(obj))
    w.on_begin(_begin())
    for i, loss in enumerate([3.0, 2.0, 1.0, 0.5], start=1):
        w.on_step(_step(i, loss))
        if i % 2 == 0:
            w.on_evaluate(_evaluation(i, 0.25 * i, True))
    w.on_end(events.End(status="completed", elapsed=4.0, steps=4, metrics={"train_loss": 0.5}))
    assert w.dev_values == [(2, 0.5), (4, 1.0)]
    with_dev = base64.b64decode(shown[-1]["image/png"])
    assert with_dev != loss_curve_png(w.losses, title="r (completed)")  # the dev axis is drawn


def test_plain_progress_prints_a_few_lines(capsys):
    p = events.PlainProgress(lines=4)
    p.on_begin(_begin(total_steps=100, truncated=3))
    for i in range(1, 101):
        p.on_step(events.Step(step=i, total_steps=100, epoch=i / 100, loss=1.0, learning_rate=1e-4,
                              tokens_per_second=100.0, elapsed=i, eta=100 - i))
    p.on_end(events.End(status="completed", elapsed=100.0, steps=100))
    lines = capsys.readouterr().out.strip().splitlines()
    assert 5 <= len(lines) <= 8, lines
    assert "3 example(s)" in lines[1] and "step 100/100" in lines[-2] and "tune completed" in lines[-1]


def test_progress_mode():
    from nbkit.magics.progress import progress_mode

    assert progress_mode("widget") == "widget"
    assert progress_mode("auto") == "plain"  # NBKIT_PROGRESS=plain in the tests; pytest is headless anyway


def test_loss_is_on_the_completion_only(smol, intent_prompt):
    from nbkit.encoding import training_example

    row = {"text": "Where is my parcel?", "label": "delivery"}
    ex, cut = training_example(intent_prompt, row, smol.tokenizer, max_length=256)
    labelled = [t for t, l in zip(ex["input_ids"], ex["labels"]) if l != -100]
    assert not cut and smol.tokenizer.decode(labelled) == "delivery<|im_end|>"
    assert ex["labels"][: -len(labelled)] == [-100] * (len(ex["input_ids"]) - len(labelled))
    short, cut = training_example(intent_prompt, row, smol.tokenizer, max_length=20)
    assert cut and len(short["input_ids"]) == 20
    assert smol.tokenizer.decode([t for t, l in zip(short["input_ids"], short["labels"]) if l != -100]) == "delivery<|im_end|>"


def test_offline_hub_specs_fail_clearly():
    import nbkit
    from nbkit.errors import DataError, NbkitError

    with pytest.raises(NbkitError, match="could not load model"):
        nbkit.load_model("some-org/some-model-that-is-not-cached")
    with pytest.raises(DataError, match="network"):
        nbkit.load_data("hf:some-org/some-dataset")


def _evaluation(step, value, best):
    samples = [{"input": "Message: <b>refund</b> me\nTeam:", "output": "refund", "expected": "refund"}]
    return events.Evaluation(step=step, total_steps=4, metric="accuracy", value=value, loss=0.4, best=best,
                             samples=samples)


def test_widget_shows_the_dev_metric_samples_and_a_memory_warning():
    from nbkit.magics.widgets import TuneWidget

    w = TuneWidget()
    w.on_begin(_begin(dev_examples=12, memory="~30.0 GiB estimated on cuda of 16.0 GiB available",
                      memory_advice=["--method qlora", "--gradient-checkpointing"]))
    assert "may not fit" in w.status.value and "--method qlora" in w.status.value
    w.on_evaluate(_evaluation(2, 0.75, True))
    assert "dev accuracy 0.7500 (best so far)" in w.dev.value and "nbkit-samples" in w.dev.value
    assert "&lt;b&gt;refund&lt;/b&gt;" in w.dev.value  # model text is escaped, never rendered as HTML
    w.on_evaluate(_evaluation(4, 0.5, False))
    assert "step 4: dev accuracy 0.5000" in w.dev.value and "best" not in w.dev.value


def test_plain_progress_prints_evaluations_and_notes(capsys):
    p = events.PlainProgress()
    p.on_begin(_begin(dev_examples=12, memory="~1.00 GiB estimated on cpu", memory_advice=["--batch-size 4"]))
    p.on_evaluate(_evaluation(2, 0.75, True))
    p.on_note("interrupt: stopping after this step")
    out = capsys.readouterr().out
    assert "memory: ~1.00 GiB" in out and "may not fit; try --batch-size 4" in out
    assert "evaluating on 12 held-out examples" in out
    assert "eval at step 2: dev accuracy 0.7500  (best so far)" in out and "-> 'refund' (expected 'refund')" in out
    assert "interrupt: stopping" in out

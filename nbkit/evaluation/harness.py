"""A prompt and its data as an lm-evaluation-harness task: the same evaluation, run by the peer.

``lm_eval_task`` renders every row the way ``%evaluate`` scores it (the context with its shots
and chat markup, each choice as it follows the context) and writes a multiple-choice task YAML
and its JSONL, so ``lm_eval --include_path FOLDER --tasks nbkit_NAME`` scores the very text nbkit
scores: on a served run (``--model local-completions``) or on the weights (``--model hf``).
``tests/test_serve.py`` checks that both give %evaluate's answer on every row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..config import DEFAULT_MODEL
from ..errors import ConfigError
from ..models import load_tokenizer
from ..prompts import Prompt
from ..session import get_prompt
from .targets import rows_of


def task_name(prompt: Prompt) -> str:
    """The lm-eval task name :func:`lm_eval_task` gives ``prompt``: ``nbkit_`` and its name, letters and digits."""
    return "nbkit_" + "".join(c if c.isalnum() else "_" for c in prompt.name)


def lm_eval_task(prompt: Prompt | str, data: Any, folder, *, split: str = "test", limit: int | None = None,
                 model: str = DEFAULT_MODEL, namespace: Mapping[str, Any] | None = None) -> Path:
    """Write ``prompt`` over ``data`` as the lm-eval task ``nbkit_<prompt name>`` into ``folder``.

    Args:
        prompt: a prompt with ``choices`` (or its name).
        data: the data spec, as for ``%evaluate``.
        folder: where the task's YAML and JSONL go (created); lm-eval's ``--include_path``.
        split, limit: the rows, as for ``%evaluate``.
        model: whose tokenizer renders the chat markup (only the tokenizer is loaded).

    Returns:
        ``folder``.
    """
    prompt = get_prompt(prompt)
    if not prompt.choices:
        raise ConfigError("choices", f"prompt {prompt.name!r} has no choices: an lm-eval multiple-choice task "
                          "scores a fixed set of answers")
    rows, train_rows, _ = rows_of(data, split, limit, namespace)
    tokenizer = load_tokenizer(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = task_name(prompt)
    docs = folder / f"{name}.jsonl"
    choices = [prompt.completion(c, tokenizer) for c in prompt.choices]
    with open(docs, "w") as f:
        for row, shots in zip(rows, prompt.shots_for(rows, train_rows)):
            gold = prompt.render_target(row)
            if gold not in prompt.choices:
                raise ConfigError("target", f"a row's target {gold!r} is not one of the choices {prompt.choices}")
            f.write(json.dumps({"context": prompt.format(row, tokenizer, shots), "choices": choices,
                                "gold": prompt.choices.index(gold)}) + "\n")
    # the completion already carries its separator (a space for plain prompts): no target_delimiter
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(docs))}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{context}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: gold\ntarget_delimiter: ''\n"
        "metric_list:\n  - metric: acc\n")
    return folder

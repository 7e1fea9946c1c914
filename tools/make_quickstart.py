"""Write notebooks/00_quickstart.ipynb (sources only; outputs come from running it).

Run: .venv/bin/python tools/make_quickstart.py && make notebooks
"""

import re

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

# the methods table as bench/methods.py --write last left it in the README
METHODS_TABLE = re.search(r"<!-- methods-table -->\n.*?<!-- /methods-table -->", open("README.md").read(), re.S).group(0)

cells = [
    new_markdown_cell(
        "# nbkit quickstart: prompt, measure, tune, compare\n\n"
        "A 135M-parameter chat model routes customer-support messages to a team. We write a prompt, "
        "measure it zero-shot, fine-tune a LoRA adapter for a minute or two on 184 labelled messages, "
        "and measure again on 80 messages the adapter never saw. Everything runs offline on a CPU.\n\n"
        "Run it as a job with other settings: `nbkit run notebooks/00_quickstart.ipynb -p method qlora -p epochs 3`."
    ),
    new_code_cell(
        'model = "smollm2-135m"  # base model: the embedded SmolLM2-135M-Instruct, a local directory or a hub id\n'
        'data = "sample:intent"  # data: sample:NAME, a .csv/.jsonl/.json/.parquet file, hf:ID or a variable name\n'
        'method = "lora"  # tuning method: lora (full-precision base) or qlora (4-bit NF4 base)\n'
        "epochs = 2  # passes over the training split\n"
        "limit = 80  # test rows to score (the intent test split has 80)",
        metadata={"tags": ["parameters"]},
    ),
    new_code_cell("%load_ext nbkit"),
    new_markdown_cell(
        "## 1. A prompt\n\n`%%prompt` registers a Jinja2 template under a name. `--target` is what the model "
        "should answer, `--choices` the label words. `$name` in a magic line is the notebook variable; "
        "`{{ }}` is left to Jinja."
    ),
    new_code_cell(
        '%%prompt intent --target "{{ label }}" --choices refund,delivery,account,other\n'
        "Which team should handle this customer message? Answer refund, delivery, account or other.\n"
        "Message: {{ text }}\n"
        "Team:"
    ),
    new_markdown_cell("`--run` tries it on a few rows: what does the model say on its own?"),
    new_code_cell(
        '%%prompt intent --target "{{ label }}" --choices refund,delivery,account,other --run --data $data --model $model --limit 3 --max-new-tokens 8\n'
        "Which team should handle this customer message? Answer refund, delivery, account or other.\n"
        "Message: {{ text }}\n"
        "Team:"
    ),
    new_markdown_cell(
        "## 2. Measure it zero-shot\n\nWith `--choices`, evaluation scores each label word by its "
        "log-likelihood after the prompt, in batches, and reports accuracy and macro-F1."
    ),
    new_code_cell("%evaluate --prompt intent --data $data --model $model --limit $limit -o before"),
    new_markdown_cell(
        "## 3. Tune\n\nLoRA on every linear layer; the loss covers only the answer tokens. "
        "In JupyterLab a live widget shows the loss curve; under papermill a few plain lines."
    ),
    new_code_cell(
        "%tune --prompt intent --data $data --model $model --method $method --epochs $epochs "
        "--name quickstart --overwrite -o run"
    ),
    new_markdown_cell(
        "## 4. Compare\n\nThe prompt alone and the prompt with the tuned adapter, side by side, "
        "on the same test rows. The adapter is swapped onto the loaded base model, not reloaded."
    ),
    new_code_cell("%evaluate --prompt intent --run run --data $data --limit $limit -o comparison"),
    new_code_cell("comparison.frame.round(3)"),
    new_markdown_cell(
        "## 5. Which method?\n\n`--method` picks how the model adapts: weight adapters (`lora`, `qlora`, `dora`, "
        "`ia3`), learned prompts (`prompt-tuning`, `p-tuning`, `prefix-tuning`) or every weight (`full`); "
        "`%nbkit methods` lists their options. Quality against compute, measured on this task by "
        "`bench/methods.py` (not run here: it takes half an hour):\n\n" + METHODS_TABLE + "\n\n"
        "One adapter can also learn several tasks at once, each with its weight in the loss and its own loss "
        "logged: `%tune --prompt intent --data sample:intent --prompt sentiment --data sample:sentiment "
        "--weights 2,1`."
    ),
]

nb = new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
})
nbformat.write(nb, "notebooks/00_quickstart.ipynb")
print("wrote notebooks/00_quickstart.ipynb")

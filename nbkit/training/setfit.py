"""The SetFit recipe (``--method setfit``, the default of ``--task classification``).

Stage one tunes the whole sentence encoder in the plain loop on pairs of training inputs made
by the ``setfit`` package's sampler: sentence-transformers' ``CosineSimilarityLoss`` pulls
same-label pairs to cosine 1 and pushes different-label pairs to 0 (SetFit's loss and
learning rate). Stage two, at save time, fits the package's logistic-regression head on the
tuned vectors of the training inputs; the run's ``adapter/`` is a ``SetFitModel``
(``SetFitModel.from_pretrained`` loads it). The head's log-loss on its own training rows is
recorded beside the contrastive loss, with a warning when it stays near chance.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from ..errors import ConfigError, MissingDependencyError, install_extra
from ..models import pick_device
from ..models.encoder import features, sentence_transformer
from ..runs import Run
from .loop import Loop


def setfit_pairs(texts: Sequence[str], labels: Sequence[int], iterations: int) -> list[tuple]:
    """(text, text, 1.0 | 0.0) pairs, ``iterations`` of each kind per text, drawn by SetFit's own sampler
    (which always draws the same pairs from the same rows; the run's seed orders them into batches)."""
    try:
        from setfit.sampler import ContrastiveDataset
    except ImportError:
        raise MissingDependencyError("setfit", "--method setfit (the default of --task classification)",
                                     install_extra("embed")) from None
    if len(set(labels)) < 2:
        raise ConfigError("data", "has one label only; a classifier needs rows of at least two")
    pairs = list(ContrastiveDataset(list(texts), list(labels), multilabel=False, num_iterations=iterations))
    return [(p["sentence_1"], p["sentence_2"], float(p["label"])) for p in pairs]


def train_setfit(run: Run, cfg, spec, options, source, texts: list[str], labels: list[int],
                 callbacks: Sequence = ()) -> Run:
    """Both stages on ``texts`` (already the encoder's inputs) and ``labels`` (indices of ``cfg.labels``)."""
    import torch
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss

    device = pick_device("auto")
    body = sentence_transformer(str(source), device, cfg.pooling)
    body.max_seq_length = cfg.max_length
    body = spec.build(body, options, None)
    loss_fn = CosineSimilarityLoss(body)
    examples = setfit_pairs(texts, labels, options.pairs_per_row(len(texts)))

    def loss_of(batch):
        columns = [features(body, [a for a, _, _ in batch], device), features(body, [b for _, b, _ in batch], device)]
        return loss_fn(columns, torch.tensor([y for *_, y in batch], device=device))

    head_facts: dict[str, Any] = {}
    loop = Loop(run, body, examples, loss_of, cfg, callbacks=callbacks, facts=head_facts,
                save=lambda r: _save(r, body, cfg, texts, labels, head_facts))
    return loop()


def _save(run: Run, body, cfg, texts: list[str], labels: list[int], facts: dict) -> None:
    """Stage two: the logistic-regression head on the tuned vectors; then the whole model, atomically."""
    import numpy as np
    from setfit import SetFitModel
    from sklearn.linear_model import LogisticRegression

    body.eval()
    model = SetFitModel(model_body=body, model_head=LogisticRegression(), labels=list(cfg.labels))
    model.fit(texts, labels, num_epochs=1, show_progress_bar=False)
    chance = math.log(len(cfg.labels))
    probabilities = np.asarray(model.predict_proba(texts, as_numpy=True))
    columns = {int(c): i for i, c in enumerate(model.model_head.classes_)}
    picked = [probabilities[r, columns[y]] for r, y in enumerate(labels)]
    head_loss = float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))
    predicted = np.asarray(model.model_head.classes_)[probabilities.argmax(axis=1)]  # the head's predict, unencoded
    facts.update(head_loss=round(head_loss, 4), chance_loss=round(chance, 4),
                 train_accuracy=round(float(np.mean(predicted == np.asarray(labels))), 4))
    warning = not_learning(head_loss, chance, "the head's")
    if warning:
        facts["warning"] = warning
    run.save_folder(lambda folder: model.save_pretrained(str(folder)))


def not_learning(loss: float, chance: float, whose: str = "the") -> str | None:
    """A warning when a classifier's training loss ended within 2% of chance (ln of the label count)."""
    if loss is None or not math.isfinite(loss) or loss < 0.98 * chance:
        return None
    return (f"did not learn: {whose} training loss {loss:.3f} is within 2% of chance ({chance:.3f}); its "
            "predictions are no better than a guess. Check the labels and inputs, or train longer (--epochs)")

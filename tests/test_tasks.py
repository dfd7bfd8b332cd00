"""Tasks as classes: each owns its parameters, its answers, its HTTP body and its Parquet columns;
embeddings are the classifier's pooled penultimate features, L2-normalised."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError

from deployments.config import AppArgs, ModelDeploymentConfig
from shared import ModelConfig, ModelWrapper
from shared.errors import InvalidParameter
from shared.tasks import TASKS, ClassifyTask, DetectTask, EmbedTask
from tests.images import small_jpeg

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("cat", "dog", "fish")
TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.mark.parametrize(
    "task, query, expected",
    [
        (ClassifyTask(LABELS), {}, {"top_k": 5}),
        (ClassifyTask(LABELS, top_k=3), {"top_k": "2"}, {"top_k": 2}),
        (DetectTask(LABELS, score_threshold=0.3), {}, {"score_threshold": 0.3}),
        (DetectTask(LABELS), {"score_threshold": "0.75"}, {"score_threshold": 0.75}),
        (EmbedTask(LABELS), {"top_k": "3"}, {}),  # nothing to set; other tasks' parameters are not its business
    ],
)
def test_each_task_parses_its_own_parameters(task, query, expected):
    assert task.params(query) == expected


@pytest.mark.parametrize(
    "task, query",
    [
        (ClassifyTask(LABELS), {"top_k": "0"}),
        (ClassifyTask(LABELS), {"top_k": "101"}),
        (ClassifyTask(LABELS), {"top_k": "many"}),
        (DetectTask(LABELS), {"score_threshold": "-0.1"}),
        (DetectTask(LABELS), {"score_threshold": "1.5"}),
        (DetectTask(LABELS), {"score_threshold": "high"}),
    ],
)
def test_bad_parameters_are_invalid_parameter_errors(task, query):
    with pytest.raises(InvalidParameter):
        task.params(query)


def test_only_classification_is_evaluated():
    assert [name for name, task in TASKS.items() if task.evaluable] == ["classify"]


@pytest.mark.parametrize(
    "task, answers, dim",
    [
        (ClassifyTask(LABELS), [[{"label": "dog", "index": 1, "score": 0.75}], None, []], None),
        (DetectTask(LABELS), [[{"box": [1.0, 2.0, 3.0, 4.0], "label": "cat", "index": 0, "score": 0.5}], None], None),
        (EmbedTask(LABELS), [[0.6, 0.8, 0.0], None], 3),
    ],
)
def test_columns_are_written_and_read_back_as_the_same_answers(task, answers, dim):
    table = pa.table(task.columns(answers, dim))
    assert table.schema == pa.schema(task.arrow_fields(dim))
    rows = table.to_pylist()
    assert [task.answer_from_row(row) for row in rows] == [
        pytest.approx(a) if a and task.name == "embed" else a for a in answers
    ]


def test_the_embedding_column_is_a_fixed_size_float32_vector():
    (field,) = EmbedTask(LABELS).arrow_fields(1280)
    assert field.type == pa.list_(pa.float32(), 1280)
    assert pa.types.is_fixed_size_list(field.type)


def penultimate_features(wrapper: ModelWrapper, classifier: ModelWrapper, data: bytes) -> torch.Tensor:
    """What feeds the classifier's last Linear layer, captured with a hook on the classifier."""
    captured = []
    head = [m for m in classifier.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    hook = head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    try:
        classifier.predict([classifier.load(data)])
    finally:
        hook.remove()
    return captured[0].flatten(1)


@pytest.mark.parametrize(
    "config",
    [
        {"name": "efficientnet_lite0"},
        {"name": "vit_b16", "weights": "random", "options": TINY_VIT},
    ],
)
def test_embeddings_are_the_classifiers_normalised_penultimate_features(config):
    torch.manual_seed(0)
    classifier = ModelWrapper(ModelConfig(**config))
    torch.manual_seed(0)
    embedder = ModelWrapper(ModelConfig(**config, task="embed"))
    if config.get("weights") == "random":  # same random weights in both
        embedder.model.load_state_dict(classifier.model.state_dict(), strict=False)
    data = small_jpeg("coffee")
    (embedding,) = embedder.predict_batch([embedder.load(data)])
    want = torch.nn.functional.normalize(penultimate_features(embedder, classifier, data), dim=1)[0]
    assert embedder.output_dim == len(embedding) == want.shape[0]
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(embedding, want.numpy(), atol=1e-5)


def test_a_detector_cannot_embed_and_a_classifier_cannot_detect():
    with pytest.raises(ValidationError, match="detect model; it cannot serve task 'embed'"):
        ModelConfig(name="fasterrcnn_v2", weights="random", task="embed")
    with pytest.raises(ValidationError, match="classify model; it cannot serve task 'detect'"):
        ModelConfig(task="detect")


def test_a_model_is_served_under_a_url_safe_name_and_may_be_served_twice():
    args = AppArgs.model_validate(
        {"models": [{"model": {"name": "efficientnet_lite0"}}, {"name": "lite0-embed", "model": {"task": "embed"}}]}
    )
    assert [m.served_name for m in args.enabled_models] == ["efficientnet_lite0", "lite0-embed"]
    with pytest.raises(ValidationError, match="served twice"):
        AppArgs.model_validate({"models": [{}, {"model": {"task": "embed"}}]})
    with pytest.raises(ValidationError, match="give this entry a name"):
        ModelDeploymentConfig(name="a/b")


def test_no_code_outside_the_task_classes_branches_on_a_task_name():
    """Adding a task is one class: nothing else may compare a task's name."""
    pattern = re.compile(
        r"""task(_name)?\s*[!=]=\s*["'](classify|detect|embed)["']|["'](classify|detect|embed)["']\s*[!=]="""
    )
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("shared", "deployments", "batch", "twinfer", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path.name != "tasks.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders


@pytest.mark.process  # a fresh Python
def test_the_backfill_imports_no_protocol_code():
    """The Open Inference Protocol's encodings live in deployments/v2, which the backfill never loads."""
    import subprocess
    import sys

    probe = "import sys, batch.cli, batch.pipeline; print(sorted(m for m in sys.modules if 'deployments' in m))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

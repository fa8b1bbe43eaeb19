"""Typed events through the real trainer (embedded log): what reaches the learner as positives,
weights and explicit negatives, and what the published popularity counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.event_log import SqliteEventLog
from contracts.events import DEFAULT_EVENT_WEIGHTS, EventWeights, InteractionEvent
from contracts.model_store import FileModelStore
from contracts.settings import Settings
from models.api import BlockData
from trainer.process import Trainer

EVENTS = [
    ("u1", "bike", "purchase"),
    ("u1", "helmet", "view"),
    ("u1", "lamp", "dislike"),
    ("u2", "bike", "impression"),  # shown, then clicked: a click, not a hard negative
    ("u2", "bike", "click"),
    ("u2", "lamp", "impression"),  # shown, never clicked: a hard negative
    ("u2", "helmet", "zap"),  # a type nobody listed: the default weight (1)
    ("u3", "helmet", None),
    ("u3", "bike", "like"),
    ("u3", "pump", "purchase"),
    ("u4", "pump", "view"),
    ("u4", "helmet", "view"),
]
# Plain views of other items, so that the per-user train/validation split keeps every item above.
FILLER = [(u, f"f{n}", "view") for u in ("u1", "u2", "u3", "u4") for n in range(8)]


def test_typed_events_reach_the_learner_as_weights_and_negatives(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, learner="als", base_block_size=len(EVENTS + FILLER), min_block_size=1
    )
    log = SqliteEventLog(settings.event_log_path)
    log.append(
        [
            InteractionEvent(user_id=u, item_id=i, type=kind, timestamp=1_000.0 + n)
            for n, (u, i, kind) in enumerate(EVENTS + FILLER)
        ]
    )
    log.close()
    trainer = Trainer(settings)
    seen: list[BlockData] = []
    learn = trainer.learner.learn_block
    trainer.learner.learn_block = lambda block: seen.append(block) or learn(block)  # type: ignore[method-assign]
    trainer.run(max_blocks=1)
    trainer.close()

    (block,) = seen
    user, item = trainer.users.ids.index, trainer.items.ids.index
    train = block.train
    learnt = {
        (trainer.users.ids[u], trainer.items.ids[i]): w
        for u, i, w in zip(
            train.users.tolist(), train.items.tolist(), train.weight_values().tolist(), strict=True
        )
    }
    expected = {
        ("u1", "bike"): 4.0,
        ("u1", "helmet"): 1.0,
        ("u2", "bike"): 1.0,
        ("u2", "helmet"): 1.0,
        ("u3", "helmet"): 1.0,
        ("u3", "bike"): 2.0,
        ("u3", "pump"): 4.0,
        ("u4", "pump"): 1.0,
        ("u4", "helmet"): 1.0,
    }
    # Every positive pair is in train or in the validation split, with its weight.
    valid = block.valid
    for u, i, w in zip(
        valid.users.tolist(), valid.items.tolist(), valid.weight_values().tolist(), strict=True
    ):
        learnt[(trainer.users.ids[u], trainer.items.ids[i])] = w
    assert {pair: w for pair, w in learnt.items() if not pair[1].startswith("f")} == expected
    negatives = {
        (trainer.users.ids[u], trainer.items.ids[i]): w
        for u, i, w in zip(
            block.negatives.users.tolist(),
            block.negatives.items.tolist(),
            block.negatives.weight_values().tolist(),
            strict=True,
        )
    }
    assert negatives == {("u1", "lamp"): 2.0, ("u2", "lamp"): 0.25}
    assert user("u1") >= 0 and item("lamp") >= 0  # a negative-only item still gets an id
    snapshot = FileModelStore(settings.model_store_dir).load()
    popularity = dict(zip(snapshot.item_ids, snapshot.item_popularity.tolist(), strict=True))
    mains = {item: count for item, count in popularity.items() if not item.startswith("f")}
    assert mains == {"bike": 3, "helmet": 4, "lamp": 0, "pump": 2}  # positive events only


def test_the_default_weights_are_documented_and_unknown_types_count_one() -> None:
    weights = EventWeights.parse(DEFAULT_EVENT_WEIGHTS)
    assert weights.of("purchase", None) == 4.0 and weights.of("dislike", None) < 0
    assert weights.of("never-heard-of", None) == 1.0 and weights.of(None, 2.5) == 2.5
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert DEFAULT_EVENT_WEIGHTS in readme


@pytest.mark.parametrize("bad", ["purchase", "purchase:inf", ":3", "a:1,b:x"])
def test_bad_event_weights_are_refused_naming_the_variable(bad: str) -> None:
    with pytest.raises(ValueError, match="CCD_EVENT_WEIGHTS"):
        Settings(event_weights=bad)

"""Replay: the quota and its seeded draw, reservoir sampling against hand-drawn outcomes, the buffer through
the method's hooks and its state, and one run end to end that checks what each task trained on."""

from __future__ import annotations

import pytest
import torch

import slao.harness
from slao.config import MethodConfig
from slao.errors import ConfigError
from slao.methods import METHODS, build_method
from slao.methods.replay import quota, quota_draw, reservoir_update, task_generator
from test_methods import SHAPES, FakeData, make, random_lora
from test_methods_e2e import one_thread, run_method  # noqa: F401 - one_thread: autouse, one intra-op thread


def test_quota():
    assert quota(0.02, 16) == 1  # 0.32 -> at least 1
    assert quota(0.02, 100) == 2 and quota(0.02, 125) == 3  # 2.5 rounds up
    assert quota(0.25, 10) == 3 and quota(5, 100) == 5 and quota(5.0, 3) == 3  # a count, at most n


def test_quota_draw_is_the_seeded_permutation():
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(7 * 1_000_003 + 3))[:4].tolist()
    assert quota_draw(10, 4, task_generator(7, 3)) == sorted(expected)
    assert quota_draw(10, 4, task_generator(7, 3)) != quota_draw(10, 4, task_generator(7, 4))


def test_reservoir_update_hand_drawn():
    slots: list = []
    gen = torch.Generator().manual_seed(11)
    seen = reservoir_update(slots, 0, ["a", "b", "c", "d", "e"], 2, gen)
    assert seen == 5 and len(slots) == 2
    # Independently: a and b fill the reservoir; the item at position p draws j in 0..p, and enters slot j
    # when j < 2.
    draw = torch.Generator().manual_seed(11)
    expected = ["a", "b"]
    for p, item in enumerate(["c", "d", "e"], 2):
        j = int(torch.randint(0, p + 1, (1,), generator=draw))
        if j < 2:
            expected[j] = item
    assert slots == expected
    # A second call continues the stream where the first left it.
    more = reservoir_update(slots, seen, ["f"], 2, gen)
    j = int(torch.randint(0, 6, (1,), generator=draw))
    if j < 2:
        expected[j] = "f"
    assert more == 6 and slots == expected


def drive_replay(m, tasks: int):
    """Run the hooks over ``tasks`` tasks; return per task (init, extra examples, deployed)."""
    gen = torch.Generator().manual_seed(0)
    record = []
    for i in range(1, tasks + 1):
        init = m.init_lora(i, random_lora(gen, zero_b=True), FakeData(i))
        extra = m.extra_examples(i)
        trained = {n: (A + 1.0, B + 1.0) for n, (A, B) in init.items()}
        record.append((init, extra, m.after_task(i, trained, FakeData(i)), trained))
    return record


def test_quota_buffer_holds_the_seeded_quota_of_every_earlier_task():
    m = make("replay", replay__per_task=3, replay__seed=5)
    record = drive_replay(m, 3)
    for i, (init, extra, deployed, trained) in enumerate(record, 1):
        expected = [FakeData(t).task_examples(t)[k] for t in range(1, i)
                    for k in sorted(torch.randperm(10, generator=torch.Generator().manual_seed(5 * 1_000_003 + t))
                                    [:3].tolist())]
        assert extra == expected and len(extra) == 3 * (i - 1)
        assert deployed is not trained and all(torch.equal(deployed[n][0], trained[n][0]) for n in trained)
        if i > 1:  # sequential: each task from the previous task's LoRA
            assert all(torch.equal(init[n][1], record[i - 2][3][n][1]) for n in init)
    assert m.sources[:3] == [(1, k) for k in sorted(torch.randperm(10, generator=task_generator(5, 1))[:3].tolist())]
    assert m.stats()["buffer_examples"] == 9
    # The state holds the buffer as integers; a fresh method restores the same examples from it.
    state = m.state()
    assert state["buffer/ids"].dtype == torch.int32 and state["buffer/source"].shape == (9, 2)
    assert m.stats()["buffer_bytes"] == sum(t.numel() * t.element_size() for k, t in state.items()
                                            if k.startswith("buffer/"))
    fresh = make("replay", replay__per_task=3, replay__seed=5)
    fresh.load_state(state)
    assert fresh.extra_examples(4) == m.extra_examples(4) and fresh.sources == m.sources


def test_default_quota_is_two_percent_and_at_least_one():
    m = make("replay")
    drive_replay(m, 2)
    assert [s[0] for s in m.sources] == [1, 2]  # 2% of 10 examples: 1 from each finished task
    assert METHODS["replay"].data_free is False and METHODS["replay"].grows is True


def test_reservoir_mode_keeps_a_uniform_sample_of_fixed_size():
    cfg = MethodConfig(name="replay")
    cfg.replay.mode, cfg.replay.per_task = "reservoir", 2
    m = build_method(cfg, SHAPES, 2, num_tasks=4)
    record = drive_replay(m, 3)
    assert m.capacity == 2 * 3  # (T - 1) x task 1's quota
    assert [len(r[1]) for r in record] == [0, 6, 6] and m.seen == 30
    # Independently: the stream of every example of tasks 1..3 in order through algorithm R.
    expected: list = []
    seen = 0
    for t in (1, 2, 3):
        seen = reservoir_update(expected, seen, [(t, k) for k in range(10)], 6, task_generator(0, t))
    assert m.sources == expected
    assert m.extra_examples(4) == [FakeData(t).task_examples(t)[k] for t, k in expected]
    fresh = build_method(cfg, SHAPES, 2, num_tasks=4)
    fresh.load_state(m.state())
    assert (fresh.seen, fresh.capacity, fresh.sources) == (30, 6, m.sources)


@pytest.mark.parametrize("key,bad", [("mode", "ring"), ("per_task", 0), ("per_task", 1.5), ("per_task", -0.1)])
def test_replay_bad_settings(key, bad):
    with pytest.raises(ConfigError, match=f"method.replay.{key}"):
        make("replay", **{f"replay__{key}": bad})


def test_replay_end_to_end_trains_on_the_task_and_the_buffer(tmp_path, monkeypatch):
    calls, own = [], []
    train_task, after_task = slao.harness.train_task, METHODS["replay"].after_task

    def rec_train(acc, adapter, method, i, name, examples, *args, **kw):
        calls.append(list(examples))
        return train_task(acc, adapter, method, i, name, examples, *args, **kw)

    def rec_after(self, i, trained, data=None):
        own.append(list(data.task_examples(i)))
        return after_task(self, i, trained, data)

    monkeypatch.setattr(slao.harness, "train_task", rec_train)
    monkeypatch.setattr(METHODS["replay"], "after_task", rec_after)
    run_method(tmp_path, monkeypatch, "replay", "--set", "method.replay.per_task=0.25")
    assert len(calls) == len(own) == 4
    for i, examples in enumerate(calls, 1):
        buffer = [own[t - 1][k] for t in range(1, i)
                  for k in sorted(torch.randperm(16, generator=task_generator(0, t))[:4].tolist())]
        assert examples == own[i - 1] + buffer  # the task's own 16 examples, then 4 of each earlier task

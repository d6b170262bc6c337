"""The methods' arithmetic as pure functions on hand-computed tensors, and each method's hooks and state
driven by hand (no model): SLAO's init and merge and its ablations, O-LoRA's penalty, MagMax's merge."""

from __future__ import annotations

import math

import pytest
import torch

from slao.config import MethodConfig
from slao.errors import ConfigError
from slao.methods import METHODS, build_method, get_method
from slao.methods.lora_ops import factorize, stack_loras
from slao.methods.magmax import max_magnitude_merge
from slao.methods.o_lora import orthogonality_penalty
from slao.methods.per_task_lora import folder_name
from slao.methods.slao import merge, orthogonal_init, schedule_weight

R = 2
SHAPES = {"l0.q_proj": (6, 5), "l0.v_proj": (4, 5)}  # name -> (out, in)
LORA_BYTES = 4 * sum(R * n_in + n_out * R for n_out, n_in in SHAPES.values())  # one fp32 LoRA


def make(name: str, **opts):
    cfg = MethodConfig(name=name)
    for key, value in opts.items():
        section, field = key.split("__")
        setattr(getattr(cfg, section), field, value)
    return build_method(cfg, SHAPES, R)


def random_lora(gen: torch.Generator, rank: int = R, zero_b: bool = False) -> dict:
    return {n: (torch.randn(rank, i, generator=gen),
                torch.zeros(o, rank) if zero_b else torch.randn(o, rank, generator=gen))
            for n, (o, i) in SHAPES.items()}


def fake_training(init: dict, frozen: int, gen: torch.Generator) -> dict:
    """What the loop does: every rank component moves except the first ``frozen``."""
    out = {}
    for n, (A, B) in init.items():
        A2, B2 = A + torch.randn(A.shape, generator=gen), B + torch.randn(B.shape, generator=gen)
        A2[:frozen], B2[:, :frozen] = A[:frozen], B[:, :frozen]
        out[n] = (A2, B2)
    return out


class FakeData:
    """A stand-in for the harness's TaskData, without a model: each task's training examples are token-id
    lists, and a task's layer inputs are random vectors drawn from the task's own seed (so the same task
    gives the same statistics, and different tasks different ones)."""

    def __init__(self, i: int, examples_per_task: int = 10, tokens: int = 12):
        self.i = self.task_index = i
        self.per_task, self.tokens = examples_per_task, tokens

    scaling = 4.0

    def base_weights(self):
        gen = torch.Generator().manual_seed(99)
        return {name: torch.randn(n_out, n_in, generator=gen) for name, (n_out, n_in) in SHAPES.items()}

    def task_examples(self, t: int):
        from slao.encoding import Encoded

        return [Encoded([t, k, 1], [k % 3 + 4]) for k in range(self.per_task)]

    def examples(self, which: str = "current"):
        tasks = {"current": [self.i], "seen": range(1, self.i + 1), "previous": range(1, self.i)}[which]
        return [x for t in tasks for x in self.task_examples(t)]

    def layer_inputs(self, which: str = "current", max_examples=None, adapter=True, layers=None,
                     per_sequence_max=False):
        tasks = {"current": [self.i], "seen": range(1, self.i + 1), "previous": range(1, self.i)}[which]
        sums, count = {}, 0
        for t in tasks:
            gen = torch.Generator().manual_seed(1000 + t)
            for name, (_, n_in) in SHAPES.items():
                # low-rank inputs (2 directions a task), so subspaces of earlier tasks are not everything
                X = torch.randn(self.tokens, 2, generator=gen, dtype=torch.float64) @ torch.randn(
                    2, n_in, generator=gen, dtype=torch.float64)
                sums[name] = sums.get(name, 0) + X.T @ X
            count += self.tokens
        return sums, count


def drive(method, tasks: int, seed: int = 0):
    """Run the hooks over ``tasks`` tasks; return per task (init, trained, deployed, state bytes)."""
    gen = torch.Generator().manual_seed(seed)
    record = []
    for i in range(1, tasks + 1):
        data = FakeData(i)
        init = method.init_lora(i, random_lora(gen, zero_b=True), data)
        trained = fake_training(init, method.frozen_rank(i), gen)
        deployed = method.after_task(i, trained, data)
        record.append((init, trained, deployed, method.state_bytes()))
    return record


# -- SLAO: orthogonal init ---------------------------------------------------------------------------
def test_orthogonal_init_rows_orthonormal_and_diag_r_positive():
    A = torch.randn(8, 40, generator=torch.Generator().manual_seed(1))
    A0 = orthogonal_init(A)
    assert A0.shape == A.shape
    assert torch.allclose(A0 @ A0.T, torch.eye(8), atol=1e-5)
    Rm = A0 @ A.T  # A^T = Q R with Q = A0^T, so R = A0 @ A^T: upper triangular, positive diagonal
    assert torch.allclose(Rm, torch.triu(Rm), atol=1e-4)
    assert (torch.diagonal(Rm) > 0).all()
    assert torch.allclose(A0.T @ Rm, A.T, atol=1e-4)


def test_orthogonal_init_hand_computed_2x3():
    # columns of A^T: a1 = (-3, 0, -4), a2 = 5 q1 + 2 (0.8, 0, -0.6); with diag(R) > 0: q1 = a1 / 5.
    A = torch.tensor([[-3.0, 0.0, -4.0], [-1.4, 0.0, -5.2]])
    expected = torch.tensor([[-0.6, 0.0, -0.8], [0.8, 0.0, -0.6]])
    assert torch.allclose(orthogonal_init(A), expected, atol=1e-6)
    assert torch.allclose(orthogonal_init(A) @ A.T, torch.tensor([[5.0, 5.0], [0.0, 2.0]]), atol=1e-5)


def test_orthogonal_init_zero_pivot_keeps_orthonormal_rows():
    A = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])  # rank 1: R[1, 1] = 0, its sign taken as +1
    A0 = orthogonal_init(A)
    assert torch.isfinite(A0).all()
    assert torch.allclose(A0 @ A0.T, torch.eye(2), atol=1e-6)
    assert torch.allclose(A0[0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(A0 @ A.T, torch.tensor([[1.0, 2.0], [0.0, 0.0]]), atol=1e-6)
    assert torch.allclose(orthogonal_init(torch.zeros(2, 3)) @ orthogonal_init(torch.zeros(2, 3)).T, torch.eye(2))


# -- SLAO: merge and schedule ------------------------------------------------------------------------
def test_merge_task_one_returns_fine_tuned_copies():
    A, B = torch.randn(2, 3), torch.randn(4, 2)
    A_m, B_m = merge(None, None, A, B, 1)
    assert torch.equal(A_m, A) and torch.equal(B_m, B)
    assert A_m.data_ptr() != A.data_ptr() and B_m.data_ptr() != B.data_ptr()


def test_merge_tasks_two_and_three_hand_computed():
    A1, A2, A3 = torch.tensor([[1.0]]), torch.tensor([[5.0]]), torch.tensor([[7.0]])
    B1, B2, B3 = torch.tensor([[2.0]]), torch.tensor([[4.0]]), torch.tensor([[0.0]])
    A_m, B_m = merge(None, None, A1, B1, 1)
    A_m, B_m = merge(A_m, B_m, A2, B2, 2)
    assert A_m.item() == 5.0
    assert B_m.item() == pytest.approx(2 + 2 / math.sqrt(2))  # 2 + (4 - 2) / sqrt(2)
    A_m, B_m = merge(A_m, B_m, A3, B3, 3)
    assert A_m.item() == 7.0
    assert B_m.item() == pytest.approx((2 + math.sqrt(2)) * (1 - 1 / math.sqrt(3)))


def test_merge_variants():
    Am, Bm, Af, Bf = (torch.tensor([[v]]) for v in (1.0, 2.0, 3.0, 6.0))
    A, B = merge(Am, Bm, Af, Bf, 4, a_rule="interpolate", b_rule="replace")
    assert A.item() == pytest.approx(1 + 0.5 * 2) and B.item() == 6.0  # lambda(4) = 1/2
    A, B = merge(Am, Bm, Af, Bf, 2, schedule=0.25)
    assert A.item() == 3.0 and B.item() == pytest.approx(2 + 0.25 * 4)


def test_schedule_inv_is_a_running_mean():
    assert [schedule_weight(i) for i in (1, 4)] == [1.0, 0.5]
    assert schedule_weight(3, "inv") == pytest.approx(1 / 3) and schedule_weight(5, 0.3) == 0.3
    values = [torch.tensor([[v]]) for v in (3.0, -1.0, 10.0, 4.0)]
    A_m = B_m = None
    for i, v in enumerate(values, 1):
        A_m, B_m = merge(A_m, B_m, v, v, i, schedule="inv", a_rule="interpolate")
    assert B_m.item() == pytest.approx(4.0) and A_m.item() == pytest.approx(4.0)  # mean of 3, -1, 10, 4
    with pytest.raises(ValueError):
        schedule_weight(0)


# -- SLAO: the ablation settings through the method's hooks ---------------------------------------------
def test_slao_default_inits_from_last_fine_tuned_and_merges():
    m = make("slao")
    (init1, t1, d1, _), (init2, t2, d2, _) = drive(m, 2)
    for n, (A, B) in t1.items():
        assert torch.equal(init2[n][0], orthogonal_init(A)) and torch.equal(init2[n][1], B)
        assert torch.equal(d1[n][0], A) and torch.equal(d1[n][1], B)
        assert torch.equal(d2[n][0], t2[n][0])
        assert torch.allclose(d2[n][1], B + (t2[n][1] - B) / math.sqrt(2))


@pytest.mark.parametrize("a_rule", ["replace", "interpolate"])
def test_slao_last_ft_init_differs_from_merged_init_from_task_three(a_rule):
    # After task 1 merged == last fine-tuned, so task 2 cannot tell the two inits apart; from task 3 on
    # the init must be orthogonal_init(A_ft,i-1) and B_ft,i-1 exactly, not the merged LoRA's.
    m = make("slao", slao__a_rule=a_rule)
    record = drive(m, 4)
    for i in (3, 4):
        init = record[i - 1][0]
        _, prev_ft, prev_merged, _ = record[i - 2]  # task i-1: (init, fine-tuned, merged, bytes)
        for n in SHAPES:
            A_ft, B_ft = prev_ft[n]
            A_m, B_m = prev_merged[n]
            assert torch.equal(init[n][0], orthogonal_init(A_ft)) and torch.equal(init[n][1], B_ft)
            assert not torch.equal(init[n][1], B_m)  # the merged B differs from the last fine-tuned one
            if a_rule == "interpolate":  # with A replaced, A_m == A_ft; interpolated, they differ too
                assert not torch.equal(init[n][0], orthogonal_init(A_m))


@pytest.mark.parametrize("init", ["merged", "random"])
def test_slao_init_settings(init):
    m = make("slao", slao__init=init)
    drive(m, 2)  # merged != last fine-tuned after task 2
    default = random_lora(torch.Generator().manual_seed(9), zero_b=True)
    got = m.init_lora(3, default)
    for n in SHAPES:
        if init == "random":
            assert got[n] is default[n] or torch.equal(got[n][0], default[n][0])
        else:
            A_m, B_m = m.merged[n]
            assert torch.equal(got[n][0], orthogonal_init(A_m)) and torch.equal(got[n][1], B_m)
            assert not torch.equal(got[n][1], m.last_ft[n][1])


def test_slao_rule_settings_change_the_merge():
    (_, t1, _, _), (_, t2, d2, _) = drive(make("slao", slao__b_rule="replace", slao__a_rule="interpolate"), 2)
    for n in SHAPES:
        assert torch.equal(d2[n][1], t2[n][1])  # B_m = B_ft
        assert torch.allclose(d2[n][0], t1[n][0] + (t2[n][0] - t1[n][0]) / math.sqrt(2))
    record = drive(make("slao", slao__schedule="inv", slao__a_rule="interpolate"), 3)
    for n in SHAPES:
        mean_b = sum(r[1][n][1] for r in record) / 3
        assert torch.allclose(record[-1][2][n][1], mean_b, atol=1e-6)


def test_slao_train_setting_and_bad_values():
    # Task 1 is ordinary LoRA fine-tuning under every setting (B starts at zero: with B frozen there,
    # A would get no gradient); from task 2 on only the named factor trains.
    for train in ("both", "a", "b"):
        assert make("slao", slao__train=train).trainable(1) == (True, True)
    for i in (2, 3):
        assert make("slao").trainable(i) == (True, True)
        assert make("slao", slao__train="a").trainable(i) == (True, False)
        assert make("slao", slao__train="b").trainable(i) == (False, True)
    for key, bad in (("init", "best"), ("a_rule", "mean"), ("b_rule", "x"), ("train", "ab"), ("schedule", "fast")):
        with pytest.raises(ConfigError, match=f"method.slao.{key}"):
            make("slao", **{f"slao__{key}": bad})


@pytest.mark.parametrize("value", [0, 0.0, -0.5, 1.5, "0", "-1", "1.0001", "nan", "inf"])
def test_slao_constant_schedule_outside_zero_one_is_refused(value):
    with pytest.raises(ConfigError, match=r"method\.slao\.schedule .*\(0, 1\]"):
        make("slao", slao__schedule=value)


@pytest.mark.parametrize("value", [1, 1.0, "0.25", 0.5, "1e-3", "inv", "inv-sqrt"])
def test_slao_schedule_accepted_values(value):
    make("slao", slao__schedule=value)


# -- baselines' hooks -----------------------------------------------------------------------------------
def test_registry_has_every_method_with_a_description():
    assert set(METHODS) >= {"slao", "seq-lora", "inc-lora", "o-lora", "magmax", "mtl", "per-task-lora"}
    assert all((cls.__doc__ or "").strip() for cls in METHODS.values())
    with pytest.raises(ConfigError, match="valid methods: .*seq-lora"):
        get_method("ewc")


def test_seq_lora_starts_each_task_from_the_previous_one():
    record = drive(make("seq-lora"), 3)
    for (_, prev, _, _), (init, _, _, _) in zip(record, record[1:], strict=False):
        assert all(torch.equal(init[n][0], prev[n][0]) and torch.equal(init[n][1], prev[n][1]) for n in SHAPES)
    assert all(torch.equal(r[2][n][1], r[1][n][1]) for r in record for n in SHAPES)  # no merge


@pytest.mark.parametrize("name", ["inc-lora", "o-lora"])
def test_stacked_methods_grow_by_one_frozen_lora(name):
    m = make(name)
    record = drive(m, 3)
    assert [m.frozen_rank(i) for i in (1, 2, 3)] == [0, R, 2 * R]
    for i, (init, trained, deployed, _) in enumerate(record):
        for n, (A, B) in trained.items():
            assert A.shape[0] == B.shape[1] == (i + 1) * R
            assert torch.equal(deployed[n][0], A)
            if i:  # the earlier slices are the previous task's LoRA, untouched
                prev_A, prev_B = record[i - 1][1][n]
                assert torch.equal(init[n][0][: i * R], prev_A) and torch.equal(A[: i * R], prev_A)
                assert torch.equal(B[:, : i * R], prev_B)
    stacked = stack_loras(record[0][1], record[1][1])
    assert stacked["l0.q_proj"][0].shape == (3 * R, 5)


def test_orthogonality_penalty():
    eye = torch.eye(4)
    assert orthogonality_penalty(eye[:2], eye[2:]).item() == 0.0
    A_old = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    A_new = torch.tensor([[1.0, -2.0, 5.0]])
    assert orthogonality_penalty(A_old, A_new).item() == 3.0  # |1| + |-2|
    assert orthogonality_penalty(torch.randn(3, 6), torch.randn(2, 6)).item() > 0


def test_o_lora_extra_loss_terms_and_gradients():
    m = make("o-lora")  # lambda1 = 0.5, lambda2 = 0
    assert m.extra_loss(1, {}) is None  # nothing to be orthogonal to
    A = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, -2.0, 5.0], [0.0, 0.0, 1.0]], requires_grad=True)
    B = torch.ones(2, 4, requires_grad=True)
    m.rank = 2
    loss = m.extra_loss(2, {"l": (A, B)})
    assert loss.item() == pytest.approx(0.5 * 3.0)
    loss.backward()
    assert torch.equal(A.grad[:2], torch.zeros(2, 3)) and A.grad[2:].abs().sum() > 0
    m2 = make("o-lora", o_lora__lambda1=0.0, o_lora__lambda2=0.1)
    m2.rank = 2
    # Frobenius norms of the new rows of A and new columns of B: sqrt(30) + sqrt(1) and sqrt(4)
    assert m2.extra_loss(2, {"l": (A, B)}).item() == pytest.approx(0.1 * (math.sqrt(31) + 2.0))
    assert make("o-lora", o_lora__lambda1=0.0).extra_loss(3, {"l": (A, B)}) is None
    with pytest.raises(ConfigError, match="method.o_lora.lambda2"):
        make("o-lora", o_lora__lambda2=-1.0)


def test_max_magnitude_merge_hand_computed():
    merged = torch.tensor([[1.0, -3.0], [0.5, 2.0]])
    update = torch.tensor([[-2.0, 1.0], [-0.5, -2.5]])
    expected = torch.tensor([[-2.0, -3.0], [0.5, -2.5]])  # ties keep the merged entry
    assert torch.equal(max_magnitude_merge(merged, update), expected)
    assert torch.equal(max_magnitude_merge(None, update), update)


def test_factorize_is_exact_and_padded():
    dense = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    A, B = factorize(dense, 6)
    assert A.shape == (6, 6) and B.shape == (4, 6)
    assert torch.allclose(B @ A, dense, atol=1e-5)
    assert torch.equal(A[4:], torch.zeros(2, 6)) and torch.equal(B[:, 4:], torch.zeros(4, 2))


@pytest.mark.parametrize("scale", [None, 1.0, 0.3])
def test_magmax_deploys_the_scaled_max_magnitude_merge(scale):
    m = make("magmax") if scale is None else make("magmax", magmax__scale=scale)
    factor = 0.5 if scale is None else scale  # the default is the authors' 0.5
    record = drive(m, 3)
    for i, (init, _, deployed, _) in enumerate(record):
        if i:
            assert torch.equal(init["l0.q_proj"][0], record[i - 1][1]["l0.q_proj"][0])  # sequential
        for n in SHAPES:
            expected = None
            for _, t, _, _ in record[: i + 1]:
                expected = max_magnitude_merge(expected, t[n][1] @ t[n][0])
            A, B = deployed[n]
            assert A.shape[0] == B.shape[1] == 5  # largest min(out, in) over the layers
            assert torch.allclose(B @ A, factor * expected, atol=1e-4)
    assert torch.allclose(m.merged[n], expected)  # the state kept is the unscaled merge


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), float("inf")])
def test_magmax_bad_scale_is_refused(bad):
    with pytest.raises(ConfigError, match="method.magmax.scale"):
        make("magmax", magmax__scale=bad)


def test_per_task_lora_evaluates_each_task_with_its_own_lora():
    m = make("per-task-lora")
    m.task_names = ("a", "b/c", "d")
    record = drive(m, 3)
    for j, (init, trained, _, _) in enumerate(record):
        assert torch.equal(init["l0.q_proj"][1], torch.zeros(6, R))  # each from default init
        assert torch.equal(m.eval_weights(j)["l0.q_proj"][0], trained["l0.q_proj"][0])
    exported = m.exports(record[-1][2])
    assert list(exported) == ["", "a", "b_c", "d"]  # root first: writing it replaces adapter/
    assert exported["a"] is m.loras[0]
    assert folder_name("..") != ".." and folder_name("x") == "x"


# -- state: what it holds, that it is the whole truth, and its size ----------------------------------------
GROWING = {"inc-lora", "o-lora", "per-task-lora"}
# The exact state after task 1 of the methods whose size is known here; any other method is held to its
# own ``grows`` flag (constant, or larger after every task) and to the round trip below.
FIRST_BYTES = {"slao": 2 * LORA_BYTES, "magmax": 4 * sum(o * i for o, i in SHAPES.values()) + LORA_BYTES,
               "seq-lora": LORA_BYTES, "mtl": LORA_BYTES, **{name: LORA_BYTES for name in GROWING}}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_state_size_and_round_trip(name):
    m = make(name)
    record = drive(m, 1 if m.multi_task else 3)
    sizes = [r[3] for r in record]
    if name in FIRST_BYTES:
        assert sizes[0] == FIRST_BYTES[name]
        assert (name in GROWING) == m.grows
    if name in GROWING:
        assert sizes == [sizes[0] * k for k in range(1, 4)]
    elif m.grows:
        assert all(b > a for a, b in zip(sizes, sizes[1:], strict=False)), sizes
    else:
        assert len(set(sizes)) == 1, sizes
    fresh = make(name)
    fresh.task_names = m.task_names
    fresh.load_state(m.state())
    assert fresh.state().keys() == m.state().keys()
    assert all(torch.equal(fresh.state()[k], v) for k, v in m.state().items())
    gen = torch.Generator().manual_seed(5)
    default = random_lora(gen, zero_b=True)
    i = len(record) + 1
    a, b = m.init_lora(i, default, FakeData(i)), fresh.init_lora(i, default, FakeData(i))
    assert all(torch.equal(a[n][0], b[n][0]) and torch.equal(a[n][1], b[n][1]) for n in SHAPES)

"""CorDA (knowledge-preserved mode): the decomposition against a hand-computed case, an SVD of W C computed
independently here, and PEFT's own CorDA; the init that leaves the model unchanged; the hooks driven by
hand; and the invariants of a run through the CLI."""

from __future__ import annotations

import dataclasses
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from slao.config import MethodConfig
from slao.methods import build_method
from slao.methods.corda import cancelling_pair, damped_covariance, kpm_lora
from test_methods_e2e import one_thread, run_method  # noqa: F401 - the fixture keeps the run on one thread

SHAPES = {"l0.q_proj": (6, 5), "l0.v_proj": (4, 5)}
R = 2
S = 4.0  # the adapter's scale alpha / r


def expected_smallest(W: torch.Tensor, C: torch.Tensor, rank: int) -> list[np.ndarray]:
    """Independently (numpy, float64): CorDA's damped covariance C' = C + 0.01 mean(diag C) I (one damping
    step suffices for a well-conditioned C, checked here), the SVD of W C', V = (Vh C'^-1)^T, and the
    ``rank`` components with the smallest singular values, each as its dense rank-1 term s_j u_j v_j^T."""
    Cn = C.numpy().astype(np.float64)
    fixed = Cn + 0.01 * np.mean(np.diag(Cn)) * np.eye(len(Cn))
    inverse = np.linalg.inv(fixed)
    assert np.linalg.norm(fixed @ inverse - np.eye(len(Cn))) < 0.05
    U, sv, Vh = np.linalg.svd(W.numpy().astype(np.float64) @ fixed, full_matrices=False)
    V = (Vh @ inverse).T
    k = len(sv)
    return [sv[j] * np.outer(U[:, j], V[:, j]) for j in range(k - rank, k)]


def spd(n: int, seed: int) -> torch.Tensor:
    X = torch.randn(3 * n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return X.T @ X


# -- the decomposition --------------------------------------------------------------------------------
def test_kpm_hand_computed():
    # C = I: C' = 1.01 I, W C' = diag(3.03, 2.02, 1.01), V = e_j / 1.01, so U S V^T = W and the smallest
    # component is W's third diagonal entry: s B0 A0 = diag(0, 0, 1); A0 = +-e3 sqrt(1.01 / s) / 1.01.
    W = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    A0, B0 = kpm_lora(W, torch.eye(3, dtype=torch.float64), 1, S)
    assert torch.allclose(S * B0 @ A0, torch.diag(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)), atol=1e-12)
    assert torch.allclose(A0.abs(), torch.tensor([[0.0, 0.0, (1.01 / S) ** 0.5 / 1.01]], dtype=torch.float64))
    assert torch.allclose(B0.abs(), torch.tensor([[0.0], [0.0], [(1.01 / S) ** 0.5]], dtype=torch.float64))


def test_kpm_factors_are_the_smallest_components_of_w_c():
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    C = spd(5, seed=2)
    A0, B0 = kpm_lora(W, C, R, S)
    terms = expected_smallest(W, C, R)
    for j in range(R):  # each factor pair is one component (the pairing is sign-free: u v^T = (-u)(-v)^T)
        assert np.allclose(S * np.outer(B0[:, j].numpy(), A0[j].numpy()), terms[j], atol=1e-10), j
    # B0's columns are u_j sqrt(S_j / s) with unit u_j, as in PEFT's corda_init (S_j: singular values of W C').
    Cn = C.numpy()
    fixed = Cn + 0.01 * np.mean(np.diag(Cn)) * np.eye(5)
    smallest = np.linalg.svd(W.numpy() @ fixed, compute_uv=False)[-R:]
    assert np.allclose(S * torch.linalg.vector_norm(B0, dim=0).numpy() ** 2, smallest, atol=1e-10)


def test_kpm_pads_layers_smaller_than_the_rank():
    A0, B0 = kpm_lora(torch.randn(2, 3, dtype=torch.float64), spd(3, 4), 3, S)
    assert A0.shape == (3, 3) and B0.shape == (2, 3)
    assert torch.equal(A0[2], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(B0[:, 2], torch.zeros(2, dtype=torch.float64))


def test_damping_doubles_until_the_inverse_is_accurate():
    fixed, inverse = damped_covariance(spd(4, 5))
    assert torch.dist(fixed @ inverse, torch.eye(4, dtype=torch.float64)) < 0.05
    eye, _ = damped_covariance(torch.zeros(3, 3))
    assert torch.equal(eye, torch.eye(3, dtype=torch.float64))  # no context: the plain SVD of W


def test_kpm_matches_peft_corda(tmp_path, monkeypatch):
    """PEFT's own CorDA (preprocess_corda + init_lora_weights="corda", kpm) on a small nn.Linear, given the
    same covariance through its covariance_file: the same components and the same residual weight."""
    try:
        import attr  # noqa: F401 - peft/tuners/lora/corda.py imports it; PEFT does not depend on attrs
    except ImportError:  # the one name it uses, with the same meaning for its plain field-only class
        monkeypatch.setitem(sys.modules, "attr", types.SimpleNamespace(dataclass=dataclasses.dataclass))
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import preprocess_corda

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 5, bias=False)

        def forward(self, x):
            return self.lin(x)

    torch.manual_seed(0)
    net = Net()
    W = net.lin.weight.detach().clone()
    C = spd(6, seed=7).float()
    torch.save({"lin": C}, tmp_path / "cov.pt")
    cfg = LoraConfig(r=R, lora_alpha=S * R, target_modules=["lin"], init_lora_weights="corda",
                     corda_config=CordaConfig(covariance_file=str(tmp_path / "cov.pt"), corda_method="kpm"))
    preprocess_corda(net, cfg)
    lin = get_peft_model(net, cfg).base_model.model.lin
    A, B = lin.lora_A["default"].weight.detach().double(), lin.lora_B["default"].weight.detach().double()
    A0, B0 = kpm_lora(W, C, R, S)
    for j in range(R):
        assert torch.allclose(torch.outer(B[:, j], A[j]), torch.outer(B0[:, j], A0[j]), atol=1e-5), j
    residual = lin.base_layer.weight.detach().double()  # PEFT keeps W - s B0 A0 in the base layer
    assert torch.allclose(residual, W.double() - S * B0 @ A0, atol=1e-5)


def test_covariance_matches_peft_corda(tmp_path, monkeypatch):
    """PEFT's own covariance collection (preprocess_corda, one sequence per forward call, as its hook
    assumes) on the tiny model equals ``layer_inputs(per_sequence_max=True)``, which CorDA uses: the scale of
    C sets how a component is split between A0 and B0, so it must be PEFT's and not a token sum."""
    try:
        import attr  # noqa: F401
    except ImportError:
        monkeypatch.setitem(sys.modules, "attr", types.SimpleNamespace(dataclass=dataclasses.dataclass))
    from peft import LoraConfig
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import preprocess_corda

    from slao.config import LoraSettings
    from slao.encoding import Encoded
    from slao.lora import LoraAdapter
    from slao.models import load_model
    from slao.taskdata import TaskData

    gen = torch.Generator().manual_seed(3)
    examples = [Encoded(torch.randint(5, 200, (n,), generator=gen).tolist(), [7, 8]) for n in (4, 11, 6)]
    plain, _ = load_model("tiny-random", seed=0)
    plain.eval()
    cov_file = tmp_path / "cov.pt"
    cfg = LoraConfig(r=R, target_modules=["q_proj", "v_proj"], init_lora_weights="corda",
                     corda_config=CordaConfig(covariance_file=str(cov_file), corda_method="kpm"))

    def run_model():
        with torch.no_grad():
            for e in examples:
                plain(input_ids=torch.tensor([e.prompt + e.answer]))

    preprocess_corda(plain, cfg, run_model=run_model)
    peft_covs = torch.load(cov_file, weights_only=True)  # written by PEFT in this test

    model, tok = load_model("tiny-random", seed=0)
    data = TaskData(LoraAdapter(model, LoraSettings()), torch.device("cpu"), [examples, examples], 2,
                    tok.pad_token_id, batch_size=2)
    ours, _ = data.layer_inputs("previous", adapter=False, per_sequence_max=True)
    assert len(peft_covs) == len(ours)
    for name, C in peft_covs.items():
        mine = next(v for n, v in ours.items() if n.endswith(name))
        assert torch.allclose(mine.float(), C.float(), rtol=1e-3, atol=1e-5), name


# -- the init and the hooks ---------------------------------------------------------------------------
class Data:
    """Task data with the base weights, the scale and fixed earlier-task covariances."""

    scaling = S

    def __init__(self, i: int, weights: dict[str, torch.Tensor]):
        self.i, self.weights = i, weights

    def base_weights(self):
        return self.weights

    def layer_inputs(self, which="current", max_examples=None, adapter=True, layers=None,
                     per_sequence_max=False):
        assert which == "previous" and per_sequence_max  # PEFT's covariance (tests/test_taskdata.py)
        return {n: spd(n_in, seed=10 + k) for k, (n, (_, n_in)) in enumerate(SHAPES.items())}, 60


def make(**opts):
    cfg = MethodConfig(name="corda")
    for key, value in opts.items():
        setattr(cfg.corda, key, value)
    return build_method(cfg, SHAPES, R, 3)


def random_lora(seed: int, rank: int = R) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {n: (torch.randn(rank, i, generator=gen), torch.randn(o, rank, generator=gen))
            for n, (o, i) in SHAPES.items()}


BASE = {n: torch.randn(o, i, generator=torch.Generator().manual_seed(20 + k))
        for k, (n, (o, i)) in enumerate(SHAPES.items())}


def test_cancelling_pair_is_zero_term_by_term():
    A0, B0 = torch.randn(2, 5), torch.randn(4, 2)
    A, B = cancelling_pair(A0, B0)
    assert torch.equal(A[:2], A[2:]) and torch.equal(B[:, :2], -B[:, 2:])
    assert torch.allclose(B @ A, torch.zeros(4, 5), atol=1e-6)


@pytest.mark.parametrize("weight", ["current", "base"])
def test_init_leaves_the_model_unchanged_and_trains_the_smallest_components(weight):
    m = make(weight=weight)
    default1 = random_lora(1)
    assert m.init_lora(1, default1, Data(1, BASE)) is default1  # task 1: PEFT's plain init
    assert m.frozen_rank(1) == 0 and m.trainable(2) == (True, True)
    trained1 = random_lora(2)
    m.after_task(1, trained1, Data(1, BASE))
    init = m.init_lora(2, random_lora(3), Data(2, BASE))
    assert m.frozen_rank(2) == 2 * R  # the first task's r components and the r frozen copies
    covs, _ = Data(2, BASE).layer_inputs("previous", per_sequence_max=True)
    for n, (A, B) in init.items():
        assert A.shape[0] == B.shape[1] == 3 * R
        old_A, old_B = trained1[n]
        assert torch.equal(A[:R], old_A) and torch.equal(B[:, :R], old_B)  # earlier LoRA untouched
        # delta W of the new components is zero: the frozen copy is the trainable pair with B negated.
        assert torch.equal(A[R : 2 * R], A[2 * R :]) and torch.equal(B[:, R : 2 * R], -B[:, 2 * R :])
        assert torch.allclose(B @ A, old_B @ old_A, atol=1e-5)
        # The trainable pair is the r smallest components of W C, W the weight the option names.
        W = BASE[n].double() + (S * old_B.double() @ old_A.double() if weight == "current" else 0)
        terms = expected_smallest(W, covs[n], R)
        A0, B0 = A[2 * R :].double(), B[:, 2 * R :].double()
        for j in range(R):
            assert np.allclose(S * np.outer(B0[:, j].numpy(), A0[j].numpy()), terms[j], atol=1e-5), (n, j)
    assert m.stats() == {"covariance_bytes": sum(8 * i * i for _, i in SHAPES.values()), "covariance_tokens": 60}

    trained2 = {n: (A + 0.5, B + 0.5) for n, (A, B) in init.items()}
    assert m.after_task(2, trained2, Data(2, BASE)) is m.stack
    fresh = make(weight=weight)
    fresh.load_state(m.state())
    a, b = m.init_lora(3, random_lora(4), Data(3, BASE)), fresh.init_lora(3, random_lora(4), Data(3, BASE))
    assert all(torch.equal(a[n][0], b[n][0]) and torch.equal(a[n][1], b[n][1]) for n in SHAPES)
    assert a["l0.q_proj"][0].shape[0] == 5 * R and m.frozen_rank(3) == 4 * R


def test_bad_weight_setting_is_refused():
    from slao.errors import ConfigError

    with pytest.raises(ConfigError, match="method.corda.weight"):
        make(weight="merged")


# -- end to end ---------------------------------------------------------------------------------------
def test_corda_run_starts_each_task_from_the_deployed_model(tmp_path, monkeypatch):
    """Through the CLI on tiny-random: each task i >= 2 starts from the LoRA deployed after task i-1 plus a
    cancelling pair (the model is unchanged), keeps every frozen component bit-identical while the new pair
    trains, and deploys what it trained."""
    _, seen = run_method(tmp_path, monkeypatch, "corda")
    start, trained, deployed = seen["start"], seen["trained"], seen["deployed"]
    r = next(iter(trained[0].values()))[0].shape[0]
    assert all(torch.equal(B, torch.zeros_like(B)) for _, B in start[0].values())  # task 1: plain init
    for i in range(1, len(trained)):
        prev = r + 2 * r * (i - 1)  # the components of tasks 1..i-1 (0-based i: task i+1 starts)
        k = prev + r  # and the frozen copies
        for n, (A, B) in start[i].items():
            old_A, old_B = deployed[i - 1][n]
            assert A.shape[0] == k + r
            assert torch.equal(A[:prev], old_A) and torch.equal(B[:, :prev], old_B)
            assert torch.equal(A[prev:k], A[k:]) and torch.equal(B[:, prev:k], -B[:, k:])
            assert torch.allclose(B @ A, old_B @ old_A, atol=1e-5)  # the model is unchanged at the start
            A_t, B_t = trained[i][n]
            assert torch.equal(A_t[:k], A[:k]) and torch.equal(B_t[:, :k], B[:, :k])  # frozen: bit-identical
            assert not torch.equal(A_t[k:], A[k:]) and not torch.equal(B_t[:, k:], B[:, k:])
            assert torch.equal(deployed[i][n][0], A_t) and torch.equal(deployed[i][n][1], B_t)

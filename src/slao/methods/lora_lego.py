"""LoRA-LEGO (Zhao et al., "Merging LoRAs like Playing LEGO: Pushing the Modularity of LoRA to Extremes
Through Rank-Wise Clustering", ICLR 2025; design.md §3): the rank-wise units of every task's LoRA are
clustered, and each cluster's mean is one unit of the merged LoRA.

The paper writes a LoRA's update as x A B with A (in x r) and B (r x out), so its "minimal semantic unit"
(MSU) s_k = [a_k, b_k] joins the k-th column of A and the k-th row of B (its Figure 1). In our convention
(A is r x in, B is out x r) that is the k-th ROW of A and the k-th COLUMN of B: s_k = [A[k, :], B[:, k]], a
vector of in + out numbers, and B @ A is the sum over k of the outer products B[:, k] A[k, :].

The rule, per layer, after task t:

- the MSU pool: the r units of each of the t task LoRAs (t*r vectors);
- k-means into r clusters (r = the LoRA rank, so the merged LoRA has the tasks' rank); each centroid
  c_j (the mean of the units in cluster j) is unit j of the merged LoRA: A[j] = c_j[:in], B[:, j] = c_j[in:];
- norm rescaling (the paper's parameter reweighting against "norm decay": the mean of units that point
  in different directions is shorter than they are): c_j is rescaled to the mean norm of its cluster's
  units, c_j * mean_{s in C_j} ||s|| / ||c_j||, one factor on the whole unit [a, b]. The norm is the
  largest absolute entry (L-infinity) by default, ``method.lora_lego.rescale_norm=2`` for the Euclidean
  one; ``method.lora_lego.rescale=false`` leaves the plain means.

What was and was not checked against the paper: the MSU definition, the clustering of the pooled units
into k clusters, centroids as the merged units and the rank are the paper's (abstract, Figure 1). The
paper's method section could not be read from here and the authors' code is not public, so the rescaling
follows two independent public reimplementations that agree with each other (a merging-methods module
beside TIES and KnOTS, and SMoEA's ``system/merging.py``): both rescale the whole centroid [a, b] by the
mean L-infinity norm of its cluster's units over its own L-infinity norm. The paper's second reweighting
(of the output, against "variance expansion"), which both give as a factor sqrt(r / k) on the update, is
1 here: the merged rank k equals the tasks' rank r. Until the paper's equations are read, treat the
choice of norm as that reading (the first version of this method, used for the packaged-task table of
docs/results.md, rescaled by the Euclidean norm: ``rescale_norm=2``).

Choices the paper leaves open (it merges a fixed set of LoRAs once): the clustering is redone from scratch
after every task over all LoRAs seen so far (the paper does not merge incrementally), so the state is
every task's LoRA (it grows by one LoRA a task). k-means is seeded and deterministic: k-means++
initialisation drawn from a generator seeded with ``method.lora_lego.seed`` for every layer, then Lloyd
iterations (nearest centroid, ties to the lower index) until no unit changes cluster, at most 300 (sklearn's
default); an empty cluster takes the unit farthest from its centroid. Each task's LoRA trains from a fresh
PEFT init (A random, B zero), as the paper merges independently trained LoRAs. After task 1 the merge is
task 1's LoRA itself (r units, r clusters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slao.methods.base import Method, check_choice, option, register
from slao.methods.lora_ops import LoraWeights, clone_lora, flatten_list, unflatten_list

MAX_ITERS = 300


def units_of(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A (r, in), B (out, r) -> the r units [A[k], B[:, k]] as rows (r, in + out)."""
    return torch.cat([A, B.T], dim=1)


def kmeans_pp_init(X: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++: the first centre uniformly, each next one with probability proportional to the squared
    distance to the nearest centre chosen (the lowest unchosen index when every distance is 0)."""
    n = X.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    d2 = ((X - X[chosen[0]]) ** 2).sum(1)
    for _ in range(1, k):
        if d2.sum() > 0:
            nxt = int(torch.multinomial(d2 / d2.sum(), 1, generator=generator))
        else:
            nxt = next(j for j in range(n) if j not in chosen)
        chosen.append(nxt)
        d2 = torch.minimum(d2, ((X - X[nxt]) ** 2).sum(1))
    return X[chosen].clone()


def kmeans(X: torch.Tensor, k: int, generator: torch.Generator, max_iters: int = MAX_ITERS) -> torch.Tensor:
    """Cluster labels (n,) of the rows of X (n >= k) into k clusters (Lloyd from k-means++)."""
    X = X.to(torch.float64)
    centres = kmeans_pp_init(X, k, generator)
    labels = None
    for _ in range(max_iters):
        new = torch.cdist(X, centres).argmin(1)
        for j in range(k):  # an empty cluster takes the unit farthest from its centre
            if not (new == j).any():
                dist = (X - centres[new]).norm(dim=1)
                sizes = torch.bincount(new, minlength=k)
                dist[sizes[new] <= 1] = -1  # never empty another cluster
                new[int(dist.argmax())] = j
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        centres = torch.stack([X[labels == j].mean(0) for j in range(k)])
    return labels


NORMS = {"inf": float("inf"), "2": 2.0}


def cluster_means(units: torch.Tensor, labels: torch.Tensor, k: int, rescale: bool = True,
                  norm: str = "inf") -> torch.Tensor:
    """Row j: the mean of the units labelled j, rescaled (``rescale``) to the mean norm of those units, the
    norm being ``norm`` ("inf": the largest absolute entry; "2": Euclidean)."""
    U = units.to(torch.float64)
    p = NORMS[norm]
    out = []
    for j in range(k):
        members = U[labels == j]
        c = members.mean(0)
        size = torch.linalg.vector_norm(c, ord=p)
        if rescale and size > 0:
            c = c * torch.linalg.vector_norm(members, ord=p, dim=1).mean() / size
        out.append(c)
    return torch.stack(out).to(units.dtype)


def lego_merge(loras: list[LoraWeights], rank: int, seed: int = 0, rescale: bool = True,
               norm: str = "inf") -> LoraWeights:
    """The merged LoRA of rank ``rank``: per layer, the pooled units clustered into ``rank`` clusters."""
    out: LoraWeights = {}
    for name in sorted(loras[0]):
        n_in = loras[0][name][0].shape[1]
        units = torch.cat([units_of(*lora[name]) for lora in loras])  # (t*r, in + out)
        labels = kmeans(units, rank, torch.Generator().manual_seed(seed))
        merged = cluster_means(units, labels, rank, rescale, norm)
        out[name] = (merged[:, :n_in].contiguous(), merged[:, n_in:].T.contiguous())
    return out


@dataclass
class LoraLegoOptions:
    seed: int = option(0, "seed of the k-means++ initialisation (the clustering is deterministic given it)")
    rescale: bool = option(True, "rescale each merged unit to the mean norm of its cluster's units "
                                 "(the paper's parameter reweighting)")
    rescale_norm: str = option("inf", "the norm of that rescaling: inf (largest absolute entry) | 2 (Euclidean)")


@register("lora-lego", options=LoraLegoOptions)
class LoraLegoMethod(Method):
    """LoRA-LEGO: the rank-wise units of every task's LoRA so far clustered into r clusters per layer, each
    cluster's norm-rescaled mean one unit of the merged rank-r LoRA (Zhao et al. 2025); keeps every LoRA."""

    grows = True

    def __init__(self, options, lora_shapes, rank=8, num_tasks=0):
        super().__init__(options, lora_shapes, rank, num_tasks)
        self.seed, self.rescale = int(options.seed), bool(options.rescale)
        self.norm = str(options.rescale_norm)
        check_choice(self.name, "rescale_norm", self.norm, NORMS)
        self.loras: list[LoraWeights] = []  # task j (0-based) -> its fine-tuned LoRA

    def after_task(self, i, trained, data=None):
        del self.loras[i - 1 :]  # a task trained again (never in a normal run) replaces its LoRA
        self.loras.append(clone_lora(trained))
        rank = next(iter(trained.values()))[0].shape[0]
        return lego_merge(self.loras, rank, self.seed, self.rescale, self.norm)

    def state(self) -> dict[str, torch.Tensor]:
        return flatten_list(self.loras)

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.loras = unflatten_list(tensors)

    def stats(self) -> dict:
        return {"units_pooled_per_layer": sum(next(iter(lora.values()))[0].shape[0] for lora in self.loras)}

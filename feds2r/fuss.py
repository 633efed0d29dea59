"""FUSS: federated unsupervised semantic segmentation on frozen features, as plain functions.

Clients hold unlabelled images. Each computes its images' frozen pixel features once
(:mod:`feds2r.models.pixel_features`) and trains a :class:`~feds2r.models.cluster_head.ClusterHead`
(head + K centroids) with STEGO's correspondence loss and the cluster-probe loss
(:mod:`feds2r.losses.unsupervised`). Four methods (``docs/fuss.md`` lists every choice):

- ``local-only``: each client alone, R rounds of S steps with nobody to talk to;
- ``fedavg``: each round the server averages the clients' heads weighted by image count; each
  client keeps its own centroids;
- ``fuss``: as ``fedavg`` for the heads, and the server clusters all clients' centroids (weighted
  k-means, each centroid weighted by the pixels assigned to it) into K global centroids that every
  client continues from;
- ``centralized``: every client's images in one place, the same total number of steps.

The server side is :func:`run_federation` over a :data:`SendFn` (one round's request -> the
clients' updates); :func:`in_process_send` calls :func:`client_round` in this process, and
:mod:`feds2r.federation.fuss_app` sends the same values over Flower.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from feds2r.errors import Feds2rError
from feds2r.losses.unsupervised import cluster_loss, stego_loss
from feds2r.metrics.unsupervised import ClusterConfusion, fit_mapping, mapped_summary
from feds2r.models.cluster_head import ClusterHead, ClusterHeadConfig

METHODS = ("local-only", "fedavg", "fuss", "centralized")
"""The methods :func:`run_method` trains, in table order."""

PARTITIONS = ("domain", "iid")
"""How unlabelled images are split over clients: one domain per client, or at random."""


@dataclass(frozen=True)
class FussConfig:
    """Everything a FUSS run trains with (the defaults are the ``docs/fuss.md`` choices)."""

    backbone: str = "imagenet"
    """Frozen feature backbone (:data:`~feds2r.models.pixel_features.FEATURE_BACKBONES`)."""
    height: int = 96
    """Images are resized to this height (aspect kept); features are at 1/8 of it."""
    num_clusters: int = 19
    """K, the number of centroids (19 = the classes; more is over-clustering)."""
    code_dim: int = 32
    """D, the width of the head's codes."""
    hidden: int = 128
    """Width of the head's non-linear branch."""
    dropout: float = 0.1
    """Channel dropout on the features while training."""
    rounds: int = 5
    """R, federated rounds (local-only and centralized run the same R x S schedule)."""
    local_steps: int = 40
    """S, optimiser steps per client per round."""
    batch_size: int = 8
    """Images per step (with a KNN partner and a random partner each)."""
    lr: float = 5e-4
    """Adam learning rate of the head (STEGO's)."""
    centroid_lr: float = 5e-3
    """Adam learning rate of the centroids (STEGO's cluster probe)."""
    knn: int = 5
    """Nearest neighbours (pooled-feature cosine) a KNN partner is drawn from."""
    weights: tuple[float, float, float] = (1.0, 0.5, 1.0)
    """Weights of the self, KNN and random pair losses."""
    shifts: tuple[float, float, float] = (0.2, 0.15, 0.3)
    """Shifts b of the self, KNN and random pair losses (on cosine correlations)."""
    kmeans_iters: int = 30
    """Iterations of the server's weighted k-means over the clients' centroids."""
    mapping: str = "hungarian"
    """Cluster-to-class mapping fitted on dev: ``hungarian`` or ``majority`` (K > 19)."""
    seed: int = 0
    """Seeds the head's initialisation, the batches, dropout and k-means."""

    def __post_init__(self) -> None:
        for name in ("height", "num_clusters", "code_dim", "hidden", "rounds", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise Feds2rError(f"FussConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("local_steps", "knn", "kmeans_iters"):
            if int(getattr(self, name)) < 0:
                raise Feds2rError(f"FussConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.height % 8:
            raise Feds2rError(f"FussConfig.height must be a multiple of 8, got {self.height}")
        if len(self.weights) != 3 or len(self.shifts) != 3:
            raise Feds2rError("FussConfig.weights and .shifts need 3 values: self, knn, random")
        if self.mapping not in ("hungarian", "majority"):
            raise Feds2rError(f"FussConfig.mapping must be hungarian or majority: {self.mapping}")
        if self.lr <= 0 or self.centroid_lr <= 0:
            raise Feds2rError("FussConfig.lr and .centroid_lr must be positive")

    def head_config(self, in_channels: int) -> ClusterHeadConfig:
        return ClusterHeadConfig(
            in_channels=in_channels,
            code_dim=self.code_dim,
            hidden=self.hidden,
            num_clusters=self.num_clusters,
            dropout=self.dropout,
        )


def _seed(*parts: object) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode()) & 0x7FFFFFFF


# ----------------------------------------------------------------------------- client data


def knn_neighbours(features: Tensor, k: int) -> Tensor:
    """Each image's k nearest other images by the cosine of their mean-pooled features.

    ``features`` (N, C, h, w) -> (N, k') long with k' = min(k, N - 1); an image alone is its own
    neighbour (N = 1 gives (1, 1)).
    """
    n = len(features)
    if n == 1 or k == 0:
        return torch.arange(n)[:, None]
    pooled = F.normalize(features.mean(dim=(2, 3)), dim=1)  # (N, C)
    sim = pooled @ pooled.T
    sim.fill_diagonal_(-float("inf"))
    return sim.topk(min(k, n - 1), dim=1).indices


@dataclass
class ClientData:
    """One client's unlabelled images as cached frozen features."""

    name: str
    features: Tensor
    """(N, C, h, w) frozen features, computed once."""
    neighbours: Tensor
    """(N, k) indices of each image's nearest neighbours (:func:`knn_neighbours`)."""

    def __post_init__(self) -> None:
        if self.features.ndim != 4 or len(self.features) == 0:
            raise Feds2rError(f"client {self.name} has no images (features (N, C, h, w) empty)")
        if self.neighbours.ndim != 2 or len(self.neighbours) != len(self.features):
            raise Feds2rError(f"client {self.name}: neighbours must be (N, k) for N images")

    @classmethod
    def build(cls, name: str, features: Tensor, knn: int) -> ClientData:
        return cls(name, features, knn_neighbours(features, knn))

    def __len__(self) -> int:
        return len(self.features)


def split_clients(
    features: Mapping[str, Tensor], partition: str, num_clients: int, knn: int, seed: int = 0
) -> list[ClientData]:
    """Clients from per-domain features (domain -> (N_d, C, h, w)).

    ``domain``: one client per domain (``num_clients`` must equal the number of domains);
    ``iid``: all images pooled, shuffled with ``seed`` and dealt into ``num_clients`` parts of
    equal size (the remainder to the first clients).
    """
    if partition == "domain":
        if num_clients != len(features):
            raise Feds2rError(
                f"the domain partition gives one client per domain ({len(features)}), not "
                f"{num_clients}; pass num_clients={len(features)} or partition iid"
            )
        return [ClientData.build(name, f, knn) for name, f in features.items()]
    if partition != "iid":
        raise Feds2rError(f"unknown partition {partition!r}; valid: {', '.join(PARTITIONS)}")
    pooled = torch.cat(list(features.values()))
    if num_clients < 1 or num_clients > len(pooled):
        raise Feds2rError(f"{num_clients} clients for {len(pooled)} images")
    order = torch.randperm(len(pooled), generator=torch.Generator().manual_seed(seed))
    parts = torch.tensor_split(order, num_clients)
    return [ClientData.build(f"client-{i}", pooled[p], knn) for i, p in enumerate(parts)]


def load_split(spec: str, height: int, *, labels: bool) -> tuple[Tensor, Tensor | None]:
    """A dataset split resized to ``height``: images (N, 3, H, W) uint8 and, with ``labels``,
    train ids (N, H, W) uint8 (255 = ignore). Every image must have the same size after
    resizing (true of each built-in domain)."""
    from feds2r.data import open_dataset
    from feds2r.engine.data import resize_pair

    ds = open_dataset(spec, labels=labels)
    images, targets = [], []
    for i in range(len(ds)):
        item = ds[i]
        image, label = resize_pair(item["image"], item.get("label"), height)
        images.append(image)
        if labels:
            targets.append(label.to(torch.uint8))
    if len({tuple(im.shape) for im in images}) > 1:
        raise Feds2rError(
            f"{spec}: images of different sizes after resizing to height {height}; FUSS caches "
            "one feature tensor per split, so give every image the same aspect ratio"
        )
    return torch.stack(images), (torch.stack(targets) if labels else None)


# ----------------------------------------------------------------------------- local training


def train_steps(
    model: ClusterHead, data: ClientData, config: FussConfig, steps: int, generator: torch.Generator
) -> dict[str, float]:
    """``steps`` Adam steps of the correspondence loss (head) and cluster loss (centroids).

    Returns the mean of each loss part over the steps (``loss``, ``self``, ``knn``, ``random``,
    ``cluster``); empty if ``steps`` is 0.
    """
    head_params = [p for n, p in model.named_parameters() if n != "centroids"]
    opt_head = torch.optim.Adam(head_params, lr=config.lr)
    opt_centroids = torch.optim.Adam([model.centroids], lr=config.centroid_lr)
    n, feats = len(data), data.features
    model.train()
    totals: dict[str, float] = {}
    for _ in range(steps):
        idx = torch.randint(n, (config.batch_size,), generator=generator)
        pick = torch.randint(data.neighbours.shape[1], (config.batch_size,), generator=generator)
        knn_idx = data.neighbours[idx, pick]
        # a random other image: an offset in 1..n-1 never lands on the image itself
        rand_idx = (idx + torch.randint(1, max(n, 2), idx.shape, generator=generator)) % n
        f, fk, fr = feats[idx], feats[knn_idx], feats[rand_idx]  # (B, C, h, w) each
        codes, knn_codes, rand_codes = model(f), model(fk), model(fr)  # (B, D, h, w) each
        parts = stego_loss(
            f, codes, fk, knn_codes, fr, rand_codes, weights=config.weights, shifts=config.shifts
        )
        clustering = cluster_loss(codes.detach(), model.centroids)
        opt_head.zero_grad(set_to_none=True)
        opt_centroids.zero_grad(set_to_none=True)
        (parts["loss"] + clustering["loss"]).backward()
        opt_head.step()
        opt_centroids.step()
        logged = {**{k: v.item() for k, v in parts.items()}, "cluster": clustering["loss"].item()}
        for k, v in logged.items():
            totals[k] = totals.get(k, 0.0) + v / steps
    model.eval()
    return totals


@torch.no_grad()
def assignment_counts(model: ClusterHead, features: Tensor, batch_size: int = 32) -> Tensor:
    """Pixels assigned to each centroid over ``features`` (N, C, h, w): (K,) float64."""
    model.eval()
    counts = torch.zeros(model.config.num_clusters, dtype=torch.float64)
    for i in range(0, len(features), batch_size):
        clusters = model.assign(features[i : i + batch_size])
        counts += torch.bincount(clusters.reshape(-1), minlength=len(counts)).double()
    return counts


# ----------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class RoundRequest:
    """What the server sends each client in one round."""

    round: int
    head: dict[str, Tensor]
    """The global head's tensors."""
    centroids: Tensor | None
    """(K, D) centroids to start from, or None: the client keeps its own (FedAvg after round 0)."""


@dataclass
class ClientUpdate:
    """What a client sends back after a round."""

    client: str
    head: dict[str, Tensor]
    centroids: Tensor
    """(K, D) the client's centroids after training."""
    counts: Tensor
    """(K,) pixels of the client's images assigned to each centroid (k-means weights)."""
    images: int
    """The client's number of images (the head-averaging weight)."""
    losses: dict[str, float] = field(default_factory=dict)


SendFn = Callable[[RoundRequest], list[ClientUpdate]]
"""Deliver one round's request to every client and return their updates."""


def client_round(
    request: RoundRequest,
    data: ClientData,
    config: FussConfig,
    own_centroids: Tensor | None = None,
) -> ClientUpdate:
    """One client's round: start from the request's head and centroids (its own centroids when
    the request carries none), train S steps, count assignments, reply."""
    centroids = request.centroids if request.centroids is not None else own_centroids
    if centroids is None:
        raise Feds2rError(
            f"client {data.name} got no centroids and has none of its own; the first round's "
            "request must carry the initial centroids"
        )
    model = ClusterHead(config.head_config(data.features.shape[1]))
    model.load_head(request.head)
    model.set_centroids(centroids)
    seed = _seed(config.seed, data.name, request.round)
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global generator
        torch.manual_seed(seed)
        losses = train_steps(
            model, data, config, config.local_steps, torch.Generator().manual_seed(seed)
        )
    return ClientUpdate(
        client=data.name,
        head=model.head_state(),
        centroids=model.centroids.detach().clone(),
        counts=assignment_counts(model, data.features),
        images=len(data),
        losses=losses,
    )


def in_process_send(clients: list[ClientData], config: FussConfig) -> SendFn:
    """A :data:`SendFn` calling :func:`client_round` here; each client's own centroids are kept
    between rounds (for FedAvg) as a client would keep them."""
    own: dict[str, Tensor] = {}

    def send(request: RoundRequest) -> list[ClientUpdate]:
        updates = [client_round(request, c, config, own.get(c.name)) for c in clients]
        own.update({u.client: u.centroids for u in updates})
        return updates

    return send


# ----------------------------------------------------------------------------- server


def average_heads(states: list[dict[str, Tensor]], weights: list[float]) -> dict[str, Tensor]:
    """The weighted parameter mean of heads (weights normalised to sum 1)."""
    if not states or len(states) != len(weights):
        raise Feds2rError(f"{len(states)} heads with {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise Feds2rError("head-averaging weights must sum to a positive number")
    return {
        k: sum(w / total * s[k].double() for s, w in zip(states, weights, strict=True)).to(
            states[0][k].dtype
        )
        for k in states[0]
    }


def cluster_centroids(
    centroids: Tensor, weights: Tensor, k: int, *, seed: int = 0, iters: int = 30
) -> Tensor:
    """Weighted spherical k-means of centroids (M, D) with weights (M,) into (k, D) unit vectors.

    k-means++ seeding (points drawn with probability weight x (1 - best cosine to the chosen
    ones)), then Lloyd iterations on cosine similarity: each point joins its most similar global
    centroid, each global centroid becomes the normalised weighted mean of its points; a global
    centroid left without weight keeps its place. Points of weight 0 (centroids no pixel chose)
    take no part. Deterministic for a given ``seed``.
    """
    x = F.normalize(centroids.double(), dim=1)
    w = weights.double().clamp_min(0)
    if len(x) != len(w):
        raise Feds2rError(f"{len(x)} centroids with {len(w)} weights")
    if float(w.sum()) <= 0:
        w = torch.ones_like(w)  # nothing assigned anywhere: every centroid counts the same
    gen = torch.Generator().manual_seed(seed)
    chosen = [int(torch.multinomial(w, 1, generator=gen))]
    while len(chosen) < k:
        dist = (1 - (x @ x[chosen].T).max(dim=1).values).clamp_min(0) * w
        if float(dist.sum()) <= 1e-12:  # fewer distinct points than k: repeat a heavy one
            dist = w.clone()
        chosen.append(int(torch.multinomial(dist, 1, generator=gen)))
    c = x[chosen].clone()
    for _ in range(iters):
        assign = (x @ c.T).argmax(dim=1)  # (M,)
        sums = torch.zeros_like(c).index_add_(0, assign, x * w[:, None])
        mass = torch.zeros(k, dtype=x.dtype).index_add_(0, assign, w)
        new = torch.where(mass[:, None] > 0, F.normalize(sums, dim=1), c)
        if torch.allclose(new, c):
            break
        c = new
    return c.to(centroids.dtype)


def tensor_bytes(tensors: Mapping[str, Tensor] | Tensor) -> int:
    """Bytes of tensors' data (what an ArrayRecord carries, without framing)."""
    if isinstance(tensors, Tensor):
        return tensors.numel() * tensors.element_size()
    return sum(t.numel() * t.element_size() for t in tensors.values())


@dataclass
class FederationResult:
    """The outcome of :func:`run_federation`."""

    head: dict[str, Tensor]
    centroids: dict[str, Tensor]
    """The centroids each model uses: ``{"global": ...}`` (fuss) or one per client (fedavg)."""
    history: list[dict] = field(default_factory=list)
    """Per round: mean client losses, bytes sent down and up."""

    @property
    def bytes(self) -> int:
        return sum(h["bytes_down"] + h["bytes_up"] for h in self.history)


def run_federation(
    method: str,
    send: SendFn,
    init: ClusterHead,
    config: FussConfig,
    *,
    log: Callable[[str], None] | None = None,
) -> FederationResult:
    """R rounds of ``fedavg`` or ``fuss`` starting from ``init``'s head and centroids.

    Every round: send the global head (and, for ``fuss`` or in round 0, the centroids), average
    the returned heads weighted by image count, and for ``fuss`` cluster all returned centroids
    (weighted by their assignment counts) into K global centroids. The updates are taken in
    client-name order, whatever order the transport delivered them in, so a run over Flower
    equals the same run in one process.
    """
    if method not in ("fedavg", "fuss"):
        raise Feds2rError(f"run_federation runs fedavg or fuss, not {method!r}")
    head, centroids = init.head_state(), init.centroids.detach().clone()
    own: dict[str, Tensor] = {}
    history = []
    for r in range(config.rounds):
        carry = centroids if (method == "fuss" or r == 0) else None
        updates = sorted(send(RoundRequest(r, head, carry)), key=lambda u: u.client)
        if not updates:
            raise Feds2rError(f"round {r}: no client replied")
        head = average_heads([u.head for u in updates], [float(u.images) for u in updates])
        own = {u.client: u.centroids for u in updates}
        if method == "fuss":
            centroids = cluster_centroids(
                torch.cat([u.centroids for u in updates]),
                torch.cat([u.counts for u in updates]),
                config.num_clusters,
                seed=_seed(config.seed, "kmeans", r),
                iters=config.kmeans_iters,
            )
        down = len(updates) * (
            tensor_bytes(head) + (tensor_bytes(carry) if carry is not None else 0)
        )
        up = sum(tensor_bytes(u.head) + tensor_bytes(u.centroids) + tensor_bytes(u.counts)
                 for u in updates)  # fmt: skip
        loss = sum(u.losses.get("loss", 0.0) for u in updates) / len(updates)
        history.append({"round": r, "loss": loss, "bytes_down": down, "bytes_up": up})
        if log:
            log(f"{method} round {r + 1}/{config.rounds}: {len(updates)} clients, loss {loss:.4f}")
    final = {"global": centroids} if method == "fuss" else own
    return FederationResult(head, final, history)


def run_alone(data: ClientData, init: ClusterHead, config: FussConfig, rounds: int) -> ClusterHead:
    """A client training by itself for ``rounds`` rounds of S steps (local-only, centralized):
    the same schedule as a federated client, with its own head and centroids carried over."""
    head, centroids = init.head_state(), init.centroids.detach().clone()
    for r in range(rounds):
        update = client_round(RoundRequest(r, head, centroids), data, config)
        head, centroids = update.head, update.centroids
    return _model(config, data.features.shape[1], head, centroids)


def _model(config: FussConfig, channels: int, head: dict, centroids: Tensor) -> ClusterHead:
    model = ClusterHead(config.head_config(channels))
    model.load_head(head)
    model.set_centroids(centroids)
    return model.eval()


def initial_model(config: FussConfig, channels: int) -> ClusterHead:
    """The common starting head and centroids, from ``config.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(config.seed, "init"))
        return ClusterHead(config.head_config(channels)).eval()


def run_method(
    method: str,
    clients: list[ClientData],
    config: FussConfig,
    *,
    send: SendFn | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, ClusterHead], dict]:
    """Train one method; returns its models by name and a record (bytes, history).

    ``local-only`` and ``fedavg`` give one model per client (``fedavg``: the global head with the
    client's own centroids), ``fuss`` and ``centralized`` one (``global``). ``send`` defaults to
    :func:`in_process_send` over ``clients``.
    """
    if method not in METHODS:
        raise Feds2rError(f"unknown FUSS method {method!r}; valid: {', '.join(METHODS)}")
    channels = clients[0].features.shape[1]
    init = initial_model(config, channels)
    if method == "local-only":
        models = {c.name: run_alone(c, init, config, config.rounds) for c in clients}
        return models, {"bytes": 0}
    if method == "centralized":
        pooled = ClientData.build(
            "centralized", torch.cat([c.features for c in clients]), config.knn
        )
        # the same total number of steps as all clients of a federation together
        models = {"global": run_alone(pooled, init, config, config.rounds * len(clients))}
        return models, {"bytes": 0}
    result = run_federation(method, send or in_process_send(clients, config), init, config, log=log)
    models = {
        name: _model(config, channels, result.head, c) for name, c in result.centroids.items()
    }
    return models, {"bytes": result.bytes, "history": result.history}


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def cluster_confusion(
    model: ClusterHead, features: Tensor, labels: Tensor, batch_size: int = 16
) -> ClusterConfusion:
    """Cluster-by-class counts of ``model`` on features (N, C, h, w) and labels (N, H, W); the
    codes are upsampled to the label size before assignment."""
    confusion = ClusterConfusion(model.config.num_clusters)
    for i in range(0, len(features), batch_size):
        target = labels[i : i + batch_size]
        clusters = model.assign(features[i : i + batch_size], tuple(target.shape[-2:]))
        confusion.update(clusters, target)
    return confusion


def evaluate_model(
    model: ClusterHead,
    dev: tuple[Tensor, Tensor],
    tests: Mapping[str, tuple[Tensor, Tensor]],
    mapping: str = "hungarian",
) -> dict[str, dict]:
    """Fit the cluster-to-class mapping on ``dev`` (features, labels) and apply it unchanged to
    each test set; returns ``{set name: mapped_summary}`` with ``dev`` first."""
    fitted = cluster_confusion(model, *dev).matrix
    table = fit_mapping(fitted, mapping)
    out = {"dev": mapped_summary(fitted, table)}
    for name, (feats, labels) in tests.items():
        out[name] = mapped_summary(cluster_confusion(model, feats, labels).matrix, table)
    return out


__all__ = [
    "METHODS",
    "PARTITIONS",
    "ClientData",
    "ClientUpdate",
    "FederationResult",
    "FussConfig",
    "RoundRequest",
    "SendFn",
    "assignment_counts",
    "average_heads",
    "client_round",
    "cluster_centroids",
    "cluster_confusion",
    "evaluate_model",
    "in_process_send",
    "initial_model",
    "knn_neighbours",
    "load_split",
    "run_alone",
    "run_federation",
    "run_method",
    "split_clients",
    "tensor_bytes",
    "train_steps",
]

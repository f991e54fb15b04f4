"""Masked-patch pretraining (SSAMBA / SSAST): masking, the mask token, the two heads and the joint loss.

A :class:`MaskedPatchModel` wraps an :class:`~ssamba.models.encoder.AudioMambaEncoder`:

1. **Masking.** Patch models use *cluster masking*: per clip a square side ``c`` is drawn from
   ``cluster_sizes`` (3, 4, 5); ``c x c`` squares are dropped at uniformly random start patches of
   the frequency-major grid until *more than* ``mask_patch`` distinct patches are covered, and the
   ``mask_patch`` smallest ids are kept. As in the original, a square starting near the end of a
   frequency row continues at the start of the next row (the offsets are added to the flat index),
   ids past the grid are dropped and **patch 0 is never masked**. Frame models (``fshape`` equal to
   the number of mel bins) use plain uniform masking. Mask ids index the patches (0..N-1), so the
   CLS token can never be masked. Masks are drawn batched on the model's device from the model's
   seeded generator (:meth:`MaskedPatchModel.reseed_masks`); they are returned in ascending order.
2. **Mask token.** A learned ``mask_embed`` (1, 1, D) replaces the patch embeddings at the masked
   positions, before the CLS token and the position embedding are added.
3. **Targets.** The normalised input cut into non-overlapping patches (``fshape * tshape`` values,
   256 for 16x16 and for 128x2 frames), detached.
4. **Discriminative head** ``cpredlayer`` (Linear-ReLU-Linear) and InfoNCE among the masked patches
   of the same clip; see :func:`info_nce` for the two softmax directions.
5. **Generative head** ``gpredlayer`` (same shape) and the MSE to the target patches.
6. **Joint loss** ``nce + mse_weight * mse`` (10 in the original), by default from two encoder
   passes with independent masks as in the original; ``single_pass=True`` (an addition of this
   package, not in SSAMBA/SSAST) reads both heads from one masked pass, halving the encoder compute.

The head and mask-token names (``cpredlayer.{0,2}``, ``gpredlayer.{0,2}``, ``mask_embed``) are the
original checkpoint's, so an official pretraining checkpoint's heads load under the same names.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssamba.fields import dataclass_from_dict

if TYPE_CHECKING:
    from ssamba.models.encoder import AudioMambaEncoder

NceDirection = Literal["ssast_code", "paper"]
NCE_DIRECTIONS: tuple[str, ...] = ("ssast_code", "paper")

RELEASED_MASK_PATCHES = (250, 300, 400)
"""Masked patches (out of 512) of the released SSAMBA checkpoints."""
EVAL_MASK_PATCH = 400
"""The original validates with 400 masked patches whatever the training setting."""
CLUSTER_SIZES = (3, 4, 5)
MSE_WEIGHT = 10.0
CLUSTER_DRAW_MARGIN = 1.5
"""Factor on the expected number of squares drawn per batch of cluster starts (more are drawn if short)."""


@dataclass
class ObjectiveConfig:
    """Settings of the masked-patch objective (buildable from YAML with :meth:`from_dict`)."""

    mask_patch: int = 400
    """Masked patches per clip in training (released: 250, 300, 400 of 512; the SSAMBA recipe: 300)."""
    eval_mask_patch: int = EVAL_MASK_PATCH
    """Masked patches per clip in eval mode (``model.eval()``)."""
    cluster: bool | None = None
    """Cluster masking (True), uniform masking (False), or None: cluster for patch models, uniform
    for frame models (``fshape == num_mel_bins``), as the original decides."""
    cluster_sizes: tuple[int, ...] = CLUSTER_SIZES
    """Square sides drawn uniformly per clip for cluster masking."""
    nce_direction: NceDirection = "ssast_code"
    """``ssast_code``: softmax over predictions for each target (the released checkpoints);
    ``paper``: softmax over targets for each prediction (Eq. 1 of the SSAST paper). See :func:`info_nce`."""
    mse_weight: float = MSE_WEIGHT
    """Weight of the generative MSE in the joint loss ``nce + mse_weight * mse``."""
    single_pass: bool = False
    """Both heads from one masked encoder pass (this package's addition) instead of two passes with
    independent masks (the original)."""

    def __post_init__(self) -> None:
        if isinstance(self.cluster_sizes, list):
            self.cluster_sizes = tuple(self.cluster_sizes)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is out of range."""
        for name in ("mask_patch", "eval_mask_patch"):
            value = getattr(self, name)
            if not _is_positive_int(value):
                raise ValueError(f"ObjectiveConfig.{name} must be a positive integer, got {value!r}")
        if self.cluster is not None and not isinstance(self.cluster, bool):
            raise ValueError(f"ObjectiveConfig.cluster must be true, false or null, got {self.cluster!r}")
        sizes = self.cluster_sizes
        if not isinstance(sizes, tuple) or not sizes or not all(_is_positive_int(c) for c in sizes):
            raise ValueError(f"ObjectiveConfig.cluster_sizes must be a non-empty list of positive integers, got {sizes!r}")
        if self.nce_direction not in NCE_DIRECTIONS:
            raise ValueError(f"ObjectiveConfig.nce_direction must be one of {NCE_DIRECTIONS}, got {self.nce_direction!r}")
        weight = self.mse_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"ObjectiveConfig.mse_weight must be a finite number >= 0, got {weight!r}")
        if not isinstance(self.single_pass, bool):
            raise ValueError(f"ObjectiveConfig.single_pass must be true or false, got {self.single_pass!r}")

    def replace(self, **changes: Any) -> ObjectiveConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["cluster_sizes"] = list(self.cluster_sizes)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ObjectiveConfig:
        """Build from a dict (e.g. a YAML section), rejecting unknown keys by name."""
        return dataclass_from_dict(cls, values)


@dataclass(frozen=True)
class ContrastiveOutput:
    """Result of the discriminative head: InfoNCE loss and the matching accuracy (0-d tensors)."""

    nce: Tensor
    acc: Tensor


@dataclass(frozen=True)
class PretrainOutput:
    """Result of a joint pretraining step (0-d tensors; ``loss`` carries the gradient)."""

    loss: Tensor
    nce: Tensor
    mse: Tensor
    acc: Tensor

    def metrics(self) -> dict[str, float]:
        """Plain floats for logging (synchronises with the device)."""
        return {name: float(getattr(self, name).detach()) for name in ("loss", "nce", "mse", "acc")}


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# ---------------------------------------------------------------------------------------------- masks


def max_cluster_mask_patch(num_patches: int) -> int:
    """Largest ``mask_patch`` cluster masking supports: it needs more than ``mask_patch`` eligible
    patches, and patch 0 is never masked."""
    return num_patches - 2


def cluster_mask_from_draws(sizes: Tensor, starts: Tensor, grid: tuple[int, int], mask_patch: int) -> tuple[Tensor, Tensor]:
    """Cluster masks from given random draws (the deterministic core of :func:`cluster_mask_ids`).

    ``sizes`` (B,): the square side of each clip; ``starts`` (B, K): flat start ids of the squares in
    drawing order. Square ``k`` of clip ``b`` covers ``starts[b, k] + i * t_patches + j`` for
    ``0 <= i, j < sizes[b]``, ids outside ``(0, N)`` dropped. Squares are added in order until more
    than ``mask_patch`` distinct ids are covered; the ``mask_patch`` smallest of those are returned,
    ascending, as (B, mask_patch) int64. The second result (B,) bool tells which clips got there
    within the K squares; the ids of the others are meaningless.
    """
    if sizes.ndim != 1 or starts.ndim != 2 or starts.shape[0] != sizes.shape[0]:
        raise ValueError(f"expected sizes (B,) and starts (B, K), got {tuple(sizes.shape)} and {tuple(starts.shape)}")
    batch, draws = starts.shape
    f_patches, t_patches = grid
    num_patches = f_patches * t_patches
    if not 0 < mask_patch <= max_cluster_mask_patch(num_patches):
        raise ValueError(f"cluster masking on a {f_patches}x{t_patches} grid needs 0 < mask_patch <= {max_cluster_mask_patch(num_patches)}, got {mask_patch}")
    device = starts.device
    side = int(sizes.max())
    rows = torch.arange(side, device=device).view(side, 1)
    cols = torch.arange(side, device=device).view(1, side)
    offsets = (rows * t_patches + cols).flatten()
    in_square = ((rows < sizes.view(-1, 1, 1)) & (cols < sizes.view(-1, 1, 1))).flatten(1)  # (B, side*side)
    ids = starts.unsqueeze(-1) + offsets  # (B, K, side*side)
    valid = in_square.unsqueeze(1) & (ids > 0) & (ids < num_patches)
    order = torch.arange(draws, device=device).view(1, draws, 1).expand_as(ids)
    # first_cover[b, id]: index of the first square covering id (draws if none); column N collects invalid ids
    first_cover = torch.full((batch, num_patches + 1), draws, dtype=torch.long, device=device)
    first_cover.scatter_reduce_(1, torch.where(valid, ids, num_patches).flatten(1), order.flatten(1), reduce="amin")
    first_cover = first_cover[:, :num_patches]
    new_per_square = torch.zeros(batch, draws + 1, dtype=torch.long, device=device)
    new_per_square.scatter_add_(1, first_cover, torch.ones_like(first_cover))
    covered = new_per_square[:, :draws].cumsum(1)  # distinct ids after squares 0..k
    complete = covered[:, -1] > mask_patch
    last_square = (covered <= mask_patch).sum(1).clamp(max=draws - 1)
    chosen = first_cover <= last_square.unsqueeze(1)
    position = torch.arange(num_patches, device=device)
    ranked = torch.where(chosen, position, position + num_patches).sort(dim=1).values
    return ranked[:, :mask_patch], complete


def cluster_mask_ids(
    batch_size: int,
    grid: tuple[int, int],
    mask_patch: int,
    *,
    cluster_sizes: tuple[int, ...] = CLUSTER_SIZES,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Cluster masks (batch_size, mask_patch), int64, ascending, for a ``grid = (f, t)`` patch grid.

    Per clip a side is drawn uniformly from ``cluster_sizes``, then square starts uniformly in
    ``[0, N)`` (see :func:`cluster_mask_from_draws`). All clips are drawn at once; if some clip needs
    more squares than drawn, another batch of starts is appended for all.
    """
    f_patches, t_patches = grid
    num_patches = f_patches * t_patches
    if not 0 < mask_patch <= max_cluster_mask_patch(num_patches):
        raise ValueError(f"cluster masking on a {f_patches}x{t_patches} grid needs 0 < mask_patch <= {max_cluster_mask_patch(num_patches)}, got {mask_patch}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    choices = torch.tensor(cluster_sizes, dtype=torch.long, device=device)
    sizes = choices[torch.randint(len(cluster_sizes), (batch_size,), generator=generator, device=device)]
    # expected squares: a square of side c covers ~c*c new ids while the coverage p grows as 1 - exp(-k c^2 / N)
    smallest = min(cluster_sizes) ** 2
    expected = -math.log(1.0 - (mask_patch + 1) / num_patches) * num_patches / smallest
    chunk = int(CLUSTER_DRAW_MARGIN * expected) + 4
    starts = torch.empty(batch_size, 0, dtype=torch.long, device=device)
    while True:
        starts = torch.cat([starts, torch.randint(num_patches, (batch_size, chunk), generator=generator, device=device)], dim=1)
        ids, complete = cluster_mask_from_draws(sizes, starts, grid, mask_patch)
        if bool(complete.all()):
            return ids


def random_mask_ids(
    batch_size: int,
    num_patches: int,
    mask_patch: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform masks (batch_size, mask_patch): distinct ids in ``[0, num_patches)``, ascending, int64."""
    if not 0 < mask_patch <= num_patches:
        raise ValueError(f"random masking of {num_patches} patches needs 0 < mask_patch <= {num_patches}, got {mask_patch}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    keys = torch.rand(batch_size, num_patches, generator=generator, device=device)
    return keys.argsort(dim=1)[:, :mask_patch].sort(dim=1).values


# --------------------------------------------------------------------------------------------- losses


def info_nce(pred: Tensor, target: Tensor, direction: NceDirection = "ssast_code") -> ContrastiveOutput:
    """InfoNCE among the M masked patches of each clip, and the matching accuracy.

    ``pred`` and ``target`` are (B, M, P). Per clip, ``S[j, k] = <target_j, pred_k>`` (M x M); the
    negatives are the other masked patches of the same clip. Computed in at least float32.

    * ``ssast_code`` (the original code, the released checkpoints): ``nce = -mean_{b,j}
      log_softmax(S, dim=-1)[j, j]``, i.e. for each *target* a softmax over the *predictions*.
      Accuracy as SSAST reports it: ``softmax(S, dim=-1)`` first, then for each prediction (column) k
      whether the argmax over targets (dim 0) is k; averaged over B * M.
    * ``paper`` (SSAST paper, Eq. 1): for each *prediction* a softmax over the *targets*,
      ``nce = -mean_{b,k} log_softmax(S, dim=0)[k, k]``; accuracy: for each prediction k whether its
      highest-scoring target (argmax of S over dim 0) is k.

    The two directions agree only for symmetric S. The SSAST maintainer confirmed the mismatch
    (ssast issue #13) and kept the code's direction; it is the default here for that reason.
    """
    if direction not in NCE_DIRECTIONS:
        raise ValueError(f"nce direction must be one of {NCE_DIRECTIONS}, got {direction!r}")
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"expected pred and target of the same shape (batch, masked, values), got {tuple(pred.shape)} and {tuple(target.shape)}")
    dtype = torch.promote_types(pred.dtype, torch.float32)
    scores = target.to(dtype) @ pred.to(dtype).transpose(1, 2)  # (B, M, M): [b, target j, prediction k]
    if direction == "ssast_code":
        log_prob = scores.log_softmax(dim=-1)
        best_target = scores.softmax(dim=-1).argmax(dim=1)
    else:
        log_prob = scores.log_softmax(dim=1)
        best_target = scores.argmax(dim=1)
    nce = -log_prob.diagonal(dim1=1, dim2=2).mean()
    own = torch.arange(scores.shape[-1], device=scores.device)
    acc = (best_target == own).to(dtype).mean().detach()
    return ContrastiveOutput(nce=nce, acc=acc)


def patch_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all B * M * P values, computed in at least float32."""
    if pred.shape != target.shape:
        raise ValueError(f"expected pred and target of the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    dtype = torch.promote_types(pred.dtype, torch.float32)
    return F.mse_loss(pred.to(dtype), target.to(dtype))


# ---------------------------------------------------------------------------------------------- model


def _prediction_head(dim: int, values: int) -> nn.Sequential:
    """Linear(D, D) -> ReLU -> Linear(D, values); indices 0 and 2 match the checkpoint names."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, values))


class MaskedPatchModel(nn.Module):
    """An :class:`AudioMambaEncoder` with SSAMBA's mask token and masked-patch heads.

    ``model(fbank)`` returns a :class:`PretrainOutput` for a normalised fbank (B, T, F);
    ``model.mpc(fbank, mask_ids)`` and ``model.mpg(fbank, mask_ids)`` run one head on its own.
    Training mode masks ``config.mask_patch`` patches per clip, eval mode ``config.eval_mask_patch``.
    """

    def __init__(self, encoder: AudioMambaEncoder, config: ObjectiveConfig | None = None, *, mask_seed: int = 0) -> None:
        super().__init__()
        config = ObjectiveConfig() if config is None else config
        config.validate()
        ec = encoder.config
        if (ec.fstride, ec.tstride) != (ec.fshape, ec.tshape):
            raise ValueError(
                "masked-patch pretraining needs non-overlapping patches: EncoderConfig fstride/tstride "
                f"({ec.fstride}, {ec.tstride}) must equal fshape/tshape ({ec.fshape}, {ec.tshape})"
            )
        self.encoder = encoder
        self.config = config
        self.use_cluster = config.cluster if config.cluster is not None else ec.fshape != ec.num_mel_bins
        limit = max_cluster_mask_patch(encoder.num_patches) if self.use_cluster else encoder.num_patches
        kind = "cluster" if self.use_cluster else "random"
        for name in ("mask_patch", "eval_mask_patch"):
            if getattr(config, name) > limit:
                raise ValueError(
                    f"ObjectiveConfig.{name}={getattr(config, name)} is too large for {kind} masking of the "
                    f"encoder's {encoder.grid[0]}x{encoder.grid[1]} patch grid (at most {limit})"
                )
        dim = ec.embed_dim
        self.patch_values = ec.fshape * ec.tshape
        self.mask_embed = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.xavier_normal_(self.mask_embed)
        self.cpredlayer = _prediction_head(dim, self.patch_values)
        self.gpredlayer = _prediction_head(dim, self.patch_values)
        self.unfold = nn.Unfold(kernel_size=(ec.fshape, ec.tshape), stride=(ec.fshape, ec.tshape))
        self.reseed_masks(mask_seed)

    # -- masks

    def reseed_masks(self, seed: int) -> None:
        """Restart the mask generator from ``seed`` (it lives on the model's device)."""
        self.mask_seed = seed
        self._generator: torch.Generator | None = None

    def mask_generator(self) -> torch.Generator:
        """The generator masks are drawn from, on the model's device. Moving the model to another
        device restarts it from the seed; save/restore its state with ``get_state``/``set_state``."""
        device = self.mask_embed.device
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.mask_seed)
        return self._generator

    @property
    def mask_patch(self) -> int:
        """Masked patches per clip in the current mode (training or eval)."""
        return self.config.mask_patch if self.training else self.config.eval_mask_patch

    def make_mask(self, batch_size: int, mask_patch: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Mask ids (batch_size, mask_patch) on the model's device (default count: :attr:`mask_patch`)."""
        count = self.mask_patch if mask_patch is None else mask_patch
        generator = self.mask_generator() if generator is None else generator
        device = self.mask_embed.device
        if self.use_cluster:
            return cluster_mask_ids(batch_size, self.encoder.grid, count, cluster_sizes=self.config.cluster_sizes, generator=generator, device=device)
        return random_mask_ids(batch_size, self.encoder.num_patches, count, generator=generator, device=device)

    def _check_mask_ids(self, mask_ids: Tensor, batch_size: int) -> Tensor:
        num_patches = self.encoder.num_patches
        if mask_ids.ndim != 2 or mask_ids.shape[0] != batch_size or mask_ids.shape[1] == 0:
            raise ValueError(f"mask_ids must have shape (batch={batch_size}, masked patches > 0), got {tuple(mask_ids.shape)}")
        if mask_ids.dtype.is_floating_point or mask_ids.dtype.is_complex or mask_ids.dtype == torch.bool:
            raise ValueError(f"mask_ids must be an integer tensor, got {mask_ids.dtype}")
        mask_ids = mask_ids.to(device=self.mask_embed.device, dtype=torch.long)
        if bool(((mask_ids < 0) | (mask_ids >= num_patches)).any()):
            raise ValueError(f"mask_ids must be patch indices in [0, {num_patches}), got values in [{int(mask_ids.min())}, {int(mask_ids.max())}]")
        ordered = mask_ids.sort(dim=1).values
        if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
            raise ValueError("mask_ids must be distinct within each clip")
        return mask_ids

    # -- pieces

    def targets(self, fbank: Tensor) -> Tensor:
        """Detached target patches (B, N, fshape * tshape) of a normalised fbank (B, T, F), in token order."""
        image = fbank.detach().unsqueeze(1).transpose(2, 3)  # (B, 1, F, T), as the patch embedding sees it
        return self.unfold(image).transpose(1, 2)

    def encode_masked(self, fbank: Tensor, mask_ids: Tensor) -> Tensor:
        """Encoder outputs (B, M, D) at the masked patches, the mask token in place of their embeddings."""
        patches = self.encoder.patchify(fbank)
        masked = torch.zeros(patches.shape[:2], dtype=torch.bool, device=patches.device)
        masked.scatter_(1, mask_ids, True)
        patches = torch.where(masked.unsqueeze(-1), self.mask_embed.to(patches.dtype), patches)
        tokens = self.encoder.patch_tokens(self.encoder.forward_tokens(patches))
        return tokens.take_along_dim(mask_ids.unsqueeze(-1), dim=1)

    def _masked_pass(self, fbank: Tensor, mask_ids: Tensor | None) -> tuple[Tensor, Tensor]:
        """(encoder outputs, target patches) at the masked positions, drawing a mask if none is given."""
        mask_ids = self.make_mask(fbank.shape[0]) if mask_ids is None else self._check_mask_ids(mask_ids, fbank.shape[0])
        hidden = self.encode_masked(fbank, mask_ids)
        target = self.targets(fbank).take_along_dim(mask_ids.unsqueeze(-1), dim=1)
        return hidden, target

    def _contrastive(self, hidden: Tensor, target: Tensor) -> ContrastiveOutput:
        return info_nce(self.cpredlayer(hidden), target, self.config.nce_direction)

    def _generative(self, hidden: Tensor, target: Tensor) -> Tensor:
        return patch_mse(self.gpredlayer(hidden), target)

    # -- tasks

    def mpc(self, fbank: Tensor, mask_ids: Tensor | None = None) -> ContrastiveOutput:
        """Masked patch classification: InfoNCE and accuracy (a mask is drawn if none is given)."""
        return self._contrastive(*self._masked_pass(fbank, mask_ids))

    def mpg(self, fbank: Tensor, mask_ids: Tensor | None = None) -> Tensor:
        """Masked patch generation: MSE to the target patches (a mask is drawn if none is given)."""
        return self._generative(*self._masked_pass(fbank, mask_ids))

    def forward(self, fbank: Tensor, mask_ids: Tensor | None = None, mpg_mask_ids: Tensor | None = None) -> PretrainOutput:
        """Joint objective ``nce + mse_weight * mse`` for a normalised fbank (B, T, F).

        Two passes (default): ``mask_ids`` for the discriminative pass, ``mpg_mask_ids`` for the
        generative one; each drawn independently when None. With ``single_pass`` both heads read the
        one pass masked by ``mask_ids``, and passing ``mpg_mask_ids`` is an error.
        """
        if self.config.single_pass:
            if mpg_mask_ids is not None:
                raise ValueError("ObjectiveConfig.single_pass uses one mask for both heads; pass mask_ids only, not mpg_mask_ids")
            hidden, target = self._masked_pass(fbank, mask_ids)
            contrastive = self._contrastive(hidden, target)
            mse = self._generative(hidden, target)
        else:
            contrastive = self.mpc(fbank, mask_ids)
            mse = self.mpg(fbank, mpg_mask_ids)
        loss = contrastive.nce + self.config.mse_weight * mse
        return PretrainOutput(loss=loss, nce=contrastive.nce.detach(), mse=mse.detach(), acc=contrastive.acc)

"""Every CCD hyper-parameter in one dataclass, its presets and the product's ``BEST`` variant.

``CCDConfig`` holds each loss weight, schedule and code-versus-paper choice of ccd-method.md §2-§3
and §8 (the section numbers refer to that method reference; the paper is Lee et al., "Continual
Collaborative Distillation for Recommender System", KDD 2024). The stages
(``stage1_distill``, ``stage2_student``, ``stage3_teacher``) and the learner read it; it imports
none of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# run.sh's per-block values for Yelp (ccd-method.md §3.6):
# Stage 2 ab/ss/ps/sw/pw, then Stage 3 ab/ss/ps/cs.
_YELP_RUN_SH = {
    1: (50, 1, 0, 1.0, 0.0, 100, 5, 0, 5),
    2: (100, 3, 5, 1.0, 0.1, 100, 1, 3, 5),
    3: (100, 5, 5, 0.9, 0.0, 50, 3, 5, 1),
    4: (50, 1, 5, 0.9, 0.0, 100, 1, 3, 1),
    5: (50, 3, 1, 0.9, 0.0, 100, 1, 5, 1),
}
_RUN_SH_FIELDS = (
    "student_replay_abs",
    "student_s_samples",
    "student_p_samples",
    "stability_weight",
    "plasticity_weight",
    "teacher_replay_abs",
    "teacher_s_samples",
    "teacher_p_samples",
    "teacher_cl_samples",
)


def setting(default: Any, meaning: str) -> Any:
    """A ``CCDConfig`` field: its default and one-line meaning (``metadata["help"]``)."""
    return field(default=default, metadata={"help": meaning})


@dataclass
class CCDConfig:
    """Every CCD hyper-parameter (ccd-method.md §2-§3, §8). Field groups:

    teacher ensemble / base training (§2.1), student (§2.2), shared training (§3.2), Stage 1 KD
    (§3.3), Stage 2 student update (§3.4), Stage 3 teacher update (§3.5), schedule. Each field's
    one-line meaning is its ``metadata["help"]`` (``setting_rows``, ``ccd replay --list-settings``).
    """

    # --- teacher ensemble (§2.1) ---------------------------------------------------------------
    teacher_kinds: tuple[str, ...] = setting(
        ("lightgcn",) * 5, "kind of each teacher member (mf, lightgcn, vae, ials), one per member"
    )
    teacher_seeds: tuple[int, ...] = setting((), "seed of each teacher member (empty = 0..n-1)")
    teacher_dim: int = setting(128, "embedding size of every teacher member (Yelp 128, Gowalla 64)")
    teacher_layers: int = setting(2, "propagation layers of LightGCN teacher members")
    vae_item_capacity: int | None = setting(
        None, "item count Mult-VAE members are built with: the final one (None = the first block's)"
    )
    vae_uniform_noise: bool = setting(
        True, "§8.15: Mult-VAE reparameterisation noise U[0,1) as in the code (False: Gaussian)"
    )
    ensemble_power: float = setting(
        0.05, "p of the rank ensemble: mean over members of (1 / (rank + 1)) ** p"
    )
    base_epochs: int = setting(100, "epoch limit of the teachers' base training on D_0")
    base_lr: float = setting(1e-3, "Adam learning rate of the teachers' base training")
    base_batch: int = setting(512, "BPR batch size of the teachers' base training")
    base_n_neg: int = setting(2, "negatives per positive in the teachers' base training")
    base_eval_every: int = setting(1, "validate every n epochs in the teachers' base training")
    base_patience: int = setting(10, "validations without improvement before base training stops")
    ials_regularization: float = setting(
        0.05, "L2 regularisation of iALS members' closed-form fit (models/members/ials.py)"
    )
    ials_alpha: float = setting(
        2.0, "iALS confidence scale: an observed pair counts alpha * weight"
    )
    ials_iterations: int = setting(15, "alternating least-squares sweeps per iALS fit")
    ials_replay_weight: float = setting(
        0.0, "confidence weight of student-side replay pairs in an iALS refit (0 = no replay)"
    )
    teacher_graph: Literal["block", "all"] = setting(
        "block", "LightGCN members propagate over the trained window (block, §8.11) or all pairs"
    )
    # --- student (§2.2) ------------------------------------------------------------------------
    student_kind: str = setting("lightgcn", "member kind of the student (mf or lightgcn)")
    student_dim: int = setting(8, "embedding size of the student (Yelp 8, Gowalla 16)")
    student_layers: int = setting(2, "propagation layers of a LightGCN student")
    student_seed: int = setting(1, "seed offset of the distilled student (the code's LightGCN_1)")
    # --- shared (§3.2) -------------------------------------------------------------------------
    weight_decay: float = setting(1e-4, "Adam weight decay (L2) in every stage")
    eval_every: int = setting(
        5, "validate every n epochs in Stages 1-3 (§8.7: 5 as the code; epochs 0, 5, ...)"
    )
    patience: int = setting(2, "validations without improvement before a stage stops")
    exclusion_k: int = setting(
        40, "top-k items of each past-knowledge model kept out of negative sampling (§3.2)"
    )
    seed: int = setting(0, "base seed of every random draw of the learner")
    hard_negative_rate: float = setting(
        0.5, "chance that a BPR negative is one of the user's explicit negatives, where any"
    )
    chunk: int = setting(1024, "users scored at a time for top-k lists and graphs (memory only)")
    # --- Stage 1: KD (§3.3) --------------------------------------------------------------------
    kd_epochs: int = setting(10, "epoch limit of Stage 1 (distillation of the student)")
    kd_lr: float = setting(5e-3, "Adam learning rate of Stage 1")
    kd_batch: int = setting(1024, "BPR batch size of Stage 1, and items per IR-RRD batch")
    kd_n_neg: int = setting(1, "negatives per positive in Stage 1's BPR")
    kd_rrd_weight: float = setting(0.01, "weight of the user-side relaxed ranking loss (RRD)")
    kd_ir_weight: float = setting(0.01, "weight of the item-side relaxed ranking loss (IR-RRD)")
    kd_user_rrd: Literal["per_batch", "per_epoch"] = setting(
        "per_batch",
        "user-side RRD: each BPR batch's users (the code) or one pass over all users per epoch",
    )
    kd_interesting: int = setting(
        40, "interesting items per user (and users per item): the teacher's top"
    )
    kd_uninteresting_items: int = setting(
        10_000, "uninteresting items sampled per user (nui; Gowalla 30,000, hours on 2 cores)"
    )
    kd_uninteresting_users: int = setting(
        11_500, "uninteresting users sampled per item (nuu; Gowalla 19,500)"
    )
    kd_resample_every: int = setting(10, "re-sample the uninteresting sets every n epochs")
    kd_bpr_clamp: bool = setting(
        True, "clamp Stage 1's BPR sigmoid to [1e-4, 0.9999] before the log (the code)"
    )
    kd_rrd_on_ego: bool = setting(
        True, "RRD / IR-RRD on a LightGCN student's layer-0 tables (the code), not propagated"
    )
    kd_nan_topk_quirk: bool = setting(
        False, "§8.1: True = HEAD's interesting lists, the user's own train items first"
    )
    kd_eval_every: int | None = setting(None, "validation cadence of Stage 1 (None = eval_every)")
    kd_patience: int | None = setting(
        None, "Stage 1's validations without improvement before it stops (None = patience)"
    )
    distill_data: Literal["window", "all"] = setting(
        "window", "distil on the teacher's last window (the code) or on all train pairs so far"
    )
    distill_init: Literal["fresh", "previous"] = setting(
        "fresh", "re-distil from a random student (the method) or the previous, grown (faster)"
    )
    # --- Stage 2: student update (§3.4) --------------------------------------------------------
    student_epochs: int = setting(10, "epoch limit of Stage 2 (the continual student update)")
    student_lr: float = setting(1e-3, "Adam learning rate of Stage 2")
    student_batch: int = setting(2048, "BPR and replay batch size of Stage 2")
    student_n_neg: int = setting(1, "negatives per positive in Stage 2's BPR")
    stability_weight: float = setting(
        0.9, "lambda_s: EMA weight of the old stability proxy (large: a slow proxy)"
    )
    plasticity_weight: float = setting(
        0.1, "lambda_p: EMA weight of the old plasticity proxy (small: fast; the code says 0.9)"
    )
    use_plasticity: bool = setting(True, "use the plasticity proxy P from block 2 on")
    student_replay_abs: int = setting(
        100, "N_abs: Stage 2 replays only items in a proxy's top N_abs"
    )
    student_s_samples: int = setting(5, "Stage 2 replay items per old user from the proxy S")
    student_p_samples: int = setting(5, "Stage 2 replay items per old user from the proxy P")
    student_replay_anneal: float = setting(
        10.0, "a_T: Stage 2's replay weight is replay_weight * exp(-epoch / a_T)"
    )
    student_replay_reference: Literal["distilled", "live"] = setting(
        "distilled", "§8.2: Stage 2 replay ranks against D_{k-1} (the code) or the live student"
    )
    replay_eps: float = setting(
        1e-4, "eps of the replay sampler: p ~ exp(eps * (reference rank - proxy rank))"
    )
    replay_redraw: Literal["evaluation", "epoch"] = setting(
        "evaluation", "re-draw replay after each validation but the first (the code) or each epoch"
    )
    replay_weight: float = setting(0.5, "base weight of the replay BCE loss in Stages 2 and 3")
    entity_init: Literal["two_hop", "one_hop", "random"] = setting(
        "two_hop", "new users / items start from one- and two-hop means, one-hop only or random"
    )
    init_k: int = setting(20, "k_init: two-hop neighbours averaged per new entity")
    init_fill_quirk: bool = setting(
        False, "§8.10: True = the code's off-by-one fill when |N2| == k_init"
    )
    # --- Stage 3: teacher update (§3.5) --------------------------------------------------------
    teacher_epochs: int = setting(10, "epoch limit of Stage 3 (each teacher member's update)")
    teacher_lr: float = setting(1e-3, "Adam learning rate of Stage 3")
    teacher_batch: int = setting(2048, "BPR and replay batch size of Stage 3")
    teacher_n_neg: int = setting(1, "negatives per positive in Stage 3's BPR")
    lwc_weight: float = setting(0.01, "weight of the LWC-KD terms UI + IU + UU + II")
    lwc_scale: Literal["code", "batch"] = setting(
        "code", "LWC-KD / cluster terms as means (code, ~1e-4 of BPR, §9.3) or per BPR pair"
    )
    lwc_tau: float = setting(5.0, "temperature tau of the LWC-KD contrastive terms")
    cluster_weight: float = setting(1.0, "weight of the cluster loss that trains the centres")
    n_clusters: int = setting(10, "cluster centres of PIW and of the cluster loss")
    piw: bool = setting(True, "weigh the UI and UU terms by personalised imitation weights")
    piw_per_user: bool = setting(
        True, "§8.8: PIW weighs per user (False = the code's broadcasting no-op)"
    )
    lwc_position_index_quirk: bool = setting(
        False, "§8.9: True = LightGCN 'before' rows looked up by list position (the code)"
    )
    graph_degree: float = setting(10.0, "target mean degree of the UU / II similarity graphs")
    graph_tolerance: float = setting(0.6, "tolerance of the bisection on that mean degree")
    teacher_replay_abs: int = setting(
        100, "N_abs: Stage 3 replays only items in a source's top N_abs"
    )
    teacher_s_samples: int = setting(5, "Stage 3 replay items per old user from the proxy S")
    teacher_p_samples: int = setting(5, "Stage 3 replay items per old user from the proxy P")
    teacher_cl_samples: int = setting(5, "Stage 3 replay items per old user from CL_k")
    teacher_replay_anneal: float = setting(
        5.0, "Stage 3's replay annealing constant (the code reuses the PIW temperature T = 5)"
    )
    vae_kl_weight: float = setting(1.0, "weight of a Mult-VAE member's KL retention term")
    vae_replay_value: float = setting(
        0.1, "pseudo-rating of a replayed pair in a Mult-VAE member's input"
    )
    # --- schedule ------------------------------------------------------------------------------
    teacher_every: int = setting(
        1, "teacher update + re-distillation every n-th block (1 = the paper)"
    )
    block_overrides: dict[int, dict[str, Any]] = field(
        default_factory=dict,
        metadata={"help": "field values per block index (e.g. run.sh's per-block ones, §3.6)"},
    )

    def __post_init__(self) -> None:
        self.teacher_kinds = tuple(self.teacher_kinds)
        self.teacher_seeds = tuple(self.teacher_seeds)
        if self.teacher_seeds and len(self.teacher_seeds) != len(self.teacher_kinds):
            raise ValueError("teacher_seeds must be empty or have one seed per teacher member")
        if self.teacher_every < 1:
            raise ValueError("teacher_every must be >= 1")
        self.block_overrides = {int(k): dict(v) for k, v in self.block_overrides.items()}

    @property
    def member_seeds(self) -> tuple[int, ...]:
        """The teacher members' seeds: ``teacher_seeds``, or 0..n-1 when it is empty."""
        return self.teacher_seeds or tuple(range(len(self.teacher_kinds)))

    @property
    def keeps_history(self) -> bool:
        """Whether a learner must keep every train pair so far (iALS refits, "all" graphs or
        distillation data); the official code never does, and its state stays per entity."""
        return (
            self.teacher_graph == "all"
            or self.distill_data == "all"
            or "ials" in self.teacher_kinds
        )

    def replay_redraw_due(self, epoch: int) -> bool:
        """Whether a Stage 2 / Stage 3 replay set is re-drawn before ``epoch`` (the code: after
        every evaluation but the first, epoch 0)."""
        if self.replay_redraw == "epoch":
            return epoch > 0
        return epoch > 1 and (epoch - 1) % self.eval_every == 0

    def for_block(self, index: int) -> CCDConfig:
        """This config with ``block_overrides[index]`` applied (e.g. run.sh's per-block values)."""
        overrides = self.block_overrides.get(index)
        return dataclasses.replace(self, **overrides) if overrides else self

    def to_dict(self) -> dict[str, Any]:
        """Primitives only (lists for tuples), for checkpoints loaded with weights_only."""
        return asdict(self) | {
            "teacher_kinds": list(self.teacher_kinds),
            "teacher_seeds": list(self.teacher_seeds),
        }

    @classmethod
    def preset(
        cls,
        name: Literal["yelp", "gowalla", "stream"],
        variant: Literal["paper", "best"] = "paper",
        **overrides: Any,
    ) -> CCDConfig:
        """Reference settings per dataset, or a small fast one for the live service.

        ``variant="paper"`` is the official code's behaviour (for the paper comparison);
        ``"best"`` applies ``BEST`` on top: the product's configuration (see ``BEST``).

        - "yelp": 5 LightGCN teachers (d=128, seeds 0-4), LightGCN student d=8, nui/nuu
          10,000/11,500, run.sh's per-block replay/proxy values (§3.6).
        - "gowalla": 5 BPR-MF + 2 Mult-VAE teachers (d=64; VAE seeds 0 and 2; 40,988 items),
          LightGCN student d=16, nui/nuu 30,000/19,500 (very slow on CPU).
        - "stream": LightGCN + MF teachers d=32, MF student d=16, few epochs, 500 uninteresting
          items/users, evaluation every 2 epochs: seconds per block on small blocks.
        """
        if name == "yelp":
            per_block = {
                k: dict(zip(_RUN_SH_FIELDS, v, strict=True)) for k, v in _YELP_RUN_SH.items()
            }
            base = cls(block_overrides=per_block)
        elif name == "gowalla":
            base = cls(
                teacher_kinds=("mf",) * 5 + ("vae",) * 2,
                teacher_seeds=(0, 1, 2, 3, 4, 0, 2),
                teacher_dim=64,
                vae_item_capacity=40_988,
                student_dim=16,
                kd_uninteresting_items=30_000,
                kd_uninteresting_users=19_500,
            )
        elif name == "stream":
            base = cls(
                teacher_kinds=("lightgcn", "mf"),
                teacher_dim=32,
                student_kind="mf",
                student_dim=16,
                base_epochs=12,
                base_batch=1024,
                base_eval_every=2,
                base_patience=2,
                eval_every=2,
                patience=2,
                kd_epochs=6,
                kd_uninteresting_items=500,
                kd_uninteresting_users=500,
                kd_resample_every=3,
                student_epochs=5,
                teacher_epochs=4,
                student_replay_abs=50,
                teacher_replay_abs=50,
                init_k=10,
            )
        else:
            raise ValueError(f"unknown preset {name!r}; expected yelp, gowalla or stream")
        if variant == "best":
            base = dataclasses.replace(base, **BEST)
        elif variant != "paper":
            raise ValueError(f"unknown variant {variant!r}; expected paper or best")
        return dataclasses.replace(base, **overrides) if overrides else base

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CCDConfig:
        return cls(**data)


def setting_rows() -> list[tuple[str, str, str, str]]:
    """``(name, type, default, meaning)`` of every ``CCDConfig`` field, in declaration order.

    Examples:
        >>> setting_rows()[3]
        ('teacher_layers', 'int', '2', 'propagation layers of LightGCN teacher members')
    """
    return [
        (
            f.name,
            str(f.type),
            repr(f.default_factory() if f.default is dataclasses.MISSING else f.default),
            f.metadata["help"],
        )
        for f in dataclasses.fields(CCDConfig)
    ]


# The product's configuration: ``CCDConfig.preset(name, "best")``. Each entry departs from the
# official code where the code weakens the method (ccd-method.md §9); measured on Yelp, values
# chosen on D0's validation split only (docs/results/README.md):
# - the teacher is an ensemble of iALS members (closed-form, refitted on every train pair so
#   far at each teacher update): a strong teacher is what a small student needs (§9.6), and a
#   refit cannot forget; regularisation / confidence from the grid of models.als.tune_ials;
# - the student is a d-sized MF (same parameter count as the LightGCN student, no graph);
# - distillation can converge (up to 40 epochs, validated every 2, early stopping) and covers
#   every train pair so far, not only the teacher's last window (§9.2);
# - Stage 2 / 3 validate every epoch and re-draw the replay set every epoch (§9.4);
# - LightGCN / MF members (if any) propagate over every train pair so far (§9.1) and weigh
#   LWC-KD per BPR pair (§9.3); with the iALS ensemble above neither is exercised.
BEST: dict[str, Any] = {
    "teacher_kinds": ("ials",) * 3,
    "teacher_seeds": (0, 1, 2),
    "teacher_dim": 64,
    "ials_regularization": 100.0,
    "ials_alpha": 64.0,
    "ials_iterations": 15,
    "teacher_graph": "all",
    "student_kind": "mf",
    "kd_epochs": 40,
    "kd_eval_every": 2,
    "kd_patience": 2,
    "distill_data": "all",
    "eval_every": 1,
    "patience": 3,
    "replay_redraw": "epoch",
    "lwc_scale": "batch",
}

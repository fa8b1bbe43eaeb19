"""``ccd replay``: the paper's protocol (ccd-method.md §3.1, §4) on a block file, CCD versus the
baselines, written to a results folder.

    ccd replay --dataset yelp [--out DIR] [--methods ccd,teacher_ft,ft,frozen,als]
        [--preset yelp|gowalla|stream] [--epochs-scale F] [--quick] [--set FIELD=VALUE ...]
        [--variant best|paper] [--blocks N] [--seed S] [--threads T] [--resume]
        [--base-from DIR] [--no-checkpoint] [--report-only]
    ccd replay --list-settings          # every --set FIELD: type, default, meaning

Base training on D0 runs once (teachers, ensemble T_0, Stage 1 KD of D_0, through
``CCDLearner``'s block 0); every method starts from a copy of that state and learns D1..D_K:

- ``ccd``: teacher = the CCD-updated ensemble T_k, student = the continual student CL_k;
- ``teacher_ft``: members fine-tuned with plain BPR per block, student re-distilled each block;
- ``ft``: D_0 fine-tuned with plain BPR per block; its teacher is the ``teacher_ft`` teacher;
- ``frozen``: T_0 and D_0, never updated.

After each block k every method's teacher and student are evaluated on the test sets of
blocks 0..k (R[k][j]) and on block k's new users, and the whole results folder is rewritten
(``experiments.report``), so an interrupted run keeps what it did. The learners are checkpointed
after every finished block and after every method within a block (``<out>/state/``): ``--resume``
continues from there, skipping the methods that already learned the unfinished block (a Gowalla
block is hours of CPU per method).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import logging
import pickle
import shlex
import sys
import time
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from experiments.distilled_baselines import TeacherFineTuneLearner
from experiments.report import (
    RunResults,
    hardware_info,
    jsonable,
    recorded_peak_gib,
    write_results,
)
from models.als import ALSLearner
from models.api import BlockData, BlockReport
from models.baselines import FineTuneLearner
from models.ccd import CCDConfig, CCDLearner
from models.ccd.config import setting_rows
from models.ccd.stage3_teacher import ensemble_scorer
from models.data import load_block_file, resolve_dataset
from models.members import Member
from models.metrics import SizedScorer, embedding_scorer, ranking_metrics

log = logging.getLogger("ccd.replay")

# Training order: ft reads teacher_ft's teacher. ``als`` is what a team would run instead.
METHODS = ("ccd", "teacher_ft", "ft", "frozen", "als")
OWN_BASE = ("als",)  # methods that do not start from the shared base training on D0
ROLES = ("teacher", "student")
KS = (20, 50)
EPOCH_FIELDS = ("base_epochs", "kd_epochs", "student_epochs", "teacher_epochs")
# --quick: the preset's architecture with far fewer epochs and smaller RRD samples. Measured on
# the shared 2-core machine this brings the Yelp protocol from days to a few hours; the CCD
# teacher update (5 members x epochs) and the base teachers dominate either way.
QUICK_OVERRIDES: dict[str, Any] = {
    "base_epochs": 20,
    "base_eval_every": 2,
    "base_patience": 3,
    "kd_epochs": 3,
    "student_epochs": 3,
    "teacher_epochs": 3,
    "eval_every": 2,
    "kd_uninteresting_items": 2_000,
    "kd_uninteresting_users": 2_000,
}


# -- the evaluated models ---------------------------------------------------------------------
@dataclass
class ModelRef:
    """One evaluated model: ``key`` + ``version`` identify it (equal pairs = same weights, so
    their results are shared), ``params`` its parameter count."""

    key: str
    version: int
    scorer: SizedScorer
    params: int


def count_params(modules: Iterable[nn.Module]) -> int:
    return sum(p.numel() for module in modules for p in module.parameters())


def teacher_ref(
    key: str, version: int, members: list[Member], n_items: int, power: float
) -> ModelRef:
    scorer = ensemble_scorer(members, n_items, power)
    return ModelRef(key, version, scorer, count_params(members))


def student_ref(key: str, version: int, member: Member) -> ModelRef:
    member.eval()
    return ModelRef(key, version, embedding_scorer(member.export()), count_params([member]))


# -- the methods: adapters over the learners --------------------------------------------------
class CCDMethod:
    """CCD itself: the learner that trained the base block, continued."""

    def __init__(self, learner: CCDLearner) -> None:
        self.learner = learner

    def learn_block(self, block: BlockData) -> BlockReport:
        return self.learner.learn_block(block)

    def models(self) -> dict[str, ModelRef]:
        learner = self.learner
        teacher = learner.teacher_scorer()
        assert learner.current is not None
        return {
            "teacher": ModelRef(
                "ccd/teacher", learner.teacher_updates, teacher, count_params(learner.teachers)
            ),
            "student": student_ref("ccd/student", learner.blocks_seen, learner.current),
        }


class TeacherFineTuneMethod:
    """Teacher fine-tuned per block, student re-distilled from it (M2's learner, forked)."""

    def __init__(self, learner: TeacherFineTuneLearner) -> None:
        self.learner = learner

    @classmethod
    def fork(cls, base: CCDLearner, block0: BlockData) -> TeacherFineTuneMethod:
        assert base.distilled is not None
        return cls(
            TeacherFineTuneLearner.after_base(
                base.config, copy.deepcopy(base.teachers), copy.deepcopy(base.distilled), block0
            )
        )

    def learn_block(self, block: BlockData) -> BlockReport:
        return self.learner.learn_block(block)

    def teacher(self) -> ModelRef:
        learner = self.learner
        scorer = learner.teacher_scorer()
        return ModelRef(
            "teacher_ft/teacher", learner.blocks_seen, scorer, count_params(learner.teachers)
        )

    def models(self) -> dict[str, ModelRef]:
        assert self.learner.member is not None
        return {
            "teacher": self.teacher(),
            "student": student_ref(
                "teacher_ft/student", self.learner.blocks_seen, self.learner.member
            ),
        }


class FineTuneMethod:
    """D_0 fine-tuned with plain BPR per block; the teacher is ``teacher_ft``'s.

    ``trains_teacher``: this method also advances the shared teacher (when ``teacher_ft`` is not
    run as a method of its own).
    """

    def __init__(
        self, student: FineTuneLearner, teacher: TeacherFineTuneMethod, trains_teacher: bool
    ) -> None:
        self.student, self.teacher, self.trains_teacher = student, teacher, trains_teacher

    @classmethod
    def fork(
        cls, base: CCDLearner, teacher: TeacherFineTuneMethod, trains_teacher: bool
    ) -> FineTuneMethod:
        cfg = base.config
        student = FineTuneLearner(
            dim=cfg.student_dim,
            kind=cfg.student_kind,
            epochs=cfg.student_epochs,
            lr=cfg.student_lr,
            weight_decay=cfg.weight_decay,
            batch_size=cfg.student_batch,
            n_neg=cfg.student_n_neg,
            seed=cfg.seed * 100_003 + cfg.student_seed,
            eval_every=cfg.eval_every,
            patience=cfg.patience,
        )
        assert base.current is not None
        student.continue_from(copy.deepcopy(base.current), blocks_seen=1)
        if trains_teacher:  # nobody evaluates teacher_ft's re-distilled student
            teacher.learner.distills = False
        return cls(student, teacher, trains_teacher)

    def learn_block(self, block: BlockData) -> BlockReport:
        report = BlockReport()
        if self.trains_teacher:
            teacher_report = self.teacher.learn_block(block)
            report.stage_seconds.update(
                {f"teacher_{k}": v for k, v in teacher_report.stage_seconds.items()}
            )
            report.info["teacher"] = teacher_report.info
        student_report = self.student.learn_block(block)
        report.stage_seconds.update(student_report.stage_seconds)
        report.info.update(student_report.info)
        return report

    def models(self) -> dict[str, ModelRef]:
        assert self.student.member is not None
        return {
            "teacher": self.teacher.teacher(),
            "student": student_ref("ft/student", self.student.blocks_seen, self.student.member),
        }


class FrozenMethod:
    """T_0 and D_0, never updated: shares the base models' keys, so evaluations are reused."""

    def __init__(self, teachers: list[Member], n_items: int, power: float, student: Member) -> None:
        self.teachers, self.n_items, self.power, self.member = teachers, n_items, power, student

    @classmethod
    def fork(cls, base: CCDLearner, block0: BlockData) -> FrozenMethod:
        assert base.distilled is not None
        teachers = copy.deepcopy(base.teachers)
        power = base.config.ensemble_power
        return cls(teachers, block0.n_items, power, copy.deepcopy(base.distilled))

    def learn_block(self, block: BlockData) -> BlockReport:
        return BlockReport({}, {"frozen": True})

    def models(self) -> dict[str, ModelRef]:
        return {
            "teacher": teacher_ref("base/teacher", 0, self.teachers, self.n_items, self.power),
            "student": student_ref("base/student", 0, self.member),
        }


class ALSMethod:
    """iALS retrained from scratch on all train data so far after every block, at the teacher's
    size (role ``teacher``) and at the student's (role ``student``); each size's
    hyper-parameters chosen on D0's validation split. It does not start from the shared base
    training: its D0 models are its own (``OWN_BASE``)."""

    def __init__(self, teacher: ALSLearner, student: ALSLearner) -> None:
        self.learners = {"teacher": teacher, "student": student}
        self.base_report = BlockReport()

    @classmethod
    def fork(cls, cfg: CCDConfig, block0: BlockData) -> ALSMethod:
        method = cls(
            ALSLearner(cfg.teacher_dim, seed=cfg.seed), ALSLearner(cfg.student_dim, seed=cfg.seed)
        )
        method.base_report = method.learn_block(block0)
        return method

    def learn_block(self, block: BlockData) -> BlockReport:
        report = BlockReport()
        for role, learner in self.learners.items():
            part = learner.learn_block(block)
            report.stage_seconds |= {f"{role}_{k}": v for k, v in part.stage_seconds.items()}
            report.info[role] = part.info
        return report

    def models(self) -> dict[str, ModelRef]:
        refs = {}
        for role, learner in self.learners.items():
            assert learner.member is not None
            refs[role] = student_ref(f"als/{role}", learner.blocks_seen, learner.member)
        return refs


def base_models(base: CCDLearner, block0: BlockData) -> dict[str, ModelRef]:
    """T_0 and D_0 right after the base block, under the keys ``FrozenMethod`` reuses."""
    assert base.distilled is not None
    power = base.config.ensemble_power
    return {
        "teacher": teacher_ref("base/teacher", 0, base.teachers, block0.n_items, power),
        "student": student_ref("base/student", 0, base.distilled),
    }


def fork_methods(
    base: CCDLearner | None, cfg: CCDConfig, block0: BlockData, names: Sequence[str]
) -> dict[str, Any]:
    """One method per name, each from its own copy of the base state (``ccd`` keeps ``base``;
    ``base`` may be None when only methods with their own base training run)."""
    methods: dict[str, Any] = {}
    if "als" in names:
        methods["als"] = ALSMethod.fork(cfg, block0)
    if base is None:
        return methods
    teacher_ft = None
    if "teacher_ft" in names or "ft" in names:
        teacher_ft = TeacherFineTuneMethod.fork(base, block0)
    for name in METHODS:
        if name not in names:
            continue
        if name == "teacher_ft":
            methods[name] = teacher_ft
        elif name == "ft":
            assert teacher_ft is not None
            methods[name] = FineTuneMethod.fork(base, teacher_ft, "teacher_ft" not in names)
        elif name == "frozen":
            methods[name] = FrozenMethod.fork(base, block0)
    if "ccd" in names:
        methods = {"ccd": CCDMethod(base), **methods}
    return {name: methods[name] for name in METHODS if name in methods}


# -- evaluation -------------------------------------------------------------------------------
def new_user_ids(blocks: Sequence[BlockData]) -> list[Tensor]:
    """Per block k, its users (any split) with an id the previous block's model cannot know
    (>= blocks[k-1].n_users): the code's definition of new users, ids being chronological."""
    out = []
    known = 0
    for block in blocks:
        users = torch.unique(torch.cat([block.train.users, block.valid.users, block.test.users]))
        out.append(users[users >= known])
        known = block.n_users
    return out


class Evaluator:
    """Test-set metrics of ``ModelRef``s per block (§4.1), cached by (key, version, block)."""

    def __init__(self, blocks: Sequence[BlockData], chunk: int) -> None:
        self.blocks, self.chunk = blocks, chunk
        self.new_users = new_user_ids(blocks)
        self.cache: dict[tuple[str, int, int, bool], dict[str, float]] = {}

    def metrics(self, ref: ModelRef, j: int, new_only: bool = False) -> dict[str, float]:
        key = (ref.key, ref.version, j, new_only)
        if key not in self.cache:
            block = self.blocks[j]
            self.cache[key] = ranking_metrics(
                ref.scorer,
                block.test,
                [block.train, block.valid],
                ks=KS,
                chunk=self.chunk,
                users=self.new_users[j] if new_only else None,
            )
        return self.cache[key]


def record(
    results: RunResults, evaluator: Evaluator, method: str, models: dict[str, ModelRef], k: int
) -> None:
    """R[k][0..k] and the block-k new-user figures of one method's teacher and student."""
    for role in ROLES:
        ref = models[role]
        matrix = results.matrix(method, role)
        for j in range(k + 1):
            matrix.record(k, j, evaluator.metrics(ref, j))
        if k > 0:
            new = evaluator.metrics(ref, k, new_only=True)
            results.new_users.setdefault(method, {}).setdefault(role, {})[str(k)] = new
        results.params.setdefault(method, {})[role] = ref.params


# -- options ----------------------------------------------------------------------------------
@dataclass
class ReplayOptions:
    dataset: str
    out: Path
    methods: list[str]
    preset: str
    variant: str = "best"
    seed: int = 0
    epochs_scale: float = 1.0
    quick: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    blocks: int | None = None
    threads: int | None = None
    resume: bool = False
    base_from: Path | None = None
    checkpoint: bool = True
    report_only: bool = False
    command: str = ""


def parse_override(text: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` for a ``CCDConfig`` field; VALUE is JSON, a comma list for tuple fields,
    else a string."""
    name, sep, raw = text.partition("=")
    fields = {f.name: f for f in dataclasses.fields(CCDConfig)}
    if not sep or name not in fields:
        raise argparse.ArgumentTypeError(
            f"expected FIELD=VALUE with a CCDConfig field, got {text!r}"
        )
    default = getattr(CCDConfig(), name)
    if isinstance(default, tuple):
        return name, tuple(part.strip() for part in raw.split(",") if part.strip())
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return name, value


def settings_text() -> str:
    """``ccd replay --list-settings``: every ``CCDConfig`` field with its type, default and
    meaning, two lines each."""
    lines = ["CCDConfig fields for --set FIELD=VALUE (a preset or --variant best changes some):"]
    for name, kind, default, meaning in setting_rows():
        lines += [f"  {name} ({kind}, default {default})", f"      {meaning}"]
    return "\n".join(lines)


class ListSettings(argparse.Action):
    """``--list-settings``: print ``settings_text()`` and exit, like ``--help``."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(settings_text())
        parser.exit()


def build_config(options: ReplayOptions) -> CCDConfig:
    """The preset, then ``--quick``, ``--epochs-scale`` and the ``--set`` overrides, in order."""
    cfg = CCDConfig.preset(options.preset, options.variant, seed=options.seed)
    if options.quick:
        cfg = dataclasses.replace(cfg, **QUICK_OVERRIDES)
    if options.epochs_scale != 1.0:
        scaled = {
            name: max(1, round(getattr(cfg, name) * options.epochs_scale)) for name in EPOCH_FIELDS
        }
        cfg = dataclasses.replace(cfg, **scaled)
    if options.overrides:
        cfg = dataclasses.replace(cfg, **options.overrides)
    return cfg


def parse_args(argv: Sequence[str]) -> ReplayOptions:
    parser = argparse.ArgumentParser(
        prog="ccd replay",
        description="Run the CCD paper's block protocol (base training on D0, then D1..D_K) for "
        "CCD and the baselines, and write a results folder.",
    )
    parser.add_argument("--dataset", required=True, help="yelp, gowalla or a block TSV path")
    parser.add_argument("--out", type=Path, help="results folder (default runs/replay-<name>)")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}"
    )
    parser.add_argument(
        "--preset",
        choices=("yelp", "gowalla", "stream"),
        help="CCDConfig preset (default: the dataset's for yelp/gowalla, else stream)",
    )
    parser.add_argument(
        "--variant",
        choices=("best", "paper"),
        default="best",
        help="best: the product's configuration (models.ccd.BEST, chosen on validation splits); "
        "paper: the official code's behaviour, for the paper comparison (default: best)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--epochs-scale",
        type=float,
        default=1.0,
        help="multiply base/KD/student/teacher epoch limits (reduced setting)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="reduced setting: " + ", ".join(f"{k}={v}" for k, v in QUICK_OVERRIDES.items()),
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=parse_override,
        default=[],
        metavar="FIELD=VALUE",
        help="override a CCDConfig field (repeatable), e.g. --set kd_uninteresting_items=5000; "
        "--list-settings lists the fields",
    )
    parser.add_argument(
        "--list-settings",
        action=ListSettings,
        help="list every CCDConfig field (type, default, meaning) and exit",
    )
    parser.add_argument("--blocks", type=int, help="run only the first N blocks (D0..D_{N-1})")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/state/")
    parser.add_argument(
        "--base-from",
        type=Path,
        metavar="DIR",
        help="reuse the D0 base training (teachers, T_0, D_0) of an earlier run's folder; "
        "D1.. run with this run's settings (experiments on D1..D_K in minutes)",
    )
    parser.add_argument(
        "--no-checkpoint",
        dest="checkpoint",
        action="store_false",
        help="do not save the learners after each block (no --resume possible)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: rewrite <out>'s report files from <out>/state/ (e.g. after an "
        "upgrade of the report)",
    )
    args = parser.parse_args(list(argv))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    name = args.dataset.lower()
    preset = args.preset or (name if name in ("yelp", "gowalla") else "stream")
    stem = name if name in ("yelp", "gowalla") else Path(args.dataset).parent.name or "data"
    if args.blocks is not None and args.blocks < 1:
        parser.error("--blocks must be >= 1")
    return ReplayOptions(
        dataset=args.dataset,
        out=args.out or Path("runs") / f"replay-{stem}",
        methods=methods,
        preset=preset,
        variant=args.variant,
        seed=args.seed,
        epochs_scale=args.epochs_scale,
        quick=args.quick,
        overrides=dict(args.overrides),
        blocks=args.blocks,
        threads=args.threads,
        resume=args.resume,
        base_from=args.base_from,
        checkpoint=args.checkpoint,
        report_only=args.report_only,
        command=shlex.join(["ccd", "replay", *argv]),
    )


def paper_dataset(dataset: str) -> str | None:
    """ "yelp" / "gowalla" when ``dataset`` is (the path of) one of the paper's block files."""
    for name in ("yelp", "gowalla"):
        if dataset.lower() == name or Path(dataset).resolve() == resolve_dataset(name).resolve():
            return name
    return None


def block_stats(blocks: Sequence[BlockData], new_users: Sequence[Tensor]) -> list[dict[str, int]]:
    return [
        {
            "block": b.index,
            "n_users": b.n_users,
            "n_items": b.n_items,
            "train": len(b.train),
            "valid": len(b.valid),
            "test": len(b.test),
            "new_users": int(new.numel()),
        }
        for b, new in zip(blocks, new_users, strict=True)
    ]


# -- checkpoints ------------------------------------------------------------------------------
def _state_path(out: Path) -> Path:
    return out / "state" / "checkpoint.pt"


def save_checkpoint(
    out: Path,
    k: int,
    methods: dict[str, Any],
    results: RunResults,
    evaluator: Evaluator,
    done_in_next: Sequence[str] = (),
) -> None:
    """Pickle the methods (learners included), the results and the evaluation cache after block
    ``k``; ``done_in_next`` names the methods that have already learned (and been evaluated on)
    block k + 1, so that ``--resume`` skips them."""
    path = _state_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / ".gitignore").write_text("*\n")  # large binary state: never committed
    tmp = path.with_suffix(".tmp")
    state = {"k": k, "methods": methods, "results": results, "cache": evaluator.cache}
    torch.save(state | {"done_in_next": list(done_in_next)}, tmp)
    tmp.replace(path)


# Where the classes pickled by runs written before the layout move (commit 046df2e) live now.
MOVED_MODULES = {
    "models.reproduce": "experiments.protocol",
    "models.report": "experiments.report",
    "models.distilled_baselines": "experiments.distilled_baselines",
    "models.kd": "models.ccd.stage1_distill",
    "models.student_update": "models.ccd.stage2_student",
    "models.teacher_update": "models.ccd.stage3_teacher",
}


class _MovedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "models.ccd" and name not in ("CCDConfig", "CCDLearner", "BEST"):
            module = "models.ccd.learner"
        return super().find_class(MOVED_MODULES.get(module, module), name)


# ``torch.load``'s pickle_module: pickle, reading the old module paths too.
MOVED_PICKLE = types.SimpleNamespace(
    __name__="pickle", Unpickler=_MovedUnpickler, load=pickle.load, loads=pickle.loads
)


def load_checkpoint(out: Path) -> dict[str, Any]:
    """Our own file, written by ``save_checkpoint`` (pickle: learners are objects), also one
    written before the layout move (``MOVED_MODULES``)."""
    path = _state_path(out)
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    return torch.load(path, weights_only=False, pickle_module=MOVED_PICKLE)


# -- the run ----------------------------------------------------------------------------------
def _stage_text(report: BlockReport) -> str:
    return ", ".join(f"{name} {sec:.1f} s" for name, sec in report.stage_seconds.items())


def _base_path(out: Path) -> Path:
    return out / "state" / "base.pt"


def save_base(out: Path, base: CCDLearner, report: BlockReport) -> None:
    """The learner right after D0 (teachers, T_0, D_0), for ``--base-from`` of later runs."""
    path = _base_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / ".gitignore").write_text("*\n")
    tmp = path.with_suffix(".tmp")
    torch.save({"learner": base.state_dict(), "report": report}, tmp)
    tmp.replace(path)


def load_base(source: Path, cfg: CCDConfig | None = None) -> tuple[CCDLearner, BlockReport]:
    """A finished D0 from another run's folder, continued under ``cfg`` (None: its own). Settings
    that shaped D0 (teachers, base training, Stage 1) come from that run; they are logged when
    they differ."""
    path = _base_path(source)
    if not path.exists():
        raise FileNotFoundError(f"--base-from: no base training at {path}")
    state = torch.load(path, weights_only=False, pickle_module=MOVED_PICKLE)  # by save_base
    base = CCDLearner()
    base.load_state_dict(state["learner"])
    cfg = base.config if cfg is None else cfg
    differ = sorted(k for k, v in cfg.to_dict().items() if base.config.to_dict().get(k) != v)
    if differ:
        log.warning("--base-from %s: its D0 ran with other values of %s; D1.. use this run's",
                    source, ", ".join(differ))  # fmt: skip
    base.config = cfg
    if cfg.keeps_history and not len(base.history):  # a base run that did not keep it
        base.history = base.prev_train  # D0's train split: all there is after D0
    log.info("D0: base training reused from %s", path)
    return base, state["report"]


def _train_base(cfg: CCDConfig, block0: BlockData) -> tuple[CCDLearner, BlockReport]:
    log.info(
        "D0: base training (teachers %s d=%d, ensemble, Stage 1 KD of the student)",
        ",".join(cfg.teacher_kinds),
        cfg.teacher_dim,
    )
    base = CCDLearner(cfg)
    report = base.learn_block(block0)
    log.info("D0: base done (%s); info %s", _stage_text(report), jsonable(report.info))
    return base, report


def _log_scores(results: RunResults, method: str, k: int) -> None:
    parts = []
    for role in ROLES:
        value = results.matrix(method, role).get("recall@20", k, k)
        parts.append(f"{role} R@20 on D{k} = {value:.4f}")
    log.info("D%d %s: %s", k, method, "; ".join(parts))


def run(options: ReplayOptions) -> RunResults:
    """The whole protocol; rewrites ``options.out`` after every block and returns the results."""
    if options.report_only:
        results = load_checkpoint(options.out)["results"]
        # Checkpoints of earlier versions did not keep the peak; their config.json did.
        results.peak_rss_gib = max(results.peak_rss_gib, recorded_peak_gib(options.out))
        write_results(results, options.out, measure_peak=False)
        log.info("rewrote the report in %s from its checkpoint", options.out)
        return results
    started = time.perf_counter()
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    path = resolve_dataset(options.dataset)
    blocks = load_block_file(path)
    blocks = blocks[: options.blocks] if options.blocks else blocks
    cfg = build_config(options)
    evaluator = Evaluator(blocks, cfg.chunk)
    start, methods, done_in_start = 0, {}, []
    if options.resume:
        state = load_checkpoint(options.out)
        results, methods, start = state["results"], state["methods"], state["k"] + 1
        done_in_start = state.get("done_in_next", [])  # absent in checkpoints before it existed
        evaluator.cache.update(state["cache"])
        if cfg.to_dict() != {k: results.config[k] for k in cfg.to_dict()}:
            log.warning("--resume: the checkpoint's learners keep their own config; options differ")
        results.n_blocks = len(blocks)
        results.block_stats = block_stats(blocks, evaluator.new_users)
        results.command += "\n" + options.command  # the resumed invocation
        log.info(
            "resuming after D%d from %s%s",
            state["k"],
            _state_path(options.out),
            f" (D{start} already learned by {', '.join(done_in_start)})" if done_in_start else "",
        )
    else:
        results = RunResults(
            dataset=options.dataset,
            paper_dataset=paper_dataset(options.dataset),
            command=options.command,
            methods=options.methods,
            n_blocks=len(blocks),
            config=cfg.to_dict()
            | {
                "preset": options.preset,
                "variant": options.variant,
                "quick": options.quick,
                "epochs_scale": options.epochs_scale,
            },
            hardware=hardware_info(),
            block_stats=block_stats(blocks, evaluator.new_users),
        )
    elapsed_before = results.elapsed_s
    log.info(
        "dataset %s: %d blocks, methods %s, preset %s",
        path,
        len(blocks),
        ",".join(options.methods),
        options.preset,
    )
    progress = tqdm(total=len(blocks), initial=start, desc="blocks", unit="block")
    for k in range(start, len(blocks)):
        if k == 0:
            progress.set_postfix_str("base training")
            methods = _base_block(results, evaluator, cfg, blocks[0], options)
        else:
            # After each method but the last (the block's own checkpoint follows below).
            method_done = (
                functools.partial(save_checkpoint, options.out, k - 1, methods, results, evaluator)
                if options.checkpoint
                else None
            )
            skip = done_in_start if k == start else []
            _continual_block(results, evaluator, methods, k, blocks[k], progress, skip, method_done)
        results.blocks_done = k + 1
        results.elapsed_s = elapsed_before + time.perf_counter() - started
        write_results(results, options.out)
        if options.checkpoint:
            save_checkpoint(options.out, k, methods, results, evaluator)
        log.info("D%d done; results in %s (%.0f s so far)", k, options.out, results.elapsed_s)
        progress.update(1)
    progress.close()
    return results


def _timed_stages(report: BlockReport, began: float, began_cpu: float) -> dict[str, float]:
    """The learner's stage times plus ``evaluate`` (since ``began``) and ``cpu`` (process CPU
    seconds of the whole step, all threads: on a shared machine wall-clock overstates cost)."""
    return report.stage_seconds | {
        "evaluate": time.perf_counter() - began,
        "cpu": time.process_time() - began_cpu,
    }


def _base_block(
    results: RunResults,
    evaluator: Evaluator,
    cfg: CCDConfig,
    block: BlockData,
    options: ReplayOptions,
) -> dict[str, Any]:
    """D0 once for all methods: train (or load ``--base-from``), evaluate T_0 and D_0, fork the
    methods."""
    names, base_from = options.methods, options.base_from
    shared = [name for name in names if name not in OWN_BASE]
    base, models = None, {}
    if shared:
        began_cpu = time.process_time()
        if base_from is not None:
            base, report = load_base(base_from, cfg)
        else:
            base, report = _train_base(cfg, block)
            if options.checkpoint:
                save_base(options.out, base, report)
        began = time.perf_counter()
        models = base_models(base, block)
        results.timings["0"] = {"base": _timed_stages(report, began, began_cpu)}
        results.infos["0"] = {"base": jsonable(report.info)}
    methods = fork_methods(base, cfg, block, names)
    for name in names:
        if name in OWN_BASE:
            own = methods[name].base_report
            results.timings.setdefault("0", {})[name] = own.stage_seconds
            results.infos.setdefault("0", {})[name] = jsonable(own.info)
        record(results, evaluator, name, methods[name].models() if name in OWN_BASE else models, 0)
        _log_scores(results, name, 0)
    return methods


def _continual_block(
    results: RunResults,
    evaluator: Evaluator,
    methods: dict[str, Any],
    k: int,
    block: BlockData,
    progress: tqdm,
    skip: Sequence[str] = (),
    method_done: Callable[[list[str]], None] | None = None,
) -> None:
    """Block k >= 1: each method learns it, then its teacher and student are evaluated.

    ``skip``: methods that already did both (a resumed block); ``method_done`` is called with
    the names done so far after each method (the checkpoint)."""
    timings = results.timings.setdefault(str(k), {})
    infos = results.infos.setdefault(str(k), {})
    done = list(skip)
    for name in tqdm(
        [n for n in methods if n not in done], desc=f"D{k}", leave=False, unit="method"
    ):
        progress.set_postfix_str(f"{name}: learning")
        log.info("D%d %s: learning (%d train interactions)", k, name, len(block.train))
        began_cpu = time.process_time()
        report = methods[name].learn_block(block)
        log.info("D%d %s: learned (%s)", k, name, _stage_text(report))
        progress.set_postfix_str(f"{name}: evaluating")
        began = time.perf_counter()
        record(results, evaluator, name, methods[name].models(), k)
        timings[name] = _timed_stages(report, began, began_cpu)
        infos[name] = jsonable(report.info)
        _log_scores(results, name, k)
        done.append(name)
        if method_done is not None and len(done) < len(methods):
            method_done(done)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ccd replay`` / ``python -m experiments.protocol``; returns the exit code."""
    options = parse_args(sys.argv[1:] if argv is None else argv)
    if not resolve_dataset(options.dataset).exists():
        print(f"ccd replay: no block file at {resolve_dataset(options.dataset)}", file=sys.stderr)
        return 2
    options.out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(options.out / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_log = logging.getLogger("ccd")  # ccd.replay and the stages' ccd.models
    package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s")
    try:
        with logging_redirect_tqdm():
            run(options)
    except FileNotFoundError as error:
        print(f"ccd replay: {error}", file=sys.stderr)
        return 2
    finally:
        package_log.removeHandler(handler)
        handler.close()
    print(f"results written to {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

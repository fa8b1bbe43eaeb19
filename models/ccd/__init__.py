"""The CCD method: ``CCDConfig`` (config), the three stages and ``CCDLearner`` (learner).

Reference:
    Gyuseok Lee, SeongKu Kang, Wonbin Kweon and Hwanjo Yu. "Continual Collaborative Distillation
    for Recommender System". In Proceedings of the 30th ACM SIGKDD Conference on Knowledge
    Discovery and Data Mining (KDD 2024). arXiv:2405.19046, https://arxiv.org/abs/2405.19046

Reference code:
    https://github.com/Gyu-Seok0/CCD_KDD24 (the authors' official implementation; where it and
    the paper differ, ``CCDConfig`` has a switch)

Read in this order: ``config`` (every hyper-parameter and switch), ``stage1_distill`` (KD of a
student from the teacher ensemble), ``stage2_student`` (the continual student update with
new-entity initialisation and proxy-guided replay), ``stage3_teacher`` (the teacher members'
update that takes back student-side knowledge), then ``learner`` (sequences them per block).
"""

from models.ccd.config import BEST, CCDConfig
from models.ccd.learner import CCDLearner

__all__ = ["BEST", "CCDConfig", "CCDLearner"]

"""The CCD method: ``CCDConfig`` (config), the three stages and ``CCDLearner`` (learner).

Read in this order: ``config`` (every hyper-parameter and switch), ``stage1_distill`` (KD of a
student from the teacher ensemble), ``stage2_student`` (the continual student update with
new-entity initialisation and proxy-guided replay), ``stage3_teacher`` (the teacher members'
update that takes back student-side knowledge), then ``learner`` (sequences them per block).
"""

from models.ccd.config import BEST, CCDConfig
from models.ccd.learner import CCDLearner

__all__ = ["BEST", "CCDConfig", "CCDLearner"]

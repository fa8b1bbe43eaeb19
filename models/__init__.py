"""Pure-PyTorch block learners behind one interface; imports nothing else of this project.

Entry points: ``api.BlockLearner`` (the contract: ``learn_block``, ``student``, ``state_dict``,
``load_state_dict``) and its data (``api.BlockData``, ``api.Embeddings``); the learners
``ccd.CCDLearner`` (the CCD method, with ``ccd.CCDConfig``), ``baselines.FineTuneLearner`` and
``als.ALSLearner``; ``members.build_member`` (BPR-MF, LightGCN, Mult-VAE, iALS); and
``metrics.ranking_metrics``.

The "§" tags in docstrings are sections of the CCD method reference, ccd-method.md, which is
kept outside this repository: each tag comes with the behaviour it refers to, so the code reads
without it; the public sources are the paper and its official code (``models/ccd/__init__.py``).
"""

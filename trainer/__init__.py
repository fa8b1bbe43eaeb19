"""The stream-to-blocks process (``ccd train``): event log -> blocks -> learner -> model store.

Entry points: ``process.run_trainer`` and ``process.Trainer`` (one block: evaluate, learn,
checkpoint, publish, commit), ``process.build_learner`` (``CCD_LEARNER`` -> a
``models.api.BlockLearner``); ``ids.IdMap``, ``blocks.BlockPolicy``, ``checkpoint``, ``lease``;
``producer`` (``ccd produce``) and ``synthetic.SyntheticStream``, the demo stream.
"""

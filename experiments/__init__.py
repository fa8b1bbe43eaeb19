"""The paper's experiment harness, apart from the method: ``ccd replay`` (``protocol``), the
continual-learning baselines it compares against (``distilled_baselines``) and its report
(``report``: matrices, tables, plots). Depends on ``models``; nothing in ``models`` imports it.
"""

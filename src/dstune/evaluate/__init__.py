"""Evaluation: metrics of labelled tasks (``metrics``, ``plots``); `dstune eval` (``runner``: ``generate`` +
``text_metrics`` for causal LMs, ``labelled`` + ``calibration`` for classifiers and taggers, ``review`` for the
error-analysis sample, ``judge`` for LLM-as-judge, ``explain`` for attention heatmaps) and `dstune compare`
(``compare`` on ``significance``)."""

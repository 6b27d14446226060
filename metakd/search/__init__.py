"""Searching students: AdaBERT's differentiable architecture search per domain
(:mod:`~metakd.search.adabert`), RoSearch's robustness-aware fitness (:mod:`~metakd.search.rosearch`) and
``python -m metakd search`` (:mod:`~metakd.search.command`)."""

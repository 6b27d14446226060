"""Searching students per domain: AdaBERT's differentiable architecture search
(:mod:`~metakd.search.adabert`), RoSearch's evolutionary search with a robustness-aware fitness
(:mod:`~metakd.search.rosearch`), one run of either (:mod:`~metakd.search.run`) and ``python -m metakd
search`` (:mod:`~metakd.search.command`). docs/SEARCH.md lists every file's job."""

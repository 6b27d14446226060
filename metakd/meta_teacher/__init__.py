"""The parts :class:`metakd.teacher.MetaTeacher` composes, one file each (docs/ARCHITECTURE.md):
``network`` (encoder and heads), ``transferability`` (t_i as instance weights), ``meta_weights``
(learned instance weights), ``domain_loss`` (the domain-adversarial part), ``nonfinite`` (the NaN
check), ``evaluation`` (dev/test/predict steps) and ``checkpoint`` (what a checkpoint records)."""

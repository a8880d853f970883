"""Benchmarks and machine calibration.

The scripts (``headline.py``, ``sim_paper.py``, ``sim_scaling.py``, ``validate.py``,
``warm_spare.py``) print the project's figures; the modules behind ``gemini-ckpt bench``
(``engine``, ``engine_training``) and ``gemini-ckpt calibrate`` (``calibrate``) measure this
machine. Nothing in ``real``, ``sim``, ``shared`` or ``analysis`` imports them.
"""

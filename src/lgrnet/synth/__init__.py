"""SynthRef: a synthetic referring-expression benchmark that asks for RefCOCO's reasoning (attributes, absolute
locations, relations, ordinals, superlatives) on drawn scenes, with testA/testB split by the paper's spatial words.

``scene`` samples and draws scenes, ``grammar`` writes expressions with their semantic form and checks that each
refers to exactly one object, ``sets`` writes SynthRef-G's expressions that refer to several objects or to none,
``generate`` writes the splits as images + JSONL (``lgrnet synth``, ``--grec`` for SynthRef-G).
"""

from lgrnet.synth.generate import SPLITS, ensure_synthref, generate, make_grec_sample, make_sample

__all__ = ["SPLITS", "ensure_synthref", "generate", "make_grec_sample", "make_sample"]

"""Defenses in front of an extractor: transforms of the images a shop ingests, and a detector.

Each defense is one module (``jpeg``, ``bit_depth``, ``median``, ``resize_pad``, ``denoiser``,
``detector``) mapping images (N,3,H,W) float in [0,1] to images of the same shape, with its
gradient rule (:mod:`.base`); :mod:`.registry` maps kinds to them; :mod:`.defended` composes one
with an :class:`~advrec_common.vision.model.ImageModel` into another ``ImageModel`` (deployed, or
adaptive: what the adaptive attacker differentiates); :mod:`.artifact` is the fitted-defense
artifact (the denoiser's weights, the detector's threshold). :mod:`.spec` is the torch-free spec
entry (``defenses: [...]``); this package's ``__init__`` imports nothing, so the spec stays torch-free.
"""

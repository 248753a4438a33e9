"""Image models, the ground the extractor and the attacker share: the :class:`ImageModel` contract,
the one backbone registry, safe checkpoint reading, advrec's model file, the extractor artifact and
the defenses in front of an extractor (``defenses/``)."""

"""Image models, the ground the extractor and the attacker share: the :class:`ImageModel` contract,
the one backbone registry, safe checkpoint reading, advrec's model file and the extractor artifact."""

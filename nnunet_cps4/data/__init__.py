"""The data layer: the semi-supervised raw dataset layout and split, converters, spine label names, the phantom."""

"""The synthetic world (seven cities after Where-CNN and a cross-area validation city, a second one with
``cities=9``): procedurally generated, geo-referenced cities rendered from the air and from the street,
deterministically from a seed. See `generate` and docs/contracts.md."""

from wherecnn.data.synthetic.generate import SIZES, generate
from wherecnn.data.synthetic.world import CITIES, STYLES

__all__ = ["CITIES", "SIZES", "STYLES", "generate"]

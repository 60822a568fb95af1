"""Recognisers for layers written by other codebases (timm, the papers' repos), one file a layer."""

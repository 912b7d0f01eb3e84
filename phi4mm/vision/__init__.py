"""The image side (model-spec.md §5, §6): preprocess (a decoded picture -> dynamic-HD crops and
masks, Pillow's resize and numpy) and encoder (crops -> SigLIP -> 2x2 pool -> HD layout ->
projector rows, numpy only: importing it does not import Pillow)."""

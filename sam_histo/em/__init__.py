"""EM vesicle instances in 3-D: per-slice automatic masks from grid prompts, decoding, linking through z,
the decoding sweep. The public entry points are in ``sam_histo.em.volume``.

Modules, by responsibility:

- ``decode.py``   (pure numpy) candidate masks of one slice stored as logit crops; thresholds, stability,
  mask-IoU non-maximum suppression and painting into a 2-D instance map;
- ``infer.py``    (torch) grid point prompts through ``SamHisto.forward_prompted``, test-time views, candidate
  extraction;
- ``link.py``     (pure numpy) the overlap linker: instances of neighbouring slices joined into 3-D objects;
- ``video.py``    (torch) the video linker: each new instance propagated through z with SAM2's video predictor;
- ``sweep.py``    (pure numpy) the decoding grid over cached candidates, scored in 3-D, and its table;
- ``cli.py``      ``sam-histo em predict|sweep``.
"""

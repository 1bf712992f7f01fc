"""Pictures, drawn with Pillow (and matplotlib for curves); no display needed.

* :mod:`sniper.viz.draw`: the primitives and the one colour scheme every picture uses.
* :mod:`sniper.viz.chips`: chips on an image (paper Fig. 1), chips with their labels
  (Fig. 2), dataset items as the model receives them, and ``sniper chips --visualize``.
* :mod:`sniper.viz.detections`: detections on an image.
* :mod:`sniper.viz.plots`: loss and learning-rate curves of a training log.
* :mod:`sniper.viz.report`: one self-contained HTML report.

The library's lower layers never import this package; the engine and the CLI do.
"""

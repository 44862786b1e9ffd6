"""Problems: a model plus everything needed to sample and score it the same way every time.

``problem.Problem`` is the spec (pure settings), ``loaded.LoadedModel`` that spec with its
pipeline in memory (on the ``device`` and dtype asked for), ``inputs`` the image inputs of
image-to-image and ControlNet problems, ``pretrained`` builds specs for any diffusers U-Net pipeline (``hub``
reads a pipeline's layout without loading weights), ``registry`` finds one by name.
May import: ``flexnas.engine``, ``flexnas.plan``, ``flexnas.errors``.
"""

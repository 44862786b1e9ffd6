"""Problems: a model plus everything needed to sample and score it the same way every time.

``problem.Problem`` is the spec (pure settings), ``loaded.LoadedModel`` that spec with its
pipeline in memory (on the ``device`` and dtype asked for), ``prompts`` and ``inputs`` the prompts
of text-to-image problems and the images of image-to-image, inpainting and ControlNet ones,
``lockstep`` the latents of several plans sampled together, ``pretrained``
builds specs for any diffusers U-Net pipeline (``hub`` reads a pipeline's layout without loading
weights), ``registry`` finds one by name.
May import: ``flexnas.engine``, ``flexnas.plan``, ``flexnas.errors``.
"""

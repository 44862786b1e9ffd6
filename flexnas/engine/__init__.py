"""The sampling engine: runs a plan on a stock diffusers U-Net and scheduler (DESIGN.md, section 7).

``partial`` holds the diffusers ``ModelHook``s that run a PARTIAL step (shallow path, deep
features from a cache); ``controller`` drives the scheduler and those hooks step by step;
``controlnet`` keeps a pipeline's ControlNet to the steps that use it; ``steps`` counts steps
and says what a scheduler allows; ``sampler`` is the denoising loop, ``lockstep`` the same loop
for several plans at once (shared prefixes, batched step kinds); ``apply`` attaches a plan
to a user's pipeline; ``compiled`` compiles the step kinds.
May import: ``flexnas.plan`` and the base modules (``flexnas.errors``, ``flexnas.fingerprint``).
"""

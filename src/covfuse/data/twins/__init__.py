"""The twins: synthetic data with planted effects and exact Bayes accuracies, to test that a method finds what is there.

* :mod:`~covfuse.data.twins.faces`: a CelebA-format face twin (``covfuse data synth``, ``covfuse demo``);
* :mod:`~covfuse.data.twins.brains`: a brain-MRI twin on the MNI152 template (``covfuse data synth3d``);
* :mod:`~covfuse.data.twins.survival`: time to conversion for the brain twin (``synth3d --survival``).
"""

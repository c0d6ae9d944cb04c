"""DNN inference jobs with accuracy knobs (BlinkNet, Delen, AxTrain) in numpy.

Core modules need no Ray: ``data`` (digits from scikit-learn, shipped inside
the package), ``model`` (an MLP with early-exit heads and approximate layers),
``train`` (Adam with joint exit loss and noise-aware training, cached weights),
``knobs`` (the knob setting space), ``profile`` (real accuracy, latency and
memory of each setting) and ``service`` (serves requests with the current
setting). A Ray replica can wrap ``service.InferenceService``.
"""

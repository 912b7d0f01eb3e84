"""Engine replicas on Ray Serve with conversation affinity (`phi4mm serve --replicas N`, and the
Serve application for clusters). Only `affinity`, `bridge` and `scaling` import without the `ray`
extra."""

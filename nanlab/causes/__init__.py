"""One package per cause; ``nanlab.registry`` discovers them."""
